"""lm: train, compare and inspect small transformers from scratch as a reproducible DVC pipeline."""

__version__ = "0.1.0"
