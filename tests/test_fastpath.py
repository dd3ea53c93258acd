"""The fenced fast paths: same results as stock Keras, really taken where chosen, and a clean
fall-back where a Keras release breaks them."""

import collections
import dataclasses
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import data, distribute, experiment, export, fastpath, models, objectives
from keras_tutorial.config import TrainConfig

RTOL = 1e-5  # The fused kernels sum in another order: float rounding, nothing more.


def _train_batch_norm(layer_class, images, weights):
    layer = layer_class(momentum=0.9)
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, images.shape[-1], dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = layer(images, training=True)
        loss = tf.reduce_sum(tf.nn.relu(outputs) * weights)
    gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
    return [outputs, *gradients, layer.moving_mean, layer.moving_variance,
            layer(images, training=False)]


def test_fused_batch_norm_trains_and_predicts_as_keras_does():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(1.0, 3.0, (64, 7, 7, 16)), tf.float32)
    weights = tf.constant(rng.normal(size=(64, 7, 7, 16)), tf.float32)
    expected = _train_batch_norm(keras.layers.BatchNormalization, images, weights)
    actual = _train_batch_norm(fastpath.FusedBatchNormalization, images, weights)
    names = ["outputs", "d/dimages", "d/dgamma", "d/dbeta", "moving mean", "moving variance",
             "inference outputs"]
    for name, want, got in zip(names, expected, actual):
        scale = np.max(np.abs(np.asarray(want)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                                   atol=RTOL * scale, err_msg=name)


@pytest.mark.parametrize("keras_class, fused_class, kwargs", [
    (keras.optimizers.Adam, fastpath.FusedAdam, {}),
    (keras.optimizers.SGD, fastpath.FusedSGD, {"momentum": 0.9}),
])
def test_fused_optimizers_update_as_keras_does(keras_class, fused_class, kwargs):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(30, 20)).astype(np.float32)
    gradients = [rng.normal(size=(30, 20)).astype(np.float32) for _ in range(4)]

    def trained(optimizer_class):
        variable = keras.Variable(start)
        optimizer = optimizer_class(keras.optimizers.schedules.CosineDecay(0.01, 4), **kwargs)
        for gradient in gradients:
            optimizer.apply_gradients([(tf.constant(gradient), variable)])
        return variable.numpy()

    expected = trained(keras_class)
    assert not np.allclose(expected, start)
    np.testing.assert_allclose(trained(fused_class), expected, rtol=0,
                               atol=RTOL * np.max(np.abs(expected)))


@pytest.mark.parametrize("fused", [True, False])
def test_lstm_run_as_batch_slices_computes_what_one_keras_lstm_computes(fused):
    keras.utils.set_random_seed(0)
    sliced = fastpath.BatchParallelLSTM(16, slices=2, fused=fused)
    plain = keras.layers.LSTM(16)
    sequences = np.random.default_rng(2).normal(size=(9, 5, 3)).astype(np.float32)
    initial_state = np.random.default_rng(3).normal(size=(2, 9, 16)).astype(np.float32)
    sliced.build(sequences.shape)
    plain.build(sequences.shape)
    plain.set_weights(sliced.get_weights())

    def outputs_and_gradients(layer, batch):
        inputs = tf.constant(sequences[:batch])
        state = [tf.constant(initial[:batch]) for initial in initial_state]
        with tf.GradientTape() as tape:
            tape.watch([inputs, *state])
            outputs = layer(inputs, training=True)
            from_state = layer(inputs, initial_state=state, training=True)
            loss = tf.reduce_sum((outputs + from_state ** 2) * tf.range(16, dtype=tf.float32))
        return [outputs, from_state] + tape.gradient(
            loss, [*layer.trainable_variables, inputs, *state])

    for batch in (9, 2, 1):  # Uneven halves, one example each, and too few to slice.
        for run in (outputs_and_gradients, tf.function(outputs_and_gradients)):
            for got, expected in zip(run(sliced, batch), run(plain, batch)):
                np.testing.assert_allclose(got, expected, rtol=RTOL,
                                           atol=RTOL * np.max(np.abs(expected)))
    unknown_batch = tf.function(lambda batch: sliced(tf.constant(sequences)[:batch]),
                                input_signature=[tf.TensorSpec((), tf.int32)])
    for batch in (9, 1):
        np.testing.assert_allclose(unknown_batch(batch), plain(sequences[:batch]), rtol=1e-5,
                                   atol=1e-6)
    # The fused chain is unrolled, so steps of unknown number take Keras's loop.
    unknown_steps = tf.function(lambda steps: sliced(tf.constant(sequences)[:, :steps]),
                                input_signature=[tf.TensorSpec((), tf.int32)])
    np.testing.assert_allclose(unknown_steps(4), plain(sequences[:, :4]), rtol=1e-5, atol=1e-6)
    copy = fastpath.BatchParallelLSTM.from_config(sliced.get_config())
    assert (copy.slices, copy.fused) == (2, fused)


