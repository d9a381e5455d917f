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
    monkeypatch.setitem(sys.modules, "node_server.engine.dreamlite.engine", types.SimpleNamespace(StreamEngine=FakeEngine))
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


def test_render_starts_from_a_preset_a_prompt_or_both(tmp_path, fake_engine, monkeypatch):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from node_server.errors import NodeServerError, ParamError

    monkeypatch.setenv("NODE_SERVER_PRESETS", str(tmp_path / "user-presets"))
    sepia = tomllib.loads((render_root() / "presets" / "sepia.toml").read_text())
    src = make_test_clip(tmp_path / "c.mp4", frames=1, size=(32, 32))
    assert run_render(src, tmp_path / "a", "--preset", "sepia", "--size", "32", "--quiet") == 0
    params = fake_engine.instances[-1].params
    assert (params.prompt, params.strength, params.seed) == (sepia["prompt"], sepia["strength"], sepia["seed"])
    assert run_render(src, tmp_path / "b", "--preset", "sepia", "--prompt", "mine", "--strength", "0.07",
                      "--size", "32", "--quiet") == 0
    params = fake_engine.instances[-1].params
    assert (params.prompt, params.strength) == ("mine", 0.07)  # flags win over the preset
    with pytest.raises(ParamError, match="give --prompt TEXT or --preset NAME"):
        run_render(src, tmp_path / "c", "--size", "32", "--quiet")
    with pytest.raises(NodeServerError, match="no preset named 'nope'"):
        run_render(src, tmp_path / "d", "--preset", "nope", "--quiet")


def render_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_render_says_when_the_strength_runs_at_the_models_cap(capsys, tmp_path, tiny_model_dir):
    import json
    import shutil

    model = tmp_path / "capped"
    shutil.copytree(tiny_model_dir, model)
    (model / "node_server.json").write_text(json.dumps({"max_strength": 0.08, "size": 32}))
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(img)
    common = ["--model", str(model), "--device", "cpu", "--quiet"]
    rc, _, err = cli(capsys, img, tmp_path / "o.png", "--prompt", "x", "--strength", "0.5", *common)
    assert rc == 0, err
    said = [line for line in err.splitlines() if line.startswith("node-server render:")]
    assert said == ["node-server render: strength 0.5 is above this model's max_strength 0.08 "
                    "(the top of its training); running at 0.08"]
    rc, _, err = cli(capsys, img, tmp_path / "p.png", "--prompt", "x", "--strength", "0.05", *common)
    assert rc == 0 and "max_strength" not in err


def test_parse_size():
    assert render.parse_size("512") == (512, 512)
    assert render.parse_size("768x512") == (512, 768)
    for bad in ("0", "500", "64x", "big"):
        with pytest.raises(ValueError, match="size"):
            render.parse_size(bad)


# ---------------------------------------------------------------- the model folder's own frame size


@pytest.fixture
def sized_model(tiny_model_dir, tmp_path):
    """The tiny model folder with a node_server.json that names a 64-pixel frame (and a strength)."""
    import json
    import shutil

    d = tmp_path / "sized-model"
    shutil.copytree(tiny_model_dir, d)
    (d / "node_server.json").write_text(json.dumps({"defaults": {"strength": 0.8}, "size": 64}))
    return d


def test_model_frame_size_is_read_without_loading(sized_model, tiny_model_dir, tmp_path):
    import json

    from node_server.errors import ModelLoadError
    from node_server.models.loader import DEFAULT_FRAME_SIZE, model_frame_size

    assert DEFAULT_FRAME_SIZE == 512
    assert model_frame_size(str(sized_model)) == 64
    assert model_frame_size(str(tiny_model_dir)) is None  # no node_server.json
    assert model_frame_size("synthetic:tiny") is None
    assert model_frame_size("nobody/no-such-model") is None  # a hub id: not read ahead
    bad = tmp_path / "bad"
    bad.mkdir()
    for text in ({"size": 100}, {"size": "256"}, {"sizes": 256}, {"max_strength": 0}, {"max_strength": 1.5},
                 {"max_strength": "0.1"}, {"defaults": {"strength": 0.5}, "max_strength": 0.1}):
        (bad / "node_server.json").write_text(json.dumps(text))
        with pytest.raises(ModelLoadError, match="node_server.json"):
            model_frame_size(str(bad))


def test_render_uses_the_model_folders_size_unless_given(capsys, tmp_path, folder, sized_model):
    model = ["--model", str(sized_model), "--device", "cpu", "--quiet"]
    rc, _, err = cli(capsys, folder, tmp_path / "own", "--prompt", "x", "--batch-size", "2", *model)
    assert rc == 0, err
    assert {Image.open(p).size for p in (tmp_path / "own").iterdir()} == {(64, 64)}
    rc, _, err = cli(capsys, folder, tmp_path / "given", "--prompt", "x", "--size", "32", *model)
    assert rc == 0, err
    assert {Image.open(p).size for p in (tmp_path / "given").iterdir()} == {(32, 32)}


