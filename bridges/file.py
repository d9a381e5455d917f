"""Frame sources and sinks for files: videos, single images and folders of images.

This is the offline I/O side of the project (`node-server render`, `node-server feed`): it only
moves numpy uint8 frames in and out of files and deliberately has no torch dependency, so it can
be used by light clients. Videos go through PyAV, images through Pillow.

Sources yield frames exactly as stored (grey stays HxWx1, RGBA stays HxWx4); colour conversion,
cropping and resizing are the engine's job. Whether a path is a file or a folder is decided by its
extension: no extension (or an existing directory) means a folder.
"""

from __future__ import annotations

import math
import os
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from node_server.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_FPS = 30.0

_SUPPORTED = (
    f"a video ({' '.join(VIDEO_EXTENSIONS)}), an image ({' '.join(IMAGE_EXTENSIONS)}) "
    "or a folder of images"
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "FrameSource",
    "VideoSource",
    "ImageSource",
    "FolderSource",
    "FrameSink",
    "VideoSink",
    "ImageSink",
    "FolderSink",
    "open_source",
    "open_sink",
    "read_image",
    "natural_key",
    "make_test_clip",
]


# --------------------------------------------------------------------------------------------
# helpers


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value, so `frame2` comes before `frame10`."""
    parts = re.split(r"(\d+)", name)
    return [(0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts]


def _path_kind(path: Path) -> str:
    """'video', 'image' or 'folder' from the extension (an existing directory is a folder)."""
    if path.is_dir():
        return "folder"
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext == "":
        return "folder"
    raise InputError(f"{path}: unsupported extension {path.suffix!r}; expected {_SUPPORTED}")


def _pil_to_array(img) -> np.ndarray:
    """Pillow image -> HxWxC uint8 with C in 1/3/4, keeping grey as 1 channel and alpha as 4."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (common for depth maps / scientific TIFFs): scale to 8 bits, stay grey.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return arr[:, :, None]
    if mode == "1":
        img = img.convert("L")
    elif mode == "F":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as HxWxC uint8 (first frame of multi-page files); InputError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_array(img)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc}); expected {_SUPPORTED}") from None


def _as_uint8_frame(frame) -> np.ndarray:
    """Validate a frame handed to a sink: HxW or HxWxC uint8 with C in 1/3/4."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"frames must be HxWxC with C in 1, 3 or 4, got shape {tuple(arr.shape)}")
    return arr


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.shape[2] == 3:
        return arr
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[:, :, :3]


def _fps_fraction(fps) -> Fraction:
    """Frame rate as an exact fraction; NTSC-style rates (29.97...) map back to n/1001."""
    if isinstance(fps, Fraction):
        return fps
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive number, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _codec_name(stream) -> str:
    try:
        return stream.codec_context.name
    except Exception:  # noqa: BLE001 - a codec this FFmpeg build cannot decode
        return "unknown"


def _probe_folder(folder: Path, shown: Path) -> None:
    """Create `folder` (and its parents) and write and remove a file in it, so a read-only or
    missing place fails in one line before any slow work; root ignores permission bits, so only
    a real write tells."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".node-server-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"{shown}: cannot write there ({reason}); choose a writable output path") from None


# --------------------------------------------------------------------------------------------
# sources


class FrameSource:
    """Iterable of `(index, frame)`; frames are HxWxC uint8 with C in 1, 3 or 4 as stored.

    Attributes: `path`, `kind` ("video" | "image" | "folder"), `fps`, `names` (file stems for
    folders, else None); `len(source)` is the frame count. Iterating again starts from the top.
    """

    kind: str = ""
    path: Path
    fps: float = DEFAULT_IMAGE_FPS
    names: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, fps={self.fps:g})"


