"""Publish a verified artifact folder to the Hugging Face Hub or Kaggle Models, one form per place.

Each form of a port (Keras, SavedModel, ONNX, PyTorch: ``vit_porting/publish/forms.py``) goes where its
ecosystem's loader finds it: on the Hub a repository each (``hf://owner/name`` is the Keras model,
``owner/name-savedmodel``, ``owner/name-onnx`` and ``owner/name-pytorch`` the others), on Kaggle
Models a framework slot each of one model (``kaggle://owner/model`` stages
``owner/model/<framework>/<variation>``, the variation named after the variant unless given:
``kaggle://owner/model/variation``). huggingface_hub and kagglehub do the uploads; no HTTP of our own.

A dry run (the default) stages exactly the files an upload would send, a folder per form in a
staging folder (``<out root>/.staging/<target slug>/<form>/``): the form's artifact files,
byte-identical (``model.keras`` unpacked into the folder layout ``keras.saving.load_model``
reads from the Hub), the port's record and parity reports, README.md (the form's card, linking
the others) and a manifest.json of the form's own files, so each staged form verifies on its own.
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
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vit_porting.families.registry import get_family
from vit_porting.manifest import MANIFEST_NAME, METADATA_NAME, file_table, read_record, verify_manifest
from vit_porting.publish.card import CARD_NAME, KAGGLE_LICENSES, hub_license, read_evaluation, render_card
from vit_porting.publish.forms import FORMATS, KERAS_FILE, REPORTS, SAFETENSORS_FILE, Format, withheld_files
from vit_porting.safety import STAGING_MARKER, UnsafePathError, first_line, inside, write_text_atomic

STAGING = ".staging"
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_KAGGLE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PublishError(RuntimeError):
    """A publish that was refused; the message says why."""


@dataclass(frozen=True)
class Target:
    kind: str  # "hf" | "kaggle"
    id: str  # hf: owner/name (a form adds its suffix); kaggle: owner/model[/variation]

    @property
    def url(self) -> str:
        return f"{self.kind}://{self.id}"

    @property
    def slug(self) -> str:
        return f"{self.kind}-" + self.id.replace("/", "--")

    def place(self, fmt: Format, variant: str) -> str:
        """Where ``fmt`` of ``variant`` goes: a Hub repository id or a Kaggle model handle."""
        if self.kind == "hf":
            return self.id + fmt.hf_suffix
        owner, model, *variation = self.id.split("/")
        return f"{owner}/{model}/{fmt.kaggle_framework}/{variation[0] if variation else _slug(variant)}"


def _slug(name: str) -> str:
    """A Kaggle variation name (lower case letters, digits, hyphens) for a variant name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_target(text: str) -> Target:
    """``hf://owner/name`` or ``kaggle://owner/model[/variation]``."""
    if text.startswith("hf://"):
        repo = text[len("hf://"):].strip("/")
        if not _HF_REPO.match(repo):
            raise PublishError(f"{text!r}: a Hugging Face target is hf://owner/name")
        return Target("hf", repo)
    if text.startswith("kaggle://"):
        parts = text[len("kaggle://"):].strip("/").split("/")
        if len(parts) not in (2, 3) or not all(_KAGGLE_PART.match(p) for p in parts):
            raise PublishError(f"{text!r}: a Kaggle target is kaggle://owner/model or kaggle://owner/model/variation "
                               "(each form takes its framework slot; Kaggle numbers versions itself)")
        return Target("kaggle", "/".join(parts))
    raise PublishError(f"{text!r}: --target must be hf://owner/name or kaggle://owner/model[/variation]")


@dataclass
class StagedForm:
    format: Format
    place: str  # hf://owner/name-onnx or kaggle://owner/model/onnx/variation
    folder: Path
    files: dict[str, int]  # relative path -> size, exactly what its upload sends


@dataclass
class Staged:
    target: Target
    folder: Path  # the staging folder
    forms: dict[str, StagedForm]
    refusals: list[str]  # why a push would be refused (empty: it would go)
    random_weights: bool
    withheld: dict[str, str]  # variant files not staged (below the publish floor), and why

    @property
    def files(self) -> dict[str, int]:
        """Every staged file, ``<form>/<path>`` -> size."""
        return {f"{key}/{rel}": size for key, form in self.forms.items() for rel, size in form.files.items()}

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
            found.append("the weights are random (--weights random): port a trained checkpoint, or pass "
                         "--allow-random (the card then says so on its first line)")
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


