#!/usr/bin/env bash
# GPU check, one command: every configuration `auto` can choose on any kind of machine (CPU, one
# GPU of compute capability >= 8.0, an older GPU, several GPUs, TPU) run on this machine's GPU
# for real (keras_tutorial.configurations: a few steps, a resume, an export checked against the
# Keras model), then each model timed with every setting auto; one table. It ends at once, in
# one line, where TensorFlow sees no GPU. Needs the project installed with its GPU extra in the
# current Python (pip install -e ".[gpu]"); installs nothing itself. Meant to fit in 10 minutes
# on one GPU. Extra flags go to the module, e.g. --kinds=gpu --models=lstm, or
# --norequire_gpu to run the same on a CPU with stand-ins.
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m keras_tutorial.configurations --require_gpu \
    --speed_examples=30000 "$@"
