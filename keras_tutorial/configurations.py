"""Every configuration `auto` can choose, run here: `python -m keras_tutorial.configurations`.

`distribute.choose` tells five kinds of machine apart: a CPU, one GPU of compute capability 8.0
or more, an older GPU, several GPUs and a TPU. For each kind and model this forces here the
precision, XLA and fast paths chosen there, with the strategy or a stand-in, and runs them: two
epochs on a little synthetic data, a resume from the first epoch's backup, and an export whose
`serving_default` takes uint8 pixels and returns float32 probabilities that agree with the Keras
model. What this machine lacks is checked statically: the training step traced as a GPU traces
it, each op with a kernel there. `benchmarks/gpu_check.sh` runs this on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import tempfile
import time
from typing import Iterator

from absl import flags

from keras_tutorial import cli

cli.import_tensorflow()  # Before any module that imports TensorFlow.

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_tutorial import (  # noqa: E402
    data, distribute, experiment, fastpath, loop, models, versions)
from keras_tutorial.config import TrainConfig  # noqa: E402
from keras_tutorial.errors import UserError  # noqa: E402

KINDS = {
    "cpu": distribute.Devices(cpu_cores=2),
    "gpu": distribute.Devices(gpus=1, compute_capability=(8, 0), cpu_cores=8),
    "older_gpu": distribute.Devices(gpus=1, compute_capability=(7, 0), cpu_cores=8),
    "gpus": distribute.Devices(gpus=4, compute_capability=(8, 0), cpu_cores=32),
    "tpu": distribute.Devices(tpu=True, cpu_cores=96),
}
# How far the export may stray from the Keras model: the serving copy computes in the same
# precision, but as one graph with the LSTM unrolled, which rounds differently.
EXPORT_TOLERANCE = {"float32": 1e-5, "mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}
BATCH_SIZE = 32
VALIDATION_SIZE = 32
# Nodes of a traced function that are no kernels (arguments, calls of nested functions), or
# that live in host memory on every device (string constants).
_NOT_KERNELS = {"Placeholder", "_Arg", "_Retval", "NoOp", "Const", "PartitionedCall",
                "StatefulPartitionedCall"}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One configuration as it runs here: its kind's choices, the strategy that runs for the
    kind's, the parts of that strategy left unrun, and whether to trace the step as a GPU."""

    kind: str
    model: str
    choices: distribute.Choices
    strategy: str
    unrun: tuple[str, ...]
    trace_as_gpu: bool


def plan(kind: str, model: str, here: distribute.Devices) -> Plan:
    """What `auto` chooses for `model` on `kind`, and how this machine runs it."""
    choices = distribute.choose(KINDS[kind], model)
    strategy, unrun = _stand_in(choices.strategy, here)
    return Plan(kind, model, choices, strategy, unrun,
                trace_as_gpu=choices.device_kind == "gpu" and not here.gpus)


def _stand_in(strategy: str, here: distribute.Devices) -> tuple[str, tuple[str, ...]]:
    """The strategy this machine runs for `strategy`, and what of it is left unrun."""
    if strategy == "tpu" and not here.tpu:
        return ("one_device" if here.gpus else "default"), ("TPUStrategy",)
    if strategy == "one_device" and not here.gpus:
        return "default", ("OneDeviceStrategy on /gpu:0",)
    if strategy == "mirrored" and here.gpus < 2:
        return "mirrored", ("all-reduce between GPUs (NCCL)",)
    return strategy, ()


def cpu_replicas(plans: list[Plan], here: distribute.Devices) -> int:
    """Logical CPUs for this process: two where a mirrored plan has no GPUs to mirror over
    (the split is process-wide, so every plan of the process runs with it)."""
    return 2 if not here.gpus and any(p.strategy == "mirrored" for p in plans) else 1


