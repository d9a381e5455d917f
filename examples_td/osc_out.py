"""Sending the prompt and parameters to node-server from TouchDesigner over OSC.

Text (the prompt, presets) goes through an OSC Out DAT; numbers can go through the same DAT or
through an OSC Out CHOP whose channel names are the full OSC addresses.

OSC Out DAT (Network Address 127.0.0.1, Network Port 9000 = the server's --osc-port, Protocol
UDP). Put this file in a Text DAT named `osc_out` and call, e.g. from a Field COMP or a button:

    mod('osc_out').send_prompt(op('oscout1'), op('prompt_text').text)
    mod('osc_out').send_params(op('oscout1'), strength=0.6, seed=3)
    mod('osc_out').recall_preset(op('oscout1'), 'neon')

OSC Out CHOP (same address and port): name its input channels exactly as the addresses in
CHOP_CHANNELS (a Constant CHOP with channels `/strength`, `/seed`, `/steps`; or a Rename CHOP in
front of your MIDI In CHOP, e.g. `chan1` -> `/strength`). Each channel is sent as `/strength f`;
whole-number floats are accepted for `/seed` and `/steps` (docs/OSC.md). Turn on the CHOP's
"Send Events Every Cook" only if you want a steady stream; by default it sends on change.

With `--osc-prefix /ns` on the server, every address starts with `/ns` (`/ns/prompt`); pass
prefix='/ns' below and rename the CHOP channels the same way.
"""

CHOP_CHANNELS = ("/strength", "/seed", "/steps", "/pause")


def _addr(prefix, address):
    return (prefix or "") + address


def send_prompt(osc_out_dat, text, prefix=""):
    """`/prompt s`: the edit instruction (at most 500 characters)."""
    osc_out_dat.sendOSC(_addr(prefix, "/prompt"), [str(text)])


def send_params(osc_out_dat, prefix="", **values):
    """One message per value: strength (float 0..1], seed (int), steps (1..4), refresh (str)."""
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
