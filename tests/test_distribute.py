import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from keras_tutorial import distribute
from keras_tutorial.errors import UserError


@pytest.mark.parametrize("requested, workers, gpus, tpu, expected", [
    ("auto", 1, 0, False, "default"),
    ("auto", 1, 1, False, "one_device"),
    ("auto", 1, 4, False, "mirrored"),
    ("auto", 1, 0, True, "tpu"),
    ("auto", 3, 8, True, "multi_worker"),
    ("mirrored", 1, 0, False, "mirrored"),
])
def test_auto_strategy_follows_the_hardware(requested, workers, gpus, tpu, expected):
    assert distribute.choose_strategy_name(requested, workers, gpus, tpu) == expected


CPU, GPU_AMPERE, GPU_VOLTA = (distribute.Devices(cpu_cores=2),
                              distribute.Devices(gpus=1, compute_capability=(8, 0), cpu_cores=8),
                              distribute.Devices(gpus=1, compute_capability=(7, 0), cpu_cores=8))
INTEL, AMD = (distribute.Devices(cpu_cores=2, cpu_vendor="GenuineIntel"),
              distribute.Devices(cpu_cores=2, cpu_vendor="AuthenticAMD"))
GPUS, TPU = (distribute.Devices(gpus=4, compute_capability=(9, 0), cpu_cores=32),
             distribute.Devices(tpu=True, cpu_cores=96))


MODELS = ("mlp", "cnn", "lstm")
NO_XLA = dict.fromkeys(MODELS, False)
XLA_BUT_LSTM = {"mlp": True, "cnn": True, "lstm": False}


# docs/scale.md's table: the strategy, precision and XLA each machine gets with every flag at
# `auto`.
@pytest.mark.parametrize("devices, strategy, precision, loss_scaling, xla", [
    (CPU, "default", "float32", False, NO_XLA),
    (GPU_AMPERE, "one_device", "mixed_bfloat16", False, XLA_BUT_LSTM),
    (GPU_VOLTA, "one_device", "mixed_float16", True, XLA_BUT_LSTM),
    (GPUS, "mirrored", "mixed_bfloat16", False, XLA_BUT_LSTM),
    (TPU, "tpu", "mixed_bfloat16", False, dict.fromkeys(MODELS, True)),
    (distribute.Devices(workers=2, cpu_cores=2), "multi_worker", "float32", False, NO_XLA),
])
def test_each_machine_gets_its_documented_strategy_precision_and_xla(
        devices, strategy, precision, loss_scaling, xla):
    for model in MODELS:
        choices = distribute.choose(devices, model)
        assert (choices.strategy, choices.precision, choices.loss_scaling) == (
            strategy, precision, loss_scaling), model
        assert choices.jit_compile is xla[model], model


# The fast paths and threads per op each CPU gets with every flag at `auto`; accelerators run
# stock Keras with TensorFlow's threads.
@pytest.mark.parametrize("devices, model, fast_paths, threads", [
    (CPU, "mlp", ("fused_optimizer",), 0),
    (INTEL, "mlp", ("fused_optimizer", "step_slices"), 1),
    (AMD, "mlp", ("fused_optimizer",), 0),
    (CPU, "cnn", ("fused_optimizer", "fused_batch_norm"), 0),
    (INTEL, "cnn", ("fused_optimizer", "fused_batch_norm"), 0),
    (CPU, "lstm", ("fused_optimizer", "lstm_slices"), 0),
    (INTEL, "lstm", ("fused_optimizer", "lstm_slices", "lstm_fused_chain"), 1),
    (AMD, "lstm", ("fused_optimizer", "lstm_slices"), 0),
    (distribute.Devices(cpu_cores=8, cpu_vendor="GenuineIntel"), "lstm",
     ("fused_optimizer", "lstm_slices"), 0),
    (distribute.Devices(cpu_cores=1), "lstm", ("fused_optimizer",), 0),
    (distribute.Devices(cpu_cores=1, cpu_vendor="GenuineIntel"), "mlp", ("fused_optimizer",), 1),
    (distribute.Devices(workers=2, cpu_cores=2, cpu_vendor="GenuineIntel"), "mlp",
     ("fused_optimizer", "step_slices"), 1),
    (GPU_AMPERE, "mlp", (), 0),
    (GPU_VOLTA, "cnn", (), 0),
    (GPUS, "lstm", (), 0),
    (TPU, "lstm", (), 0),
])
def test_cpus_take_the_fast_paths_measured_to_pay_there(devices, model, fast_paths, threads):
    choices = distribute.choose(devices, model)
    assert choices.fast_paths == fast_paths
    assert choices.intra_op_threads == threads
    assert choices.lstm_slices == (2 if "lstm_slices" in fast_paths else 1)
    assert choices.step_slices == (2 if "step_slices" in fast_paths else 1)


