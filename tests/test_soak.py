"""The soak tool for one minute on the tiny model (CI): nothing lost, every thread alive, a clean stop.

`tools/soak.py` starts `python -m node_server serve` and, for a minute, sends 30 frames a second
over ZeroMQ, a prompt change every 100 ms over OSC and malformed ZeroMQ, OSC and HTTP traffic.
The 30-minute runs and their figures are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Issue 16's defects 1 and 5 (python-osc's bundle parser looping on a negative element size; a
# warning per unknown type tag) are fixed in the OSC parser on its own branch; until that merge
# these inputs still stop OSC control on this branch. Empty this list once the OSC fix is in.


def test_one_minute_soak_on_the_tiny_model(tmp_path):
    summary_path = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    cmd = [sys.executable, "-m", "tools.soak", "--model", "synthetic:tiny", "--minutes", "1", "--size", "64",
           "--frame-size", "128", "--device", "cpu", "--json", str(summary_path), "--log", str(tmp_path / "serve.log")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    assert s["ok"] and s["problems"] == []
    assert s["frames_lost"] == 0 and s["frames_received"] > 100 and s["duplicates"] == 0
    assert s["frames_sent"] == s["frames_received"] + s["frames_dropped_by_policy"]
    assert (s["threads_down"], s["restarts"], s["state"]) == (0, 0, "running")
    assert s["ping"] and s["oscquery_answers"]
    assert s["exit_code"] == 0 and s["stop_s"] < 2.0
    assert s["prompt_changes"] > 400 and s["faults_sent"] > 500
    kinds = {k.split(":")[0] for k in s["fault_kinds"]}
    assert kinds == {"osc", "zmq", "http"}
    assert s["server_errors"] > 0  # the malformed inputs were seen and counted
