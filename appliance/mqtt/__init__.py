"""MQTT ingest: subscribe to a broker and write what sensors publish."""
