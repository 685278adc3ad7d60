"""Published model.keras files keep loading: files written before the package was renamed (porting ->
vit_porting) open with the import today's model card names, and compute the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_porting.families.registry import get_family
from vit_porting.parity.compare import load_policy, tolerance
from vit_porting.workers.protocol import QUIET_ENV

DATA = Path(__file__).resolve().parent / "data" / "keras_v0"


@pytest.mark.parametrize("family", ["cait", "cvt", "vit"])
def test_a_model_keras_from_before_the_rename_loads_with_the_cards_import(family, tmp_path):
    """In a fresh process that imports only what the card tells a Keras user to import."""
    module = get_family(family).keras_module
    assert module == f"vit_porting.families.{family}.model"
    script = (f"import json, sys, keras, numpy as np\nimport {module}\n"
              f"model = keras.saving.load_model({str(DATA / f'{family}.keras')!r})\n"
              f"logits = keras.ops.convert_to_numpy(model(np.load({str(DATA / 'images.npy')!r}))['logits'])\n"
              f"np.save({str(tmp_path / 'logits.npy')!r}, logits)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('porting', 'parity'))))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**QUIET_ENV, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []  # no old package name was needed
    expected = np.load(DATA / f"{family}_logits.npy")
    diff = float(np.abs(np.load(tmp_path / "logits.npy") - expected).max() / np.abs(expected).max())
    assert diff <= tolerance(load_policy(), "cpu", "logits"), diff
