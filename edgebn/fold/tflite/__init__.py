"""The .tflite fold without TensorFlow: the flatbuffer rewrite (float and int8), its proof tensor
by tensor, the timing of both files, and the samples the proof runs on."""
