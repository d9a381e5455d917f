"""NDI bridge: receive frames from an NDI source, send stylized frames as an NDI source.

Built on ndi-python (`pip install "node-server[ndi]"`), whose wheels carry the NDI runtime; it is
imported only when an NDI input, output or listing is used. Each direction runs on its own thread
and feeds the server like ZeroMQ and Spout do (`ServerApp.submit_frame`, the output sinks).
See docs/NDI.md for set-up, discovery and what was run where.
"""

from ._ndilib import INSTALL_HINT, NdiUnavailable, load_ndilib, split_list, unavailable_message
from .receiver import NDI_ID_BASE, NdiReceiver
from .sender import NdiSender
from .sources import Discovery, SourceEntry, SourceQuery, list_sources

__all__ = [
    "INSTALL_HINT", "NDI_ID_BASE", "Discovery", "NdiReceiver", "NdiSender", "NdiUnavailable", "SourceEntry",
    "SourceQuery", "list_sources", "load_ndilib", "split_list", "unavailable_message",
]