def test_render_engine_size_without_a_model_size_is_512(tmp_path, fake_engine):
    src = make_test_clip(tmp_path / "c.mp4", frames=2, size=(32, 32))
    assert run_render(src, tmp_path / "o", "--prompt", "p", "--quiet") == 0
    assert fake_engine.instances[0].size == (512, 512)


def test_serve_uses_the_model_folders_size_unless_a_flag_or_the_file_gives_one(sized_model, tmp_path):
    """The command's path: arguments -> config (`serve.config_from_args`) -> the default engine
    factory, which builds the engine at the config's size."""
    import io

    from node_server.commands import serve
    from node_server.server.app import ServerApp, default_engine_factory

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    base = ["--model", str(sized_model), "--device", "cpu", "--zmq-in", "tcp://127.0.0.1:0",
            "--zmq-out", "tcp://127.0.0.1:0", "--osc-port", "0", "--oscquery-port", "0",
            "--presets-dir", str(tmp_path / "presets")]

    def config(*extra):
        return serve.config_from_args(parser.parse_args(base + list(extra)))

    toml = tmp_path / "serve.toml"
    toml.write_text("size = 96\n")
    assert config().size == 64  # the model's own
    assert config("--size", "32").size == 32  # the flag wins
    assert config("--config", str(toml)).size == 96  # so does the file
    assert config("--config", str(toml), "--size", "32").size == 32
    tiny = parser.parse_args(base[2:] + ["--model", "synthetic:tiny"])
    assert serve.config_from_args(tiny).size == 512  # no size of its own: the global default

    for extra, size in (((), 64), (("--size", "32"), 32)):
        built = []

        def factory(app, params):
            built.append(default_engine_factory(app, params))
            return built[-1]

        out = io.StringIO()
        app = ServerApp(config(*extra), engine_factory=factory, out=out, progress=False)
        app.open()
        try:
            app.load()
        finally:
            app.close()
        assert f"size {size}x{size}," in out.getvalue()  # the banner (WxH)
        assert built[0].size == (size, size)
        assert built[0].params.strength == 0.8  # the folder's parameter defaults still apply


# ---------------------------------------------------------------- reading and writing on background threads


