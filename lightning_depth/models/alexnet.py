"""Placeholder: being written."""
from torch import nn

PRESETS: dict = {}


class AlexNet(nn.Module):
    pass
