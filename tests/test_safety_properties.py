"""Property tests: damaged weight files and edited mapping files fail only with the toolkit's
own errors, each one line naming the file (never a KeyError, an IndexError or a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_porting.families.registry import families
from vit_porting.mapping.engine import MappingFileError, MappingSpec, RenameSpec

from conftest import ROOT

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# every YAML file a family ships: its mapping and its rename files
MAPPING_TEXTS = {name: family.resource(name).read_text() for family in families().values()
                 for name in (family.mapping, *(layout.renames for layout in family.layouts))}
YAML_PIECES = ["{", "}", "[", "]", ":", ": ", ",", "-", "- ", "'", '"', "#", "&a", "*a", "!!python/object", "|",
               ">", "\n", "\t", "  ", "{i}", "{", "from", "to", "transform", "rules", "drop", "rename", "key",
               "reason", "restore", "value", "dtype", "beside", "pattern", "replace", "linear", "conv2d",
               "2001-13-45", "? ", "~", "null", "1e999", "\\", "\x00", "é"]


def test_weight_readers_fail_only_with_checkpoint_error(tmp_path):
    """Random bytes, truncations, bit flips and splices of valid safetensors and .pth files
    (zip and legacy) through every reader, in a process of its own (it imports torch)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_readers.py"), str(tmp_path), "300"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "ok: 300 damaged files" in proc.stdout


@st.composite
def _edited_mapping(draw) -> tuple[str, str]:
    """(file name, text): a mapping or rename file of the project with random edits."""
    name = draw(st.sampled_from(sorted(MAPPING_TEXTS)))
    lines = MAPPING_TEXTS[name].splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["insert", "delete_line", "duplicate", "indent", "dedent", "cut", "replace"]))
        line = lines[i]
        if edit == "insert":
            at = draw(st.integers(0, len(line)))
            piece = draw(st.sampled_from(YAML_PIECES) | st.text(max_size=8))
            lines[i] = line[:at] + piece + line[at:]
        elif edit == "delete_line":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, line)
        elif edit == "indent":
            lines[i] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + line
        elif edit == "dedent":
            lines[i] = line.lstrip()
        elif edit == "cut":
            start = draw(st.integers(0, len(line)))
            lines[i] = line[:start] + line[draw(st.integers(start, len(line))):]
        else:
            lines[i] = draw(st.text(max_size=40)) + "\n"
    return name, "".join(lines)


def _load(path: Path, rename_file: bool) -> None:
    try:
        (RenameSpec.load if rename_file else MappingSpec.load)(path)
    except MappingFileError as exc:
        assert "\n" not in str(exc), f"a message of more than one line: {exc!r}"
        assert str(exc).startswith(str(path)), f"the message does not start with the file: {exc!r}"


@SETTINGS
@given(edited=_edited_mapping())
def test_edited_mapping_files_fail_only_with_mapping_file_error(tmp_path_factory, edited):
    name, text = edited
    path = tmp_path_factory.mktemp("edited") / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(path, rename_file="rename:" in text and "rules:" not in text)


@SETTINGS
@given(raw=st.binary(max_size=512))
def test_random_bytes_as_a_mapping_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("raw") / "bytes.yaml"
    path.write_bytes(raw)
    _load(path, rename_file=False)
    _load(path, rename_file=True)
