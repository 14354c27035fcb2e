"""Placeholder: being written."""
from torch import nn

PRESETS: dict = {}


class ResNet(nn.Module):
    pass