def op_types(function: tf.types.experimental.ConcreteFunction) -> collections.Counter:
    """Every op type in a traced function, nested functions (loops, conditions) included."""
    graph_def = function.graph.as_graph_def()
    ops = collections.Counter(node.op for node in graph_def.node)
    for nested in graph_def.library.function:
        ops.update(node.op for node in nested.node_def)
    return ops


CPU = distribute.Devices(cpu_cores=2)  # Where the fast paths are chosen.
INTEL = distribute.Devices(cpu_cores=2, cpu_vendor="GenuineIntel")  # And the fused LSTM chain.
EVERY_FAST_PATH = distribute.Choices(fused_optimizer=True, fused_batch_norm=True, lstm_slices=2,
                                     lstm_fused_chain=True, step_slices=2)


def _trainer(model_name, choices, backup_dir):
    """The trainer a run makes for `model_name` with `choices`, on batches of 8."""
    config = TrainConfig(model=model_name, dataset="synthetic", batch_size=8, epochs=1,
                         verbose=False).resolved()
    pipelines = data.make_pipelines(data.synthetic_arrays(8, 1, seed=0), 8, 0, 0)
    runtime = experiment.Runtime(choices, tf.distribute.get_strategy(), distribute.Cluster(), 0)
    return experiment.build_trainer(config, runtime, pipelines, str(backup_dir))


def _traced_training_step(model_name, choices, backup_dir):
    step, _ = _trainer(model_name, choices, backup_dir).traced_step(
        tf.TensorSpec([8, 28, 28, 1], tf.uint8), tf.TensorSpec([8], tf.int32))
    return op_types(step)


@pytest.fixture
def fresh_checks():
    """Each fast path's check run anew, as in a process with another Keras or TensorFlow."""
    fastpath.unavailable_reason.cache_clear()
    yield
    fastpath.unavailable_reason.cache_clear()


def _lines_about(caplog, fast_path):
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(f"Fast path {fast_path} off")]


def test_every_fast_path_works_with_this_keras_and_tensorflow(fresh_checks):
    """CI runs it with the newest and the lowest versions that setup.cfg allows (.ci/run)."""
    assert fastpath.usable(EVERY_FAST_PATH) == EVERY_FAST_PATH


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_the_fused_kernels_are_in_the_traced_training_step(loss_scaling, tmp_path):
    chosen = dataclasses.replace(distribute.choose(CPU, "cnn"), loss_scaling=loss_scaling)
    fast = _traced_training_step("cnn", chosen, tmp_path / "fast")
    stock = _traced_training_step("cnn", distribute.Choices(loss_scaling=loss_scaling),
                                  tmp_path / "stock")
    # One per trainable variable: 3 conv kernels, 3 batch norms' gamma and beta, 2 dense layers'
    # kernel and bias.
    assert fast["ResourceApplyAdam"] == 3 + 3 * 2 + 2 * 2
    assert fast["FusedBatchNormV3"] == 3
    assert stock["ResourceApplyAdam"] == 0 and stock["FusedBatchNormV3"] == 0


def test_the_lstm_runs_one_chain_per_batch_slice_fused_where_chosen(tmp_path):
    def loops(ops):
        return ops["While"] + ops["StatelessWhile"]
    fused = _traced_training_step("lstm", distribute.choose(INTEL, "lstm"), tmp_path / "fused")
    sliced = _traced_training_step("lstm", distribute.choose(CPU, "lstm"), tmp_path / "sliced")
    stock = _traced_training_step("lstm", distribute.Choices(), tmp_path / "stock")
    # Keras's loop forward and backward, once per slice; a fused chain is unrolled, and its
    # backward does each of the 28 steps' elementwise work in one kernel.
    assert loops(sliced) == 2 * loops(stock) > 0 == loops(fused)
    assert [ops["LSTMBlockCellGrad"] for ops in (fused, sliced, stock)] == [2 * 28, 0, 0]


def test_an_lstm_chosen_for_xla_computes_keras_s_gradients_under_xla():
    choices = distribute.choose(INTEL, "lstm", jit_compile="true")
    config = TrainConfig(model="lstm", dataset="fashion_mnist").resolved()
    keras.utils.set_random_seed(0)
    stock = experiment.build_model(config)
    sliced = experiment.build_model(config, choices)
    sliced.set_weights(stock.get_weights())
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)), tf.uint8)

    def gradients(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True) * tf.range(10, dtype=tf.float32))
        return tape.gradient(loss, model.trainable_variables)

    compiled = tf.function(gradients, jit_compile=True)(sliced)
    for got, expected in zip(compiled, gradients(stock)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.max(np.abs(expected)))


def test_fused_adam_under_loss_scaling_updates_as_keras_does():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(30, 20)).astype(np.float32)
    gradients = [rng.normal(size=(30, 20)).astype(np.float32) for _ in range(4)]

    def trained(fused):
        variable = keras.Variable(start)
        optimizer = objectives.make_optimizer("adam", 0.01, 4, loss_scaling=True, fused=fused)
        for gradient in gradients:  # Gradients of the scaled loss, as the loop hands them over.
            scaled = optimizer.scale_loss(tf.constant(gradient))  # Times the loss scale.
            optimizer.apply_gradients([(scaled, variable)])
        return variable.numpy()

    expected = trained(False)
    assert not np.allclose(expected, start)
    np.testing.assert_allclose(trained(True), expected, rtol=0,
                               atol=RTOL * np.max(np.abs(expected)))