def test_the_lstm_takes_cudnn_s_kernel_on_a_gpu_unless_xla_compiles_the_step():
    assert distribute.choose(GPU_AMPERE, "lstm").lstm_cudnn
    for xla in (distribute.choose(TPU, "lstm"),
                distribute.choose(GPU_AMPERE, "lstm", jit_compile="true"),
                distribute.choose(INTEL, "lstm", jit_compile="true")):
        # XLA compiles neither cuDNN's LSTM nor the fused chain's backward.
        assert xla.jit_compile and not xla.lstm_cudnn and not xla.lstm_fused_chain


def test_each_choice_applies_only_where_it_can():
    assert distribute.choose(CPU, "mlp", precision="mixed_float16").loss_scaling
    assert not distribute.choose(CPU, "mlp", precision="mixed_bfloat16").loss_scaling
    # Batch slices only for the model that slices there, and no fused batch norm without one.
    for model, lstm_slices, step_slices in (("mlp", 1, 2), ("cnn", 1, 1), ("lstm", 2, 1)):
        choices = distribute.choose(INTEL, model)
        assert (choices.lstm_slices, choices.step_slices) == (lstm_slices, step_slices), model
    assert not distribute.choose(CPU, "cnn", batch_norm=False).fused_batch_norm
    assert not distribute.choose(CPU, "mlp").fused_batch_norm


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert distribute.cpu_info("vendor_id", str(cpuinfo)) == "AuthenticAMD"
    assert distribute.cpu_info("vendor_id", str(tmp_path / "missing")) == ""
    cpuinfo.write_text("processor\t: 0\n")
    assert distribute.cpu_info("vendor_id", str(cpuinfo)) == ""


def test_explicit_choices_override_auto():
    choices = distribute.choose(GPU_VOLTA, "lstm", strategy="default", precision="float32",
                                jit_compile="true", intra_op_threads=3)
    assert (choices.strategy, choices.precision, choices.jit_compile,
            choices.intra_op_threads) == ("default", "float32", True, 3)
    assert distribute.choose(CPU, "cnn", jit_compile="true").jit_compile is True
    assert distribute.choose(CPU, "cnn", precision="mixed_bfloat16").precision == "mixed_bfloat16"


def test_fast_paths_can_be_forced_either_way():
    assert distribute.choose(INTEL, "lstm", fast_paths="false").fast_paths == ()
    assert distribute.choose(INTEL, "mlp", fast_paths="false").fast_paths == ()
    assert distribute.choose(GPU_AMPERE, "cnn", fast_paths="true").fast_paths == (
        "fused_optimizer", "fused_batch_norm")
    # The LSTM's batch slices are for a CPU's cores, not a GPU's.
    assert distribute.choose(GPU_AMPERE, "lstm", fast_paths="true").fast_paths == (
        "fused_optimizer",)


def test_a_deterministic_cnn_that_max_pools_runs_without_xla():
    # XLA has no deterministic gradient of max pooling.
    assert not distribute.choose(GPU_AMPERE, "cnn", deterministic=True).jit_compile
    assert distribute.choose(GPU_AMPERE, "cnn", deterministic=True, pooling="average").jit_compile
    assert distribute.choose(GPU_AMPERE, "mlp", deterministic=True).jit_compile
    with pytest.raises(UserError, match="--deterministic with --jit_compile=true: XLA has no "
                                        "deterministic gradient of max pooling"):
        distribute.choose(CPU, "cnn", jit_compile="true", deterministic=True)


def test_a_cluster_needs_the_multi_worker_strategy():
    with pytest.raises(UserError, match="TF_CONFIG describes 2 workers but --strategy=mirrored"):
        distribute.choose(distribute.Devices(workers=2), "mlp", strategy="mirrored")


