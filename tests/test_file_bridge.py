"""File bridge: reading videos/images/folders as uint8 frames and writing them back."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bridges.file import (
    FolderSink,
    ImageSink,
    VideoSink,
    make_test_clip,
    natural_key,
    open_sink,
    open_source,
)
from node_server.errors import InputError


def _frames(source):
    out = list(source)
    assert [i for i, _ in out] == list(range(len(out)))
    return [f for _, f in out]


# ---------------------------------------------------------------- video


def test_video_clip_roundtrip(tmp_path):
    path = make_test_clip(tmp_path / "clip.mp4", frames=6, size=(96, 64), fps=24)
    src = open_source(path)
    assert (src.kind, len(src), src.fps, src.names) == ("video", 6, 24.0, None)
    frames = _frames(src)
    assert len(frames) == 6
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in frames)
    # The yellow square starts at the left edge and ends at the right edge.
    first, last = frames[0].astype(int), frames[-1].astype(int)
    yellow = np.array([250, 250, 40])
    assert np.abs(first[25, 4] - yellow).max() < 40
    assert np.abs(last[25, 90] - yellow).max() < 40
    assert np.abs(first[25, 90] - yellow).max() > 100
    # Iterating twice gives the same frames (each pass reopens the file).
    again = _frames(src)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_video_without_stored_frame_count_is_counted_by_decoding(tmp_path):
    path = make_test_clip(tmp_path / "clip.mkv", frames=5, size=(32, 32), fps=10)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # matroska stores no count: the fallback is exercised
    src = open_source(path)
    assert len(src) == 5 and len(_frames(src)) == 5
    assert src.fps == pytest.approx(10.0)


def test_video_sink_pads_odd_sizes_and_keeps_ntsc_rate(tmp_path):
    out = tmp_path / "odd.mov"
    rng = np.random.default_rng(0)
    with open_sink(out, fps=30000 / 1001) as sink:
        assert isinstance(sink, VideoSink)
        for _ in range(3):
            sink.write(rng.integers(0, 255, (21, 33, 3), dtype=np.uint8))
    src = open_source(out)
    assert len(src) == 3
    assert src.fps == pytest.approx(29.97, abs=0.01)
    assert _frames(src)[0].shape == (22, 34, 3)


def test_video_sink_accepts_grey_and_rgba_and_rejects_size_changes(tmp_path):
    out = tmp_path / "v.mp4"
    sink = open_sink(out, fps=24)
    sink.write(np.full((16, 16, 1), 200, np.uint8))
    sink.write(np.full((16, 16, 4), 100, np.uint8))
    with pytest.raises(InputError, match="one size"):
        sink.write(np.zeros((32, 16, 3), np.uint8))
    sink.close()
    frames = _frames(open_source(out))
    assert len(frames) == 2
    assert abs(int(frames[0].mean()) - 200) < 8 and abs(int(frames[1].mean()) - 100) < 8


def test_webm_output_uses_a_webm_codec(tmp_path):
    path = make_test_clip(tmp_path / "c.webm", frames=3, size=(32, 32), fps=12)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name in ("vp9", "vp8", "libvpx-vp9", "libvpx", "av1", "libdav1d")
    assert len(open_source(path)) == 3


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    "mode, channels",
    [("L", 1), ("RGB", 3), ("RGBA", 4), ("LA", 4), ("1", 1), ("P", 3)],
)
def test_image_modes_keep_or_normalise_channels(tmp_path, mode, channels):
    start = "RGB" if mode == "P" else "RGBA"  # RGBA -> P would keep the alpha as transparency
    img = Image.new(start, (10, 7), (10, 120, 230, 128)[: len(start)]).convert(mode)
    path = tmp_path / f"img_{mode}.png"
    img.save(path)
    src = open_source(path)
    assert (src.kind, len(src), src.fps) == ("image", 1, 30.0)
    (index, frame), = list(src)
    assert index == 0 and frame.shape == (7, 10, channels) and frame.dtype == np.uint8
    assert frame.flags.writeable  # handed to torch.from_numpy downstream


def test_palette_with_transparency_becomes_rgba(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    frame = _frames(open_source(path))[0]
    assert frame.shape == (4, 4, 4)
    assert frame[0, 0, 3] == 0 and tuple(frame[0, 0, :3]) == (255, 0, 0)


def test_16bit_grey_is_scaled_to_8_bits(tmp_path):
    arr = np.full((5, 6), 65535, np.uint16)
    arr[0, 0] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    frame = _frames(open_source(path))[0]
    assert frame.shape == (5, 6, 1)
    assert frame[0, 0, 0] == 0 and frame[1, 1, 0] == 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    frame = _frames(open_source(path))[0]
    assert frame.shape == (8, 8, 3)
    assert frame[4, 4, 0] > 200 and frame[4, 4, 1] < 60  # red


# ---------------------------------------------------------------- folders


def test_folder_natural_order_names_and_ignored_files(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, n in enumerate([10, 2, 1]):
        Image.new("L", (4, 3), i * 50).save(folder / f"frame{n}.png")
    Image.new("RGBA", (5, 5)).save(folder / "Frame3.PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    src = open_source(folder)
    assert (src.kind, len(src), src.fps) == ("folder", 4, 30.0)
    assert src.names == ["frame1", "frame2", "Frame3", "frame10"]
    frames = _frames(src)
    assert [f.shape[2] for f in frames] == [1, 1, 4, 1]
    assert frames[0][0, 0, 0] == 100 and frames[3][0, 0, 0] == 0


def test_natural_key_orders_numbers_by_value():
    assert sorted(["f10", "f2", "f1", "g0"], key=natural_key) == ["f1", "f2", "f10", "g0"]


def test_empty_folder_is_an_input_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path)


# ---------------------------------------------------------------- errors


def test_missing_path_is_an_input_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(InputError, match="nope.mp4") as exc:
        open_source(missing)
    assert ".mp4" in str(exc.value) and ".png" in str(exc.value)


def test_unsupported_extension_names_what_is_supported(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*unsupported.*\.mov.*\.jpg"):
        open_source(path)


@pytest.mark.parametrize("name", ["broken.png", "broken.mp4", "broken.jpg"])
def test_corrupt_files_are_input_errors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage, not media" * 20)
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        open_source(path)


# ---------------------------------------------------------------- sinks


def test_folder_sink_keeps_source_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in ["b2", "b10", "a"]:
        Image.new("RGB", (4, 4)).save(folder / f"{n}.jpg")
    src = open_source(folder)
    out = tmp_path / "out" / "nested"
    with open_sink(out, fps=src.fps, source=src) as sink:
        assert isinstance(sink, FolderSink)
        for _, frame in src:
            sink.write(np.zeros((8, 8, 3), np.uint8))
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b10.png", "b2.png"]


def test_folder_sink_numbers_frames_of_a_video(tmp_path):
    src = open_source(make_test_clip(tmp_path / "c.mp4", frames=3, size=(16, 16)))
    out = tmp_path / "frames"
    with open_sink(out, fps=src.fps, source=src) as sink:
        for _, f in src:
            sink.write(f)
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    assert Image.open(out / "frame_000001.png").size == (16, 16)


def test_image_sink_takes_exactly_one_frame(tmp_path):
    out = tmp_path / "one.png"
    sink = open_sink(out, fps=30)
    assert isinstance(sink, ImageSink) and sink.max_frames == 1
    sink.write(np.full((6, 9, 4), 77, np.uint8))
    with pytest.raises(InputError, match="one frame"):
        sink.write(np.zeros((6, 9, 3), np.uint8))
    sink.close()
    img = Image.open(out)
    assert img.size == (9, 6) and img.mode == "RGBA"


def test_output_over_input_is_refused(tmp_path):
    path = make_test_clip(tmp_path / "c.mp4", frames=2, size=(16, 16))
    src = open_source(path)
    with pytest.raises(InputError, match="output is the input"):
        open_sink(path, fps=24, source=src)


def test_unsupported_output_extension(tmp_path):
    with pytest.raises(InputError, match=r"\.gifx"):
        open_sink(tmp_path / "x.gifx", fps=24)


def test_sink_rejects_bad_frames(tmp_path):
    sink = open_sink(tmp_path / "f", fps=24)
    with pytest.raises(InputError, match="uint8"):
        sink.write(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="C in 1, 3 or 4"):
        sink.write(np.zeros((4, 4, 2), np.uint8))
    assert not Path(tmp_path / "f").exists()  # nothing written, folder not created
