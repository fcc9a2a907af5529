"""Prediction backends: in-process TensorFlow, TF Serving over gRPC, TF Serving over REST."""
