"""Placeholder: being written."""
from torch import nn

PRESETS: dict = {}


class GoogLeNet(nn.Module):
    pass
