"""bench/ndi_hop.py's own arithmetic (the GPU run itself is the lead's: see docs/NDI.md)."""

from __future__ import annotations

import threading

import numpy as np

from bench.ndi_hop import frames_1080p, pace, summary


def test_summary_percentiles_and_rate():
    s = summary([10.0, 20.0, 30.0, 40.0], received=4, sent=6, window_s=2.0)
    assert s["fps"] == 2.0 and s["sent"] == 6 and s["received"] == 4
    assert s["latency_ms"] == {"p50": 25.0, "p90": 37.0, "p99": 39.7, "mean": 25.0}
    assert summary([], 0, 3, 1.0)["latency_ms"]["p50"] is None


def test_pace_keeps_the_rate_and_frames_are_not_flat():
    calls = []
    n = pace(50.0, 0.2, calls.append, threading.Event())
    assert 9 <= n <= 11 and calls == list(range(n))
    frames = frames_1080p(count=2)
    assert frames[0].shape == (1080, 1920, 3) and frames[0].dtype == np.uint8
    assert frames[0].std() > 20 and not np.array_equal(frames[0], frames[1])
