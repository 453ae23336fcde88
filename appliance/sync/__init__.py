"""Object store sync: ship Parquet files to S3 or MinIO, keep the local disk budget."""
