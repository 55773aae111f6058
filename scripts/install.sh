#!/usr/bin/env bash
# Create ./.venv and install tlbench into it (editable: the Hydra configs live in ./conf).
# Idempotent: a second call only checks. Installs Debian's Fashion-MNIST package where apt is usable, and fetches
# Debian's package index with long descriptions (the offline text task) into the tlbench cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import tlbench, torch, pytorch_lightning, mlflow, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.tlbench-installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch .venv/.tlbench-installed
fi
# Offline real data shipped by Debian (optional: tlbench says how to get it when it is missing).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "note: could not install Debian package dataset-fashion-mnist; the 'fashion' datasets need it or TLBENCH_DATA"
fi
# PostgreSQL server binaries for the scale-out tests (a throwaway cluster each; optional for users).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq postgresql >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)) \
    || echo "note: could not install Debian package postgresql; the PostgreSQL scale-out tests will be skipped"
fi
# Debian's package index with long descriptions (Translation-en) for the text task data=debian_synopsis_to_description:
# fetched into the tlbench cache with apt's own client, leaving the system's apt lists and caches as they are.
DEBIAN_LISTS="${TLBENCH_CACHE:-$HOME/.cache/tlbench}/debian-lists"
if ! ls "$DEBIAN_LISTS"/*Translation-en* >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  mkdir -p "$DEBIAN_LISTS/partial" "$DEBIAN_LISTS/cache/archives/partial"
  timeout 300 apt-get update -qq -o Dir::State::Lists="$DEBIAN_LISTS" -o Dir::Cache="$DEBIAN_LISTS/cache" \
    -o Acquire::Languages=en >/dev/null 2>&1 \
    || echo "note: could not fetch Debian's package index with long descriptions; data=debian_synopsis_to_description needs it"
fi
