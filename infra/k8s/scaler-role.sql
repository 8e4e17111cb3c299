-- The read-only role KEDA's postgresql scaler connects as (Secret onnx-web-scaler, key connection).
-- It sees only the columns the ScaledObject's queries read, never prompts, inputs or outputs.
-- Run once per database as its owner, then give the role a password:
--   psql "$DATABASE_URL" -f infra/k8s/scaler-role.sql
--   psql "$DATABASE_URL" -c "ALTER ROLE onnx_web_scaler PASSWORD '…'"
-- tests/infra/test_k8s.py runs this file and the ScaledObject's queries as this role.
CREATE ROLE onnx_web_scaler LOGIN;
GRANT SELECT (state, platform, created_at) ON jobs TO onnx_web_scaler;
-- A slow scaler query must fail, not pile up: KEDA polls every 15 s.
ALTER ROLE onnx_web_scaler SET statement_timeout = '5s';
