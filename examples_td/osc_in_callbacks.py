"""OSC In DAT callbacks: show node-server's feedback (`/status/*` and `/error`).

Start the server with `--feedback <this machine>:9002` and set an OSC In DAT to Port 9002 with
Split Bundle into Messages on: the server sends all `/status/*` values as one bundle, and only
split does each of them reach onReceiveOSC. Put this file in the OSC In DAT's Callbacks DAT. It
fills a Table DAT named `status` (one row per `/status/*` value: fps, latency_ms, frames, dropped,
errors, state, prompt) and appends `/error` reasons to a Text DAT named `errors` (last 50 lines
kept). build_network.py creates all of them.
"""

MAX_ERROR_LINES = 50
PREFIX = ""  # the server's --osc-prefix, e.g. "/ns"


def onReceiveOSC(dat, rowIndex, message, byteData, timeStamp, address, args, peer):
    if PREFIX and address.startswith(PREFIX + "/"):
        address = address[len(PREFIX):]
    if address.startswith("/status/"):
        key = address[len("/status/"):]
        value = args[0] if args else ""
        table = op("status")
        if table is not None:
            if table.row(key) is None:
                table.appendRow([key, value])
            else:
                table[key, 1] = value
    elif address == "/error":
        text = op("errors")
        if text is not None:
            lines = (text.text.splitlines() + [str(args[0]) if args else "?"])[-MAX_ERROR_LINES:]
            text.text = "\n".join(lines)
    return
