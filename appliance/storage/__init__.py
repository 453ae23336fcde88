"""Storage: the LMDB store, WAL, catalog, buffer, dedupe, manifest, persist and the disk budget."""
