"""Folding BatchNorm into the layers around it: in Keras (``keras/``) and in the .tflite
(``tflite/``)."""
