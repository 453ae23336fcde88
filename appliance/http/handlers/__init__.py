"""Thin HTTP handlers by area (write, query, configure, engine, ops): parse the request, call the
service that owns the work, shape the reply. Each area reads only its part of HttpServices."""
