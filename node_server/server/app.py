"""The running server: engine + ZeroMQ bridge + OSC control, and the `ControlTarget` they talk to.

Start-up is split so that everything a user needs to see (addresses, model, device) is bound and
printed before anything slow: `open()` binds sockets and prints, `load()` builds the engine and
warms it up (slow), then frames flow. `close()` ends every thread and socket within about a second.
Signals and the order of these calls belong to `lifecycle.py`; the I/O threads run under
`supervisor.py`, which restarts one that ends unexpectedly.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any, Callable, TextIO

from bridges.zmq_protocol import FrameHeader
from bridges.zmq_server import ZmqFrameServer

from ..control.target import Status
from ..engine.params import Params
from ..progress import step as announce
from .config import ServeConfig
from .error_limit import INPUT, SERVER, ErrorRateLimit
from .frame_loop import FrameLoop
from .latest import LatestBuffer, Pending
from .stats import Stats
from .supervisor import Supervisor

EngineFactory = Callable[["ServerApp", Params], Any]
ERRORS_PER_SECOND = 20  # /error messages forwarded per second and source (all errors are still counted)


def default_engine_factory(app: "ServerApp", params: Params) -> Any:
    """Load the configured model and wrap it in its family's engine (the slow part of start-up)."""
    from ..engine.factory import build_engine
    from ..models import load_model

    from .lllite_settings import engine_options

    bundle = load_model(app.model, device=app.device, progress=app.progress)
    placement = {"encoder_device": app.config.encoder_device} if app.config.encoder_device else {}
    return build_engine(bundle, params, size=app.config.size, device=app.device,
                        encoder_image_size=app.config.encoder_size, **placement,
                        **engine_options(dataclasses.asdict(app.config)))