def train_config(plan_: Plan, directory: str, max_examples: int, replicas: int) -> TrainConfig:
    """The settings that force the plan's choices on this machine."""
    choices = plan_.choices
    return TrainConfig(
        model=plan_.model, dataset="synthetic", max_examples=max_examples, epochs=2,
        batch_size=BATCH_SIZE, validation_size=VALIDATION_SIZE, strategy=plan_.strategy,
        cpu_replicas=replicas, precision=choices.precision,
        jit_compile=str(choices.jit_compile).lower(),
        fast_paths=str(bool(choices.fast_paths)).lower(),
        verbose=False,
        workdir=os.path.join(directory, "run"), export_dir=os.path.join(directory, "export"))


def rewind(workdir: str, step: int) -> None:
    """Leaves a finished run's workdir as a run killed just after its backup at `step` would."""
    backup = os.path.join(workdir, "backup")
    tf.compat.v1.train.update_checkpoint_state(backup, os.path.join(backup, f"ckpt-{step}"))
    os.remove(os.path.join(workdir, "summary.json"))


def plan_row(plan_: Plan) -> dict:
    """A plan's row of the table before anything runs."""
    return {"kind": plan_.kind, "model": plan_.model, "strategy": plan_.strategy,
            "precision": plan_.choices.precision, "xla": plan_.choices.jit_compile,
            "fast_paths": list(plan_.choices.fast_paths), "unrun": list(plan_.unrun),
            "problems": []}


def run_plans(plans: list[Plan], max_examples: int, replicas: int) -> list[dict]:
    """Runs each plan (once for plans that run the same here) and checks its GPU trace."""
    runs = {}
    rows = []
    for plan_ in plans:
        row = plan_row(plan_)
        with tempfile.TemporaryDirectory() as directory:
            config = train_config(plan_, directory, max_examples, replicas)
            if plan_.trace_as_gpu:
                row["gpu_trace"] = gpu_trace(config, plan_.choices)
            same = (plan_.model, plan_.strategy, config.precision, config.jit_compile,
                    config.fast_paths)
            if same not in runs:
                runs[same] = {"ran_as": f"{plan_.kind}/{plan_.model}",
                              **train_and_check(config)}
        row.update(runs[same])
        row["problems"] = row.get("gpu_trace", {}).get("problems", []) + row["problems"]
        rows.append(row)
    return rows


def train_and_check(config: TrainConfig) -> dict:
    """Trains, resumes from the first epoch's backup, exports, and checks what came out."""
    started = time.perf_counter()
    try:
        first = experiment.run(dataclasses.replace(config, export=False))
        steps_per_epoch = loop.steps_per_epoch(first.summary["train_examples"],
                                               config.batch_size, 1)
        rewind(config.workdir, steps_per_epoch)
        resumed = experiment.run(config)
    except Exception as e:  # A configuration that fails is a row of the table, not the end.
        return {"problems": [f"training failed: {type(e).__name__}: {versions.first_line(e)}"],
                "seconds": time.perf_counter() - started}
    summary = resumed.summary
    images = data.load_arrays(config.dataset, None, config.max_examples, config.seed).x_test
    result = {"resumed_at": (summary["resumed_from"] or {}).get("global_step"),
              "steps_per_epoch": steps_per_epoch, "test_loss": summary["test_loss"],
              "recorded": {key: summary[key] for key in ("strategy", "precision",
                                                         "jit_compile", "fast_paths")},
              **check_export(summary["export_path"], resumed.model, images)}
    problems = []
    if result["resumed_at"] != steps_per_epoch:
        problems.append(f"resumed at step {result['resumed_at']}, not {steps_per_epoch}")
    if not np.isfinite(summary["test_loss"]):
        problems.append(f"test loss {summary['test_loss']}")
    if result["export_max_difference"] > EXPORT_TOLERANCE[config.precision]:
        problems.append(f"the export's probabilities differ from the Keras model's by "
                        f"{result['export_max_difference']:.2g}")
    if (result["export_input"], result["export_output"]) != ("uint8", "float32"):
        problems.append(f"the export takes {result['export_input']} and returns "
                        f"{result['export_output']}")
    return {**result, "problems": problems, "seconds": time.perf_counter() - started}


