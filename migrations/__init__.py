"""The Postgres schema as ordered Alembic migrations; apply them with ``onnx-web migrate``."""