class ServerApp:
    """Owns the threads of one server; implements `node_server.control.target.ControlTarget`."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        engine_factory: EngineFactory | None = None,
        out: TextIO | None = None,
        progress: bool = True,
        osc: bool = True,
    ):
        from ..models import DEFAULT_MODEL

        self.config = config
        self.model = config.model or DEFAULT_MODEL
        self.device = config.device
        self.progress = progress
        self.out = out if out is not None else sys.stdout
        self._engine_factory = engine_factory or default_engine_factory
        self._want_osc = osc
        self.stats = Stats()
        self.supervisor = Supervisor(self.report_server_error)  # the I/O threads and the frame loop
        self._lock = threading.RLock()  # guards _params/_engine/_paused against the OSC threads
        self._params = Params()
        if config.batch_size is not None:
            self._params = self._params.replace(batch_size=config.batch_size)
        from .lllite_settings import param_changes

        self._params = self._params.replace(**param_changes(dataclasses.asdict(config)))
        if config.temporal_blend is not None:
            self._params = self._params.replace(temporal_blend=config.temporal_blend)
        if config.prompt is not None:  # --prompt / `prompt` in the config file: the start's prompt
            self._params = self._params.replace(prompt=config.prompt)
        self._engine: Any = None
        self._paused = False
        self._closed = False
        self.buffer = LatestBuffer(self._params.batch_size)
        self.zmq: ZmqFrameServer | None = None  # None with --no-zmq
        if not config.no_zmq:
            self.zmq = ZmqFrameServer(config.zmq_in, config.zmq_out, self._on_frame, self.report_error,
                                      on_failure=self.report_server_error)
        self.spout_in: Any = None  # bridges.spout.SpoutReceiver with --spout-in
        self.spout_out: Any = None  # bridges.spout.SpoutSender with --spout-out
        self.ndi_in: Any = None  # bridges.ndi.NdiReceiver with --ndi-in
        self.ndi_out: Any = None  # bridges.ndi.NdiSender with --ndi-out
        self._sinks: list[Callable[[dict[str, Any], Any], None]] = []  # every enabled frame output
        self.loop: FrameLoop | None = None
        self.control: Any = None  # OscControl when OSC is on
        self.feedback: Any = None
        self.oscquery: Any = None
        self.console: Any = None  # node_server.console.Console (on the OSCQuery port)
        self.presets: Any = None
        self.last_preset = ""  # the last preset recalled (OSCQuery's /preset VALUE)
        self._error_limit = ErrorRateLimit(ERRORS_PER_SECOND)
        self._error_hooks: list[Callable[[str], None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Bind every socket and print what listens where; fast (no model load)."""
        from ..models.loader import resolve_device

        self.device = resolve_device(self.config.device)
        if self.config.preset:  # a typo (or a preset for another model) fails now, not after the load
            self._preset_store().recall(self.config.preset, self.preset_model())
        self._make_spout()  # SpoutGL missing fails here, before anything is bound
        self._make_ndi()  # so does the NDI binding
        if self.zmq is not None:
            self.zmq.bind()
            self._sinks.append(self.zmq.publish)
        try:
            self._open_control()
        except BaseException:
            if self.zmq is not None:
                self.zmq.close()
            raise
        spawn = self.supervisor.spawn
        if self.zmq is not None:
            self.zmq.start(spawn=spawn)
        if self.spout_out is not None:
            self.spout_out.start(spawn=spawn)
            self._sinks.append(self.spout_out.publish)
        if self.spout_in is not None:
            self.spout_in.start(spawn=spawn)
        for bridge in (self.ndi_out, self.ndi_in):
            if bridge is not None:
                bridge.start(spawn=spawn)
        if self.ndi_out is not None:
            self._sinks.append(self.ndi_out.publish)
        self._banner()

    def _make_spout(self) -> None:
        """Build the Spout receiver/sender asked for (threads start later); SpoutGL loads here."""
        cfg = self.config
        if cfg.spout_in is None and cfg.spout_out is None:
            return
        from bridges.spout import SpoutReceiver, SpoutSender, SpoutUnavailable

        from ..errors import NodeServerError

        def event(text: str) -> None:
            self._say(f"node-server serve: {text}")

        try:
            if cfg.spout_in is not None:
                self.spout_in = SpoutReceiver(cfg.spout_in, self.submit_frame, on_error=self.report_error,
                                              on_event=event)
            if cfg.spout_out is not None:
                self.spout_out = SpoutSender(cfg.spout_out, on_error=self.report_server_error, on_event=event)
        except SpoutUnavailable as exc:
            raise NodeServerError(f"--spout-in/--spout-out: {exc}") from None

    def _make_ndi(self) -> None:
        """Build the NDI receiver/sender asked for (threads start later); the NDI binding loads here."""
        cfg = self.config
        if cfg.ndi_in is None and cfg.ndi_out is None:
            return
        from bridges.ndi import NdiReceiver, NdiSender, NdiUnavailable

        from ..errors import NodeServerError

        def event(text: str) -> None:
            self._say(f"node-server serve: {text}")

        try:
            if cfg.ndi_in is not None:
                self.ndi_in = NdiReceiver(cfg.ndi_in, self.submit_frame, on_error=self.report_error, on_event=event,
                                          extra_ips=cfg.ndi_extra_ips, groups=cfg.ndi_groups)
            if cfg.ndi_out is not None:
                self.ndi_out = NdiSender(cfg.ndi_out, on_error=self.report_server_error, on_event=event,
                                         groups=cfg.ndi_groups, pixel_format=cfg.ndi_out_format)
        except NdiUnavailable as exc:
            raise NodeServerError(f"--ndi-in/--ndi-out: {exc}") from None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _banner(self) -> None:
        p = self._params
        from ..frame_size import size_text

        self._say(f"node-server serve: model {self.model} on {self.device}, size {size_text(self.config.size)}, "
                  f"batch {p.batch_size}")
        if self.zmq is not None:
            self._say(f"  frames in   {self.zmq.in_endpoint}  (ZeroMQ PULL)")
            self._say(f"  frames out  {self.zmq.out_endpoint}  (ZeroMQ PUB)")
        if self.spout_in is not None:
            self._say(f"  frames in   {self.spout_in.label}  (Spout receiver; waits for the sender)")
        if self.spout_out is not None:
            self._say(f"  frames out  {self.spout_out.label}  (Spout sender)")
        if self.ndi_in is not None:
            ips = f"; also asks {self.config.ndi_extra_ips}" if self.config.ndi_extra_ips else ""
            self._say(f"  frames in   {self.ndi_in.label}  (NDI receiver; waits for the source{ips})")
        if self.ndi_out is not None:
            self._say(f"  frames out  {self.ndi_out.label}  (NDI source, {self.config.ndi_out_format.upper()})")
        for line in self._control_lines():
            self._say("  " + line)

    def load(self) -> None:
        """Build the engine, apply any preset, warm up and start the frame loop (slow)."""
        self.stats.set_state("loading")
        announce(f"loading model {self.model} on {self.device}...", enabled=self.progress)
        with self._lock:
            params = self._params
        engine = self._engine_factory(self, params)
        with self._lock:
            if self._closed:
                engine.close()
                return
            # OSC may have changed parameters while the model loaded: apply them now.
            if self._params != params:
                self._params = engine.set_params(**self._params.to_dict())
            else:  # the engine may have filled in the model's own defaults
                self._params = getattr(engine, "params", self._params)
            self._engine = engine
        self._apply_start()
        self.stats.set_state("warming")
        engine.warmup(progress=self.progress)
        self.stats.set_prompt(engine.active_prompt or "")
        with self._lock:
            if self._closed:
                return
            self.loop = FrameLoop(
                engine,
                self.buffer,
                self._publish,
                self.stats,
                batch_size=lambda: engine.params.batch_size,
                paused=lambda: self._paused,
                on_error=self.report_server_error,
            )
            self.stats.set_state("paused" if self._paused else "running")
            self.loop.start(spawn=self.supervisor.spawn)
        idle = self._params.active_blend()[0] == ("",)
        note = "; no prompt yet: frames pass through unchanged until /prompt or /preset" if idle else ""
        self._say(f"node-server serve: {'paused' if self._paused else 'running'}{note}")
        self._notify()

    def close(self, timeout: float = 1.0) -> None:
        """Stop threads, close sockets (linger 0) and the engine; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.supervisor.stop()  # threads that end from here on were asked to
        self.buffer.close()
        if self.zmq is not None:
            self.zmq.stop_receiving(timeout=0.5)
        if self.spout_in is not None:
            self.spout_in.close(timeout=0.5)
        if self.ndi_in is not None:
            self.ndi_in.close(timeout=0.5)
        loop_done = True
        if self.loop is not None:
            self.loop.stop()
            loop_done = self.loop.join(timeout)
        self._close_control()
        # A step still running on a slow device keeps the PUB socket; process exit reclaims it.
        if self.zmq is not None:
            self.zmq.close(close_pub=loop_done)
        if self.spout_out is not None:
            self.spout_out.close(timeout=0.5)
        if self.ndi_out is not None:
            self.ndi_out.close(timeout=0.5)
        if self._engine is not None and loop_done:
            self._engine.close()

    def _apply_start(self) -> None:
        """The start's preset (`--preset`), then its prompt (`--prompt`, which wins over the
        preset's); with neither, frames pass through unchanged until a prompt arrives."""
        from ..engine.params import ParamNotice

        changes: dict[str, Any] = {}
        if self.config.preset:
            changes.update(self._preset_values(self.config.preset))
        if self.config.prompt is not None:
            changes["prompt"] = self.config.prompt
        if not changes:
            return
        try:
            self.set_params(**changes)
        except ParamNotice as notice:  # e.g. a preset's strength above the model's cap
            self._say(f"node-server serve: {notice.name} {notice.reason}")
        if self.config.preset:
            self.last_preset = self.config.preset

    # -- frames in -------------------------------------------------------------------------
    def _on_frame(self, header: FrameHeader, pixels: Any, recv: float, recv_wall: float) -> None:
        self.submit_frame(header.id, pixels, recv, recv_wall, header.t)

    def submit_frame(self, frame_id: int, pixels: Any, recv: float, recv_wall: float, t: float | None = None) -> None:
        """Every frame source (ZeroMQ, Spout, NDI) lands here: one buffer, one set of counters."""
        if self._paused:
            self.stats.add_dropped(1)
            return
        console = self.console
        if console is not None:  # one attribute read per frame unless a page watches
            console.offer_input(pixels)
        dropped = self.buffer.put(Pending(frame_id, pixels, recv, recv_wall, t))
        self.stats.add_dropped(dropped)

    def _publish(self, fields: dict[str, Any], image: Any) -> None:
        """Send one output to every enabled output; one failing output does not starve the others."""
        console = self.console
        if console is not None:
            console.offer_output(image)
        for sink in self._sinks:
            try:
                sink(fields, image)
            except Exception as exc:
                self.report_server_error(f"publish failed: {exc}")

    def report_error(self, reason: str, source: str = INPUT) -> None:
        """Count an error and forward it as `/error`, at most ERRORS_PER_SECOND a second per source:
        a malformed input (the default) or the server's own failure (`report_server_error`)."""
        self.stats.add_error()
        if not self._error_limit.allow(source):
            return
        for hook in list(self._error_hooks):
            try:
                hook(reason)
            except Exception:
                pass

    def report_server_error(self, reason: str) -> None:
        """A failure of the server itself (engine step, conditioning encode, an output): forwarded
        even while a client floods it with bad inputs."""
        self.report_error(reason, SERVER)

    def add_error_hook(self, hook: Callable[[str], None]) -> None:
        """Also call `hook(reason)` for every forwarded error (tests, embedding programs)."""
        self._error_hooks.append(hook)

    # -- ControlTarget ---------------------------------------------------------------------
    def current_params(self) -> dict[str, Any]:
        with self._lock:
            return self._params.to_dict()

    def set_params(self, **changes: Any) -> None:
        """Apply `changes` atomically. A control the running model's family does not use raises
        `ParamError` naming the family (nothing applied); a strength above the model's cap is
        applied at the cap, then `ParamNotice` says so (OSC answers both with `/error`)."""
        from ..control.inventory import family_mismatch
        from ..engine.params import ParamError, strength_notice

        with self._lock:
            engine = self._engine
            if engine is not None:
                family = getattr(engine, "family", "dreamlite")
                for key in changes:
                    reason = family_mismatch(key, family)
                    if reason is not None:
                        raise ParamError(key, reason)
                self._params = engine.set_params(**changes)
            else:
                self._params = self._params.replace(**changes)
            applied = self._params
            dropped = self.buffer.set_capacity(self._params.batch_size)
        self.stats.add_dropped(dropped)
        self._notify()
        notice = strength_notice(changes, applied)
        if notice is not None:
            raise notice

    def model_info(self) -> dict[str, Any] | None:
        """The running model: None before it is loaded, else `family` ("dreamlite" | "sd"),
        `max_strength` (1.0 when uncapped), `width`, `height` and `model` (the spec)."""
        engine = self._engine
        if engine is None:
            return None
        info = getattr(engine, "model_info", None)
        out = dict(info()) if info is not None else {"family": getattr(engine, "family", "dreamlite"),
                                                    "max_strength": 1.0}
        out["model"] = self.model
        return out

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = bool(paused)
            if self._paused:
                self.stats.add_dropped(self.buffer.clear())
            if self.loop is not None:
                self.stats.set_state("paused" if self._paused else "running")
        self._notify()

    def recall_preset(self, name: str) -> None:
        from ..engine.params import ParamNotice

        try:
            self.set_params(**self._preset_values(name))
        except ParamNotice:  # applied (at the strength cap): still the preset recalled
            self.last_preset = name
            raise
        self.last_preset = name

    def preset_model(self) -> dict[str, Any]:
        """What presets are matched against (`control/presets.py`): the running model's
        `model_info()`, or its name alone while it loads."""
        return self.model_info() or {"model": self.model}

    def _preset_values(self, name: str) -> dict[str, Any]:
        """A preset's values (refused when it is made for other models), less those the running
        model's family has no use for (a preset for every model may set `refresh`, which means
        nothing to an SD-class model)."""
        from ..control.inventory import family_mismatch

        values = self._preset_store().recall(name, self.preset_model())
        engine = self._engine
        if engine is not None:
            family = getattr(engine, "family", "dreamlite")
            values = {k: v for k, v in values.items() if family_mismatch(k, family) is None}
        return values

    def save_preset(self, name: str) -> None:
        self._preset_store().save(name, self.current_params())

    def status(self) -> Status:
        s = self.stats.snapshot()
        engine = self._engine
        if engine is not None:
            s.prompt = engine.active_prompt or ""
        s.threads_down = len(self.supervisor.down())
        s.restarts = self.supervisor.restarts
        return s

    def threads(self) -> dict[str, str]:
        """The supervised threads by name: `running`, `restarting` or `ended`."""
        return self.supervisor.states()

    # -- OSC side ------------------------------------------------------------------------
    def _preset_store(self) -> Any:
        if self.presets is None:
            from ..control.presets import PresetStore

            self.presets = PresetStore(user_dir=self.config.presets_path())
        return self.presets

    def _notify(self) -> None:
        fb = self.feedback
        if fb is not None:
            fb.notify()

    def _on_osc_error(self, reason: str) -> None:
        """OscControl already answered the sender; count it for `/status/errors`, show it on the console."""
        self.stats.add_error()
        console = self.console
        if console is not None:
            console.on_error(reason)

    def _open_control(self) -> None:
        """OSC in, feedback out, OSCQuery: bound now so their addresses can be printed."""
        if not self._want_osc:
            return
        from ..control.feedback import Feedback
        from ..control.osc import OscControl
        from ..control.oscquery import OSCQueryServer

        cfg = self.config
        fb_addr = cfg.feedback_address()
        try:
            if fb_addr is not None:
                self.feedback = Feedback(self, *fb_addr, prefix=cfg.osc_prefix)
                self.add_error_hook(self.feedback.send_error)
            self.control = OscControl(
                self, host=cfg.osc_host, port=cfg.osc_port, prefix=cfg.osc_prefix,
                feedback=self.feedback, on_error=self._on_osc_error, allow=cfg.osc_allow,
            )
            if cfg.oscquery_port:
                self.oscquery = OSCQueryServer(
                    self, osc_port=self.control.port, host=cfg.osc_host, port=cfg.oscquery_port,
                    prefix=cfg.osc_prefix, presets=self._preset_store(),
                )
                self._open_console()
        except BaseException:
            self._close_control()
            raise
        self.control.start(spawn=self.supervisor.spawn)  # supervised like the bridges
        if self.oscquery is not None:
            self.oscquery.start()
        if self.feedback is not None:
            self.feedback.start()

    def _open_console(self) -> None:
        """The OSCQuery WebSocket (LISTEN) and the web console, on the OSCQuery port."""
        from ..console import Console
        from ..control.listen import ListenHub

        hub = ListenHub(self.oscquery)
        self.console = Console(self, self.oscquery, watcher=hub.watcher, token=self.config.console_token)
        self.add_error_hook(self.console.on_error)

    def _control_lines(self) -> list[str]:
        lines = []
        if self.control is not None:
            prefix = self.control.prefix or "(none)"
            only = f"; only from {self.config.osc_allow}" if self.config.osc_allow else ""
            lines.append(f"OSC in      udp://{self.control.host}:{self.control.port}  (prefix {prefix}; /ping answers /pong{only})")
        if self.feedback is not None:
            host, port = self.feedback.address
            lines.append(f"feedback    udp://{host}:{port}  (OSC /status/*, /error)")
        else:
            lines.append("feedback    off  (--feedback HOST:PORT for /status/*; /error goes to each OSC sender)")
        if self.oscquery is not None:
            lines.append(f"OSCQuery    {self.oscquery.url}  (HTTP and WebSocket)")
        if self.console is not None:
            access = ("changes need the token" if self.config.console_token else
                      "read-only: bound off loopback, see --console-token" if not self.console.writable_without_token
                      else "loopback: read and write")
            lines.append(f"console     {self.console.url}  ({access})")
        lines.append(f"presets     {self.config.presets_path()} (user) + built-in")
        return lines

    def _close_control(self) -> None:
        for part in (self.oscquery, self.console, self.control, self.feedback):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    pass
