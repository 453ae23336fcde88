"""Line protocol: syntax rules, the exact parser, column building and the vectorised route."""
