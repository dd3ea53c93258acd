"""keras-tutorial: a TensorFlow 2 / Keras 3 port of a classic TF1 MNIST tutorial."""

__version__ = "0.1.0"
