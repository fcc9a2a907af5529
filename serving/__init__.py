"""MesoScan's model side: MesoNet definitions, the model registry, training, export and prediction backends."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries every command's output; warnings stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
