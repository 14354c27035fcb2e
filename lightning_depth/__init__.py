"""lightning_depth: the revolution of depth (AlexNet → DenseNet) as paper-faithful, ablatable Lightning experiments."""

__version__ = "0.1.0"
