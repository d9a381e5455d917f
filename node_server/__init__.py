"""node-server: a real-time stylization server for live visuals."""

__version__ = "0.1.0"