def _folder_with_a_corrupt_image(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2, 4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(d / f"f{i}.png")
    (d / "f3.png").write_bytes(b"not a png")
    return d


def test_with_strict_a_bad_frame_mid_folder_stops_the_render_after_the_frames_before_it(tmp_path, fake_engine):
    from node_server.errors import InputError

    d = _folder_with_a_corrupt_image(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(InputError, match="f3.png"):
        run_render(d, out, "--prompt", "p", "--size", "32", "--quiet", "--strict")
    assert sorted(p.name for p in out.iterdir()) == ["f1.png", "f2.png"]
    assert fake_engine.instances[0].closed


def test_an_unreadable_image_is_skipped_with_a_warning_and_a_count(tmp_path, fake_engine, capsys):
    d = _folder_with_a_corrupt_image(tmp_path)
    (d / "f5.png").write_bytes(Image.new("RGB", (32, 32)).tobytes()[:40])  # truncated junk
    out = tmp_path / "o"
    assert run_render(d, out, "--prompt", "p", "--size", "32", "--quiet") == 0
    captured = capsys.readouterr()
    # the outputs keep their own inputs' names (the fake engine paints each output with its id)
    assert {p.name: int(np.asarray(Image.open(p))[0, 0, 0]) for p in out.iterdir()} == {
        "f1.png": 0, "f2.png": 1, "f4.png": 3}
    warnings = captured.err.strip().splitlines()
    assert [w.split(":")[1].strip() for w in warnings[:2]] == ["skipping f3.png", "skipping f5.png"]
    assert "skipped 2 unreadable image(s) of 5" in warnings[2] and len(warnings) == 3
    assert "rendered 3 frames" in captured.out


def test_a_folder_of_only_unreadable_images_is_an_error(tmp_path, fake_engine):
    from node_server.errors import InputError

    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="none of its 1 images"):
        run_render(d, tmp_path / "o", "--prompt", "p", "--size", "32", "--quiet")


def _read_only_folder(tmp_path):
    """A folder this process cannot create files in: a chmod 555 folder for a normal user; as root
    (which ignores permission bits, as in CI containers) sysfs, which refuses new files."""
    import os
    import tempfile

    candidates = []
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        candidates.append(ro)
    candidates.append(__import__("pathlib").Path("/sys/kernel"))
    for folder in candidates:
        try:
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
        except OSError:
            return folder
    pytest.skip("no folder here refuses writes to this user")


def test_render_into_a_read_only_folder_fails_in_one_line_before_the_model_loads(tmp_path, clip):
    import subprocess
    import sys

    ro = _read_only_folder(tmp_path)
    for output in (ro / "out.mp4", ro / "out.png", ro / "frames", ro / "new" / "frames"):
        source = clip if output.suffix != ".png" else make_test_clip(tmp_path / "one.mp4", frames=1)
        proc = subprocess.run([sys.executable, "-m", "node_server", "render", str(source), str(output),
                               "--prompt", "x", "--model", "synthetic:tiny", "--device", "cpu"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr  # no traceback, and nothing loaded first
        assert lines[0].startswith("node-server render: error: ") and "cannot write there" in lines[0]
        assert "loading model" not in proc.stderr


def test_the_write_check_comes_before_the_model_load(tmp_path, fake_engine, clip, monkeypatch):
    from bridges import file as file_bridge
    from node_server.errors import InputError

    def refuse(folder, shown):
        raise InputError(f"{shown}: cannot write there (Read-only file system)")

    monkeypatch.setattr(file_bridge, "_probe_folder", refuse)
    with pytest.raises(InputError, match="cannot write there"):
        run_render(clip, tmp_path / "o.mp4", "--prompt", "p", "--size", "32", "--quiet")
    assert fake_engine.instances == []  # never built


def test_a_quiet_render_prints_only_its_summary(tmp_path):
    import subprocess
    import sys

    clip = make_test_clip(tmp_path / "c.mp4", frames=2, size=(64, 64))
    proc = subprocess.run([sys.executable, "-m", "node_server", "render", str(clip), str(tmp_path / "o.mp4"),
                           "--prompt", "x", "--model", "synthetic:tiny", "--device", "cpu", "--size", "32",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no FutureWarning (nor anything else)
    assert proc.stdout.startswith("rendered 2 frames")


# ---------------------------------------------------------------- audio


def _clip_with_audio(path, frames=12, fps=24, seconds=None, audio_codec="aac"):
    """A small video with a sine-tone audio track, written with PyAV (H.264/MPEG-4 + AAC/Opus)."""
    import av

    seconds = seconds if seconds is not None else frames / fps
    rate = 48000
    with av.open(str(path), "w") as out:
        video = out.add_stream(file_bridge_codec(), rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        t = np.arange(int(rate * seconds)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        step = 960 if audio_codec == "libopus" else 1024
        for k, start in enumerate(range(0, len(tone), step)):
            chunk = tone[start:start + step]
            if len(chunk) < step:
                chunk = np.pad(chunk, (0, step - len(chunk)))
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        for i in range(frames):
            img = np.full((48, 64, 3), (i * 20) % 256, np.uint8)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
    return path


def file_bridge_codec():
    from bridges.file import VideoSink

    return VideoSink._pick_codec(".mp4")


def _audio_packets(path):
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        return stream.codec_context.name, [(bytes(p), float(p.pts * p.time_base)) for p in c.demux(stream) if p.size]


def test_render_copies_the_audio_track_packet_for_packet(capsys, tmp_path):
    src = _clip_with_audio(tmp_path / "with_audio.mp4")
    for ext in (".mp4", ".mkv", ".mov"):
        out = tmp_path / f"out{ext}"
        rc, _, err = cli(capsys, src, out, "--prompt", "x", "--size", "32", *TINY)
        assert rc == 0, err
        assert "audio" not in err  # copied: nothing to warn about
        codec, packets = _audio_packets(out)
        assert codec == "aac"
        want = _audio_packets(src)[1]
        assert [p for p, _ in packets] == [p for p, _ in want]  # the same bytes: remuxed, not re-encoded
        times, want_times = np.array([t for _, t in packets]), np.array([t for _, t in want])
        if ext == ".mkv":  # millisecond time stamps, and the AAC priming packet moved to 0 with the video
            np.testing.assert_allclose(np.diff(times), np.diff(want_times), atol=1e-3)
        else:
            np.testing.assert_array_equal(times, want_times)
        video = open_source(out)
        assert len(video) == 12 and video.fps == pytest.approx(24.0)  # the frames are as before
        assert video.audio_codec == "aac"


def test_render_says_when_the_audio_track_is_dropped(capsys, tmp_path):
    src = _clip_with_audio(tmp_path / "with_audio.mp4")
    rc, _, err = cli(capsys, src, tmp_path / "out.webm", "--prompt", "x", "--size", "32", *TINY)
    assert rc == 0, err
    assert "audio track is dropped: .webm files cannot hold aac audio" in err
    assert _audio_packets(tmp_path / "out.webm") is None
    rc, _, err = cli(capsys, src, tmp_path / "frames", "--prompt", "x", "--size", "32", *TINY)
    assert rc == 0, err
    assert "audio track (aac) is dropped: a folder of images has no sound" in err
    # a clip without audio says nothing about audio
    rc, _, err = cli(capsys, make_test_clip(tmp_path / "silent.mp4", frames=2), tmp_path / "o.mp4", "--prompt", "x",
                     "--size", "32", *TINY)
    assert rc == 0 and "audio" not in err


def test_a_write_error_stops_the_render_with_that_error(tmp_path, fake_engine, monkeypatch):
    from bridges import file as file_bridge

    calls = []

    def failing_save(arr, path):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        Image.fromarray(arr).save(path)

    monkeypatch.setattr(file_bridge, "_save_image", failing_save)
    src = make_test_clip(tmp_path / "c.mp4", frames=6, size=(32, 32))
    with pytest.raises(OSError, match="disk full"):
        run_render(src, tmp_path / "o", "--prompt", "p", "--size", "32", "--quiet")
    assert len(calls) == 2  # nothing written after the failure
    assert fake_engine.instances[0].closed
