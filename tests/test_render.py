"""`node-server render`: end to end through the CLI with the tiny synthetic model, plus the
batching/ordering logic against a stand-in engine."""

from __future__ import annotations

import argparse
import re
import types
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

from bridges.file import make_test_clip, open_source
from node_server.commands import render

TINY = ["--model", "synthetic:tiny", "--device", "cpu", "--quiet"]


def cli(capsys, *argv):
    from node_server.cli import main

    rc = main(["render", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def clip(tmp_path):
    return make_test_clip(tmp_path / "clip.mp4", frames=6, size=(96, 64), fps=24)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    Image.new("L", (64, 64), 90).save(d / "shot1.png")
    Image.new("RGBA", (80, 48), (200, 30, 30, 120)).save(d / "shot2.png")
    Image.new("RGB", (37, 23), (20, 160, 40)).save(d / "shot10.jpg")
    (d / "notes.txt").write_text("ignored")
    return d


# ---------------------------------------------------------------- end to end (real engine)


def test_video_in_video_out_same_count_size_and_fps(capsys, tmp_path, clip):
    out = tmp_path / "out.mp4"
    rc, stdout, err = cli(capsys, clip, out, "--prompt", "neon ink", "--size", "64", "--batch-size", "4", *TINY)
    assert rc == 0, err
    src = open_source(out)
    assert len(src) == 6 and src.fps == pytest.approx(24.0)
    assert all(f.shape == (64, 64, 3) for _, f in src)
    m = re.search(r"rendered (\d+) frames .* \(([\d.]+) fps\), p50 latency ([\d.]+) ms/frame -> (.+)$", stdout.strip())
    assert m, stdout
    assert int(m.group(1)) == 6 and float(m.group(2)) > 0 and float(m.group(3)) > 0
    assert m.group(4) == str(out)


def test_folder_with_grey_rgba_and_odd_sizes_keeps_names(capsys, tmp_path, folder):
    out = tmp_path / "styled"
    rc, _, err = cli(capsys, folder, out, "--prompt", "watercolour", "--size", "64x32", "--batch-size", "2", *TINY)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["shot1.png", "shot10.png", "shot2.png"]
    for p in out.iterdir():
        img = Image.open(p)
        assert img.size == (64, 32) and img.mode == "RGB"


def test_single_image_to_image(capsys, tmp_path, folder):
    out = tmp_path / "one.jpg"
    rc, _, err = cli(capsys, folder / "shot10.jpg", out, "--prompt", "x", "--size", "32", *TINY)
    assert rc == 0, err
    assert Image.open(out).size == (32, 32)


def test_progress_goes_to_stderr_unless_quiet(capsys, tmp_path, clip):
    rc, stdout, err = cli(capsys, clip, tmp_path / "o", "--prompt", "x", "--size", "32", "--model", "synthetic:tiny", "--device", "cpu")
    assert rc == 0, err
    assert "render" in err and "6/6" in err
    assert len(list((tmp_path / "o").iterdir())) == 6
    assert "rendered 6 frames" in stdout


# ---------------------------------------------------------------- user errors


def test_missing_input(capsys, tmp_path):
    rc, _, err = cli(capsys, tmp_path / "absent.mp4", tmp_path / "o.mp4", "--prompt", "x", *TINY)
    assert rc == 1 and "absent.mp4" in err and "no such file" in err


def test_unsupported_input_extension(capsys, tmp_path):
    bad = tmp_path / "clip.gif"
    bad.write_bytes(b"GIF89a")
    rc, _, err = cli(capsys, bad, tmp_path / "o.mp4", "--prompt", "x", *TINY)
    assert rc == 1 and "unsupported extension" in err and ".mp4" in err


def test_bad_steps_names_steps(capsys, tmp_path, clip):
    rc, _, err = cli(capsys, clip, tmp_path / "o.mp4", "--prompt", "x", "--steps", "99", *TINY)
    assert rc == 1 and "steps" in err and "99" in err
    assert not (tmp_path / "o.mp4").exists()


def test_bad_size_is_explained(capsys, tmp_path, clip):
    rc, _, err = cli(capsys, clip, tmp_path / "o.mp4", "--prompt", "x", "--size", "100x64", *TINY)
    assert rc == 1 and "size" in err and "multiple of 32" in err


def test_image_output_needs_a_single_frame_input(capsys, tmp_path, clip):
    rc, _, err = cli(capsys, clip, tmp_path / "o.png", "--prompt", "x", *TINY)
    assert rc == 1 and "one frame" in err and "6" in err


# ---------------------------------------------------------------- batching logic (stand-in engine)

FakeOut = namedtuple("FakeOut", "id image prompt")


class FakeEngine:
    """Stand-in with the contract's surface; `shuffle` returns a batch in the wrong order."""

    instances: list = []
    shuffle = False

    def __init__(self, bundle, params=None, *, size=512, device=None, dtype=None, encoder_image_size=512):
        self.params, self.size, self.calls, self.closed = params, size, [], False
        self.encoder_image_size = encoder_image_size
        FakeEngine.instances.append(self)

    def warmup(self, progress=True):
        pass

    def step(self, frames, ids):
        assert 1 <= len(frames) == len(ids) <= self.params.batch_size
        self.calls.append(list(ids))
        h, w = self.size
        outs = [FakeOut(i, np.full((h, w, 3), i, np.uint8), self.params.prompt) for i in ids]
        return outs[::-1] if self.shuffle else outs

    def close(self):
        self.closed = True


@pytest.fixture
def fake_engine(monkeypatch):
    import sys

    import node_server.models as models

    FakeEngine.instances = []
    monkeypatch.setattr(FakeEngine, "shuffle", False)
    monkeypatch.setitem(sys.modules, "node_server.engine.engine", types.SimpleNamespace(StreamEngine=FakeEngine))
    monkeypatch.setattr(models, "load_model", lambda spec, **kw: ("bundle", spec), raising=False)
    monkeypatch.setattr(models, "DEFAULT_MODEL", "synthetic:tiny", raising=False)
    return FakeEngine


def run_render(*argv):
    parser = argparse.ArgumentParser()
    render.add_arguments(parser)
    return render.run(parser.parse_args([str(a) for a in argv]))


def test_batches_in_order_with_partial_last_batch(tmp_path, capsys, fake_engine):
    src = make_test_clip(tmp_path / "c.mkv", frames=7, size=(40, 30), fps=12)
    out = tmp_path / "o"
    assert run_render(src, out, "--prompt", "p", "--batch-size", "3", "--size", "96x64", "--quiet") == 0
    eng = fake_engine.instances[0]
    assert eng.calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert eng.size == (64, 96) and eng.closed
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"frame_{i:06d}.png" for i in range(1, 8)]
    # Each output holds its own id, so order on disk matches order in.
    assert [int(np.asarray(Image.open(p))[0, 0, 0]) for p in written] == list(range(7))
    assert "rendered 7 frames" in capsys.readouterr().out


def test_out_of_order_outputs_are_a_bug_not_silently_written(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(FakeEngine, "shuffle", True)
    src = make_test_clip(tmp_path / "c.mp4", frames=4, size=(32, 32))
    with pytest.raises(RuntimeError, match="frame 1 but frame 0"):
        run_render(src, tmp_path / "o", "--prompt", "p", "--batch-size", "2", "--size", "32", "--quiet")
    assert fake_engine.instances[0].closed


def test_parse_size():
    assert render.parse_size("512") == (512, 512)
    assert render.parse_size("768x512") == (512, 768)
    for bad in ("0", "500", "64x", "big"):
        with pytest.raises(ValueError, match="size"):
            render.parse_size(bad)