def test_a_tensorflow_without_the_fused_adam_kernel_trains_with_keras_s_adam(
        monkeypatch, fresh_checks, caplog, tmp_path):
    monkeypatch.delattr(tf.raw_ops, "ResourceApplyAdam")  # As if a release dropped the op.
    choices = fastpath.usable(distribute.choose(CPU, "cnn"))
    assert choices.fast_paths == ("fused_batch_norm",)
    assert len(_lines_about(caplog, "fused_optimizer")) == 1
    trainer = _trainer("cnn", choices, tmp_path)
    assert type(trainer.optimizer) is keras.optimizers.Adam
    assert trainer.train(lambda record: None)[0].steps == 1


def test_a_fast_path_that_computes_otherwise_than_keras_is_turned_off(
        monkeypatch, fresh_checks, caplog):
    def update_with_the_momentum_forgotten(self, gradient, variable, learning_rate):
        variable.assign_sub(learning_rate * gradient)

    monkeypatch.setattr(fastpath.FusedSGD, "update_step", update_with_the_momentum_forgotten)
    choices = fastpath.usable(distribute.choose(INTEL, "mlp"))
    assert choices.fast_paths == ("step_slices",)
    assert "FusedSGD's update differs from stock Keras's" in _lines_about(
        caplog, "fused_optimizer")[0]


def test_a_tensorflow_without_the_lstm_block_kernel_keeps_the_lstm_s_slices(
        monkeypatch, fresh_checks, caplog):
    monkeypatch.delattr(tf.raw_ops, "LSTMBlockCellGrad")  # As if a release dropped the op.
    chosen = distribute.choose(INTEL, "lstm")
    assert fastpath.usable(chosen) == dataclasses.replace(chosen, lstm_fused_chain=False)
    assert "LSTMBlockCellGrad" in _lines_about(caplog, "lstm_fused_chain")[0]
    # The other models do not use it and keep their fast paths.
    for model in ("mlp", "cnn"):
        assert fastpath.usable(distribute.choose(INTEL, model)) == distribute.choose(INTEL, model)


def test_a_keras_without_the_rnn_inner_loop_runs_the_lstm_whole(monkeypatch, fresh_checks):
    monkeypatch.delattr(keras.layers.RNN, "inner_loop")  # As if a release renamed it.
    chosen = distribute.choose(INTEL, "lstm")
    assert fastpath.usable(chosen) == dataclasses.replace(chosen, lstm_slices=1,
                                                           lstm_fused_chain=False)


@pytest.mark.parametrize("model_name", ["cnn", "lstm"])
def test_an_export_holds_stock_keras_only(model_name):
    config = TrainConfig(model=model_name, dataset="fashion_mnist").resolved()
    fast = experiment.build_model(config, EVERY_FAST_PATH)
    assert {type(layer).__module__.split(".")[0] for layer in fast.layers} >= {"keras_tutorial"}
    copy = export.serving_copy(fast)
    assert {type(layer).__module__.split(".")[0] for layer in copy.layers
            if not isinstance(layer, (models.AppendMirrors, models.AverageMirrors))} == {"keras"}
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(copy(images), fast(images), rtol=1e-5, atol=1e-5)


MIRRORED_CNN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from keras_tutorial import data, distribute, experiment
    from keras_tutorial.config import TrainConfig
    distribute.split_cpu(2)
    strategy = distribute.make_strategy("mirrored", distribute.detect_devices())
    config = TrainConfig(model="cnn", dataset="synthetic", epochs=1, batch_size=16,
                         verbose=False).resolved()
    pipelines = data.make_pipelines(data.synthetic_arrays(160, 16, seed=0), 16, 0, 0)
    weights = {}
    for fast in (True, False):
        experiment.keras.utils.set_random_seed(0)
        choices = distribute.Choices(strategy="mirrored", fused_optimizer=fast,
                                     fused_batch_norm=fast)
        runtime = experiment.Runtime(choices, strategy, distribute.Cluster(), 0)
        trainer = experiment.build_trainer(config, runtime, pipelines, sys.argv[1] + str(fast))
        trainer.train(lambda record: None)
        model = trainer.model
        copies = [strategy.experimental_local_results(v.value) for v in model.trainable_weights]
        assert all(np.array_equal(c[0], c[1]) for c in copies), "replicas differ"
        # Moving statistics follow each replica's own half batch, in stock Keras as here; the
        # first replica's are the ones saved and used to predict.
        weights[fast] = [v.numpy() for v in model.weights]
    worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-6))
                for a, b in zip(weights[True], weights[False]))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "worst": worst}))
""")


@pytest.mark.slow
def test_fused_batch_norm_cnn_trains_as_stock_under_two_mirrored_replicas(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_CNN, str(tmp_path / "backup")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["worst"] < 1e-3  # 10 steps of float rounding apart, nothing more.
