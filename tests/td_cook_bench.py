"""Cook time of a zmq_top.py's onCook in the TouchDesigner stand-in, 1920x1080 source, the server
in its own process (the test measures the same; this compares kit versions).

    PYTHONPATH=$PWD python tests/td_cook_bench.py [KIT_FILE ...]

KIT_FILE defaults to examples_td/zmq_top.py; e.g. compare with an older version:
    git show <commit>:examples_td/zmq_top.py > /tmp/zmq_old.py
    PYTHONPATH=$PWD python tests/td_cook_bench.py /tmp/zmq_old.py examples_td/zmq_top.py
Each file runs twice: fed the 1080p source directly, and through the built network's Fit TOP.
Prints wall and main-thread CPU time per onCook (median, p90).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import test_td_kit as T  # noqa: E402
from td_fakes import TouchDesigner  # noqa: E402


def measure(kit_file: Path, direct: bool, frames: int = 200) -> str:
    script = T.SERVER_PROCESS.format(tests=str(HERE), root=str(T.ROOT), size=T.SIZE)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    td = TouchDesigner()
    try:
        ports = json.loads(proc.stdout.readline())
        T.build(td, "zmq")
        callbacks = T.node(td, "zmq_top_callbacks")
        callbacks.text = kit_file.read_text()
        z = T.node(td, "zmq_top")
        z.par.setuppars.pulse()
        if direct:
            z.inputConnectors[0].connect(T.node(td, "source"))
        z.par.Inport, z.par.Outport = ports
        z.par.Address, z.par.Active = "127.0.0.1", True  # (a kit that sets only .default leaves them empty)
        module = callbacks.module
        cook = module.onCook
        wall, cpu = [], []

        def on_cook(scriptOp):
            c0, t0 = time.thread_time(), time.perf_counter()
            cook(scriptOp)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)

        module.onCook = on_cook
        pictures = [T.td_fakes._to_rgba(T.picture(1080, 1920, seed=s)) for s in range(4)]
        for i in range(frames):
            T.node(td, "source").fake_show(pictures[i % len(pictures)])
            td.run_frame()
            time.sleep(1 / 60)
        received = module._links[z.path].received
        (getattr(module, "close_links", None) or module.onDestroy)()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        td.close()
    w = sorted(1000 * t for t in wall[20:])
    c = sorted(1000 * t for t in cpu[20:])
    feed = "1920x1080 direct" if direct else f"{T.SIZE}x{T.SIZE} via the Fit TOP"
    return (f"{kit_file}: input {feed}: wall median {statistics.median(w):.2f} ms, p90 {w[int(0.9 * len(w))]:.2f} ms; "
            f"main-thread CPU median {statistics.median(c):.2f} ms, p90 {c[int(0.9 * len(c))]:.2f} ms; "
            f"{received} outputs")


if __name__ == "__main__":
    files = [Path(a) for a in sys.argv[1:]] or [HERE.parent / "examples_td" / "zmq_top.py"]
    for f in files:
        for direct in (True, False):
            print(measure(f, direct), flush=True)
