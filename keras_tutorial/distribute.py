"""How a model runs on this machine: strategy, precision, XLA, threads and fast paths.

`choose` is the one decision, a pure function of a `Devices` description (so every machine's
choice can be tested on any machine); the functions after it apply a choice. `tf.distribute` is
the engine: this module only decides which strategy to build, splits the CPU into logical
devices when asked, and reads the cluster from `TF_CONFIG`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os

from absl import logging
import keras
import tensorflow as tf

from keras_tutorial.errors import UserError


# XLA per device kind and model, as measured (benchmarks/README.md): on CPUs it slowed every
# model; on accelerators it fuses the many small ops, except that the LSTM on a GPU would lose
# cuDNN's kernel.
JIT_WHEN_AUTO = {
    "cpu": {"mlp": False, "cnn": False, "lstm": False},
    "gpu": {"mlp": True, "cnn": True, "lstm": False},
    "tpu": {"mlp": True, "cnn": True, "lstm": True},
}

# Threads one op may use on a CPU-only machine, by model and CPU vendor, where one thread was
# measured to beat TensorFlow's default of every core (benchmarks/README.md, "Defaults and the
# measurement behind each"). On Intel's 2-core Xeons the MLP's small matmuls gained nothing from
# a second thread, which then ran the input pipeline and independent ops instead; on AMD's EPYC
# two threads did speed them up. The LSTM's batch slices each keep a core to themselves, which
# holds only where there are as many cores as slices.
INTRA_OP_THREADS_ON_CPU = {("mlp", "GenuineIntel"): 1, ("lstm", "GenuineIntel"): 1}


@dataclasses.dataclass(frozen=True)
class Devices:
    """The machine as the choices see it: found by `detect_devices`, or described in a test."""

    gpus: int = 0
    compute_capability: tuple[int, int] | None = None
    tpu: bool = False
    cpu_cores: int = 1
    workers: int = 1
    cpu_vendor: str = ""  # As /proc/cpuinfo names it: GenuineIntel, AuthenticAMD; "" unknown.


@dataclasses.dataclass(frozen=True)
class Choices:
    """How one model trains on one machine, final: every `auto` resolved and every consequence
    worked out, so that the model, the optimizer and the loop read these fields and decide
    nothing. The defaults are stock Keras on the default strategy in float32."""

    strategy: str = "default"
    device_kind: str = "cpu"
    precision: str = "float32"
    loss_scaling: bool = False  # float16 gradients underflow unless the loss is scaled.
    jit_compile: bool = False
    intra_op_threads: int = 0  # 0: TensorFlow's default.
    # The fast paths (fastpath.py), each on or off by itself.
    fused_optimizer: bool = False  # FusedAdam or FusedSGD.
    fused_batch_norm: bool = False  # The CNN's batch norm on TensorFlow's fused kernel.
    lstm_slices: int = 1  # Parts of the LSTM's batch run side by side (BatchParallelLSTM).
    lstm_fused_chain: bool = False  # Each of those parts as one `fused_lstm_chain`.
    step_slices: int = 1  # Parts of the MLP's batch the training step runs side by side.
    # Keras's LSTM may take cuDNN's kernel (it does where it finds a GPU); not in a step that
    # XLA compiles, which has no such kernel.
    lstm_cudnn: bool = True

    @property
    def fast_paths(self) -> tuple[str, ...]:
        """The names of the fast paths on, as the log and summary.json list them."""
        on = {"fused_optimizer": self.fused_optimizer, "fused_batch_norm": self.fused_batch_norm,
              "lstm_slices": self.lstm_slices > 1, "lstm_fused_chain": self.lstm_fused_chain,
              "step_slices": self.step_slices > 1}
        return tuple(name for name, taken in on.items() if taken)


def _cpu_threads_per_op(model: str, devices: Devices, lstm_slices: int) -> int:
    """Threads per op on a CPU-only machine (0: TensorFlow's default). One thread per op for
    the LSTM's two slices on more cores than two would leave the other cores idle."""
    if model == "lstm" and lstm_slices != devices.cpu_cores:
        return 0
    return INTRA_OP_THREADS_ON_CPU.get((model, devices.cpu_vendor), 0)


def choose(devices: Devices, model: str, strategy: str = "auto", precision: str = "auto",
           jit_compile: str = "auto", intra_op_threads: int | None = None,
           fast_paths: str = "auto", deterministic: bool = False, pooling: str = "max",
           batch_norm: bool = True) -> Choices:
    """Resolves every `auto` for `model` on `devices`, settings as `TrainConfig` checked them:
    a pure function of its arguments.

    The fast paths and the batch slices were measured to pay on CPUs only, so accelerators run
    stock Keras; the slices need a CPU's cores even when the fast paths are asked for elsewhere,
    and the LSTM's fused chains and the MLP's step slices pay only with one thread per op, each
    slice keeping a core. XLA compiles neither cuDNN's LSTM nor the fused chain's backward, so a
    step it compiles has neither. XLA has no deterministic gradient of max pooling ("GPU
    MaxPool gradient ops do not yet have a deterministic XLA implementation", raised on CPUs
    too), so a deterministic CNN that pools so runs without it.
    """
    name = choose_strategy_name(strategy, devices.workers, devices.gpus, devices.tpu)
    if devices.workers > 1 and name != "multi_worker":
        raise UserError(f"TF_CONFIG describes {devices.workers} workers but --strategy={name}; "
                        "use --strategy=multi_worker or auto")
    kind = "tpu" if name == "tpu" else "gpu" if devices.gpus else "cpu"
    xla_nondeterministic = deterministic and model == "cnn" and pooling == "max"
    if jit_compile == "true" and xla_nondeterministic:
        raise UserError("--deterministic with --jit_compile=true: XLA has no deterministic "
                        "gradient of max pooling; use --jit_compile=false or --pooling=average")
    jit = (JIT_WHEN_AUTO[kind][model] and not xla_nondeterministic if jit_compile == "auto"
           else jit_compile == "true")
    fast = kind == "cpu" if fast_paths == "auto" else fast_paths == "true"
    slices = 2 if fast and kind == "cpu" and devices.cpu_cores > 1 else 1
    threads = (intra_op_threads if intra_op_threads is not None else 0 if kind != "cpu"
               else _cpu_threads_per_op(model, devices, slices))
    chosen_precision = choose_precision(precision, kind, devices.compute_capability)
    return Choices(
        strategy=name,
        device_kind=kind,
        precision=chosen_precision,
        loss_scaling=chosen_precision == "mixed_float16",
        jit_compile=jit,
        intra_op_threads=threads,
        fused_optimizer=fast,
        fused_batch_norm=fast and model == "cnn" and batch_norm,
        lstm_slices=slices if model == "lstm" else 1,
        lstm_fused_chain=model == "lstm" and slices > 1 and threads == 1 and not jit,
        step_slices=slices if model == "mlp" and threads == 1 else 1,
        lstm_cudnn=not jit)


def detect_devices(num_workers: int = 1) -> Devices:
    """This machine's devices, found without initialising TensorFlow's runtime."""
    gpus = tf.config.list_physical_devices("GPU")
    capability = None
    if gpus:
        capability = tuple(tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0)))
    return Devices(gpus=len(gpus), compute_capability=capability, tpu=_tpu_present(),
                   cpu_cores=os.cpu_count() or 1, workers=num_workers,
                   cpu_vendor=cpu_info("vendor_id"))


