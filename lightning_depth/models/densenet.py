"""Placeholder: being written."""
from torch import nn

PRESETS: dict = {}


class DenseNet(nn.Module):
    pass
