"""Publish a verified artifact folder to the Hugging Face Hub or Kaggle Models.

Targets: ``hf://owner/name`` (huggingface_hub: HfApi.create_repo + HfApi.upload_folder) and
``kaggle://owner/model/framework/variation`` (kagglehub.model_upload). No HTTP of our own.

A dry run (the default) stages exactly the files an upload would send into a staging folder
(``<out root>/.staging/<target slug>/``): the artifact files, byte-identical, plus README.md
(the model card, rendered for the target) and manifest.json (the port's manifest with the
README.md entry updated and a ``published`` note), so the staged folder verifies on its own.
A folder that does not match its manifest is refused before anything is staged, dry run or not.

The staging folder is publish's own: it holds a marker file (never uploaded) listing what it
stages, and a later publish empties it only when everything in it is on that list. An existing
folder that is not empty and carries no marker (an artifact folder, a user's folder) is refused:
no publish deletes or overwrites a file it did not write. Paths read from a manifest are used
only when they stay inside their folder.

``push=True`` uploads, and first refuses when the folder no longer matches its manifest
(files changed since the port), when parity did not pass, when the weights are random
(unless ``allow_random``), or when no token is configured. Tokens are left to the libraries
(HF_TOKEN or ``hf auth login``; KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN or
~/.kaggle/kaggle.json): this module never reads, prints or passes one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from porting.card import CARD_NAME, KAGGLE_LICENSES, hub_license, render_card
from porting.manifest import MANIFEST_NAME, sha256_file, verify_manifest
from porting.safety import STAGING_MARKER, UnsafePathError, first_line, inside, write_text_atomic
from porting.variants import VariantSpec

STAGING = ".staging"
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_KAGGLE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PublishError(RuntimeError):
    """A publish that was refused; the message says why."""


@dataclass(frozen=True)
class Target:
    kind: str  # "hf" | "kaggle"
    id: str  # repo id (owner/name) or Kaggle model handle (owner/model/framework/variation)

    @property
    def url(self) -> str:
        return f"{self.kind}://{self.id}"

    @property
    def slug(self) -> str:
        return f"{self.kind}-" + self.id.replace("/", "--")


def parse_target(text: str) -> Target:
    """``hf://owner/name`` or ``kaggle://owner/model/framework/variation``."""
    if text.startswith("hf://"):
        repo = text[len("hf://"):].strip("/")
        if not _HF_REPO.match(repo):
            raise PublishError(f"{text!r}: a Hugging Face target is hf://owner/name")
        return Target("hf", repo)
    if text.startswith("kaggle://"):
        parts = text[len("kaggle://"):].strip("/").split("/")
        if len(parts) != 4 or not all(_KAGGLE_PART.match(p) for p in parts):
            raise PublishError(f"{text!r}: a Kaggle target is kaggle://owner/model/framework/variation "
                               "(no version: Kaggle numbers versions itself)")
        return Target("kaggle", "/".join(parts))
    raise PublishError(f"{text!r}: TARGET must be hf://owner/name or kaggle://owner/model/framework/variation")


@dataclass
class Staged:
    target: Target
    folder: Path  # the staging folder
    files: dict[str, int]  # relative path -> size, exactly what an upload sends
    refusals: list[str]  # why a push would be refused (empty: it would go)
    random_weights: bool

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path}: missing; is this a complete port?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PublishError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: not a JSON object; is this a complete port?")
    return data


