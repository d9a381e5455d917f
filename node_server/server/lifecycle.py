"""Start-up, signals and shutdown of `node-server serve`, owned in one place.

As in uvicorn's server, the signal handler never raises into whatever the main thread is doing
(a `KeyboardInterrupt` in the middle of a close leaves threads running); it records the request
and the main thread, which only polls, runs the stop. What a stop signal (SIGINT, SIGTERM,
SIGHUP unless it is ignored as under `nohup`, SIGBREAK on Windows) does depends on the phase:

- starting (imports, config, binding sockets; the main thread is busy): nothing runs yet that
  needs an orderly stop, so the process leaves at once (a fast exit, below).
- serving (the model loads and warms up on the `model-load` thread, then frames flow): an
  orderly stop: every thread ends and every socket closes, within `STOP_WITHIN` seconds of the
  signal. A model load still running is not waited for, nor a thread still inside native code
  at the deadline (an engine step on a slow device: C++ cannot be interrupted): the process
  takes the fast exit instead of letting the interpreter tear down under them, which aborts
  (`terminate called without an active exception`, status 134).
- stopping: a second signal takes the fast exit at once.

The fast exit flushes stdout and stderr and calls `os._exit(0)`; the kernel closes whatever
socket is still open, so the ports are free either way. An orderly stop ends the same way after
running the `atexit` handlers: the interpreter's own teardown of torch, transformers and
diffusers is seconds of garbage collection on a busy CPU, and a Ctrl-C must be done in 2 s.

All of that holds when the lifecycle owns the process (`owns_process=True`, the `node-server`
program). Run inside another program (tests, embedding) it never exits the process: a signal
always asks for the orderly stop and `run` returns.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, TextIO

STOP_WITHIN = 1.5  # seconds from the signal to the exit (the promise is 2 s)
POLL = 0.05

STARTING, SERVING, STOPPING = "starting", "serving", "stopping"


def stop_signals() -> list[int]:
    """The signals that stop the server on this platform."""
    names = ["SIGINT", "SIGTERM"]
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        names.append("SIGHUP")  # a closed terminal stops it; under nohup it stays ignored
    if hasattr(signal, "SIGBREAK"):
        names.append("SIGBREAK")  # Ctrl-Break on Windows
    return [getattr(signal, n) for n in names]


class Lifecycle:
    """Runs one server (`open`, `load` on a thread, wait, `close`) under the rules above.

    `make_app()` builds anything with `open()`, `load()` and `close()` (`ServerApp`). `exit_now`
    is the fast exit (`os._exit`; tests pass their own).
    """

    def __init__(
        self,
        *,
        owns_process: bool = False,
        stop_within: float = STOP_WITHIN,
        err: TextIO | None = None,
        exit_now: Callable[[int], Any] = os._exit,
        poll: float = POLL,
    ):
        self.owns_process = owns_process
        self.stop_within = stop_within
        self.err = err if err is not None else sys.stderr
        self.exit_now = exit_now
        self.poll = poll
        self.phase = STARTING
        self.signalled: int | None = None  # the first stop signal, once one came
        self.left_running: list[str] = []  # threads not waited for (not owning the process)
        self._signal_at: float | None = None
        self._failure: BaseException | None = None
        self._previous: dict[int, Any] = {}
        self._threads_before: set[threading.Thread] = set()  # not ours to wait for

    # -- the run ---------------------------------------------------------------------------
    def run(self, make_app: Callable[[], Any]) -> int:
        """Build and open the app, load it on a thread, serve until a signal or a failed load,
        then stop. Returns 0, or ends the process with 0 when it owns it; raises what failed
        to start or load (the CLI prints a `NodeServerError` as one line)."""
        self._threads_before = set(threading.enumerate())
        self.install()
        try:
            app = make_app()
            try:
                app.open()
            except OSError as exc:  # an address in use or not available: one line
                from ..errors import NodeServerError

                raise NodeServerError(str(exc)) from None
            self._serve(app)
        finally:
            if not self.owns_process:  # the process's own run keeps them to its very end
                self.restore()
        if self._failure is not None:
            raise self._failure
        if self.owns_process:
            self._end()
        return 0

    def _serve(self, app: Any) -> None:
        self.phase = SERVING
        loader = threading.Thread(target=self._load, args=(app,), name="model-load", daemon=True)
        if self._signal_at is None:  # not already asked to stop during start-up
            loader.start()
        while self._signal_at is None and self._failure is None:
            time.sleep(self.poll)
        self.phase = STOPPING
        start = self._signal_at if self._signal_at is not None else time.monotonic()
        deadline = start + self.stop_within
        self._say("node-server serve: stopping")
        closer = threading.Thread(target=self._close, args=(app,), name="serve-close", daemon=True)
        closer.start()
        closer.join(max(0.0, deadline - time.monotonic()))
        left = self._join_others(deadline, skip=loader)
        if self.signalled is not None:
            self._failure = None  # a load cut short by the stop request is no failure
        if not left:
            if self._failure is None:
                self._say("node-server serve: stopped")
            return
        names = ", ".join(sorted(t.name for t in left))
        if not self.owns_process:
            self.left_running = sorted(t.name for t in left)
            self._say(f"node-server serve: stopped (still running: {names})")
            return
        if self._failure is not None:  # native code still running: print here, leave at once
            self._print_failure()
            self._fast_exit(1, None)
        self._fast_exit(0, f"node-server serve: stopped (not waiting for: {names})")

    def _load(self, app: Any) -> None:
        try:
            app.load()
        except BaseException as exc:  # handed to the main thread
            if self._signal_at is None:
                self._failure = exc

    def _close(self, app: Any) -> None:
        try:
            app.close()
        except Exception:
            self._say("node-server serve: error while stopping:\n" + traceback.format_exc().rstrip())

    def _join_others(self, deadline: float, skip: threading.Thread) -> list[threading.Thread]:
        """Wait until `deadline` for the threads started since `run` began, but `skip` (a model
        load: native code that will not notice the stop for seconds); returns those still
        running, `skip` included.

        Only plain `threading.Thread`s count: the server's, the engine's and the loader are all
        plain threads, while the helpers libraries keep for the life of the process (pyzmq's
        garbage collector, tqdm's monitor) are subclasses that idle in Python and are safe to
        leave to the interpreter.
        """
        def started_here() -> list[threading.Thread]:
            me = threading.current_thread()
            return [t for t in threading.enumerate()
                    if type(t) is threading.Thread and t is not me and t not in self._threads_before]

        for t in started_here():
            if t is not skip:
                t.join(max(0.0, deadline - time.monotonic()))
        return [t for t in started_here() if t.is_alive()]

    # -- signals ---------------------------------------------------------------------------
    def install(self) -> None:
        """Take over the stop signals (call from the main thread)."""
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Runs on the main thread between two bytecodes: record, or leave at once; never raise."""
        first = self._signal_at is None
        if first:
            self.signalled = signum
            self._signal_at = time.monotonic()
        if not self.owns_process:
            return  # the orderly stop, however many signals come
        name = _signal_name(signum)
        if first and self.phase == STARTING:
            self._fast_exit(0, f"node-server serve: stopped ({name} during start-up)")
        elif not first:
            self._fast_exit(0, f"node-server serve: stopped ({name} again: not waiting)")

    # -- leaving ---------------------------------------------------------------------------
    def _end(self) -> None:
        """After an orderly stop: the `atexit` handlers, then leave without the teardown."""
        run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
        if run_exitfuncs is not None:
            try:
                run_exitfuncs()
            except Exception:  # pragma: no cover - a handler's failure must not block the exit
                pass
        self._fast_exit(0, None)

    def _fast_exit(self, code: int, line: str | None) -> None:
        if line:
            self._say(line)
        for stream in (sys.stdout, sys.stderr, self.err):
            try:
                stream.flush()
            except Exception:  # a closed or reentered stream must not stop the exit
                pass
        self.exit_now(code)

    def _print_failure(self) -> None:
        from ..errors import NodeServerError

        exc = self._failure
        if isinstance(exc, NodeServerError):
            self._say(f"node-server serve: error: {exc}")
        elif exc is not None:
            self._say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())

    def _say(self, text: str) -> None:
        try:
            self.err.write(text + "\n")
            self.err.flush()
        except Exception:  # stderr gone (a closed terminal): the stop goes on
            pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
