#!/usr/bin/env bash
# Creates the MLServer baseline's own virtualenv (default /tmp/venv-mlserver), outside the
# repository: MLServer pins many packages (protobuf, grpcio, pydantic, fastapi ...) that would
# fight the service's own. The benchmark runner calls this when the venv is missing; it is never
# part of the test suite. Usage: benchmarks/setup_mlserver.sh [VENV_DIR]
set -euo pipefail
VENV="${1:-${MLSERVER_VENV:-/tmp/venv-mlserver}}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/mlserver" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # uvloop 0.22+ raises from asyncio.get_event_loop() outside a running loop, which kills
  # MLServer 1.7's inference-pool workers at start-up ("There is no current event loop").
  "$VENV/bin/pip" install --quiet "mlserver>=1.6" "mlserver-lightgbm>=1.6" "uvloop<0.22"
fi
"$VENV/bin/mlserver" --version
