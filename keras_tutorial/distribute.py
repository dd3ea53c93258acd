"""Strategy, numeric precision and XLA, chosen from the hardware found.

`tf.distribute` is the engine: this module only decides which strategy to build, splits the CPU
into logical devices when asked, and reads the cluster from `TF_CONFIG`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import keras
import tensorflow as tf

from keras_tutorial.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")

# XLA per model and device kind. Measured on 2-core CPU machines in the training loop
# (benchmarks/README.md): the MLP drops to 0.72-0.87x, the CNN to 0.40-0.47x; the LSTM gained
# 1.09-1.47x on an AMD EPYC (AVX2) but ran at 0.75-1.06x (median 0.83x) on the Intel Xeon
# (AVX-512) of later runs, and compiling put 4 s into its first epoch, so it stays off (with the
# batch halves of models.BatchParallelLSTM it was 0.46-0.55x there). On accelerators XLA fuses
# the many small ops; the LSTM stays off it on GPUs, where it would lose cuDNN's kernel.
JIT_WHEN_AUTO = {
    "cpu": {"mlp": False, "cnn": False, "lstm": False},
    "gpu": {"mlp": True, "cnn": True, "lstm": False},
    "tpu": {"mlp": True, "cnn": True, "lstm": True},
}


# Threads one op may use on a CPU-only machine, per model (0: TensorFlow's default, every
# core). The MLP's matmuls are too small to split across cores with profit; with one thread per
# op the other core runs independent ops and the input pipeline. Measured on the 2-core machine
# in separate processes (benchmarks/README.md): MLP 1.3x with one thread, CNN 0.87x, LSTM
# within noise.
INTRA_OP_THREADS_ON_CPU = {"mlp": 1, "cnn": 0, "lstm": 0}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker job (one worker, index 0, without TF_CONFIG)."""

    num_workers: int = 1
    task_index: int = 0

    @property
    def is_chief(self) -> bool:
        return self.task_index == 0


def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices, so `mirrored` can run without GPUs.

    Must run before TensorFlow initialises its devices, that is before any tensor is made.
    """
    if replicas < 1:
        raise UserError(f"cpu_replicas must be at least 1, got {replicas}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    except RuntimeError:
        raise UserError("cpu_replicas must be set before TensorFlow initialises its devices "
                        "(in a notebook: first cell, before anything else runs)") from None


def read_cluster(tf_config: str | None) -> Cluster:
    """Parses `TF_CONFIG` (the JSON that tf.distribute reads) into this worker's place."""
    if not tf_config:
        return Cluster()
    try:
        parsed = json.loads(tf_config)
        workers = parsed["cluster"]["worker"]
        task = parsed["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
                        '{"cluster": {"worker": ["host:port", ...]}, '
                        '"task": {"type": "worker", "index": N}}') from None
    if not isinstance(workers, list) or not workers:
        raise UserError(f"TF_CONFIG cluster.worker must be a non-empty list, got {workers!r}")
    if task_type != "worker" or not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG task {task_type}:{index} is not one of the "
                        f"{len(workers)} workers (types other than 'worker' are not used)")
    return Cluster(num_workers=len(workers), task_index=index)


def _tpu_present() -> bool:
    # Cheap signs only: probing for a TPU through its resolver can wait on a network metadata
    # server for a long time on machines that have none.
    return bool(os.environ.get("TPU_NAME") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def choose_strategy_name(requested: str, num_workers: int, num_gpus: int, tpu: bool) -> str:
    """Resolves `auto`: cluster -> multi_worker, TPU -> tpu, GPUs -> mirrored or one_device."""
    if requested not in STRATEGIES:
        raise UserError(f"unknown strategy '{requested}', expected one of {', '.join(STRATEGIES)}")
    if requested != "auto":
        return requested
    if num_workers > 1:
        return "multi_worker"
    if tpu:
        return "tpu"
    if num_gpus > 1:
        return "mirrored"
    return "one_device" if num_gpus == 1 else "default"


def has_accelerator() -> bool:
    """Whether a GPU or TPU is present (cheap signs only, before TensorFlow initialises)."""
    return bool(tf.config.list_physical_devices("GPU")) or _tpu_present()


def choose_intra_op_threads(requested: int | None, model: str, accelerated: bool) -> int:
    """Resolves `None` (auto): the measured per-model choice on CPUs, TensorFlow's default
    where an accelerator does the arithmetic."""
    if requested is not None:
        return requested
    return 0 if accelerated else INTRA_OP_THREADS_ON_CPU[model]


def set_intra_op_threads(threads: int, required: bool) -> bool:
    """Sets the threads one op may use; returns whether they are now `threads`.

    It can only change before TensorFlow initialises; after that (a notebook, a test) a
    `required` setting is an error, and an automatic one leaves TensorFlow's as it is.
    """
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        if required:
            raise UserError(f"intra_op_threads={threads} must be set before TensorFlow "
                            "initialises (in a notebook: first cell, before anything else runs)"
                            ) from None
        return False
    return True


def make_strategy(requested: str, cluster: Cluster) -> tf.distribute.Strategy:
    """Builds the tf.distribute strategy that `requested` names on this machine."""
    gpus = tf.config.list_physical_devices("GPU")
    name = choose_strategy_name(requested, cluster.num_workers, len(gpus), _tpu_present())
    if cluster.num_workers > 1 and name != "multi_worker":
        raise UserError(f"TF_CONFIG describes {cluster.num_workers} workers but "
                        f"--strategy={name}; use --strategy=multi_worker or auto")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if not gpus:
            raise UserError("--strategy=one_device needs a GPU and none was found; use "
                            "--strategy=default, or mirrored with --cpu_replicas=N")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise UserError(f"--strategy=tpu: no TPU could be reached ({e})") from None
    return tf.distribute.TPUStrategy(resolver)


def device_kind(strategy: tf.distribute.Strategy) -> str:
    """'tpu', 'gpu' or 'cpu': the kind of device the strategy's replicas run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def choose_precision(requested: str, kind: str, compute_capability: tuple[int, int] | None) -> str:
    """Resolves `auto`: bfloat16 on TPUs and GPUs of compute capability >= 8.0, float16 with
    loss scaling on older GPUs, float32 on CPUs (which gain nothing from half precision)."""
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision '{requested}', expected one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if kind == "tpu" or (kind == "gpu" and compute_capability and compute_capability >= (8, 0)):
        return "mixed_bfloat16"
    return "mixed_float16" if kind == "gpu" else "float32"


def gpu_compute_capability() -> tuple[int, int] | None:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability",
                                                                        (0, 0)))


def set_precision(policy: str) -> None:
    """Sets Keras's global dtype policy; models keep their logits in float32 themselves."""
    keras.mixed_precision.set_global_policy(policy)


def choose_jit(requested: str, model: str, kind: str) -> bool:
    """Resolves `auto` from the measured table `JIT_WHEN_AUTO`."""
    if requested not in JIT_CHOICES:
        raise UserError(f"unknown jit_compile '{requested}', expected one of "
                        f"{', '.join(JIT_CHOICES)}")
    if requested != "auto":
        return requested == "true"
    return JIT_WHEN_AUTO[kind][model]
