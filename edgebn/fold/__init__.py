"""Folding BatchNorm into the linear layers around it, in Keras, with its proof."""
