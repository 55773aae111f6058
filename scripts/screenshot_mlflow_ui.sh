#!/usr/bin/env bash
# Regenerates docs/mlflow-ui.png (runs table) and docs/mlflow-models.png (Models tab): a real `mlflow ui` on a fresh store holding one small tlbench sweep
# (source-only vs DANN, 2 seeds), photographed by Debian's headless Chromium (apt-get install chromium).
#   bash scripts/screenshot_mlflow_ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
OMP_NUM_THREADS=1 "$REPO/.venv/bin/tlbench" -m backbone=small_cnn data=digits data.synthetic_size=1000 \
  trainer.max_epochs=3 trainer.steps_per_epoch=40 trainer.enable_progress_bar=false \
  adapt=source_only,dann seed=0,1 tracking.experiment=digits_da > sweep.log 2>&1
PORT=$("$REPO/.venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$REPO/.venv/bin/mlflow" ui --backend-store-uri "sqlite:///$WORK/mlflow.db" --host 127.0.0.1 --port "$PORT" > ui.log 2>&1 &
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
EXPERIMENT=$("$REPO/.venv/bin/python" -c "
from mlflow.tracking import MlflowClient
print(MlflowClient('sqlite:///$WORK/mlflow.db').get_experiment_by_name('digits_da').experiment_id)")
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --window-size=1900,800 \
  --virtual-time-budget=20000 --screenshot="$REPO/docs/mlflow-ui.png" \
  "http://127.0.0.1:$PORT/#/experiments/$EXPERIMENT/runs" > chrome.log 2>&1
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --window-size=2600,500 \
  --virtual-time-budget=20000 --screenshot="$REPO/docs/mlflow-models.png" \
  "http://127.0.0.1:$PORT/#/experiments/$EXPERIMENT/models" > chrome.log 2>&1
echo "wrote docs/mlflow-ui.png and docs/mlflow-models.png"