def cpu_info(field: str, path: str = "/proc/cpuinfo") -> str:
    """The first CPU's `field` as Linux lists it ("vendor_id": GenuineIntel, AuthenticAMD;
    "model name"); "" where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


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

    Must run before TensorFlow initialises its devices, that is before any tensor is made. A
    CPU already split that way is left as it is, and so is any CPU when one replica is asked
    for: the default strategy runs on the first logical device (a notebook that split the CPU
    for a mirrored run can still train on one).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    if replicas == 1 or len(tf.config.get_logical_device_configuration(cpu) or [None]) == replicas:
        return
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
    return bool(os.environ.get("TPU_NAME") or glob.glob("/dev/accel*")
                or glob.glob("/dev/vfio/[0-9]*"))


def choose_strategy_name(requested: str, num_workers: int, num_gpus: int, tpu: bool) -> str:
    """Resolves `auto`: cluster -> multi_worker, TPU -> tpu, GPUs -> mirrored or one_device."""
    if requested != "auto":
        return requested
    if num_workers > 1:
        return "multi_worker"
    if tpu:
        return "tpu"
    if num_gpus > 1:
        return "mirrored"
    return "one_device" if num_gpus == 1 else "default"


def set_intra_op_threads(threads: int, required: bool) -> int:
    """Sets the threads one op may use; returns those in effect.

    It can only change before TensorFlow initialises; after that (a notebook, a test) a
    `required` setting is an error, and an automatic one leaves TensorFlow's as it is.
    """
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if current == threads:
        return threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        if required:
            raise UserError(f"intra_op_threads={threads} must be set before TensorFlow "
                            "initialises (in a notebook: first cell, before anything else runs)"
                            ) from None
        logging.info("TensorFlow already started: threads per op stay %d (%d was chosen)",
                     current, threads)
        return current
    return threads


def make_strategy(name: str, devices: Devices) -> tf.distribute.Strategy:
    """Builds the tf.distribute strategy that a resolved `name` names on `devices`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if not devices.gpus:
            raise UserError("--strategy=one_device needs a GPU and none was found; use "
                            "--strategy=default, or mirrored with --cpu_replicas=N")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        cpus = None if devices.gpus else tuple(
            d.name for d in tf.config.list_logical_devices("CPU"))
        return _mirrored(cpus)
    if name == "multi_worker":
        return _multi_worker()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise UserError(f"--strategy=tpu: no TPU could be reached ({e})") from None
    return tf.distribute.TPUStrategy(resolver)


@functools.cache
def _mirrored(devices: tuple[str, ...] | None) -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy per process and devices: a second one reuses the first's collective
    keys, and its all-reduce fails on the first model's shapes (tensorflow/tensorflow#62790)."""
    return tf.distribute.MirroredStrategy(devices and list(devices))


@functools.cache
def _multi_worker() -> tf.distribute.MultiWorkerMirroredStrategy:
    """One per process: its collectives are configured once, when the first is made."""
    return tf.distribute.MultiWorkerMirroredStrategy()


def choose_precision(requested: str, kind: str, compute_capability: tuple[int, int] | None) -> str:
    """Resolves `auto`: bfloat16 on TPUs and GPUs of compute capability >= 8.0, float16 with
    loss scaling on older GPUs, float32 on CPUs (which gain nothing from half precision)."""
    if requested != "auto":
        return requested
    if kind == "tpu" or (kind == "gpu" and compute_capability and compute_capability >= (8, 0)):
        return "mixed_bfloat16"
    return "mixed_float16" if kind == "gpu" else "float32"


def set_precision(policy: str) -> None:
    """Sets Keras's global dtype policy; models keep their logits in float32 themselves."""
    keras.mixed_precision.set_global_policy(policy)