def refusals(folder: Path, allow_random: bool = False, problems: list[str] | None = None) -> list[str]:
    """Why ``folder`` must not be uploaded (empty: it may); ``problems``: its manifest check, if
    already done (hashing a 1.4 GB folder once is enough)."""
    folder = Path(folder)
    problems = verify_manifest(folder) if problems is None else problems
    found = [f"files changed since the port (manifest check failed): {p}" for p in problems[:10]]
    if len(problems) > 10:
        found.append(f"... and {len(problems) - 10} more manifest problems")
    if (folder / MANIFEST_NAME).exists() and (folder / "parity.json").exists():
        manifest = _read_json(folder / MANIFEST_NAME)
        report = _read_json(folder / "parity.json")
        if not (manifest.get("parity", {}).get("passed") and report.get("passed")):
            failing = [f"{r['runtime']} ({r['device']})" for r in report.get("runtimes", []) if not r.get("passed")]
            found.append("parity did not pass" + (f": {', '.join(failing)}" if failing else "")
                         + "; fix the port (see parity.md) and port again")
        random = bool(report.get("random_weights") or (manifest.get("origin") or {}).get("random_weights"))
        if random and not allow_random:
            found.append("the weights are random (WEIGHTS=random): port a trained checkpoint, or force with "
                         "ALLOW_RANDOM=1 / --allow-random (the card then says so on its first line)")
    return found


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (a copy across file systems); never over an existing file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        with open(src, "rb") as reader, open(dst, "xb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 22)
        shutil.copystat(src, dst)


def _claim_staging(staged: Path, folder: Path, files: list[str], where: str) -> None:
    """Make ``staged`` an empty staging folder of ours whose marker lists ``files`` (what it
    will hold), before anything is staged, so that a stage cut short is still recognised.
    ``where`` names it in refusals.

    A folder is emptied only when it carries the marker and holds nothing the marker does not
    list; a folder without one is used only when it is empty."""
    if staged.resolve() == folder.resolve() or folder.resolve() in staged.resolve().parents:
        raise PublishError(f"{where}: the staging folder must be outside the artifact folder")
    if staged.resolve() in folder.resolve().parents:
        raise PublishError(f"{where}: the staging folder must not contain the artifact folder {folder}")
    if staged.is_symlink() or (staged.exists() and not staged.is_dir()):
        raise PublishError(f"{where}: exists and is not a folder; choose another --stage-dir")
    if staged.exists() and any(staged.iterdir()):
        marker = staged / STAGING_MARKER
        if marker.is_symlink() or not marker.is_file():
            raise PublishError(f"{where}: exists, is not empty and was not made by a publish (no {STAGING_MARKER}); "
                               "choose an empty or new --stage-dir")
        try:
            ours = {STAGING_MARKER, *json.loads(marker.read_text())["files"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise PublishError(f"{where}: its {STAGING_MARKER} is not readable; choose another --stage-dir") from None
        others = sorted(rel for rel in (p.relative_to(staged).as_posix() for p in staged.rglob("*")
                                        if not p.is_dir() or p.is_symlink()) if rel not in ours)
        if others:
            raise PublishError(f"{where}: holds files no publish staged ({', '.join(others[:5])}"
                               f"{' ...' if len(others) > 5 else ''}); move them away or choose another --stage-dir")
        shutil.rmtree(staged)
    staged.mkdir(parents=True, exist_ok=True)
    write_text_atomic(staged / STAGING_MARKER, json.dumps({"made_by": "vit-port publish", "artifact_folder":
                                                           str(folder), "files": files}, indent=1) + "\n")


def stage(folder: Path | str, target: Target | str, stage_dir: Path | str | None = None,
          allow_random: bool = False) -> Staged:
    """Stage what an upload of ``folder`` to ``target`` sends (any complete port, random
    weights included). The artifact folder itself is not changed; one that does not match its
    manifest is refused (PublishError) before anything is staged."""
    folder = Path(folder)
    target = parse_target(target) if isinstance(target, str) else target
    for name in ("config.json", "parity.json", MANIFEST_NAME):
        if not (folder / name).exists():
            raise PublishError(f"{folder / name}: missing; is this a complete port? (make port VARIANT=...)")
    manifest = _read_json(folder / MANIFEST_NAME)
    config = _read_json(folder / "config.json")
    report = _read_json(folder / "parity.json")
    problems = verify_manifest(folder)
    if problems:
        raise PublishError(f"{folder} does not match its manifest, nothing staged ({len(problems)} problem(s), "
                           f"first: {problems[0]}); see `vit-port verify {folder}`")
    try:
        sources = {rel: inside(folder, rel) for rel in manifest["files"] if rel != CARD_NAME}
    except UnsafePathError as exc:  # verify_manifest reports these too; a folder may change meanwhile
        raise PublishError(f"{folder / MANIFEST_NAME} lists {exc}; nothing staged") from None
    staged = Path(stage_dir) if stage_dir else folder.parent / STAGING / target.slug
    where = f"{staged} (--stage-dir)" if stage_dir else f"{staged} (the default staging folder)"
    _claim_staging(staged, folder, sorted({*sources, CARD_NAME, MANIFEST_NAME}), where)
    for rel, src in sources.items():
        _link_or_copy(src, inside(staged, rel))
    listed = {k: v for k, v in manifest["files"].items() if k != CARD_NAME}
    card = render_card(config, report, manifest.get("versions", {}), listed, target.url, manifest)
    write_text_atomic(staged / CARD_NAME, card)
    files = dict(manifest["files"])
    files[CARD_NAME] = {"size": (staged / CARD_NAME).stat().st_size, "sha256": sha256_file(staged / CARD_NAME)}
    staged_manifest = {**manifest, "files": dict(sorted(files.items())),
                       "published": {"target": target.url, "card": f"{CARD_NAME} rendered for the target; "
                                     "every other file is the port's, byte for byte"}}
    write_text_atomic(staged / MANIFEST_NAME, json.dumps(staged_manifest, indent=1) + "\n")
    listing = {p.relative_to(staged).as_posix(): p.stat().st_size
               for p in sorted(staged.rglob("*")) if p.is_file() and p.name != STAGING_MARKER}
    random = bool(report.get("random_weights") or (manifest.get("origin") or {}).get("random_weights"))
    return Staged(target, staged, listing, refusals(folder, allow_random, problems), random)


def _token_problem(target: Target) -> str | None:
    """Whether the library will find a token (the value is never looked at here)."""
    if target.kind == "hf":
        from huggingface_hub import get_token

        if not get_token():
            return "no Hugging Face token: set HF_TOKEN or run `hf auth login`"
        return None
    from kagglehub.config import get_kaggle_credentials

    if get_kaggle_credentials() is None:
        return ("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
                "or put kaggle.json in ~/.kaggle")
    return None


def upload(staged: Staged, private: bool = False, message: str | None = None) -> str:
    """Send the staged folder (not its marker); returns where it went. A failure of the client
    or the network is one line (PublishError), not the library's hundred."""
    target = staged.target
    manifest = _read_json(staged.folder / MANIFEST_NAME)
    message = message or f"{manifest['variant']}: vit-porting {manifest.get('versions', {}).get('toolkit')}"
    try:
        return _send(staged, target, private, message)
    except Exception as exc:  # noqa: BLE001 - any client, HTTP or network failure ends the same way
        raise PublishError(f"upload of {staged.folder} to {target.url} failed: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None


def _send(staged: Staged, target: Target, private: bool, message: str) -> str:
    if target.kind == "hf":
        from huggingface_hub import HfApi

        api = HfApi()  # token: HF_TOKEN or the login cache, found by huggingface_hub
        api.create_repo(repo_id=target.id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=target.id, repo_type="model", folder_path=str(staged.folder),
                          commit_message=message, ignore_patterns=[STAGING_MARKER])
        return f"https://huggingface.co/{target.id}"
    import kagglehub

    config = _read_json(staged.folder / "config.json")
    config.pop("origin", None)
    license_id = hub_license(VariantSpec.from_dict(config))
    kagglehub.model_upload(target.id, str(staged.folder), license_name=KAGGLE_LICENSES.get(license_id, "Other"),
                           version_notes=message, ignore_patterns=[STAGING_MARKER])
    owner, model = target.id.split("/")[:2]
    return f"https://www.kaggle.com/models/{owner}/{model}"


def publish(folder: Path | str, target: str, push: bool = False, allow_random: bool = False,
            stage_dir: Path | str | None = None, private: bool = False,
            log: Callable[[str], None] | None = None) -> Staged:
    """Stage ``folder`` for ``target``, list the files; with ``push`` check and upload.
    Raises PublishError when a push is refused (nothing is sent)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = Path(folder)
    parsed = parse_target(target)
    if push:  # refuse before staging anything
        found = refusals(folder, allow_random)
        if found:
            raise PublishError(f"refusing to upload {folder} to {parsed.url}: {found[0]}"
                               + "".join(f"\n  {reason}" for reason in found[1:]))
    staged = stage(folder, parsed, stage_dir, allow_random)
    log(f"Staged {len(staged.files)} files ({staged.total_bytes / 1e6:.1f} MB) for {parsed.url} in {staged.folder}:")
    for rel, size in staged.files.items():
        log(f"  {size:>14,d}  {rel}")
    if staged.random_weights:
        log("NOTE: random weights; the card's first line says so")
    if not push:
        if staged.refusals:
            log("PUSH=1 would be refused:\n  " + "\n  ".join(staged.refusals))
        else:
            log("Dry run: nothing uploaded. PUSH=1 uploads these files.")
        return staged
    problems = verify_manifest(staged.folder)
    if problems:
        raise PublishError(f"the staged folder {staged.folder} does not verify:\n  " + "\n  ".join(problems))
    token = _token_problem(parsed)
    if token:
        raise PublishError(token)
    log(f"Uploading to {parsed.url} ...")
    where = upload(staged, private=private)
    log(f"Uploaded: {where}")
    return staged
