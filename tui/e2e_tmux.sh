#!/usr/bin/env bash
# End-to-end check of the terminal UI: `ser-live --input AUDIO` in a detached tmux pane, read back with
# capture-pane. Waits for the input to end, checks the screen shows finished segments, saves the log
# with `s`, quits with `q` and checks the exit code. See tui/README.md.
#
#   tui/e2e_tmux.sh [AUDIO] [extra ser-live arguments...]
#
# AUDIO defaults to the bundled demo (stream/demo/demo.flac). Environment: SER_LIVE (the command,
# default .venv/bin/ser-live), E2E_OUT (where screens and the CSV go, default a new temp dir),
# E2E_TIMEOUT_S (default 180), E2E_MIN_SEGMENTS (default 1; the demo has 4 utterances).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AUDIO=$(realpath "${1:-$ROOT/stream/demo/demo.flac}")
shift || true
SER_LIVE=$(realpath "${SER_LIVE:-$ROOT/.venv/bin/ser-live}")
OUT=${E2E_OUT:-$(mktemp -d -t ser-live-e2e.XXXXXX)}
OUT=$(realpath "$OUT")
TIMEOUT_S=${E2E_TIMEOUT_S:-180}
MIN_SEGMENTS=${E2E_MIN_SEGMENTS:-1}
SESSION="ser-live-e2e-$$"

command -v tmux >/dev/null || { echo "e2e: tmux is not installed" >&2; exit 2; }
[ -f "$AUDIO" ] || { echo "e2e: no audio file $AUDIO" >&2; exit 2; }
[ -x "$SER_LIVE" ] || { echo "e2e: no ser-live at $SER_LIVE" >&2; exit 2; }

capture() { tmux capture-pane -p -t "$SESSION" > "$OUT/$1"; }
wait_for() {  # wait_for PATTERN FILE: poll the pane until PATTERN shows, or fail at the deadline
  local deadline=$((SECONDS + TIMEOUT_S))
  while (( SECONDS < deadline )); do
    capture "$2" 2>/dev/null || true
    grep -qE "$1" "$OUT/$2" 2>/dev/null && return 0
    sleep 1
  done
  echo "e2e: timed out after ${TIMEOUT_S}s waiting for /$1/; last screen in $OUT/$2:" >&2
  cat "$OUT/$2" >&2
  return 1
}

# The pane runs in $OUT so the CSV lands there; the exit code is printed after the app has gone.
tmux new-session -d -s "$SESSION" -x 120 -y 36 -c "$OUT" \
  "'$SER_LIVE' --input '$AUDIO' --ws off $*; echo \"E2E-EXIT=\$?\"; sleep 600"
trap 'tmux kill-session -t "$SESSION" 2>/dev/null || true' EXIT

wait_for "input ended" screen-final.txt
rows=$(grep -cE '^│ +[0-9]+\.[0-9]{2}s +[0-9]+\.[0-9]{2}s +[a-z]' "$OUT/screen-final.txt" || true)
echo "e2e: input ended; $rows segment row(s) on screen"
(( rows >= MIN_SEGMENTS )) || { echo "e2e: expected at least $MIN_SEGMENTS segment rows" >&2; cat "$OUT/screen-final.txt" >&2; exit 1; }
grep -q "final" "$OUT/screen-final.txt" || { echo "e2e: no final prediction on screen" >&2; exit 1; }

tmux send-keys -t "$SESSION" s
deadline=$((SECONDS + 10))
until compgen -G "$OUT/ser-live-segments-*.csv" >/dev/null || (( SECONDS > deadline )); do sleep 0.5; done
csv=$(compgen -G "$OUT/ser-live-segments-*.csv" | head -1 || true)
[ -n "$csv" ] || { echo "e2e: pressing s wrote no CSV in $OUT" >&2; exit 1; }
echo "e2e: saved $(($(wc -l < "$csv") - 1)) segment(s) to $csv"

tmux send-keys -t "$SESSION" q
wait_for "E2E-EXIT=[0-9]+" screen-exit.txt
code=$(grep -oE "E2E-EXIT=[0-9]+" "$OUT/screen-exit.txt" | head -1 | cut -d= -f2)
echo "e2e: ser-live exited with $code; screens in $OUT"
[ "$code" = 0 ]
