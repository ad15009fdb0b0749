"""Trainer tests build an ``Accelerator`` each; accelerate keeps one process-wide state, so every test here starts
and ends with a fresh one (a test that changes mixed precision would otherwise leak it into the next)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
