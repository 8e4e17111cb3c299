"""Shared fixtures: real Postgres (``tests.fixtures.postgres``) and a real S3 server
(``tests.fixtures.s3``)."""

import os

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.s3"]

# Tests build their own Config; settings from the developer's shell must not leak in.
for _name in list(os.environ):
    if _name.startswith(("ONNX_WEB_", "S3_")) or _name == "DATABASE_URL":
        del os.environ[_name]
