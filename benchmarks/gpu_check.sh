#!/usr/bin/env bash
# GPU check: trains each model for a short fixed budget with --strategy=auto --precision=auto
# and prints, per model, what was chosen (strategy, replicas, precision, jit) and the speed,
# as one JSON object per line. Needs the project installed with its GPU extra in the current
# Python (pip install -e ".[gpu]"); installs nothing itself. About 3-5 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print({"tensorflow": tf.__version__, "gpus": [tf.config.experimental.get_device_details(g) for g in gpus]})
if not gpus:
    raise SystemExit("gpu_check: TensorFlow sees no GPU; install with pip install -e '.[gpu]'")
PY
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for model in mlp cnn lstm; do
  "$python" -m keras_tutorial.train --model="$model" --dataset=synthetic --max_examples=30000 \
      --validation_size=1000 --epochs=3 --batch_size=256 --strategy=auto --precision=auto \
      --noexport --workdir="$work/$model" --noverbose > "$work/$model.log" 2>&1 \
    || { tail -20 "$work/$model.log"; exit 1; }
  "$python" -c "
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({k: s[k] for k in ('model', 'strategy', 'replicas', 'precision', 'jit_compile',
      'steps_per_execution', 'first_epoch_examples_per_sec', 'train_examples_per_sec',
      'test_accuracy')}))" "$work/$model/summary.json"
done