def check_export(path: str, model: keras.Model, images: np.ndarray) -> dict:
    """The exported signature's dtypes, and how far its probabilities are from the model's."""
    serve = tf.saved_model.load(path).signatures["serving_default"]
    probabilities = serve(images=tf.constant(images))["probabilities"]
    expected = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)).numpy()
    return {"export_input": serve.structured_input_signature[1]["images"].dtype.name,
            "export_output": probabilities.dtype.name,
            "export_max_difference": float(np.max(np.abs(probabilities.numpy() - expected))),
            "export_agreement": float(np.mean(probabilities.numpy().argmax(1)
                                              == expected.argmax(1)))}


def gpu_trace(config: TrainConfig, choices: distribute.Choices) -> dict:
    """The training step of `config` with `choices` traced as a GPU traces it: whether the
    LSTM takes cuDNN's kernel, and every op without a kernel for it on a GPU (XLA's GPU
    compiler, for the part it compiles)."""
    _register_xla_kernels()
    pipelines = data.make_pipelines(data.synthetic_arrays(BATCH_SIZE, 1, config.seed),
                                    BATCH_SIZE, config.seed, 0)
    runtime = experiment.Runtime(choices, tf.distribute.get_strategy(), distribute.Cluster(),
                                 choices.intra_op_threads)
    with fastpath.lstm_traced_as_on_a_gpu(), _precision(choices.precision), \
            tempfile.TemporaryDirectory() as backup_dir:
        trainer = experiment.build_trainer(dataclasses.replace(config.resolved(), epochs=1),
                                           runtime, pipelines, backup_dir)
        step, gradients = trainer.traced_step(
            tf.TensorSpec((BATCH_SIZE,) + data.IMAGE_SHAPE, tf.uint8),
            tf.TensorSpec([BATCH_SIZE], tf.int32))
    compiled = _nodes(gradients) if choices.jit_compile else []
    in_xla = {node.SerializeToString() for node in compiled}
    problems = [f"XLA cannot compile {_described(node)} on a GPU" for node in
                _unique(node for node in compiled if not _has_kernel(node, "XLA_GPU_JIT"))]
    problems += [f"{_described(node)} has no GPU kernel" for node in _unique(
        node for node in _nodes(step)
        if node.SerializeToString() not in in_xla and not _has_kernel(node, "GPU"))]
    return {"cudnn_lstm": any(node.op.startswith("CudnnRNN") for node in _nodes(step)),
            "problems": problems}


