"""keras-tutorial: a TensorFlow 2 / Keras 3 port of a classic TF1 MNIST tutorial."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) hides what matters on a CPU
# machine; a user who wants it back sets TF_CPP_MIN_LOG_LEVEL=0.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
