"""Spout bridge (Windows): receive frames from a Spout sender, send stylized frames as one.

Built on SpoutGL (`pip install "node-server[spout]"`), which is imported only when a Spout input or
output is used. Each direction runs on its own thread with its own OpenGL context. See
docs/SPOUT.md for what was and was not run on Windows.
"""

from ._spoutgl import INSTALL_HINT, SpoutUnavailable, load_spoutgl, unavailable_message
from .listing import SenderEntry, list_senders
from .receiver import SPOUT_ID_BASE, SpoutReceiver
from .sender import SpoutSender

__all__ = [
    "INSTALL_HINT", "SPOUT_ID_BASE", "SenderEntry", "SpoutReceiver", "SpoutSender", "SpoutUnavailable",
    "list_senders", "load_spoutgl", "unavailable_message",
]
