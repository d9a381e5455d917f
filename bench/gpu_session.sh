#!/usr/bin/env bash
# One GPU session for the video-rate issue (19) and the single-GPU half of the two-GPU one (22):
# the CUDA tests, then bench.run's points with the new levers, each part under a hard time limit,
# the whole within GPU_SESSION_BUDGET seconds (default 540, for a 600-second device call).
#
#   bash bench/gpu_session.sh            # one H200: tests, I,C,S,P,L, P,L at encoder 256, C on SM
#                                        # partitions, U-Net compile levers (what time allows)
#   bash bench/gpu_session.sh checks     # the CUDA tests, then point L with a paper-size adapter
#   bash bench/gpu_session.sh final      # I,C,S,P with the breakdown, then a short GPU soak
#   bash bench/gpu_session.sh two-gpu    # two GPUs: the two-GPU test, P and L with the encoder on cuda:1
#   bash bench/gpu_session.sh release    # a whole device session (GPU_SESSION_BUDGET, e.g. 1450 s):
#                                        # I,C,S,P,L with the U-Net profile and the StreamDiffusion
#                                        # race, the CUDA tests, C and P on SM partitions, P and L at
#                                        # encoder 256; run it detached across calls with
#                                        # bench/gpu_detached.sh
#   bash bench/gpu_session.sh levers     # the CUDA tests, C on an SM partition, P at encoder 256
#   bash bench/gpu_session.sh io         # a GPU soak, the NDI hop, the console's cost
#   bash bench/gpu_session.sh kernels    # the U-Net step with the folded attention and FP8, FP8's PSNR,
#                                        # then (a budget past one call, detached) those levers at the
#                                        # points, and C and L at encoder 256
#
# Missing packages travel as wheels in .whl (diffusers, python-osc, pyzmq, av): they are installed
# to /tmp/site first. Everything comes back under $OUT (at most 8 files): session.log (each part's
# last lines, the tables and the ratio lines against bench/results), summary.md (the tables) and
# results.tar.gz (every results file and every part's full log). Parts that run out of time are
# cut; what they measured before is kept (bench.run rewrites its results file after every point).
# Nothing here changes the GPU's settings; NVLink multicast stays off.
set -u
MODE=${1:-one-gpu}
START=$(date +%s)
BUDGET=${GPU_SESSION_BUDGET:-540}
OUT=${OUT:-$PWD/out/gpu_session}
WORK=${GPU_SESSION_WORK:-/tmp/gpu_session}
mkdir -p "$OUT" "$WORK/results" "$WORK/logs"
LOG="$OUT/session.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache"  # shared by every part: later parts reuse compiles
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}
say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || say "wheel install failed"
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi

# part NAME MAX_SECONDS COMMAND...: runs COMMAND under min(MAX, time left); skipped under 30 s left.
part() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  local t=$(( l < max ? l : max ))
  if [ "$t" -lt 30 ]; then say "== $name: not run ($l s left)"; return; fi
  say "== $name (limit $t s): $*"
  local t0; t0=$(date +%s)
  timeout -k 10 "$t" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  grep -E "^(vs earlier|time limit|\| |U-Net step|  +[0-9.]+ ms|\{\"(variant|model|q)\"|\[.*\] (encoder SM|point C: warmed))|PASSED|FAILED|ERROR|SKIPPED|[0-9]+ (passed|failed|skipped)" \
    "$WORK/logs/$name.log" | tail -n 90 | tee -a "$LOG"
  [ "$rc" -ne 0 ] && tail -n 15 "$WORK/logs/$name.log" | tee -a "$LOG"
  say "== $name: exit $rc after $(( $(date +%s) - t0 )) s ($(left) s left)"
}

# bench NAME MAX_SECONDS ARGS...: bench.run with a soft limit a minute under the hard one, so the
# last point finishes and the tables and ratio lines print.
bench() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  local t=$(( l < max ? l : max ))
  part "$name" "$max" $PY -m bench.run --out "$WORK/results" --compare bench/results --tag "$name" \
    --time-limit $(( t > 90 ? t - 60 : 30 )) "$@"
}

