"""A TFLite interpreter without TensorFlow: backends, timing, the ceiling, isolated runs, profile, verify."""
