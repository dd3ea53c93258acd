"""The fenced fast paths: same results as stock Keras, really taken where chosen, and a clean
fall-back where a Keras release breaks them."""

import collections
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tutorial import experiment, export, fastpath, models, objectives
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


def _traced_training_step(model_name, fast_paths, lstm_slices=2, loss_scaling=False,
                          lstm_fused_chain=False):
    config = TrainConfig(model=model_name, dataset="fashion_mnist").resolved()
    model = experiment.build_model(config, fast_paths, lstm_slices,
                                   lstm_fused_chain=lstm_fused_chain)
    optimizer = objectives.make_optimizer("adam", 1e-3, 10, loss_scaling=loss_scaling,
                                          fused=fast_paths)
    optimizer.build(model.trainable_variables)
    loss_fn = objectives.make_loss("cross_entropy")

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = optimizer.scale_loss(tf.reduce_mean(loss_fn(labels, model(images,
                                                                             training=True))))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))

    return op_types(step.get_concrete_function(tf.TensorSpec([8, 28, 28, 1], tf.uint8),
                                               tf.TensorSpec([8], tf.int32)))


def test_the_fast_paths_work_with_this_keras():
    assert fastpath.unavailable_reason() is None
    assert fastpath.usable(True) and not fastpath.usable(False)


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_the_fused_kernels_are_in_the_traced_training_step(loss_scaling):
    fast = _traced_training_step("cnn", fast_paths=True, loss_scaling=loss_scaling)
    stock = _traced_training_step("cnn", fast_paths=False, loss_scaling=loss_scaling)
    # One per trainable variable: 3 conv kernels, 3 batch norms' gamma and beta, 2 dense layers'
    # kernel and bias.
    assert fast["ResourceApplyAdam"] == 3 + 3 * 2 + 2 * 2
    assert fast["FusedBatchNormV3"] == 3
    assert stock["ResourceApplyAdam"] == 0 and stock["FusedBatchNormV3"] == 0


def test_the_lstm_runs_one_chain_per_batch_slice_fused_where_chosen():
    def loops(ops):
        return ops["While"] + ops["StatelessWhile"]
    fused = _traced_training_step("lstm", fast_paths=True, lstm_slices=2, lstm_fused_chain=True)
    sliced = _traced_training_step("lstm", fast_paths=True, lstm_slices=2)
    stock = _traced_training_step("lstm", fast_paths=False, lstm_fused_chain=True)
    # Keras's loop forward and backward, once per slice; a fused chain is unrolled, and its
    # backward does each of the 28 steps' elementwise work in one kernel.
    assert loops(sliced) == 2 * loops(stock) > 0 == loops(fused)
    assert [ops["LSTMBlockCellGrad"] for ops in (fused, sliced, stock)] == [2 * 28, 0, 0]


def test_the_lstm_in_batch_slices_trains_under_xla():
    config = TrainConfig(model="lstm", dataset="fashion_mnist").resolved()
    model = experiment.build_model(config, fast_paths=True, lstm_slices=2, jit_compile=True,
                                   lstm_fused_chain=True)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)), tf.uint8)

    @tf.function(jit_compile=True)
    def gradients(images):  # XLA has no kernel for the fused chain's backward: Keras's loop.
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    assert all(np.all(np.isfinite(g)) for g in gradients(images))


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


def test_a_broken_internal_means_stock_keras_and_one_logged_line(monkeypatch, caplog):
    owner = next(c for c in keras.optimizers.Adam.__mro__ if "_get_variable_index" in c.__dict__)
    monkeypatch.delattr(owner, "_get_variable_index")  # As if a Keras release renamed it.
    reason = fastpath.unavailable_reason.__wrapped__()
    assert reason and "_get_variable_index" in reason
    monkeypatch.setattr(fastpath, "unavailable_reason", lambda model=None: reason)
    assert fastpath.usable(True) is False
    assert [r.getMessage() for r in caplog.records if "Fast paths off" in r.getMessage()]


def test_a_tensorflow_without_the_lstm_block_kernel_means_a_stock_lstm(monkeypatch):
    monkeypatch.delattr(tf.raw_ops, "LSTMBlockCellGrad")  # As if a release dropped the op.
    for model in ("lstm", None):
        reason = fastpath.unavailable_reason.__wrapped__(model)
        assert reason and "LSTMBlockCellGrad" in reason
    # The other models do not use it and keep their fast paths.
    assert fastpath.unavailable_reason.__wrapped__("mlp") is None
    assert fastpath.unavailable_reason.__wrapped__("cnn") is None


@pytest.mark.parametrize("model_name", ["cnn", "lstm"])
def test_an_export_holds_stock_keras_only(model_name):
    config = TrainConfig(model=model_name, dataset="fashion_mnist").resolved()
    fast = experiment.build_model(config, fast_paths=True, lstm_slices=2, lstm_fused_chain=True)
    assert {type(layer).__module__.split(".")[0] for layer in fast.layers} >= {"keras_tutorial"}
    copy = export.serving_copy(fast)
    assert {type(layer).__module__.split(".")[0] for layer in copy.layers
            if not isinstance(layer, (models.AppendMirrors, models.AverageMirrors))} == {"keras"}
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(copy(images), fast(images), rtol=1e-5, atol=1e-5)


MIRRORED_CNN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from keras_tutorial import data, distribute, experiment, loop, objectives
    from keras_tutorial.config import TrainConfig
    distribute.split_cpu(2)
    strategy = distribute.make_strategy("mirrored", distribute.detect_devices())
    config = TrainConfig(model="cnn", dataset="synthetic", epochs=1, batch_size=16).resolved()
    pipelines = data.make_pipelines(data.synthetic_arrays(160, 16, seed=0), 16, 0, 0)
    weights = {}
    for fast in (True, False):
        experiment.keras.utils.set_random_seed(0)
        with strategy.scope():
            model = experiment.build_model(config, fast_paths=fast)
            optimizer = objectives.make_optimizer("adam", 1e-3, 10, fused=fast)
        trainer = loop.Trainer(strategy, model, optimizer, objectives.make_loss("cross_entropy"),
                               pipelines, loop.LoopConfig(epochs=1, global_batch_size=16, seed=0,
                               backup_dir=sys.argv[1] + str(fast), verbose=False))
        trainer.train(lambda record: None)
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
