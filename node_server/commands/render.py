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
import re
import statistics
import sys
import threading
import time
from collections import deque

from ..errors import InputError, ParamError
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
frames as the input. Without --size, the model folder's own size (its node_server.json, 256 for
the demo model) is used, else 512.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", metavar="INPUT", help="video, image or folder of images")
    parser.add_argument("output", metavar="OUTPUT", help="video, image, or folder (no extension)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="style / edit instruction")
    parser.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="synthetic:tiny, synthetic:paper, a local model folder or a hub id (default: the built-in default model)",
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
    parser.add_argument("--quiet", action="store_true", help="no progress output; the summary line still prints")
    from .lllite_args import add_lllite_arguments

    add_lllite_arguments(parser)


def parse_size(text: str) -> tuple[int, int]:
    """`512` or `WxH` -> (height, width), each a multiple of 32 (the engine's order)."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+)(?:\s*[x×]\s*(\d+))?", t)
    if not m:
        raise ParamError("size", f"expected 512 or WxH such as 768x512, got {text!r}")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) else w
    for name, v in (("width", w), ("height", h)):
        if v < 32 or v % 32:
            raise ParamError("size", f"{name} must be a positive multiple of 32, got {v}")
    return h, w


def _build_params(args):
    from ..engine.params import Params

    from ..server.lllite_settings import param_changes

    changes = {"prompt": args.prompt, **param_changes(vars(args))}
    for name in ("seed", "steps", "strength", "batch_size", "refresh"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return Params().replace(**changes)


def run(args: argparse.Namespace) -> int:
    from bridges.file import open_sink, open_source

    verbose = not args.quiet
    # Cheap checks first, so a typo fails before a model loads.
    size = parse_size(args.size) if args.size is not None else None
    if args.encoder_size < 32 or args.encoder_size % 32:
        raise ParamError("encoder_size", f"must be a positive multiple of 32, got {args.encoder_size}")
    params = _build_params(args)
    from ..server.lllite_settings import check_lllite, engine_options

    check_lllite(vars(args))
    source = open_source(args.input)
    total = len(source)
    if total == 0:
        raise InputError(f"{args.input}: has no frames")
    sink = open_sink(args.output, fps=getattr(source, "fps_fraction", source.fps), source=source)
    if sink.max_frames is not None and total > sink.max_frames:
        raise InputError(
            f"{args.output}: an image output holds one frame but {args.input} has {total}; "
            "give a video path or a folder (no extension) as OUTPUT"
        )
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
    try:
        engine.warmup(progress=verbose)
        latencies, written, elapsed = _render(engine, source, sink, params.batch_size, total, verbose)
    finally:
        sink.close()
        engine.close()

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
                writer.put(out.image)
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
            image = self._queue.get()
            if image is _END:
                return
            if self._error is not None:
                continue  # drain, so the caller never blocks on a full queue
            try:
                self._sink.write(image)
                self.written += 1
            except BaseException as exc:
                self._error = exc

    def put(self, image) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(image)

    def finish(self, raise_error: bool = True) -> int:
        """Wait until every frame put is written; returns the count (raises the write error, if any)."""
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error
        return self.written

