"""edgebn: ship BatchNorm Keras classifiers to small CPUs through TFLite, and prove each step."""

__version__ = "0.1.0"
