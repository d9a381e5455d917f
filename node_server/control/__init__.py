"""Control surface: OSC in, feedback out, OSCQuery discovery and presets, all from one inventory."""

from node_server.control.feedback import Feedback, parse_address
from node_server.control.inventory import CONTROLS, FEEDBACK, REPLIES, Control, normalize_prefix
from node_server.control.osc import OscControl
from node_server.control.oscquery import OSCQueryServer
from node_server.control.presets import PresetStore, default_user_dir
from node_server.control.target import ControlTarget, Status

__all__ = [
    "CONTROLS",
    "FEEDBACK",
    "REPLIES",
    "Control",
    "ControlTarget",
    "Feedback",
    "OSCQueryServer",
    "OscControl",
    "PresetStore",
    "Status",
    "default_user_dir",
    "normalize_prefix",
    "parse_address",
]
