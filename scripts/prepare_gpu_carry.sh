#!/usr/bin/env bash
# Prepares what the offline GPU machine lacks, inside the checkout (both folders git-ignored):
#   .whl/                  ml_collections (pure Python; its needs absl-py and PyYAML are there already)
#   data/fashion_mnist/    the four Fashion-MNIST IDX .gz files (~30 MB), from $SPARK_JAX_DATA_DIR or ARG
# Run once here, with network:  scripts/prepare_gpu_carry.sh [DATA_DIR]
# then on the GPU machine (carry .whl and data):  scripts/gpu_suite.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-${SPARK_JAX_DATA_DIR:-../shared/data}}"
[ -f "$src/fashion_mnist/train-images-idx3-ubyte.gz" ] && src="$src/fashion_mnist"
mkdir -p .whl data/fashion_mnist
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl "ml_collections==1.1.0"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$src/$f" ] || { echo "error: $src/$f not found: pass the Fashion-MNIST folder as the argument" >&2; exit 2; }
    cp "$src/$f" data/fashion_mnist/
done
du -sh .whl data
