#!/usr/bin/env bash
# The GPU suite on a machine without network: installs the carried wheels (.whl/) into /tmp/site, reads
# the data from data/ of the checkout, writes OUT_DIR (default $OUT). BUILD.md "GPU".
#   scripts/gpu_suite.sh OUT_DIR [--dry-run] [--budget_s=S]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-}}"; shift || true
[ -n "$out" ] || { echo "error: usage: scripts/gpu_suite.sh OUT_DIR [--dry-run]" >&2; exit 2; }
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export SPARK_JAX_DATA_DIR="${SPARK_JAX_DATA_DIR:-$PWD/data}"
exec python3 -m benchmarks.device_suite "$out" "$@"
