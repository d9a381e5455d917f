#!/usr/bin/env bash
# One entry point for the README's quick start: sets up .venv (once), installs what the chosen
# job needs, then runs it.
#   scripts/quickstart.sh serve [node-server serve flags]   # the server on the default model
#   scripts/quickstart.sh test  [pytest flags]              # the whole test suite
#
# torch: an unpinned torch would pull several GB of CUDA wheels. We pin TORCH_VERSION; on a
# machine without an NVIDIA GPU, set NODE_SERVER_TORCH_INDEX to PyTorch's CPU wheel index if your
# pip has no CPU build of that version at hand. A torch already importable in .venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-serve}"; shift || true
PY="${PYTHON:-python3}"
VENV="${NODE_SERVER_VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "quickstart: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
py="$VENV/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "quickstart: installing torch==$TORCH_VERSION" >&2
  if [ -n "${NODE_SERVER_TORCH_INDEX:-}" ]; then
    "$py" -m pip install -q "torch==$TORCH_VERSION" --extra-index-url "$NODE_SERVER_TORCH_INDEX"
  else
    "$py" -m pip install -q "torch==$TORCH_VERSION"
  fi
fi
extras=""
[ "$job" = "test" ] && extras="[test]"
stamp="$VENV/.node-server-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "quickstart: installing node-server$extras and its dependencies" >&2
  "$py" -m pip install -q -e ".$extras"
  touch "$stamp"
fi

case "$job" in
  serve) exec "$VENV/bin/node-server" serve "$@" ;;
  test) exec "$py" -m pytest -q "$@" ;;
  *) echo "quickstart: unknown job '$job' (use 'serve' or 'test')" >&2; exit 2 ;;
esac
