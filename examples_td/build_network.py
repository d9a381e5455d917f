"""Build the node-server network in TouchDesigner: paste this whole file into the Textport
(Dialogs > Textport and DATs) and press Enter, or put it in a Text DAT and run it
(right-click > Run Script).

It creates a Base COMP /project1/node_server holding both paths, wired and ready:

  Spout path (Windows; start the server with --spout-in td-to-node --spout-out node-server):
    source (Movie File In) -> spout_out (Syphon Spout Out TOP, sender "td-to-node")
    spout_in (Syphon Spout In TOP, sender "node-server") -> spout_result (Null)

  ZeroMQ path (any OS; start the server with its default --zmq-in/--zmq-out):
    source -> zmq_top (Script TOP, callbacks from zmq_top_callbacks = zmq_top.py) -> zmq_result
    cook_every_frame (Execute DAT) cooks zmq_top each frame so new outputs show up

  OSC (both paths; server defaults --osc-port 9000, and --feedback 127.0.0.1:9002):
    oscout1 (OSC Out DAT -> 127.0.0.1:9000) + osc_out (osc_out.py helpers)
    oscout_chop (OSC Out CHOP -> 127.0.0.1:9000) fed by controls (Constant CHOP, /strength /seed)
    oscin1 (OSC In DAT on 9002) + oscin1_callbacks (osc_in_callbacks.py) -> status, errors

Set KIT_DIR to the folder holding this repository's examples_td/ so the Python files are loaded
into their DATs; if it cannot be read, paste each file into its DAT by hand.
Parameter names are those of TouchDesigner 2023.x; a name a build does not have is reported,
not fatal.
"""

import os

KIT_DIR = r"C:\path\to\node-server\examples_td"  # <- change me
PARENT = "/project1"
NAME = "node_server"
SPOUT_TO_SERVER = "td-to-node"  # the server's --spout-in
SPOUT_FROM_SERVER = "node-server"  # the server's --spout-out
SERVER_HOST = "127.0.0.1"
OSC_PORT = 9000  # --osc-port
FEEDBACK_PORT = 9002  # --feedback 127.0.0.1:9002


def _set(node, **values):
    for name, value in values.items():
        par = getattr(node.par, name, None)
        if par is None:
            print("build_network: %s has no parameter %r; set it by hand" % (node.path, name))
            continue
        par.val = value


def _text_from(dat, filename):
    path = os.path.join(KIT_DIR, filename)
    try:
        with open(path, encoding="utf-8") as fh:
            dat.text = fh.read()
    except OSError:
        print("build_network: could not read %s; paste %s into %s" % (path, filename, dat.path))


def build():
    parent = op(PARENT)
    old = parent.op(NAME)
    if old is not None:
        old.destroy()
    base = parent.create(baseCOMP, NAME)

    source = base.create(moviefileinTOP, "source")
    source.nodeX, source.nodeY = 0, 0

    # -- Spout path --------------------------------------------------------------------------
    spout_out = base.create(syphonspoutoutTOP, "spout_out")
    spout_out.inputConnectors[0].connect(source)
    _set(spout_out, sendername=SPOUT_TO_SERVER)
    spout_out.nodeX, spout_out.nodeY = 200, 150
    spout_in = base.create(syphonspoutinTOP, "spout_in")
    _set(spout_in, sendername=SPOUT_FROM_SERVER)
    spout_in.nodeX, spout_in.nodeY = 400, 150
    spout_result = base.create(nullTOP, "spout_result")
    spout_result.inputConnectors[0].connect(spout_in)
    spout_result.nodeX, spout_result.nodeY = 600, 150

    # -- ZeroMQ path -------------------------------------------------------------------------
    callbacks = base.create(textDAT, "zmq_top_callbacks")
    _text_from(callbacks, "zmq_top.py")
    callbacks.nodeX, callbacks.nodeY = 200, -250
    zmq_top = base.create(scriptTOP, "zmq_top")
    zmq_top.inputConnectors[0].connect(source)
    _set(zmq_top, callbacks=callbacks.path)
    zmq_top.nodeX, zmq_top.nodeY = 200, -100
    try:
        zmq_top.par.setuppars.pulse()  # runs onSetupParameters: the "Server" page
    except Exception as exc:
        print("build_network: press 'Setup Parameters' on zmq_top by hand (%s)" % exc)
    zmq_result = base.create(nullTOP, "zmq_result")
    zmq_result.inputConnectors[0].connect(zmq_top)
    zmq_result.nodeX, zmq_result.nodeY = 400, -100

    ticker = base.create(executeDAT, "cook_every_frame")
    ticker.text = (
        "def onFrameStart(frame):\n"
        "    op('zmq_top').cook(force=True)\n"
        "    return\n"
    )
    _set(ticker, framestart=True, active=True)
    ticker.nodeX, ticker.nodeY = 400, -250

    # -- OSC ---------------------------------------------------------------------------------
    oscout = base.create(oscoutDAT, "oscout1")
    _set(oscout, netaddress=SERVER_HOST, port=OSC_PORT)
    oscout.nodeX, oscout.nodeY = 0, -450
    helpers = base.create(textDAT, "osc_out")
    _text_from(helpers, "osc_out.py")
    helpers.nodeX, helpers.nodeY = 200, -450

    controls = base.create(constantCHOP, "controls")
    _set(controls, name0="/strength", value0=1.0, name1="/seed", value1=0)
    controls.nodeX, controls.nodeY = 0, -600
    oscout_chop = base.create(oscoutCHOP, "oscout_chop")
    oscout_chop.inputConnectors[0].connect(controls)
    _set(oscout_chop, netaddress=SERVER_HOST, port=OSC_PORT)
    oscout_chop.nodeX, oscout_chop.nodeY = 200, -600

    status = base.create(tableDAT, "status")
    status.clear()
    errors = base.create(textDAT, "errors")
    in_callbacks = base.create(textDAT, "oscin1_callbacks")
    _text_from(in_callbacks, "osc_in_callbacks.py")
    oscin = base.create(oscinDAT, "oscin1")
    _set(oscin, port=FEEDBACK_PORT, callbacks=in_callbacks.path)
    for k, node in enumerate((oscin, in_callbacks, status, errors)):
        node.nodeX, node.nodeY = 400 + 200 * k, -450

    print("build_network: created %s" % base.path)
    return base


build()
