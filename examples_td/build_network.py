"""Build the node-server network in TouchDesigner (2023.10000 or later).

Do not paste this file into the Textport: the Textport reads pasted text line by line like an
interactive Python prompt, and a blank line inside a function ends that function. Run it either way:

  A. From a Text DAT (recommended). In /project1 create a Text DAT, set its File parameter to this
     file (or paste the file into it), then type in the Textport:
         op('/project1/text1').run(r'C:\\path\\to\\node-server\\examples_td')
     The argument is this folder (the other kit files are loaded from it). A second argument picks
     the paths to build, e.g. 'zmq,ndi'; the default builds all three. Right-click > Run Script also
     works when the File parameter points at this file.
  B. From the Textport in one line:
         KIT_DIR = r'C:\\path\\to\\node-server\\examples_td'; exec(open(KIT_DIR + '/build_network.py').read())

It creates a Base COMP /project1/node_server (an existing one is replaced):

  source (Movie File In) -> to_server (Fit TOP: the server's frame size, cropped like the server
  crops), feeding every path:
    spout: to_server -> spout_out (Syphon Spout Out, sender "td-to-node");
           spout_in (Syphon Spout In, sender "node-server") -> spout_result
           server: --spout-in td-to-node --spout-out node-server   (Windows, one machine)
    zmq:   to_server -> zmq_top (Script TOP, zmq_top.py) -> zmq_result; cook_every_frame cooks it
           server: default --zmq-in/--zmq-out                      (any OS, any machine)
    ndi:   to_server -> ndi_out (NDI Out TOP, source "td-to-node");
           ndi_in (NDI In TOP, source "<server machine> (node-server)") -> ndi_result
           server: --ndi-in td-to-node --ndi-out node-server       (any OS, any machine)
  OSC (every path; server defaults --osc-port 9000, and --feedback <this machine>:9002):
    oscout1 (OSC Out DAT) + osc_out (osc_out.py helpers): the prompt and presets
    controls (Constant CHOP: /strength 0.05, /seed 0) -> oscout_chop (OSC Out CHOP)
    oscin1 (OSC In DAT on 9002, bundles split) + oscin1_callbacks (osc_in_callbacks.py) -> status, errors

Parameter names follow docs.derivative.ca (see README.md for the table of what was checked). A
name a build does not have is printed and skipped, not fatal. Settings (ports, sizes, names)
are in the Settings class below.
"""


class Settings:
    """Change these, or pass the kit folder and the paths to run()."""

    PARENT = "/project1"
    NAME = "node_server"
    PATHS = ("spout", "zmq", "ndi")
    SERVER_HOST = "127.0.0.1"  # the machine running node-server (OSC and ZeroMQ go there)
    SERVER_SIZE = (256, 256)  # the server's frame size: 256x256 for the default demo model, else --size
    OSC_PORT = 9000  # --osc-port
    FEEDBACK_PORT = 9002  # --feedback <this machine>:9002
    ZMQ_IN_PORT = 5555  # --zmq-in
    ZMQ_OUT_PORT = 5556  # --zmq-out
    SPOUT_TO_SERVER = "td-to-node"  # the server's --spout-in
    SPOUT_FROM_SERVER = "node-server"  # the server's --spout-out
    NDI_TO_SERVER = "td-to-node"  # the server's --ndi-in (it takes any source whose name contains it)
    NDI_FROM_SERVER = "node-server"  # the server's --ndi-out
    NDI_SERVER_MACHINE = ""  # the server machine's name as NDI lists it ("GPU-BOX"); empty: from the menu
    NDI_EXTRA_IPS = ""  # the server's IP when mDNS cannot see it (NDI In TOP's Extra Search IPs)
    STRENGTH = 0.05  # /strength to start with: the demo model's default (it runs at most 0.08)
    SEED = 0


