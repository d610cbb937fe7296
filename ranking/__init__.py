"""ranking: a low-latency gRPC ranking service. See README.md for the request path."""

__version__ = "0.1.0"
