"""trainlab: train neural networks well, and measure what each technique does."""

__version__ = "0.1.0"
