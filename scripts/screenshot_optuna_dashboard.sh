#!/usr/bin/env bash
# Regenerates docs/optuna-dashboard.png: a real `optuna-dashboard` on the Optuna storage of a small tlbench
# search (6 trials of lr × weight decay on the embedded digits), photographed by Debian's headless Chromium
# (apt-get install chromium).
#   bash scripts/screenshot_optuna_dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
OMP_NUM_THREADS=1 "$REPO/.venv/bin/tlbench" search --n-trials 6 --workers 2 --storage "sqlite:///$WORK/optuna.db" --study-name digits_lr \
  backbone=small_cnn data=digits data.synthetic_size=1000 trainer.max_epochs=3 trainer.steps_per_epoch=40 > search.log 2>&1
PORT=$("$REPO/.venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$REPO/.venv/bin/optuna-dashboard" "sqlite:///$WORK/optuna.db" --host 127.0.0.1 --port "$PORT" > dashboard.log 2>&1 &
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/api/studies" >/dev/null && break; sleep 1; done
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --window-size=1600,1000 \
  --virtual-time-budget=20000 --screenshot="$REPO/docs/optuna-dashboard.png" \
  "http://127.0.0.1:$PORT/dashboard/studies/1" > chrome.log 2>&1
echo "wrote docs/optuna-dashboard.png"
