"""Sending the prompt and parameters to node-server from TouchDesigner over OSC.

Text (the prompt, presets) goes through an OSC Out DAT; numbers can go through the same DAT or
through an OSC Out CHOP whose channel names are the full OSC addresses.

OSC Out DAT (Network Address = the server machine, Port 9000 = the server's --osc-port, Protocol
Messaging (UDP)). Put this file in a Text DAT named `osc_out` and call, e.g. from a Field COMP or
a button:

    mod('osc_out').recall_preset(op('oscout1'), 'watercolor')
    mod('osc_out').send_prompt(op('oscout1'), 'make it an old sepia photograph')
    mod('osc_out').send_params(op('oscout1'), strength=0.06, seed=3)

The default demo model knows the nine styles in DEMO_PRESETS (one preset each) and only works at
low strengths: 0.05 by default, at most 0.08 (a higher /strength runs at 0.08). Other models take
any prompt and strengths up to 1.

OSC Out CHOP (same address and port): name its input channels exactly as the addresses in
CHOP_CHANNELS (a Constant CHOP with channels `/strength` and `/seed`; or a Rename CHOP in front of
your MIDI In CHOP, e.g. `chan1` -> `/strength`). Each channel is sent as `/strength f`;
whole-number floats are accepted for `/seed` and `/steps` (docs/OSC.md). Without "Send Events
Every Cook" it sends a channel only when its value changed.

With `--osc-prefix /ns` on the server, every address starts with `/ns` (`/ns/prompt`); pass
prefix='/ns' below and rename the CHOP channels the same way.
"""

CHOP_CHANNELS = ("/strength", "/seed", "/steps", "/pause")
# the default demo model's presets (presets/*.toml): recall_preset(dat, name)
DEMO_PRESETS = ("pencil-sketch", "sepia", "blueprint", "thermal", "invert", "watercolor", "neon",
                "night-vision", "emboss")


def _addr(prefix, address):
    return (prefix or "") + address


def send_prompt(osc_out_dat, text, prefix=""):
    """`/prompt s`: the edit instruction (at most 500 characters)."""
    osc_out_dat.sendOSC(_addr(prefix, "/prompt"), [str(text)])


def send_params(osc_out_dat, prefix="", **values):
    """One message per value: strength (float; demo model 0.05..0.08), seed (int), steps (1..4),
    refresh (str)."""
    for name, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        osc_out_dat.sendOSC(_addr(prefix, "/" + name), [value])


def recall_preset(osc_out_dat, name, prefix=""):
    osc_out_dat.sendOSC(_addr(prefix, "/preset"), [str(name)])


def save_preset(osc_out_dat, name, prefix=""):
    osc_out_dat.sendOSC(_addr(prefix, "/preset/save"), [str(name)])


def pause(osc_out_dat, paused=True, prefix=""):
    osc_out_dat.sendOSC(_addr(prefix, "/pause"), [1 if paused else 0])
