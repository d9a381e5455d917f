"""The web console: live thumbnails, plots, errors and the controls, served on the OSCQuery port."""

from node_server.console.server import Console

__all__ = ["Console"]
