"""A TFLite interpreter without TensorFlow: backends, timing, ratios, the ceiling, accuracy,
profiles."""