class VideoSource(FrameSource):
    """A video file decoded with PyAV (first video stream). `audio_codec` names its first audio
    track's codec (None without one); `start_seconds` is when its first video frame is shown."""

    kind = "video"
    audio_codec: str | None = None
    start_seconds: float = 0.0

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise InputError(f"{path}: the file has no video stream; expected {_SUPPORTED}")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else DEFAULT_IMAGE_FPS
                self.fps_fraction = Fraction(rate) if rate else Fraction(30)
                self._format = self._pick_format(stream.codec_context.pix_fmt)
                count = int(stream.frames or 0)
                audio = container.streams.audio[0] if container.streams.audio else None
                self.audio_codec = _codec_name(audio) if audio is not None else None
                start = stream.start_time
                self.start_seconds = float(start * stream.time_base) if start is not None and stream.time_base else 0.0
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read video ({exc}); expected {_SUPPORTED}") from None
        if count <= 0:
            # Some containers (mkv, webm) do not store a frame count: decode once to count.
            count = sum(1 for _ in self._decode())
        self._count = count

    @staticmethod
    def _pick_format(pix_fmt: str | None) -> str:
        """Decode to gray / rgba / rgb24 so the channel count matches what the file holds."""
        import av

        if not pix_fmt:
            return "rgb24"
        try:
            fmt = av.VideoFormat(pix_fmt)
        except (ValueError, av.FFmpegError):
            return "rgb24"
        comps = fmt.components
        if any(c.is_alpha for c in comps):
            return "rgba"
        if len(comps) == 1 and not fmt.has_palette:
            return "gray"
        return "rgb24"

    def _decode(self) -> Iterator[np.ndarray]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    arr = frame.to_ndarray(format=self._format)
                    if arr.ndim == 2:
                        arr = arr[:, :, None]
                    yield np.ascontiguousarray(arr)
        except (av.FFmpegError, OSError) as exc:
            raise InputError(f"{self.path}: error while decoding video ({exc})") from None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return enumerate(self._decode())


class ImageSource(FrameSource):
    """One image file: a single frame (multi-page/animated files give their first frame)."""

    kind = "image"

    def __init__(self, path: Path):
        self.path = path
        self._frame = read_image(path)  # read now so a broken file fails before any model loads

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self._frame


