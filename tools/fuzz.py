"""Coverage-guided fuzzing of the project's parsers with atheris (libFuzzer for Python).

    python -m tools.fuzz osc --seconds 600          # a long run
    python -m tools.fuzz osc --seconds 5            # what CI runs (tests/test_osc_fuzz.py)
    python -m tools.fuzz osc --replay               # only the seeds and the regression corpus
    python -m tools.fuzz --list

A target is a module `tools/fuzz_targets/<name>.py` with `fuzz_one(data: bytes) -> None`, which
raises only on a real bug (an unexpected exception type, a broken invariant), and optionally
`SEEDS` (a list of bytes) and `MAX_LEN` (the longest input worth trying; default 4096). The
regression corpus `tests/data/fuzz/<name>/` (one file per input) and `SEEDS` seed the run (libFuzzer
runs them first). Every input has a time bound (`--timeout`, default 5 s): an input that
takes longer is reported as a hang. A failing input is written under `--artifacts` (default: a
folder in the system's temp directory) and the exit status is not 0.

atheris 3.0 ships wheels for Linux x86_64 CPython 3.11-3.13 (`pip install -e '.[test]'` installs
it there); elsewhere `--replay` still runs the corpus.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS_ROOT = ROOT / "tests" / "data" / "fuzz"
TARGETS_PACKAGE = "tools.fuzz_targets"


def target_names() -> list[str]:
    from tools import fuzz_targets

    return sorted(m.name for m in pkgutil.iter_modules(fuzz_targets.__path__) if not m.name.startswith("_"))


def corpus_inputs(name: str, module) -> list[tuple[str, bytes]]:
    """(label, bytes) for every seed and every regression-corpus file of a target."""
    items = [(f"SEEDS[{i}]", bytes(s)) for i, s in enumerate(getattr(module, "SEEDS", []))]
    folder = CORPUS_ROOT / name
    if folder.is_dir():
        items += [(str(p.relative_to(ROOT)), p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]
    return items


def run_bounded(fuzz_one, data: bytes, timeout: float) -> BaseException | str | None:
    """`fuzz_one(data)` on a helper thread: None, the exception it raised, or 'hang'."""
    outcome: list = []

    def run() -> None:
        try:
            fuzz_one(data)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            outcome.append(e)

    thread = threading.Thread(target=run, name="fuzz-one", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else "hang"


def replay(name: str, module, timeout: float) -> int:
    """Run every seed and corpus input once, each within `timeout` s; 1 when one of them fails."""
    failed = 0
    inputs = corpus_inputs(name, module)
    for label, data in inputs:
        result = run_bounded(module.fuzz_one, data, timeout)
        if result is None:
            continue
        failed += 1
        if result == "hang":
            print(f"fuzz {name}: {label} takes more than {timeout:g} s (a hang)", file=sys.stderr)
            break  # the stuck thread keeps a core busy; stop here
        print(f"fuzz {name}: {label} fails:", file=sys.stderr)
        traceback.print_exception(result)
    print(f"fuzz {name}: replayed {len(inputs)} inputs, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def fuzz(name: str, seconds: int, timeout: int, corpus: Path | None, artifacts: Path) -> int:
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed (pip install atheris; wheels for Linux x86_64, CPython 3.11-3.13); "
              "--replay runs the corpus without it", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["node_server", TARGETS_PACKAGE]):
        module = importlib.import_module(f"{TARGETS_PACKAGE}.{name}")
    work = corpus if corpus is not None else Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    for i, (_, data) in enumerate(corpus_inputs(name, module)):
        (work / f"seed-{i:03d}").write_bytes(data)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-max_len={int(getattr(module, 'MAX_LEN', 4096))}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(work),
    ]
    print(f"fuzz {name}: {seconds} s, corpus {work}, failing inputs go to {artifacts}/", file=sys.stderr)
    atheris.Setup(args, module.fuzz_one)
    atheris.Fuzz()  # exits the process: 0 when the time is up, not 0 on a failing input
    return 0  # pragma: no cover - not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="a module in tools/fuzz_targets (see --list)")
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take (default 5)")
    parser.add_argument("--corpus", type=Path, default=None, help="keep the growing corpus here (default: a temp folder)")
    parser.add_argument("--artifacts", type=Path, default=None, help="where failing inputs are written")
    parser.add_argument("--replay", action="store_true", help="only run the seeds and the regression corpus")
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args(argv)
    names = target_names()
    if args.list:
        print("\n".join(names))
        return 0
    if args.target not in names:
        parser.error(f"unknown target {args.target!r}; targets: {', '.join(names) or '(none)'}")
    if args.seconds < 1 or args.timeout < 1:
        parser.error("--seconds and --timeout must be at least 1")
    if args.replay:
        return replay(args.target, importlib.import_module(f"{TARGETS_PACKAGE}.{args.target}"), args.timeout)
    artifacts = args.artifacts or Path(tempfile.gettempdir()) / "node-server-fuzz" / args.target
    return fuzz(args.target, args.seconds, args.timeout, args.corpus, artifacts)


if __name__ == "__main__":
    sys.exit(main())
