"""manifest.json of an artifact folder: what is in it, checksums, versions, and the verdict.

Format (kept stable; ``vit-port verify`` and the tests recompute it)::

    {"variant": str, "family": str,
     "files": {relative/posix/path: {"size": int, "sha256": hex}},   # every file but manifest.json
     "origin": {...},          # the weights origin of the port
     "versions": {"python", "torch", "tensorflow", "keras", "onnx", "onnxruntime", "numpy",
                  <the family's reference libraries, e.g. "timm">, "toolkit"},
     "parity": {"passed": bool, "report": "parity.json"},
     "created": UTC ISO-8601 time,
     "serving": {"saved_model": {"graph", "chosen_by"}, "onnx": {"graph", "chosen_by"}},  # ports with exports
     "variants": {variant: file},          # reduced-precision and LiteRT files, when the port wrote them
     "not_checksummed": {"eval/": why}}   # post-port outputs, see below

``serving`` records which graph serves ``serving_default``/``features`` and ``model.onnx`` and why
(the times measured are in ``parity.json``, ``exports``).

``eval/`` holds what ``vit-port eval`` writes after the port (eval.json, eval.md): reports
about the artifacts, not artifacts, rewritten on every evaluation. It is left out of the
file table and of ``verify_manifest`` (both sides), so evaluating a verified folder keeps it
verified; every other file, stray ones included, is still checked.

``vit_porting.json`` (``PortRecord``) is the port's own record: variant and config, weights
origin, class names.

numpy/stdlib only: it runs in the orchestrating process, which imports no framework.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import variant_from_dict
from vit_porting.safety import STAGING_MARKER, UnsafePathError, inside, write_text_atomic

MANIFEST_NAME = "manifest.json"
# the toolkit's own record of a port (variant, config, weights origin, class names): its own name,
# since config.json means the reference library's config (timm) or Keras' to their loaders
METADATA_NAME = "vit_porting.json"
EVAL_DIR = "eval"
# top-level folders written after the port; not checksummed (see the module docstring)
POST_PORT_DIRS = {EVAL_DIR + "/": "evaluation reports written after the port by `vit-port eval`; "
                                  "not artifacts, not checksummed"}
# distribution names on PyPI for the versions block (read from metadata: nothing is imported)
_DISTRIBUTIONS = {"torch": "torch", "tensorflow": ("tensorflow-cpu", "tensorflow"),
                  "keras": "keras", "onnx": "onnx", "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                  "numpy": "numpy"}


def sha256_file(path: Path | str, chunk: int = 1 << 22, opener: Callable[..., IO[bytes]] = open) -> str:
    """sha256 of a file read a chunk at a time; ``opener`` is ``fs.open`` for a file on an fsspec
    file system (a collection copied to a remote root)."""
    digest = hashlib.sha256()
    with opener(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _distribution_version(names: str | tuple[str, ...]) -> str | None:
    for name in (names,) if isinstance(names, str) else names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def runtime_versions(toolkit: str, libraries: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions of the installed frameworks and of the family's reference ``libraries``, from
    package metadata (imports none of them)."""
    versions = {"python": platform.python_version()}
    versions.update({key: _distribution_version(dist) for key, dist in _DISTRIBUTIONS.items()})
    versions.update({name: _distribution_version(name) for name in libraries})
    versions["toolkit"] = toolkit
    return versions


def _post_port(rel: str) -> bool:
    # the staging marker is publish's proof that it made a staging folder; it is never uploaded
    return rel.startswith(tuple(POST_PORT_DIRS)) or rel == STAGING_MARKER


def file_table(folder: Path) -> dict[str, dict]:
    """{relative posix path: {size, sha256}} for every file under ``folder`` but the manifest
    and the post-port outputs (``eval/``)."""
    table = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME or _post_port(rel):
            continue
        table[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def export_choices(exports: dict | None) -> dict:
    """The ``serving`` and ``variants`` entries of a manifest from a report's ``exports``."""
    exports = exports or {}
    serving = {key: {k: record[k] for k in ("graph", "chosen_by")}
               for key, record in (("saved_model", (exports.get("saved_model") or {}).get("serving")),
                                   ("onnx", (exports.get("onnx") or {}).get("serving"))) if record}
    variants = {name: v["file"] for name, v in (exports.get("variants") or {}).items()}
    return {**({"serving": serving} if serving else {}), **({"variants": variants} if variants else {})}


def write_manifest(folder: Path | str, variant: str, family: str, origin: dict, parity_passed: bool,
                   toolkit: str, versions: dict | None = None, report: str = "parity.json",
                   exports: dict | None = None) -> dict:
    """Write ``folder/manifest.json`` over the folder's current files; returns the manifest.
    ``exports``: the report's, whose serving-graph choices and variant files it records."""
    folder = Path(folder)
    manifest = {
        "variant": variant,
        "family": family,
        "files": file_table(folder),
        "origin": origin,
        "versions": versions or runtime_versions(toolkit),
        "parity": {"passed": bool(parity_passed), "report": report},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **export_choices(exports),
        "not_checksummed": dict(POST_PORT_DIRS),
    }
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(folder: Path | str, fs: Any = None) -> dict:
    if fs is not None:
        return json.loads(fs.cat_file(f"{folder}/{MANIFEST_NAME}"))
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())


