"""The .tflite flatbuffer without TensorFlow: read, write, BN residue, MACs (NumPy +
flatbuffers)."""
