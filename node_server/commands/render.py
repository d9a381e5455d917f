"""`node-server render`: stylize a video, an image or a folder of images offline.

Runs the same `StreamEngine` the live server uses, batch by batch, so an offline render shows
what a live show would look like (and how fast). Reading (image/video decoding) and writing
(encoding) run on two background threads, overlapping the engine's step, as a live source and
sink would. Heavy imports (torch, the model code) happen in `run`, keeping `node-server --help`
fast.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from collections import deque

from ..errors import InputError, ParamError
from ..frame_size import parse_size  # noqa: F401 (the one size parser; tests import it from here)
from ..progress import Progress, step

DESCRIPTION = """\
Stylize INPUT into OUTPUT with the stream engine.

INPUT is a video (.mp4 .mov .mkv .avi .webm .m4v), an image (.png .jpg .jpeg .bmp .webp .tif
.tiff) or a folder of images (natural order: frame2 before frame10). OUTPUT is chosen by its
extension: a video extension writes a video at the input's frame rate, an image extension writes
one image (only for a single-frame input), and no extension writes a folder of PNGs (keeping the
input file names when the input is a folder).

Frames of any size or aspect ratio are centre-cropped to the aspect ratio of --size and resized
to it by the engine; grey frames become RGB and alpha is dropped. The output has exactly as many
frames as the input (less any unreadable image of a folder, skipped with a warning unless
--strict). Without --size, the model folder's own size (its node_server.json, 256 for the demo
model) is used, else 512. A video output keeps the input video's audio track (copied, not
re-encoded) when its container can hold that codec; otherwise the render says it was dropped.

Start from a preset (--preset sepia: its prompt, strength, steps and seed), a prompt (--prompt),
or both (the prompt wins; any other flag given wins over the preset too).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", metavar="INPUT", help="video, image or folder of images")
    parser.add_argument("output", metavar="OUTPUT", help="video, image, or folder (no extension)")
    parser.add_argument("--prompt", default=None, metavar="TEXT",
                        help="style / edit instruction (\"\" copies the frames, cropped and resized)")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="start from this preset (built-in presets/ or a user preset; see --prompt)")
    parser.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="demo (the default: the embedded demo model), synthetic:tiny|paper|sd-turbo-tiny|sd-turbo, "
        "a local model folder or a hub id",
    )
    parser.add_argument("--batch-size", type=str, default=None, metavar="B", help="frames per engine step")
    parser.add_argument("--steps", type=str, default=None, metavar="N", help="denoising steps")
    parser.add_argument("--strength", type=str, default=None, metavar="S", help="edit strength in (0, 1]")
    parser.add_argument("--seed", type=str, default=None, metavar="N", help="noise seed")
    parser.add_argument(
        "--size",
        default=None,
        metavar="SIZE",
        help="output size: 512 (square) or WxH such as 768x512; multiples of 32 (default: the model "
        "folder's own size, 256 for the demo model; else 512)",
    )
    parser.add_argument(
        "--refresh",
        default=None,
        metavar="POLICY",
        help="when the conditioning is re-encoded: on-change, every:N or every-batch",
    )
    parser.add_argument(
        "--encoder-size",
        type=int,
        default=512,
        metavar="PX",
        help="size of the frame the vision-language encoder sees: 512 (default, as the stock pipeline) "
        "or 256 (64 image tokens instead of 256: a cheaper encode)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--encoder-device", default=None, metavar="DEV",
                        help="where the vision-language encoder runs: cpu, cuda or cuda:N, e.g. a second GPU "
                        "(default: the engine's device)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output; the summary line and warnings still print")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable image of a folder (default: skip it with a warning)")
    from .lllite_args import add_lllite_arguments, add_temporal_blend_argument

    add_lllite_arguments(parser)
    add_temporal_blend_argument(parser)