def is_port_folder(folder: Path | str, fs: Any = None) -> bool:
    """Whether ``folder`` (on the fsspec file system ``fs``, if given) holds a manifest a port
    wrote: what ``--force`` may replace."""
    try:
        manifest = read_manifest(folder, fs)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"variant", "files", "parity"} <= set(manifest) \
        and isinstance(manifest.get("versions"), dict) and "toolkit" in manifest["versions"]


def verify_manifest(folder: Path | str, fs: Any = None) -> list[str]:
    """Problems found when the folder is checked against its manifest (empty: it verifies).

    ``fs``: an fsspec file system holding ``folder`` (a path in it), for a folder that a
    collection copied to a remote root; None for a local folder. Remote files are looked up
    by the names listing found, so a manifest entry never builds a path there."""
    if fs is None:
        folder = Path(folder)
        present = {p.relative_to(folder).as_posix(): (p, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}
        opener = open
    else:
        root = str(folder).rstrip("/")
        found = fs.find(root, detail=True) if fs.isdir(root) else {}
        present = {name[len(root) + 1:]: (name, info["size"]) for name, info in found.items()
                   if info.get("type") == "file"}
        opener = fs.open
    try:
        manifest = read_manifest(folder, fs)
    except FileNotFoundError:
        return [f"{folder}/{MANIFEST_NAME}: missing"]
    except json.JSONDecodeError as exc:
        return [f"{folder}/{MANIFEST_NAME}: not JSON ({exc})"]
    if not isinstance(manifest, dict):
        return [f"{folder}/{MANIFEST_NAME}: not a JSON object"]
    problems = []
    for key in ("variant", "family", "files", "origin", "versions", "parity", "created"):
        if key not in manifest:
            problems.append(f"manifest.json: no {key!r} entry")
    listed = manifest.get("files", {})
    if not isinstance(listed, dict):
        return problems + ["manifest.json: 'files' is not a table of files"]
    present.pop(MANIFEST_NAME, None)
    present = {rel: entry for rel, entry in present.items() if not _post_port(rel)}
    for rel, entry in sorted(listed.items()):
        if fs is None:
            try:
                inside(folder, rel)
            except UnsafePathError as exc:
                problems.append(f"manifest.json lists {exc}")
                continue
        if not isinstance(entry, dict):
            problems.append(f"{rel}: its manifest entry is not {{size, sha256}}")
            continue
        if rel not in present:
            problems.append(f"{rel}: listed in the manifest but missing")
            continue
        path, size = present[rel]
        if size != entry.get("size"):
            problems.append(f"{rel}: size {size} != {entry.get('size')} in the manifest")
            continue
        digest = sha256_file(path, opener=opener)
        if digest != entry.get("sha256"):
            problems.append(f"{rel}: sha256 {digest} != {entry.get('sha256')} in the manifest")
    for rel in sorted(set(present) - set(listed)):
        problems.append(f"{rel}: present but not in the manifest")
    return problems


@dataclass
class PortRecord:
    """What ``vit_porting.json`` holds: the variant as ported, where its weights came from, and the
    names of its classes (``{"set", "names", "descriptions"}``, or None for a head of its own)."""

    spec: VariantSpec
    origin: dict
    labels: dict | None = None

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), "origin": self.origin, "labels": self.labels}

    @classmethod
    def from_dict(cls, data: dict) -> PortRecord:
        data = dict(data)
        origin, labels = data.pop("origin", {}), data.pop("labels", None)
        return cls(variant_from_dict(data), origin, labels)

    def label(self, index: int) -> str:
        """A class as people read it: its first description ("tabby" of "tabby, tabby cat"), else its index."""
        if self.labels and 0 <= index < len(self.labels["descriptions"]):
            return self.labels["descriptions"][index].split(",")[0]
        return str(index)


def write_record(folder: Path | str, record: PortRecord) -> None:
    (Path(folder) / METADATA_NAME).write_text(json.dumps(record.to_dict(), indent=1) + "\n")


def read_record(folder: Path | str) -> PortRecord:
    """The port record of an artifact folder; FileNotFoundError names the file when there is none."""
    path = Path(folder) / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is this an artifact folder of a complete port?")
    return PortRecord.from_dict(json.loads(path.read_text()))
