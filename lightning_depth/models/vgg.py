"""Placeholder: being written."""
from torch import nn

PRESETS: dict = {}


class VGG(nn.Module):
    pass