def build_network(S, kit_dir="", paths=None):
    """Create PARENT/NAME with the chosen paths. Self-contained (the helpers are nested) because a
    DAT script may run with separate global and local namespaces."""
    import os

    paths = tuple(S.PATHS if paths is None else paths)
    unknown = [p for p in paths if p not in ("spout", "zmq", "ndi")]
    if unknown:
        raise ValueError("build_network: unknown path(s) %s; use spout, zmq, ndi" % ", ".join(unknown))

    def set_pars(node, **values):
        """Set parameters by their documented names; print the ones this build does not have."""
        missing = []
        for name, value in values.items():
            par = getattr(node.par, name, None)
            if par is None:
                print("build_network: %s has no parameter %r; set it by hand" % (node.path, name))
                missing.append(name)
                continue
            par.val = value
        return missing

    def text_from(dat, filename):
        path = os.path.join(kit_dir, filename)
        try:
            with open(path, encoding="utf-8") as fh:
                dat.text = fh.read()
        except OSError:
            print("build_network: could not read %s; paste %s into %s" % (path, filename, dat.path))

    def place(node, x, y):
        node.nodeX, node.nodeY = x, y
        return node

    def constant_channels(chop, channels):
        """Constant CHOP channels are the `const` sequence: const0name/const0value, const1name/..."""
        try:
            seq = chop.seq.const
            if seq.numBlocks < len(channels):
                seq.numBlocks = len(channels)
        except Exception as exc:
            print("build_network: could not add channels to %s (%s); add %d by hand"
                  % (chop.path, exc, len(channels)))
        for i, (name, value) in enumerate(channels):
            set_pars(chop, **{"const%dname" % i: name, "const%dvalue" % i: value})

    def ndi_source(ndi_in):
        """The server's NDI source as the NDI In TOP lists it: "MACHINE (node-server)"."""
        wanted = "(%s)" % S.NDI_FROM_SERVER
        try:
            names = list(ndi_in.par.name.menuNames or [])
        except Exception:
            names = []
        for name in names:
            if name.endswith(wanted) and (not S.NDI_SERVER_MACHINE or name == "%s %s" % (S.NDI_SERVER_MACHINE, wanted)):
                return name
        if S.NDI_SERVER_MACHINE:
            return "%s %s" % (S.NDI_SERVER_MACHINE, wanted)
        return ""

    parent = op(S.PARENT)
    if parent is None:
        raise RuntimeError("build_network: %s does not exist" % S.PARENT)
    old = parent.op(S.NAME)
    if old is not None:
        old.destroy()
    base = parent.create(baseCOMP, S.NAME)
    w, h = S.SERVER_SIZE

    source = place(base.create(moviefileinTOP, "source"), 0, 0)
    to_server = place(base.create(fitTOP, "to_server"), 200, 0)
    to_server.inputConnectors[0].connect(source)
    # the server's size, cropped to its aspect ratio like the server crops (Fit Outside, centred)
    set_pars(to_server, outputresolution="custom", resolutionw=w, resolutionh=h, fit="fitoutside")

    if "spout" in paths:
        spout_out = place(base.create(syphonspoutoutTOP, "spout_out"), 400, 300)
        spout_out.inputConnectors[0].connect(to_server)
        set_pars(spout_out, sendername=S.SPOUT_TO_SERVER)
        spout_in = place(base.create(syphonspoutinTOP, "spout_in"), 600, 300)
        set_pars(spout_in, sendername=S.SPOUT_FROM_SERVER)
        spout_result = place(base.create(nullTOP, "spout_result"), 800, 300)
        spout_result.inputConnectors[0].connect(spout_in)

    if "zmq" in paths:
        callbacks = place(base.create(textDAT, "zmq_top_callbacks"), 400, -150)
        text_from(callbacks, "zmq_top.py")
        zmq_top = place(base.create(scriptTOP, "zmq_top"), 400, 0)
        zmq_top.inputConnectors[0].connect(to_server)
        set_pars(zmq_top, callbacks=callbacks.path)
        try:
            zmq_top.par.setuppars.pulse()  # runs onSetupParameters: the "Server" page
        except Exception as exc:
            print("build_network: press 'Setup Parameters' on %s by hand (%s)" % (zmq_top.path, exc))
        set_pars(zmq_top, Address=S.SERVER_HOST, Inport=S.ZMQ_IN_PORT, Outport=S.ZMQ_OUT_PORT, Active=True)
        zmq_result = place(base.create(nullTOP, "zmq_result"), 600, 0)
        zmq_result.inputConnectors[0].connect(zmq_top)
        ticker = place(base.create(executeDAT, "cook_every_frame"), 600, -150)
        ticker.text = (
            "def onFrameStart(frame):\n"
            "    op('zmq_top').cook(force=True)\n"
            "    return\n"
        )
        set_pars(ticker, active=True, framestart=True)

    if "ndi" in paths:
        ndi_out = place(base.create(ndioutTOP, "ndi_out"), 400, -300)
        ndi_out.inputConnectors[0].connect(to_server)
        # Skip Frames: a slow NDI sender never stalls TouchDesigner's main thread
        set_pars(ndi_out, active=True, name=S.NDI_TO_SERVER, lowperformancebehavior="skipframes")
        ndi_in = place(base.create(ndiinTOP, "ndi_in"), 600, -300)
        set_pars(ndi_in, active=True, extraips=S.NDI_EXTRA_IPS)
        source_name = ndi_source(ndi_in)
        if source_name:
            set_pars(ndi_in, name=source_name)
        else:
            print("build_network: start the server with --ndi-out %s, then pick '<its machine> (%s)' in "
                  "%s's Source Name menu (or set NDI_SERVER_MACHINE)"
                  % (S.NDI_FROM_SERVER, S.NDI_FROM_SERVER, ndi_in.path))
        ndi_result = place(base.create(nullTOP, "ndi_result"), 800, -300)
        ndi_result.inputConnectors[0].connect(ndi_in)

    # -- OSC: the prompt and parameters out, /status/* and /error back ---------------------------
    oscout = place(base.create(oscoutDAT, "oscout1"), 0, -450)
    set_pars(oscout, protocol="msging", address=S.SERVER_HOST, port=S.OSC_PORT)
    helpers = place(base.create(textDAT, "osc_out"), 200, -450)
    text_from(helpers, "osc_out.py")

    controls = place(base.create(constantCHOP, "controls"), 0, -600)
    constant_channels(controls, [("/strength", S.STRENGTH), ("/seed", S.SEED)])
    oscout_chop = place(base.create(oscoutCHOP, "oscout_chop"), 200, -600)
    oscout_chop.inputConnectors[0].connect(controls)
    # Cook Every Frame: nothing downstream pulls this CHOP, and it must send when a value changes
    set_pars(oscout_chop, protocol="msging", netaddress=S.SERVER_HOST, port=S.OSC_PORT, cookalways=True)

    status = place(base.create(tableDAT, "status"), 600, -450)
    status.clear()
    place(base.create(textDAT, "errors"), 800, -450)
    in_callbacks = place(base.create(textDAT, "oscin1_callbacks"), 400, -600)
    text_from(in_callbacks, "osc_in_callbacks.py")
    oscin = place(base.create(oscinDAT, "oscin1"), 400, -450)
    # Split Bundle into Messages: the server sends /status/* as one bundle; split, each message
    # gets its own row and its own onReceiveOSC call
    set_pars(oscin, protocol="msging", port=S.FEEDBACK_PORT, splitbundle=True, callbacks=in_callbacks.path)

    print("build_network: created %s (%s); server frame size %dx%d" % (base.path, ", ".join(paths), w, h))
    return base


# -- run: works as a DAT script (args, me) and from the Textport (KIT_DIR) ----------------------
try:  # A: DAT.run() makes its arguments a local tuple named args
    _ARGS = tuple(args)
except NameError:
    _ARGS = ()
try:  # B: KIT_DIR set in the Textport before exec()
    _KIT = KIT_DIR
except NameError:
    _KIT = ""
if _ARGS and _ARGS[0]:
    _KIT = str(_ARGS[0])
if not _KIT:
    try:  # Run Script on a Text DAT whose File parameter points at this file
        _KIT = me.par.file.eval() and __import__("os").path.dirname(me.par.file.eval())
    except Exception:
        _KIT = ""
if not _KIT:
    print("build_network: kit folder unknown, no .py files loaded (pass it to run(); see the top of this file)")
_PATHS = _ARGS[1] if len(_ARGS) > 1 else None
if isinstance(_PATHS, str):
    _PATHS = [p.strip() for p in _PATHS.split(",") if p.strip()]
build_network(Settings, _KIT, _PATHS)
