#!/usr/bin/env bash
# Write the secrets compose.yaml reads, with fresh random values, unless they already exist:
#   secrets/postgres_password, secrets/minio_root_user, secrets/minio_root_password  (compose secrets,
#   read by the Postgres and MinIO images through their *_FILE variables)
#   compose.env  (DATABASE_URL, S3 keys and admin token for migrate, api and worker, which read
#   their settings from the environment)
# All of them are ignored by git (infra/.gitignore). Delete them to rotate, then recreate the stack.
set -euo pipefail
cd "$(dirname "$0")"
random() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
# The folder is private to you; its files must stay world-readable, because compose bind-mounts each
# one into its container, where Postgres and MinIO read it as their own (non-root) users.
mkdir -p secrets && chmod 700 secrets
umask 022
[[ -s secrets/postgres_password ]] || random > secrets/postgres_password
[[ -s secrets/minio_root_user ]] || echo "onnxweb-$(random | cut -c1-8)" > secrets/minio_root_user
[[ -s secrets/minio_root_password ]] || random > secrets/minio_root_password
if [[ ! -s compose.env ]]; then
  (umask 077 && cat > compose.env <<ENV
DATABASE_URL=postgresql://postgres:$(cat secrets/postgres_password)@postgres:5432/onnx_web
S3_ACCESS_KEY=$(cat secrets/minio_root_user)
S3_SECRET_KEY=$(cat secrets/minio_root_password)
ONNX_WEB_ADMIN_TOKEN=$(random)
ENV
  )
fi
echo "secrets in $(pwd)/secrets and $(pwd)/compose.env"
