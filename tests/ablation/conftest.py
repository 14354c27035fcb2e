"""Fixtures of the ablation tests."""

import pytest

from tests.helpers.ablations import make_ablation


@pytest.fixture
def done(tmp_path):
    """A finished three-arm, three-seed ablation; one trial was preempted and resumed (two CSV versions)."""
    return make_ablation(tmp_path / "preact", resumed={("baseline", 0)})