def test_threads_per_op_cannot_change_once_tensorflow_runs():
    tf.constant(0)  # Starts TensorFlow, as a notebook's first cell would.
    current = tf.config.threading.get_intra_op_parallelism_threads()
    other = current + 1
    assert distribute.set_intra_op_threads(other, required=False) == current
    with pytest.raises(UserError, match=f"intra_op_threads={other} must be set before"):
        distribute.set_intra_op_threads(other, required=True)


def test_tf_config_is_read_or_rejected_in_one_line():
    assert distribute.read_cluster(None) == distribute.Cluster(1, 0)
    two = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    cluster = distribute.read_cluster(json.dumps(two))
    assert (cluster.num_workers, cluster.task_index, cluster.is_chief) == (2, 1, False)
    for bad, message in [("{not json", "TF_CONFIG is malformed"),
                         ('{"cluster": {}}', "TF_CONFIG is malformed"),
                         (json.dumps({**two, "task": {"type": "worker", "index": 2}}),
                          "task worker:2 is not one of the 2 workers")]:
        with pytest.raises(UserError, match=message) as excinfo:
            distribute.read_cluster(bad)
        assert "\n" not in str(excinfo.value)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from keras_tutorial import data, distribute, experiment, loop, models, objectives
    from keras_tutorial.config import TrainConfig
    distribute.split_cpu(2)
    strategy = distribute.make_strategy("mirrored", distribute.detect_devices())
    pipelines = data.make_pipelines(data.synthetic_arrays(1400, 100, seed=0), 32, 0, 200)
    with strategy.scope():
        model = models.build("mlp")
        optimizer = objectives.make_optimizer("adam", 1e-3, 200)
    trainer = loop.Trainer(strategy, model, optimizer, objectives.make_loss("cross_entropy"),
                           pipelines,
                           loop.LoopConfig(epochs=3, global_batch_size=32, seed=0,
                                           backup_dir=sys.argv[1], verbose=False))
    images, labels = next(trainer._epoch_iterator(epoch=0, skip_steps=0))
    replica_batches = [t.shape[0] for t in strategy.experimental_local_results(images)]
    records = trainer.train(lambda record: None)
    copies = [strategy.experimental_local_results(v.value) for v in model.trainable_variables]
    identical = all(len(c) == 2 and np.array_equal(c[0].numpy(), c[1].numpy()) for c in copies)
    config = TrainConfig(model="mlp", dataset="synthetic", epochs=1, batch_size=32).resolved()
    with strategy.scope():  # Keras fit with the MLP's 16 steps per call.
        compiled = experiment.build_compiled_model(config, steps_per_epoch=40)
    fit_loss = compiled.fit(pipelines.train, epochs=1, verbose=0).history["loss"][-1]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "batches": replica_batches,
                      "losses": [r.loss for r in records], "identical": identical,
                      "accuracy": trainer.evaluate(pipelines.test)[1],
                      "fit_loss": fit_loss}))
""")


@pytest.mark.slow
def test_mirrored_over_two_cpu_replicas(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["batches"] == [16, 16]  # The global batch of 32, split.
    assert report["losses"][-1] < report["losses"][0]
    assert report["identical"]
    assert report["accuracy"] > 0.6
    assert report["fit_loss"] < math.log(10)  # Below chance's loss: `fit` learns too.


def _train_cli(*flags, env=None):
    return subprocess.run([sys.executable, "-m", "keras_tutorial.train", "--dataset=synthetic",
                           "--max_examples=600", "--validation_size=100", "--epochs=1",
                           "--noexport", *flags], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is present")
@pytest.mark.parametrize("flags, env, message", [
    (["--strategy=one_device"], None, "error: --strategy=one_device needs a GPU"),
    (["--cpu_replicas=0"], None, "flag --cpu_replicas=0: 0 is not a positive integer"),
    ([], {"TF_CONFIG": "{oops"}, "error: TF_CONFIG is malformed"),
    (["--strategy=mirrored", "--cpu_replicas=2", "--batch_size=1"], None,
     "error: batch size 1 must be a multiple of the 2 replicas"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, flags, env, message):
    result = _train_cli(f"--workdir={tmp_path}", *flags, env=env)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
