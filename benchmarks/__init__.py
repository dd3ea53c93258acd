"""Speed benchmarks: the project's training, pipeline and serving against a TF1 baseline."""

import os

# As in keras_tutorial/__init__.py: TensorFlow's C++ start-up chatter hides the progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
