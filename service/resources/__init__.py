"""Falcon resources, one module per family of routes. They parse, call and answer: no SQL, no S3."""
