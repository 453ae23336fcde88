"""Command line: `appliance serve` and client commands mirroring `influxdb3`."""
