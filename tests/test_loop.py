"""The resumable training loop: kill a run, rerun the same command, get the same weights."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import data, distribute, loop, models, objectives

QUICK_RUN = ["--model=mlp", "--dataset=synthetic", "--max_examples=2000", "--validation_size=200",
             "--batch_size=32", "--epochs=4", "--steps_per_execution=1", "--noexport"]


def _train(workdir, *extra, **popen):
    command = [sys.executable, "-m", "keras_tutorial.train", *QUICK_RUN,
               f"--workdir={workdir}", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _latest_backup(workdir):
    try:
        with open(os.path.join(workdir, "backup", "checkpoint")) as f:
            return f.readline()
    except FileNotFoundError:
        return None


def _kill_at_a_random_moment(workdir, delay: float, *extra):
    """Starts the run and SIGKILLs it `delay` seconds after it reports the examples it reads,
    its last line before it resumes, traces the step and trains."""
    process = _train(workdir, *extra)
    started = threading.Event()

    def watch() -> None:
        for line in process.stdout:  # Read to the end: a full pipe would stall the run.
            if "reads examples with digest" in line:
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(120), "the run never started training"
    time.sleep(delay)
    assert process.poll() is None, f"the run ended before it could be killed ({delay:.2f} s)"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_ten_times_killed_deterministic_run_resumes_to_identical_weights(tmp_path):
    # 40 epochs of 56 steps, a backup every 5: kills land while the step is traced, between
    # steps, and while a backup is written. Long enough that ten kills up to 2 s into a run
    # cannot finish it on a quiet machine (16 epochs could: about 5 s of training).
    flags = ["--deterministic", "--backup_every_steps=5", "--epochs=40"]
    _finish(_train(tmp_path / "straight", *flags))
    rng = random.Random(0)
    for _ in range(10):
        _kill_at_a_random_moment(tmp_path / "killed", rng.uniform(0, 2.0), *flags)
    assert _latest_backup(tmp_path / "killed"), "no kill came after a backup"
    output = _finish(_train(tmp_path / "killed", *flags))
    assert "resumed at epoch" in output
    resumed = _summary(tmp_path / "killed")
    assert resumed["resumed_from"]["global_step"] > 0
    assert resumed["weights_digest"] == _summary(tmp_path / "straight")["weights_digest"]
    assert resumed["test_accuracy"] == _summary(tmp_path / "straight")["test_accuracy"]


@pytest.mark.slow
def test_finished_run_is_not_retrained_and_other_flags_are_refused(tmp_path):
    _finish(_train(tmp_path))
    digest = _summary(tmp_path)["weights_digest"]
    output = _finish(_train(tmp_path))
    assert "already finished" in output and "Epoch 1/" not in output
    assert "resumed at" not in output
    assert _summary(tmp_path)["weights_digest"] == digest
    refused = _train(tmp_path, "--seed=5")
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert output.strip().splitlines()[-1].startswith(
        f"error: workdir {tmp_path} holds a run with seed=0, not 5")


def test_steps_per_epoch_uses_equal_worker_shards():
    assert loop.steps_per_epoch(55_000, 128, 1) == 429
    assert loop.steps_per_epoch(55_001, 128, 2) == 429  # Each worker: 27,500 examples, 64 a step.


def test_calls_end_on_every_backup_point_and_at_the_epoch_s_end():
    # 10 steps an epoch, 4 per call, a backup every 3 global steps, starting at step 11.
    assert list(loop.chunks(11, 10, 4, 3)) == [(1, True), (3, True), (3, True), (2, False)]
    assert list(loop.chunks(0, 10, 4)) == [(4, False), (4, False), (2, False)]
    assert list(loop.chunks(7, 10, 16, 4)) == [(1, True), (2, False)]
    assert list(loop.chunks(20, 10, 1, 10)) == [(1, False)] * 9 + [(1, True)]


def test_steps_that_loss_scaling_skips_still_move_the_run_on(tmp_path):
    """A loss-scale optimizer skips the update of a step whose float16 gradients overflow and
    does not count it; the loop counts it, or it would train the same batches again."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        pipelines = data.make_pipelines(data.synthetic_arrays(320, 10, seed=0), 32, 0, 0)
        model = models.build("mlp")
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3),
                                                        initial_scale=2.0 ** 40)
        trainer = loop.Trainer(tf.distribute.get_strategy(), model, optimizer,
                               objectives.make_loss("cross_entropy"), pipelines,
                               loop.LoopConfig(epochs=2, global_batch_size=32, seed=0,
                                               backup_dir=str(tmp_path), steps_per_execution=4,
                                               verbose=False))
        records = trainer.train(lambda record: None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [(record.epoch, record.steps) for record in records] == [(1, 10), (2, 10)]
    assert trainer.step == 20 > int(optimizer.iterations.numpy())  # Updates were skipped.
    assert trainer.restore() == 20


def test_a_backup_of_an_earlier_release_without_the_step_counter_resumes(tmp_path):
    pipelines = data.make_pipelines(data.synthetic_arrays(100, 10, seed=0), 32, 0, 0)

    def trainer(backup_dir):
        model = models.build("mlp")
        return loop.Trainer(tf.distribute.get_strategy(), model,
                            objectives.make_optimizer("adam", 1e-3, 10),
                            objectives.make_loss("cross_entropy"), pipelines,
                            loop.LoopConfig(epochs=1, global_batch_size=32, seed=0,
                                            backup_dir=str(backup_dir), verbose=False))

    earlier = trainer(tmp_path / "unused")
    earlier.train(lambda record: None)
    tf.train.Checkpoint(model_variables=earlier.model.variables,  # As earlier releases saved.
                        optimizer_variables=earlier.optimizer.variables).save(
        str(tmp_path / "backup" / "ckpt"))
    resumed = trainer(tmp_path / "backup")
    assert resumed.restore() == earlier.step == 3
    assert resumed.weights_digest() == earlier.weights_digest()


def _trainer_with_slices(tmp_path, step_slices: int) -> loop.Trainer:
    pipelines = data.make_pipelines(data.synthetic_arrays(330, 10, seed=0), 33, 0, 0)
    keras.utils.set_random_seed(0)
    return loop.Trainer(tf.distribute.get_strategy(), models.build("mlp"),
                        objectives.make_optimizer("adam", 1e-3, 10),
                        objectives.make_loss("cross_entropy"), pipelines,
                        loop.LoopConfig(epochs=1, global_batch_size=33, seed=0,
                                        backup_dir=str(tmp_path / str(step_slices)),
                                        choices=distribute.Choices(step_slices=step_slices),
                                        verbose=False))


def test_step_slices_train_the_model_as_the_whole_batch_does(tmp_path):
    """The MLP's batch slices (distribute.Choices.step_slices) change where the work runs, not
    what it computes: same losses and weights, batches that do not split evenly included."""
    whole, sliced = (_trainer_with_slices(tmp_path, slices) for slices in (1, 2))
    whole_records = whole.train(lambda record: None)
    sliced_records = sliced.train(lambda record: None)
    assert sliced_records[0].loss == pytest.approx(whole_records[0].loss, rel=1e-5)
    assert sliced_records[0].accuracy == whole_records[0].accuracy
    for a, b in zip(whole.model.weights, sliced.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_each_step_slice_runs_the_model_on_its_own(tmp_path):
    def matmuls(trainer):
        _, gradients = trainer.traced_step(tf.TensorSpec([33, 28, 28, 1], tf.uint8),
                                           tf.TensorSpec([33], tf.int32))
        ops = gradients.graph.as_graph_def().node
        return sum(node.op == "MatMul" for node in ops)

    # Two layers: forward, and the backward of the weights and of the hidden layer's input.
    assert matmuls(_trainer_with_slices(tmp_path, 2)) == 2 * matmuls(
        _trainer_with_slices(tmp_path, 1)) == 2 * 5