def _start_changes(args) -> dict:
    """The parameters to start from: the preset's, then --prompt, then the other flags given."""
    from ..server.lllite_settings import param_changes

    changes: dict = {}
    if args.preset is not None:
        from ..control.presets import PresetStore
        from ..server.config import default_presets_dir

        changes.update(PresetStore(user_dir=default_presets_dir()).recall(args.preset))
    if args.prompt is not None:
        changes["prompt"] = args.prompt
    if "prompt" not in changes:
        raise ParamError("prompt", "give --prompt TEXT or --preset NAME (node-server render --help)")
    changes.update(param_changes(vars(args)))
    for name in ("seed", "steps", "strength", "batch_size", "refresh", "temporal_blend"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return changes


def _build_params(args):
    from ..engine.params import Params

    return Params().replace(**_start_changes(args))


def _brief_reason(reason: str) -> str:
    """An InputError's reason without its path and the list of supported inputs."""
    core = reason.split("; expected ")[0]
    return core.split(": ", 1)[1] if ": " in core else core


def _warn(text: str) -> None:
    print(f"node-server render: {text}", file=sys.stderr, flush=True)


def _audio_plan(source, sink) -> None:
    """Copy the input video's audio into a video output, or say once, up front, why it is dropped."""
    codec = getattr(source, "audio_codec", None)
    if codec is None:
        return
    if sink.kind != "video":
        _warn(f"the input's audio track ({codec}) is dropped: {'an image' if sink.kind == 'image' else 'a folder of images'} "
              "has no sound (give a video OUTPUT to keep it)")
        return
    reason = sink.copy_audio_from(source)
    if reason is not None:
        _warn(f"the input's audio track is dropped: {reason} (try .mkv or .mp4 as OUTPUT)")


def run(args: argparse.Namespace) -> int:
    from bridges.file import open_sink, open_source

    verbose = not args.quiet
    # Cheap checks first, so a typo fails before a model loads.
    size = parse_size(args.size) if args.size is not None else None
    if args.encoder_size < 32 or args.encoder_size % 32:
        raise ParamError("encoder_size", f"must be a positive multiple of 32, got {args.encoder_size}")
    changes = _start_changes(args)
    from ..engine.params import Params

    params = Params().replace(**changes)
    from ..server.lllite_settings import check_lllite, engine_options

    check_lllite(vars(args))
    source = open_source(args.input, strict=args.strict,
                         on_skip=lambda path, reason: _warn(f"skipping {path.name}: {_brief_reason(reason)}"))
    total = len(source)
    if total == 0:
        raise InputError(f"{args.input}: has no frames")
    sink = open_sink(args.output, fps=getattr(source, "fps_fraction", source.fps), source=source)
    if sink.max_frames is not None and total > sink.max_frames:
        raise InputError(
            f"{args.output}: an image output holds one frame but {args.input} has {total}; "
            "give a video path or a folder (no extension) as OUTPUT"
        )
    sink.check_writable()  # a read-only place fails now, in one line, not after the model loaded
    _audio_plan(source, sink)
    from ..models.loader import resolve_device

    device = resolve_device(args.device)

    from ..engine.factory import build_engine
    from ..models import DEFAULT_MODEL, load_model
    from ..models.loader import frame_size_for

    spec = args.model or DEFAULT_MODEL
    if size is None:  # the model folder's own size (node_server.json), else the global default
        size = (frame_size_for(spec),) * 2
    step(f"loading model {spec} on {device}...", enabled=verbose)
    bundle = load_model(spec, device=device, progress=verbose)
    placement = {"encoder_device": args.encoder_device} if args.encoder_device else {}
    engine = build_engine(bundle, params, size=size, device=device, encoder_image_size=args.encoder_size,
                          **placement, **engine_options(vars(args)))
    from ..engine.params import strength_notice

    notice = strength_notice(changes, engine.params)
    if notice is not None:  # e.g. the demo model runs at most 0.08
        _warn(f"strength {notice.reason}")
    try:
        engine.warmup(progress=verbose)
        latencies, written, elapsed = _render(engine, source, sink, params.batch_size, total, verbose)
    finally:
        sink.close()
        engine.close()

    skipped = len(getattr(source, "skipped", ()))
    if skipped:
        _warn(f"skipped {skipped} unreadable image(s) of {total} (--strict stops at the first instead)")
        if written == 0:
            raise InputError(f"{args.input}: none of its {total} images could be read")
    p50 = statistics.median(latencies) * 1000.0 if latencies else 0.0
    fps = written / elapsed if elapsed > 0 else 0.0
    print(
        f"rendered {written} frames in {elapsed:.2f} s ({fps:.2f} fps), "
        f"p50 latency {p50:.1f} ms/frame -> {args.output}"
    )
    sys.stdout.flush()
    return 0


def _render(engine, source, sink, batch_size: int, total: int, verbose: bool):
    """Feed frames in batches, write outputs in order; returns (latencies_s, frames, seconds).

    The source is read ahead and the sink written on background threads (`_ReadAhead`,
    `_Writer`), so decoding and encoding overlap the engine's step; the order of frames is kept.
    """
    pending: deque[tuple[int, float]] = deque()  # (frame id, time handed to step)
    latencies: list[float] = []
    bar = Progress("render", total=total, enabled=verbose)
    depth = 2 * batch_size + 2

    start = time.perf_counter()
    writer = _Writer(sink, depth)
    try:
        def collect(outs) -> None:
            now = time.perf_counter()
            for out in outs:
                if not pending or out.id != pending[0][0]:
                    expected = pending[0][0] if pending else None
                    raise RuntimeError(f"engine returned frame {out.id} but frame {expected} was next")
                _, handed = pending.popleft()
                latencies.append(now - handed)
                writer.put((out.image, out.id))
            if outs:
                bar.update(len(outs))

        frames: list = []
        ids: list[int] = []
        with _ReadAhead(source, depth) as frames_in:
            for index, frame in frames_in:
                frames.append(frame)
                ids.append(index)
                if len(frames) == batch_size:
                    now = time.perf_counter()
                    pending.extend((i, now) for i in ids)
                    collect(engine.step(frames, ids))
                    frames, ids = [], []
        if frames:
            now = time.perf_counter()
            pending.extend((i, now) for i in ids)
            collect(engine.step(frames, ids))
        if pending:
            raise RuntimeError(f"engine did not return {len(pending)} frame(s), first missing id {pending[0][0]}")
    except BaseException:
        writer.finish(raise_error=False)  # the frames before the failure are still written
        raise
    written = writer.finish()  # every frame is written (or the write error raised) before timing ends
    elapsed = time.perf_counter() - start
    bar.close()
    return latencies, written, elapsed


_END = object()


class _ReadAhead:
    """Iterates a frame source on a background thread, up to `depth` frames ahead of the consumer
    (image and video decoding release the GIL, so it overlaps the engine's step). An error while
    reading is raised in the consumer, at the frame where it happened."""

    def __init__(self, source, depth: int):
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="render-reader", daemon=True)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        iterator = iter(self._source)
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # re-raised by the consumer
            self._put((_END, exc))
        finally:
            close = getattr(iterator, "close", None)  # a generator holding a decoder open
            if close is not None:
                close()

    def __enter__(self):
        self._thread.start()
        return self

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
                raise item[1]
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Writer:
    """Writes frames to a sink on a background thread, in the order given (encoding releases the
    GIL, so it overlaps the engine's next step). A write error stops the writing and is raised in
    the caller at its next `put` or at `finish`."""

    def __init__(self, sink, depth: int):
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="render-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # drain, so the caller never blocks on a full queue
            try:
                image, index = item
                self._sink.write(image, index=index)
                self.written += 1
            except BaseException as exc:
                self._error = exc

    def put(self, item) -> None:
        """`item`: (image, its index in the source)."""
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self, raise_error: bool = True) -> int:
        """Wait until every frame put is written; returns the count (raises the write error, if any)."""
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error
        return self.written

