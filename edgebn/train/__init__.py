"""Training a zoo model: seeds, early stopping, distribution strategies."""
