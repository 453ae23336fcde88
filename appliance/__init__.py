"""The edge appliance: an InfluxDB 3 compatible time-series database for IoT gateways."""

__version__ = "0.1.0"