class FolderSource(FrameSource):
    """A folder of images in natural order; other files (and sub-folders) are ignored.

    `strict` (the default) raises `InputError` at the first unreadable image; otherwise it is
    skipped (its index is not yielded), listed in `skipped` as (path, reason) and reported to
    `on_skip(path, reason)`, so one corrupt file does not end a long job."""

    kind = "folder"

    def __init__(self, path: Path, *, strict: bool = True, on_skip=None):
        self.path = path
        self.strict = strict
        self.on_skip = on_skip
        self.skipped: list[tuple[Path, str]] = []
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ]
        if not files:
            raise InputError(f"{path}: the folder has no images ({' '.join(IMAGE_EXTENSIONS)})")
        files.sort(key=lambda p: natural_key(p.name))
        self.files = files
        stems = [p.stem for p in files]
        # Two files with one stem (a.png, a.jpg) would overwrite each other's output: keep the extension.
        dupes = {s for s in stems if stems.count(s) > 1}
        self.names = [f"{p.stem}_{p.suffix[1:]}" if p.stem in dupes else p.stem for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.skipped = []
        for i, p in enumerate(self.files):
            try:
                frame = read_image(p)
            except InputError as exc:
                if self.strict:
                    raise
                self.skipped.append((p, str(exc)))
                if self.on_skip is not None:
                    self.on_skip(p, str(exc))
                continue
            yield i, frame


def open_source(path: str | os.PathLike, *, strict: bool = True, on_skip=None) -> FrameSource:
    """Open a video, an image or a folder of images as a FrameSource; InputError if not readable.
    `strict` / `on_skip`: what a folder does with an unreadable image (see `FolderSource`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected {_SUPPORTED}")
    kind = _path_kind(path)
    if kind == "folder":
        if not path.is_dir():
            raise InputError(f"{path}: is a file without an extension; expected {_SUPPORTED}")
        return FolderSource(path, strict=strict, on_skip=on_skip)
    if path.is_dir():  # pragma: no cover - _path_kind returns "folder" for directories
        raise InputError(f"{path}: is a folder")
    if kind == "video":
        return VideoSource(path)
    return ImageSource(path)


# --------------------------------------------------------------------------------------------
# sinks


class FrameSink:
    """Writes frames in order; `write(frame)` then `close()` (or use it as a context manager).

    `max_frames` is the most frames the sink accepts (None = unlimited), so callers can refuse a
    multi-frame input for a single-image output before doing any work.
    """

    kind: str = ""
    path: Path
    max_frames: int | None = None

    def __init__(self) -> None:
        self.count = 0

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        """Write the next frame; `index` is its place in the source (a folder output names its
        file after it, so a skipped input does not shift the names)."""
        raise NotImplementedError

    def check_writable(self) -> None:
        """Raise `InputError` now if the output cannot be written (creates its folder)."""
        _probe_folder(self.path.parent, self.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSink(FrameSink):
    """Encodes RGB frames with PyAV: H.264 (libx264, else mpeg4) in yuv420p; VP9/VP8 for .webm.

    The container opens on the first frame (its size sets the video size). yuv420p needs even
    sizes, so an odd width/height is padded by one replicated edge pixel.
    """

    kind = "video"

    def __init__(self, path: Path, fps):
        super().__init__()
        self.path = path
        self.fps = _fps_fraction(fps)
        self.codec = self._pick_codec(path.suffix.lower())
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (h, w) of incoming frames
        self._audio_from: Path | None = None  # copy this file's first audio track (`copy_audio_from`)
        self._audio_shift = 0.0
        self._audio_in = None
        self._audio_out = None
        self._audio_packets = None
        self._audio_next = None
        self.audio_packets = 0  # audio packets copied

    @staticmethod
    def _pick_codec(ext: str) -> str:
        import av

        candidates = ["libvpx-vp9", "libvpx", "libaom-av1"] if ext == ".webm" else ["libx264", "mpeg4"]
        for name in candidates:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # noqa: BLE001 - any failure means "encoder not in this FFmpeg build"
                continue
        raise InputError(f"no video encoder for {ext} in this FFmpeg build (tried {', '.join(candidates)})")

    def copy_audio_from(self, source: "VideoSource") -> str | None:
        """Copy `source`'s first audio track into this video, packet for packet (a remux: the
        sound is not re-encoded, and the frames are unchanged). Returns None when it will be
        copied, else why it cannot be (this container does not take that codec)."""
        import io

        import av

        try:
            with av.open(str(source.path)) as src:
                if not src.streams.audio:
                    return "the input has no audio track"
                with av.open(io.BytesIO(), mode="w", format=self._container_format()) as probe:
                    probe.add_stream_from_template(src.streams.audio[0])
        except ValueError:  # PyAV: "'webm' format does not support 'aac' codec"
            return f"{self.path.suffix} files cannot hold {source.audio_codec or 'this'} audio"
        except (av.FFmpegError, OSError) as exc:
            return f"its audio cannot be read ({exc})"
        self._audio_from = source.path
        self._audio_shift = float(getattr(source, "start_seconds", 0.0) or 0.0)
        return None

    def _container_format(self) -> str:
        return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
                ".avi": "avi"}[self.path.suffix.lower()]

    def _open(self, h: int, w: int) -> None:
        import av

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w")
        except (av.FFmpegError, OSError) as exc:
            raise InputError(f"{self.path}: cannot create video ({exc})") from None
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width = w + (w % 2)
        stream.height = h + (h % 2)
        stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        elif self.codec.startswith("libvpx"):
            stream.options = {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        else:
            stream.bit_rate = max(2_000_000, w * h * 8)
        self._stream = stream
        self._size = (h, w)
        if self._audio_from is not None:
            self._audio_in = av.open(str(self._audio_from))
            template = self._audio_in.streams.audio[0]
            self._audio_out = self._container.add_stream_from_template(template)
            self._audio_packets = self._audio_in.demux(template)

    def _mux_audio(self, until: float | None) -> None:
        """Mux the input's audio packets that play before `until` seconds of output (all when
        None), so sound and picture stay interleaved as they are written. Times are shifted by
        the input's first video frame, as the output's first frame is at 0."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._audio_next
            if packet is None:
                packet = next(self._audio_packets, None)
                if packet is None:
                    self._audio_packets = None
                    return
                if packet.dts is None or packet.pts is None or packet.size == 0:
                    continue  # the demuxer's flush packet
                shift = round(self._audio_shift / float(packet.time_base))
                packet.pts -= shift  # an encoder's priming packet may start below 0: kept, as
                packet.dts -= shift  # the input had it (dropping it would click)
            if until is not None and float(packet.pts * packet.time_base) > until:
                self._audio_next = packet
                return
            self._audio_next = None
            packet.stream = self._audio_out
            self._container.mux(packet)
            self.audio_packets += 1

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        import av

        arr = _to_rgb(_as_uint8_frame(frame))
        h, w = arr.shape[:2]
        if self._container is None:
            self._open(h, w)
        elif (h, w) != self._size:
            raise InputError(
                f"{self.path}: every frame of a video must have one size; got {w}x{h} after "
                f"{self._size[1]}x{self._size[0]}"
            )
        if h % 2 or w % 2:
            arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        vf.pts = self.count
        vf.time_base = 1 / self.fps
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.count += 1
        self._mux_audio(self.count / self.fps)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._mux_audio(None)
        finally:
            self._container.close()
            self._container = None
            if self._audio_in is not None:
                self._audio_in.close()
                self._audio_in = None


