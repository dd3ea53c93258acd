"""One training run end to end, as the command line and the notebooks call it."""

import json

import keras
import pytest
import tensorflow as tf

from keras_tutorial import data, distribute, experiment, fastpath
from keras_tutorial.config import TrainConfig

SUMMARY_KEYS = {
    "model", "dataset", "epochs", "test_accuracy", "test_loss", "params",
    "train_examples_per_sec", "first_epoch_examples_per_sec", "wall_seconds",
    "tensorflow_version", "keras_version", "strategy", "replicas", "export_path",
    "trace_seconds", "intra_op_threads", "fast_paths", "weights_digest"}


def _quick(tmp_path, **settings):
    return TrainConfig(**{"dataset": "synthetic", "max_examples": 1200, "validation_size": 200,
                          "workdir": str(tmp_path), "export": False, "verbose": False,
                          **settings})


# The CNN gets more, smaller steps: its batch norm's moving statistics trail the weights, and
# catch up only once the learning rate has decayed over several hundred steps.
@pytest.mark.parametrize("model, loss, batch_size, epochs", [
    ("mlp", "cross_entropy", 32, 3), ("mlp", "mean_squared_error", 32, 3),
    ("cnn", "cross_entropy", 8, 6), ("lstm", "cross_entropy", 32, 3)])
def test_learns_far_above_chance(tmp_path, model, loss, batch_size, epochs):
    result = experiment.run(_quick(tmp_path, model=model, loss=loss, epochs=epochs,
                                   batch_size=batch_size))
    summary = result.summary
    assert summary["test_accuracy"] > 0.6  # Chance is 0.1.
    assert SUMMARY_KEYS <= set(summary)
    assert summary["strategy"] == "default"
    # The fast paths this machine's choices take, each by name.
    assert summary["fast_paths"] == list(
        distribute.choose(distribute.detect_devices(), model).fast_paths)
    assert [record["epoch"] for record in result.history] == list(range(1, epochs + 1))
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]


def test_a_finished_run_returns_its_summary_and_trained_model(tmp_path):
    first = experiment.run(_quick(tmp_path, epochs=2))
    again = experiment.run(_quick(tmp_path, epochs=2))
    assert again.summary == first.summary
    assert len(again.history) == 2
    for before, after in zip(first.model.get_weights(), again.model.get_weights()):
        assert (before == after).all()


def test_a_one_epoch_run_reports_its_training_speed(tmp_path):
    summary = experiment.run(_quick(tmp_path, epochs=1)).summary
    assert summary["train_examples_per_sec"] == summary["first_epoch_examples_per_sec"] > 0


@pytest.mark.parametrize("model, dataset, mirrored", [
    ("cnn", "fashion_mnist", True), ("cnn", "mnist", False), ("mlp", "fashion_mnist", False),
    ("lstm", "fashion_mnist", False)])
def test_a_model_trained_on_mirrors_predicts_over_mirrors(model, dataset, mirrored):
    built = experiment.build_model(TrainConfig(model=model, dataset=dataset).resolved())
    names = [layer.name for layer in built.layers if "mirrors" in layer.name]
    assert names == (["append_mirrors", "average_mirrors"] if mirrored else [])


def test_a_run_leaves_keras_s_precision_policy_as_it_found_it(tmp_path):
    before = keras.mixed_precision.global_policy().name
    result = experiment.run(_quick(tmp_path, epochs=1, precision="mixed_bfloat16"))
    assert result.summary["precision"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == before


def _trainer(tmp_path, choices, model="cnn", epochs=2):
    """The trainer a run makes with `choices`, on 100 examples in batches of 32 (3 a epoch)."""
    config = _quick(tmp_path, model=model, epochs=epochs, batch_size=32).resolved()
    pipelines = data.make_pipelines(data.synthetic_arrays(100, 10, seed=0), 32, 0, 0)
    runtime = experiment.Runtime(choices, tf.distribute.get_strategy(), distribute.Cluster(), 0)
    return experiment.build_trainer(config, runtime, pipelines, str(tmp_path / "backup"))


def test_the_trainer_takes_the_optimizer_layers_and_xla_the_choices_hold(tmp_path):
    stock = _trainer(tmp_path / "stock", distribute.Choices())
    assert type(stock.optimizer) is keras.optimizers.Adam
    assert not stock.config.jit_compile
    fast = _trainer(tmp_path / "fast", distribute.Choices(
        precision="mixed_float16", loss_scaling=True, jit_compile=True, fused_optimizer=True,
        fused_batch_norm=True))
    assert isinstance(fast.optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(fast.optimizer.inner_optimizer) is fastpath.FusedAdam
    assert sum(isinstance(layer, fastpath.FusedBatchNormalization)
               for layer in fast.model.layers) == 3
    assert fast.config.jit_compile


def test_the_learning_rate_decays_to_zero_at_the_run_s_last_step(tmp_path):
    trainer = _trainer(tmp_path, distribute.Choices(), model="mlp")
    assert trainer.total_steps == 2 * 3  # Full batches only: 100 // 32 a epoch.
    for step, positive in ((trainer.total_steps - 1, True), (trainer.total_steps, False)):
        trainer.optimizer.iterations.assign(step)
        assert (float(trainer.optimizer.learning_rate) > 0) is positive