def _form_sources(folder: Path, manifest: dict, fmt: Format, weights_name: str,
                  withheld: dict[str, str]) -> dict[str, Path]:
    """{path in the form's folder: artifact file} of ``fmt``: its artifact files that the port
    wrote but those ``withheld`` (the PyTorch weights under the family's published name), and the
    record and reports every form carries. Keras' are unpacked separately."""
    listed = [rel for rel in manifest["files"] if rel != CARD_NAME and rel not in withheld]
    wanted = [rel for rel in listed if rel in REPORTS
              or any(rel == f or rel.startswith(f + "/") for f in fmt.files if f != KERAS_FILE)]
    return {(weights_name if rel == SAFETENSORS_FILE else rel): inside(folder, rel) for rel in wanted}


def _keras_members(path: Path) -> list[str]:
    """The files of a ``.keras`` zip (config.json, metadata.json, model.weights.h5): the folder
    layout ``keras.saving.load_model("hf://owner/name")`` reads."""
    with zipfile.ZipFile(path) as archive:
        return [name for name in archive.namelist() if not name.endswith("/")]


def _unpack_keras(path: Path, into: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for name in _keras_members(path):
            target = inside(into, name)  # a member named ../x stays refused
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as reader, open(target, "xb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 22)


def stage(folder: Path | str, target: Target | str, stage_dir: Path | str | None = None,
          allow_random: bool = False) -> Staged:
    """Stage what an upload of ``folder`` to ``target`` sends, one folder per form (any complete
    port, random weights included). The artifact folder itself is not changed; one that does not
    match its manifest is refused (PublishError) before anything is staged. A reduced-precision or
    LiteRT file below the publish floor on a port of trained weights is not staged
    (``vit_porting.publish.forms.withheld_files``): the fp32 forms go without it, and its card says why."""
    folder = Path(folder)
    target = parse_target(target) if isinstance(target, str) else target
    for name in (METADATA_NAME, "parity.json", MANIFEST_NAME):
        if not (folder / name).exists():
            raise PublishError(f"{folder / name}: missing; is this a complete port? (vit-port port <variant>)")
    manifest = _read_json(folder / MANIFEST_NAME)
    record = read_record(folder)
    report = _read_json(folder / "parity.json")
    problems = verify_manifest(folder)
    if problems:
        raise PublishError(f"{folder} does not match its manifest, nothing staged ({len(problems)} problem(s), "
                           f"first: {problems[0]}); see `vit-port verify {folder}`")
    try:
        weights_name = get_family(record.spec.family).presentation.hub_weights_name
        withheld = withheld_files(report, manifest["files"])
        sources = {key: _form_sources(folder, manifest, fmt, weights_name, withheld) for key, fmt in FORMATS.items()}
        keras_members = _keras_members(folder / KERAS_FILE) if KERAS_FILE in manifest["files"] else []
        planned = {key: [*files, *(keras_members if FORMATS[key].files == (KERAS_FILE,) else [])]
                   for key, files in sources.items()}
        for names in planned.values():
            for name in names:
                inside(folder, name)  # a crafted zip member or manifest path is refused before staging
    except UnsafePathError as exc:  # verify_manifest reports manifest paths too; a folder may change meanwhile
        raise PublishError(f"{folder} lists {exc}; nothing staged") from None
    except zipfile.BadZipFile as exc:
        raise PublishError(f"{folder / KERAS_FILE}: not a .keras archive ({exc}); nothing staged") from None
    forms = {key: FORMATS[key] for key, names in planned.items() if set(names) - set(REPORTS)}
    places = {key: f"{target.kind}://{target.place(fmt, record.spec.name)}" for key, fmt in forms.items()}
    staged = Path(stage_dir) if stage_dir else folder.parent / STAGING / target.slug
    where = f"{staged} (--stage-dir)" if stage_dir else f"{staged} (the default staging folder)"
    _claim_staging(staged, folder, sorted(f"{key}/{rel}" for key in forms
                                          for rel in (*planned[key], CARD_NAME, MANIFEST_NAME)), where)
    evaluation = read_evaluation(folder)
    result = {}
    for key, fmt in forms.items():
        into = inside(staged, key)
        into.mkdir()
        for rel, src in sources[key].items():
            _link_or_copy(src, inside(into, rel))
        if fmt.files == (KERAS_FILE,):
            _unpack_keras(folder / KERAS_FILE, into)
        files = file_table(into)
        card = render_card(record, report, manifest.get("versions", {}), files, manifest, fmt, places, evaluation)
        write_text_atomic(into / CARD_NAME, card)
        files = file_table(into)
        form_manifest = {**manifest, "files": files,
                         "published": {"target": places[key], "form": key,
                                       "card": f"{CARD_NAME} rendered for this form; every other file is the port's, "
                                               "byte for byte" + (", model.keras unpacked" if key == "keras" else "")}}
        write_text_atomic(into / MANIFEST_NAME, json.dumps(form_manifest, indent=1) + "\n")
        listing = {p.relative_to(into).as_posix(): p.stat().st_size for p in sorted(into.rglob("*")) if p.is_file()}
        result[key] = StagedForm(fmt, places[key], into, listing)
    random = bool(report.get("random_weights") or (manifest.get("origin") or {}).get("random_weights"))
    return Staged(target, staged, result, refusals(folder, allow_random, problems), random, withheld)


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


def upload(staged: Staged, private: bool = False, message: str | None = None) -> list[str]:
    """Send each staged form to its place; returns where they went. A failure of the client or
    the network is one line (PublishError), not the library's hundred."""
    manifest = _read_json(next(iter(staged.forms.values())).folder / MANIFEST_NAME)
    message = message or f"{manifest['variant']}: vit-porting {manifest.get('versions', {}).get('toolkit')}"
    license_id = hub_license(read_record(staged.folder / next(iter(staged.forms))).spec)
    sent = []
    for form in staged.forms.values():
        try:
            sent.append(_send(form, private, message, license_id))
        except Exception as exc:  # noqa: BLE001 - any client, HTTP or network failure ends the same way
            done = f" (uploaded before it: {', '.join(sent)})" if sent else ""
            raise PublishError(f"upload of {form.folder} to {form.place} failed: {type(exc).__name__}: "
                               f"{first_line(exc)}{done}") from None
    return sent


def _send(form: StagedForm, private: bool, message: str, license_id: str) -> str:
    kind, place = form.place.split("://", 1)
    if kind == "hf":
        from huggingface_hub import HfApi

        api = HfApi()  # token: HF_TOKEN or the login cache, found by huggingface_hub
        api.create_repo(repo_id=place, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=place, repo_type="model", folder_path=str(form.folder), commit_message=message)
        return f"https://huggingface.co/{place}"
    import kagglehub

    kagglehub.model_upload(place, str(form.folder), license_name=KAGGLE_LICENSES.get(license_id, "Other"),
                           version_notes=message)
    owner, model = place.split("/")[:2]
    return f"https://www.kaggle.com/models/{owner}/{model} ({form.format.kaggle_framework})"


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
    log(f"Staged {len(staged.files)} files ({staged.total_bytes / 1e6:.1f} MB) in {staged.folder}, "
        f"one folder per form:")
    for key, form in staged.forms.items():
        log(f"  {key}/ -> {form.place} ({sum(form.files.values()) / 1e6:.1f} MB)")
        for rel, size in form.files.items():
            log(f"  {size:>14,d}  {key}/{rel}")
    if staged.random_weights:
        log("NOTE: random weights; the card's first line says so")
    for file, why in staged.withheld.items():
        log(f"NOT staged: {file}: {why}")
    if not push:
        if staged.refusals:
            log("--push would be refused:\n  " + "\n  ".join(staged.refusals))
        else:
            log("Dry run: nothing uploaded. --push uploads these files.")
        return staged
    for form in staged.forms.values():
        problems = verify_manifest(form.folder)
        if problems:
            raise PublishError(f"the staged folder {form.folder} does not verify: {problems[0]}")
    token = _token_problem(parsed)
    if token:
        raise PublishError(token)
    log(f"Uploading {len(staged.forms)} forms ...")
    for where in upload(staged, private=private):
        log(f"Uploaded: {where}")
    return staged
