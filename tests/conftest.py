"""Fixtures of every test module. The plain helpers (constants, functions,
classes) are in helpers.py: test modules import them from there, never from
this file."""
import os

import pytest
import torch

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
