"""Shared test plumbing.

The pytest process may import Keras/TensorFlow but never torch: the two in one process abort
or crash. Everything PyTorch-side runs in worker processes (vit_porting.workers.run_torch), exactly as in
a real port.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    assert "torch" not in sys.modules, "torch must not be imported in the pytest process"


@pytest.fixture
def quiet_log():
    """A PortOptions.log that keeps the progress lines for assertions."""
    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)

    log.lines = lines  # type: ignore[attr-defined]
    return log


def run_torch_job(job: dict, work: Path) -> dict:
    from vit_porting.workers.protocol import run_worker

    return run_worker("torch", job, work)


def run_keras_job(job: dict, work: Path) -> dict:
    from vit_porting.workers.protocol import run_worker

    return run_worker("keras", job, work)


def error_line(stderr: str) -> str:
    """A CLI's error: exactly one line, the last one, no traceback (progress lines may precede it)."""
    lines = stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert errors == [len(lines) - 1], stderr
    assert "Traceback" not in stderr, stderr
    return lines[-1]