say "gpu_session $MODE, commit $BENCH_COMMIT, budget $BUDGET s"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import torch
print("torch", torch.__version__, "devices", torch.cuda.device_count(),
      "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
try:
    from torch.cuda import green_contexts as g
    print("green contexts:", getattr(g, "SUPPORTED", "?"), "Stream()" if hasattr(g.GreenContext, "Stream") else "no Stream()")
except Exception as exc:
    print("green contexts: none", exc)
import diffusers, transformers
print("diffusers", diffusers.__version__, "transformers", transformers.__version__)
EOF

if [ "$MODE" = "checks" ]; then
  # the CUDA tests (each under 240 s), then point L with a paper-size adapter (DreamLite-mobile's
  # published U-Net: 108 modules, 38 hooked on the down blocks)
  part tests 290 $PY -m pytest tests -v -p no:cacheprovider -rA --tb=short --timeout 240 \
    --continue-on-collection-errors -k "cuda or gpu"
  bench mobileL 260 --points L --unet mobile --frames 480 --no-breakdown
elif [ "$MODE" = "final" ]; then
  # points I,C,S,P with the breakdown, then a short soak of the server on the paper's shapes (its
  # batch-1 graphs come from the Inductor cache the bench just filled)
  bench main 330 --points I,C,S,P --frames 480
  part soak 220 $PY -m tools.soak --model synthetic:paper --device cuda --size 512 \
    --minutes "${SOAK_MINUTES:-2}" --max-stall 1 --json "$WORK/results/soak-gpu.json" --log "$WORK/logs/soak-server.log"
elif [ "$MODE" = "release" ]; then
  # issue 19's run first (all five points and the race in one bench run), then the CUDA tests,
  # then the levers on a filled Inductor cache: the encoder on SM partitions, the encoder at 256
  bench main 1000 --points I,C,S,P,L --frames 480 --profile-unet --peers
  part tests 360 $PY -m pytest tests -v -p no:cacheprovider -rA --tb=short \
    --continue-on-collection-errors -k "cuda or gpu"
  bench sms 240 --points C,P --encoder-sms 33,66 --frames 480 --no-breakdown
  bench enc256 300 --points P,L --encoder-size 256 --frames 480 --no-breakdown
elif [ "$MODE" = "levers" ]; then
  # what a release run leaves, within one call: the CUDA tests, then the encoder on an SM partition
  # at point C and the encoder at 256 at point P, each beside its own baseline in the same run
  part tests 300 $PY -m pytest tests -v -p no:cacheprovider -rA --tb=short \
    --continue-on-collection-errors -k "cuda or gpu"
  bench sms 220 --points C --encoder-sms all,66 --frames 480 --no-breakdown
  bench enc256 220 --points P --encoder-size 512,256 --frames 480 --no-breakdown
elif [ "$MODE" = "kernels" ]; then
  # the U-Net's kernels (issue 19, lever 2): the attention with the mask folded into the heads and
  # the FP8 matrix products, each beside the default step in one process, and their tests; then
  # (a budget past one call: bench/gpu_detached.sh) the folded attention at the points beside the
  # padded one, FP8's PSNR, FP8 at I and S, C and L at encoder 256 beside 512, every attention call
  # shape under each kernel that takes it
  part tests 90 $PY -m pytest tests/test_attention.py tests/test_fp8.py -v -p no:cacheprovider -rA --tb=short
  part unet 300 $PY -m bench.profile_unet --batches 1,8 --variants default,fold,fp8,fold+fp8 --profile fold
  bench fold 420 --points I,S,P --attention pad,fold --frames 480 --no-breakdown
  part fp8q 100 $PY -m bench.fp8_quality --models demo,synthetic:paper --json "$WORK/results/fp8-quality.json"
  bench fp8 200 --points I,S --attention fold --fp8 on --frames 480 --no-breakdown
  bench enc256 330 --points C,L --encoder-size 512,256 --frames 480 --no-breakdown
  part attn 90 $PY -m bench.profile_attention 8
elif [ "$MODE" = "io" ]; then
  # the server's I/O on a GPU: a soak on the paper's shapes, the NDI hop, the console's cost
  part soak "${SOAK_LIMIT:-420}" $PY -m tools.soak --model synthetic:paper --device cuda --size 512 \
    --minutes "${SOAK_MINUTES:-4}" --max-stall 1 --json "$WORK/results/soak-gpu.json" --log "$WORK/logs/soak-server.log"
  part ndi 240 $PY -m bench.ndi_hop --model synthetic:paper --size 512 --seconds 20 --out "$WORK/results"
  part console 150 $PY -m bench.console_overhead --model synthetic:paper --device cuda --size 512 --window 10 --rounds 3
elif [ "$MODE" = "two-gpu" ]; then
  part tests 150 $PY -m pytest tests -v -p no:cacheprovider -rs --continue-on-collection-errors -k "cuda or gpu"
  bench twogpu 330 --points P,L --encoder-device same,cuda:1 --frames 480 --no-breakdown
else
  part tests 130 $PY -m pytest tests -v -p no:cacheprovider -rs --continue-on-collection-errors -k "cuda or gpu"
  bench main 230 --points I,C,S,P,L --frames 480 --profile-unet
  bench enc256 110 --points P,L --encoder-size 256 --frames 480 --no-breakdown
  bench sms 80 --points C --encoder-sms 33,66 --frames 480 --no-breakdown
  # U-Net levers, the step alone as CUDA-graph replays (cheapest first; max-autotune last, may be cut)
  part unet 200 $PY -m bench.profile_unet --batches 1,8 --variants default,freeze,cl,max
fi

cat "$WORK"/results/*.md > "$OUT/summary.md" 2>/dev/null
[ -f "$WORK/logs/tests.log" ] && cp "$WORK/logs/tests.log" "$OUT/tests.log"
tar -czf "$OUT/results.tar.gz" -C "$WORK" results logs
say "gpu_session done in $(( $(date +%s) - START )) s"
