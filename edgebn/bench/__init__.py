"""Benchmarks that compare: the TFLite file against its Keras model, thread counts."""
