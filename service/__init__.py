"""Everything that speaks HTTP, SQL or S3: the Falcon app, the job queue, the worker, storage."""