@contextlib.contextmanager
def _precision(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to `policy`, and set back after."""
    previous = keras.mixed_precision.global_policy()
    distribute.set_precision(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@functools.cache
def _register_xla_kernels() -> None:
    """XLA lists its kernels (XLA_GPU_JIT among them) once it has compiled something."""
    tf.function(lambda: tf.constant(1.0) + 1.0, jit_compile=True, autograph=False)()


def _nodes(function: tf.types.experimental.ConcreteFunction) -> list:
    """Every kernel node of a traced function, those of its nested functions included."""
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [node for f in graph.library.function for node in f.node_def]
    return [node for node in nodes if node.op not in _NOT_KERNELS]


def _attr_types(value) -> list[int]:
    """The dtypes an attribute holds: none, one, or a list."""
    if value is None:
        return []
    return list(value.list.type) if value.HasField("list") else [value.type] if value.type else []


def _has_kernel(node, device_type: str) -> bool:
    """Whether a kernel for `device_type` accepts the node's types."""
    return any(kernel.device_type in (device_type, "DEFAULT") and all(
        set(_attr_types(node.attr.get(c.name))) <= set(c.allowed_values.list.type)
        for c in kernel.constraint)
        for kernel in fastpath.registered_kernels(node.op))


def _described(node) -> str:
    """An op with its dtypes, as a problem names it: `CudnnRNNV3(bfloat16, int32)`."""
    types = {tf.as_dtype(t).name for value in node.attr.values() for t in _attr_types(value)}
    return f"{node.op}({', '.join(sorted(types))})"


def _unique(nodes: Iterator) -> list:
    """One node per description, in order."""
    seen = {}
    for node in nodes:
        seen.setdefault(_described(node), node)
    return list(seen.values())


def speed(model: str, examples: int, replicas: int) -> dict:
    """Examples per second of `model` with every setting `auto`, in its second epoch."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        summary = experiment.run(TrainConfig(
            model=model, dataset="synthetic", max_examples=examples, epochs=2,
            validation_size=0, cpu_replicas=replicas, export=False, verbose=False,
            workdir=os.path.join(directory, "run"))).summary
    return {"kind": "auto here", "model": model, "strategy": summary["strategy"],
            "precision": summary["precision"], "xla": summary["jit_compile"],
            "fast_paths": summary["fast_paths"], "unrun": [], "problems": [],
            "examples_per_sec": summary["train_examples_per_sec"],
            "seconds": time.perf_counter() - started}


COLUMNS = ("kind", "model", "runs here as", "resumed", "export", "not run here",
           "GPU trace", "examples/s", "seconds", "result")


def table_cells(row: dict) -> tuple[str, ...]:
    """One row of the table as text, in the order of COLUMNS."""
    ran = (f"{row['strategy']}, {row['precision']}, " + ("XLA" if row["xla"] else "no XLA")
           + (", fast paths" if row["fast_paths"] else ""))
    if row.get("ran_as", f"{row['kind']}/{row['model']}") != f"{row['kind']}/{row['model']}":
        ran += f" (the run of {row['ran_as']})"
    resumed = f"at step {row['resumed_at']}" if "resumed_at" in row else ""
    export = ("" if "export_max_difference" not in row else
              f"{row['export_input']}->{row['export_output']}, "
              f"max diff {row['export_max_difference']:.1g}")
    trace = row.get("gpu_trace")
    traced = "" if trace is None else ("cuDNN LSTM, " if trace["cudnn_lstm"] else "") + (
        "kernels ok" if not trace["problems"] else "kernels missing")
    speed_ = f"{row['examples_per_sec']:.0f}" if row.get("examples_per_sec") else ""
    seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
    return (row["kind"], row["model"], ran, resumed, export, "; ".join(row["unrun"]), traced,
            speed_, seconds, "; ".join(row["problems"]) or "ok")


def format_table(rows: list[dict]) -> str:
    """Aligned columns, one line per configuration."""
    cells = [COLUMNS] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in cells)


def define_flags() -> None:
    flags.DEFINE_list("kinds", list(KINDS), "Kinds of machine whose choices run here.")
    flags.DEFINE_list("models", list(models.MODELS), "Models to run.")
    flags.DEFINE_integer("max_examples", 192, "Synthetic examples of each split ("
                         f"{VALIDATION_SIZE} of the training ones validate).",
                         lower_bound=VALIDATION_SIZE + BATCH_SIZE)
    flags.DEFINE_integer("speed_examples", 0, "Also train each model with every setting auto "
                         "on this many examples, and report its speed (0: do not).",
                         lower_bound=0)
    flags.DEFINE_bool("require_gpu", False, "End at once, in one line, if TensorFlow sees no "
                      "GPU.")
    flags.DEFINE_enum("format", "table", ("table", "json"), "Print a table or JSON rows.")


def _checked(names: list[str], known, what: str) -> list[str]:
    for name in names:
        if name not in known:
            raise UserError(f"unknown {what} '{name}', expected one of {', '.join(known)}")
    return names


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    values = flags.FLAGS
    here = distribute.detect_devices()
    if values.require_gpu and not here.gpus:
        raise UserError("TensorFlow sees no GPU here (install with pip install '.[gpu]' on a "
                        "machine with an NVIDIA GPU and its driver)")
    plans = [plan(kind, model, here) for kind in _checked(values.kinds, KINDS, "kind")
             for model in _checked(values.models, models.MODELS, "model")]
    replicas = cpu_replicas(plans, here)
    distribute.split_cpu(replicas)  # Before anything starts TensorFlow's devices.
    rows = run_plans(plans, values.max_examples, replicas)
    rows += [speed(model, values.speed_examples, replicas)
             for model in values.models if values.speed_examples]
    print(json.dumps(rows) if values.format == "json" else format_table(rows), flush=True)
    failed = [row for row in rows if row["problems"]]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} configurations failed: "
                        + ", ".join(f"{row['kind']}/{row['model']}" for row in failed))


if __name__ == "__main__":
    cli.run(main, define_flags)
