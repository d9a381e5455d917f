"""OSC In DAT callbacks: show node-server's feedback (`/status/*` and `/error`).

Start the server with `--feedback 127.0.0.1:9002` and set an OSC In DAT to Network Port 9002
(UDP). Paste this into the OSC In DAT's callbacks DAT. It fills a Table DAT named `status`
(one row per `/status/*` value, e.g. fps, latency_ms, state, prompt) and appends `/error`
reasons to a Text DAT named `errors` (last 50 lines kept). build_network.py creates all three.
"""

MAX_ERROR_LINES = 50
PREFIX = ""  # the server's --osc-prefix, e.g. "/ns"


def onReceiveOSC(dat, rowIndex, message, bytes, timeStamp, address, args, peer):
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
