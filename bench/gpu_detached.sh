#!/usr/bin/env bash
# Run bench/gpu_session.sh past one device call's ten-minute limit: `start` copies the tree to
# $WORK/repo and starts the session in its own process session (setsid), so it outlives the call
# that started it on a machine kept warm by the next call; `start` and `wait` then wait until it
# ends or until WAIT seconds (default 570) have passed, and copy what it has so far to $OUT
# (session.log, summary.md, tests.log, results.tar.gz). Call `wait` again, at once, until the
# log says "gpu_session done".
#
#   bash bench/gpu_detached.sh start release    # first call (MODE as for gpu_session.sh)
#   bash bench/gpu_detached.sh wait             # each later call
set -u
WORK=${GPU_SESSION_WORK:-/tmp/gpu_session}
OUT=${OUT:-$PWD/out/gpu_session}
WAIT=${WAIT:-570}
mkdir -p "$WORK" "$OUT"
if [ "${1:-wait}" = "start" ]; then
  rm -rf "$WORK/repo" && mkdir -p "$WORK/repo" && tar --exclude=./.venv --exclude=./out -cf - . | tar -xf - -C "$WORK/repo"
  (cd "$WORK/repo" && OUT="$WORK/out" setsid nohup bash bench/gpu_session.sh "${2:-release}" \
    > "$WORK/detached.log" 2>&1 < /dev/null &)
  sleep 5
fi
START=$(date +%s)
while [ $(( $(date +%s) - START )) -lt "$WAIT" ]; do
  grep -q "gpu_session done" "$WORK/out/session.log" 2>/dev/null && break
  sleep 10
done
cp "$WORK/out/session.log" "$OUT/" 2>/dev/null
tail -n 40 "$WORK/detached.log" > "$OUT/detached_tail.log" 2>/dev/null
cat "$WORK"/results/*.md > "$OUT/summary.md" 2>/dev/null
[ -f "$WORK/logs/tests.log" ] && cp "$WORK/logs/tests.log" "$OUT/tests.log"
tar -czf "$OUT/results.tar.gz" -C "$WORK" results logs 2>/dev/null
tail -n 60 "$WORK/out/session.log" 2>/dev/null