class ImageSink(FrameSink):
    """A single image file. It takes exactly one frame: a second `write` raises InputError
    (rather than silently dropping frames), and `max_frames == 1` lets callers check up front."""

    kind = "image"
    max_frames = 1

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        if self.count >= 1:
            raise InputError(
                f"{self.path}: an image output holds one frame but more were given; "
                "use a folder (no extension) or a video path for the output"
            )
        _save_image(_as_uint8_frame(frame), self.path)
        self.count += 1


class FolderSink(FrameSink):
    """A folder of PNGs, created on the first frame: `NAME.png` keeping the names of a folder
    source, else `frame_000001.png`, `frame_000002.png`, ..."""

    kind = "folder"

    def __init__(self, path: Path, names: list[str] | None = None):
        super().__init__()
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: exists and is not a folder; an output without extension is a folder")
        self.path = path
        self.names = list(names) if names else None

    def name_for(self, index: int) -> str:
        if self.names is not None and index < len(self.names):
            return f"{self.names[index]}.png"
        return f"frame_{index + 1:06d}.png"

    def check_writable(self) -> None:
        _probe_folder(self.path, self.path)

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        arr = _as_uint8_frame(frame)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot create the folder ({exc.strerror or exc})") from None
        _save_image(arr, self.path / self.name_for(self.count if index is None else index))
        self.count += 1


def _save_image(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    ext = path.suffix.lower()
    if arr.shape[2] == 1:
        img = Image.fromarray(arr[:, :, 0], mode="L")
    elif arr.shape[2] == 4 and ext not in (".jpg", ".jpeg"):
        img = Image.fromarray(arr, mode="RGBA")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), mode="RGB")
    options = {"quality": 95} if ext in (".jpg", ".jpeg", ".webp") else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **options)
    except OSError as exc:
        raise InputError(f"{path}: cannot write image ({exc})") from None


def open_sink(path: str | os.PathLike, *, fps, source: FrameSource | None = None) -> FrameSink:
    """Open an output by extension: video -> VideoSink, image -> ImageSink, none -> FolderSink.

    `source` lets a folder output keep a folder input's file names, and guards against writing
    over the input itself.
    """
    path = Path(path).expanduser()
    kind = _path_kind(path)
    if source is not None and path.exists():
        try:
            same = path.resolve() == Path(source.path).resolve()
        except OSError:
            same = False
        if same:
            raise InputError(f"{path}: the output is the input; choose another output path")
    if kind == "video":
        return VideoSink(path, fps)
    if kind == "image":
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not an image file")
        return ImageSink(path)
    names = source.names if source is not None and source.kind == "folder" else None
    return FolderSink(path, names)


# --------------------------------------------------------------------------------------------
# synthetic clip


def make_test_clip(path: str | os.PathLike, frames: int = 24, size: tuple[int, int] = (128, 96), fps=24) -> Path:
    """Write a small synthetic video (gradient background, a square and a disc moving across)
    so tests and docs have an input without shipping media. `size` is (width, height)."""
    w, h = int(size[0]), int(size[1])
    if frames < 1 or w < 2 or h < 2:
        raise ValueError("make_test_clip needs frames >= 1 and a size of at least 2x2")
    path = Path(path)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.empty((h, w, 3), dtype=np.uint8)
    base[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    base[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    base[..., 2] = 96
    side = max(2, min(w, h) // 4)
    radius = max(2, min(w, h) // 6)
    with open_sink(path, fps=fps) as sink:
        for i in range(frames):
            t = i / max(frames - 1, 1)
            img = base.copy()
            x0 = int(t * (w - side))
            y0 = (h - side) // 3
            img[y0 : y0 + side, x0 : x0 + side] = (250, 250, 40)
            cx = int((1 - t) * (w - 1))
            cy = int(h * 2 / 3)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
            img[disc] = (30, 200, 255)
            sink.write(img)
    return path


if __name__ == "__main__":  # pragma: no cover - handy for docs: python -m bridges.file out.mp4
    out = make_test_clip(sys.argv[1] if len(sys.argv) > 1 else "test_clip.mp4")
    print(out)
