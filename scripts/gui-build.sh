#!/usr/bin/env bash
# Build the web GUI into gui/dist (served by the api at /) and print its gzipped size.
# Idempotent: `npm ci` runs only when package-lock.json changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/../gui"

# npm ci deletes and reinstalls node_modules; skip it when the lockfile it installed is unchanged.
stamp=node_modules/.lock-installed
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

if [[ ${1:-} == --deps-only ]]; then
  exit 0
fi

npx tsc -p tsconfig.json --noEmit
npx vite build --logLevel warn
node scripts/bundle-size.mjs
