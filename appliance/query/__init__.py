"""Queries: the SQL service over buffer and Parquet, result formats and system tables."""
