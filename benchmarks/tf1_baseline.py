"""The tutorial's TF1 MLP loop, replicated faithfully, timed: the baseline for every ratio.

`tf.compat.v1.disable_eager_execution()` switches the whole process to graph mode, so the
runner starts this module in a subprocess: `python -m benchmarks.tf1_baseline ARGS`. It prints
one JSON object of raw timings (seconds) on standard output.

What is replicated: `input_data` gave float32 images scaled to [0, 1], flattened to 784, and
one-hot float64 labels, and `next_batch` reshuffled a copy of the split at every epoch; the
graph is placeholders x[None,784] and y[None,10], 784 -> 256 ReLU -> 10 with
`tf.random_normal` weights and biases, `softmax_cross_entropy_with_logits` and
`AdamOptimizer(0.001)`; every step is one `Session.run` with a `feed_dict`.
"""

from __future__ import annotations

import json
import time

import numpy as np
import tensorflow as tf
from absl import flags

from keras_tutorial import cli, config, data

v1 = tf.compat.v1


class InputData:
    """`input_data.DataSet.next_batch`: reshuffles each epoch and wraps across epochs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int):
        self.images = images.reshape(len(images), -1).astype(np.float32) * (1.0 / 255.0)
        self.labels = np.eye(data.NUM_CLASSES)[labels]  # float64, as dense_to_one_hot made.
        self._rng = np.random.default_rng(seed)
        self._position = len(images)  # Forces a shuffle on the first call.

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        start, self._position = self._position, self._position + batch_size
        if self._position <= len(self.images):
            return self.images[start:self._position], self.labels[start:self._position]
        rest_images, rest_labels = self.images[start:], self.labels[start:]
        order = self._rng.permutation(len(self.images))
        self.images, self.labels = self.images[order], self.labels[order]
        self._position = batch_size - len(rest_images)
        return (np.concatenate([rest_images, self.images[:self._position]]),
                np.concatenate([rest_labels, self.labels[:self._position]]))


def build_graph(seed: int) -> dict[str, tf.Tensor]:
    """The tutorial's graph, op for op."""
    v1.set_random_seed(seed)
    x = v1.placeholder(tf.float32, [None, 784])
    y = v1.placeholder(tf.float32, [None, 10])
    weights = tf.Variable(v1.random_normal([784, 256]))
    biases = tf.Variable(v1.random_normal([256]))
    hidden_layer = tf.nn.relu(tf.matmul(x, weights) + biases)
    weights = tf.Variable(v1.random_normal([256, 10]))
    biases = tf.Variable(v1.random_normal([10]))
    logits = tf.matmul(hidden_layer, weights) + biases
    loss = tf.reduce_mean(v1.nn.softmax_cross_entropy_with_logits(logits=logits, labels=y))
    optimizer = v1.train.AdamOptimizer(learning_rate=0.001).minimize(loss)
    probabilities = tf.nn.softmax(logits)
    return {"x": x, "y": y, "optimizer": optimizer, "probabilities": probabilities,
            "classes": tf.argmax(probabilities, 1)}


def time_training(sess: v1.Session, graph: dict, train: InputData, batch_size: int,
                  steps: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per `steps` training steps, `repeats` times, after `warmup` untimed steps."""
    def step() -> None:
        batch_x, batch_y = train.next_batch(batch_size)
        sess.run(graph["optimizer"], feed_dict={graph["x"]: batch_x, graph["y"]: batch_y})

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds.append(time.perf_counter() - start)
    return seconds


def time_inference(sess: v1.Session, graph: dict, images: np.ndarray, calls: int,
                   repeats: int) -> list[float]:
    """Seconds per `calls` runs of softmax and argmax on `images`, `repeats` times; none if
    `calls` is 0."""
    if not calls:
        return []
    fetches, feed = [graph["probabilities"], graph["classes"]], {graph["x"]: images}
    sess.run(fetches, feed_dict=feed)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            sess.run(fetches, feed_dict=feed)
        seconds.append(time.perf_counter() - start)
    return seconds


def define_flags() -> None:
    flags.DEFINE_enum("dataset", None, config.DATASETS, "Dataset to train on.", required=True)
    flags.DEFINE_string("data_dir", None, "IDX files or mnist.npz (see keras_tutorial/data.py).")
    flags.DEFINE_integer("max_examples", 0, "Training and test examples kept (0: all).",
                         lower_bound=0)
    flags.DEFINE_integer("validation_size", 5000, "The first training examples, left out as "
                         "train.py holds them out.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Seed of the weights and the shuffling.")
    flags.DEFINE_integer("batch_size", 128, "Examples per training step.", lower_bound=1)
    flags.DEFINE_integer("steps", None, "Training steps per timed repeat.", lower_bound=1,
                         required=True)
    flags.DEFINE_integer("warmup", None, "Untimed training steps first.", lower_bound=0,
                         required=True)
    flags.DEFINE_integer("latency_calls", None, "Batch-1 inference calls per timed repeat "
                         "(0: none).", lower_bound=0, required=True)
    flags.DEFINE_integer("throughput_calls", None, "Inference calls at --throughput_batch per "
                         "timed repeat (0: none).", lower_bound=0, required=True)
    flags.DEFINE_integer("throughput_batch", 1024, "Batch of the throughput calls.",
                         lower_bound=1)
    flags.DEFINE_integer("repeats", None, "Timed repeats.", lower_bound=1, required=True)


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    args = flags.FLAGS
    arrays = data.load_arrays(args.dataset, args.data_dir, args.max_examples, args.seed)
    train = InputData(arrays.x_train[args.validation_size:],
                      arrays.y_train[args.validation_size:], args.seed)
    test = InputData(arrays.x_test, arrays.y_test, args.seed)
    batch = np.resize(test.images, (args.throughput_batch, 784))  # Repeats a small test set.

    v1.disable_eager_execution()
    graph = build_graph(args.seed)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        result = {
            "train_seconds": time_training(sess, graph, train, args.batch_size, args.steps,
                                           args.repeats, args.warmup),
            "latency_seconds": time_inference(sess, graph, test.images[:1],
                                              args.latency_calls, args.repeats),
            "throughput_seconds": time_inference(sess, graph, batch, args.throughput_calls,
                                                 args.repeats),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run(main, define_flags)
