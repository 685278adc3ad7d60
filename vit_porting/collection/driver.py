"""Port a whole family, a collection, on Ray: one Ray task per variant, resumable, one card.

Why Ray: a zoo (40+ checkpoints, minutes and up to 4.5 GB each, ten times that for every runtime
checked) outgrows one machine, and scheduling ports by their memory across machines, retrying
the ones whose process died, is what a distributed engine already does. With no address,
``ray.init`` starts a local instance on this machine (the default); ``--address`` or
``RAY_ADDRESS`` runs the same command on an existing cluster.

Each task runs ``vit_porting.pipeline.port`` for one variant, unchanged: the task's process is the
port's orchestrator and starts its framework workers as a ``vit-port port`` does. The task asks
Ray for the CPUs and memory that port needs (``port_resources``), so Ray never packs two large
ports into one node's memory. This process (the driver) imports neither framework.

Writes: ``<out>/<variant>/`` per variant (through a scratch folder of the task's own,
``<out>/.<variant>.collect-<pid>-…/`` with an owner file, removed by the task, or by the driver
or a later port once its process is gone; then a rename), ``<out>/collections/<family>/collection.json``,
its card ``README.md`` and a log per variant in ``logs/``. Nothing else: Ray's session files go to a
temporary folder this command creates and removes, and the local instance's token lives in its
processes' environment only.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from vit_porting import __version__
from vit_porting.collection.report import (
    build_collection,
    collection_dir,
    folder_summary,
    model_facts,
    previous_collection,
    variant_entry,
    write_collection,
    write_text,
)
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import FamilyError, get_family, variant_from_dict
from vit_porting.manifest import METADATA_NAME, is_port_folder, verify_manifest
from vit_porting.mapping.engine import MappingFileError
from vit_porting.parity.outputs import DEFAULT_BUDGET_MB
from vit_porting.pipeline import DEFAULT_ARTIFACTS, PortError, PortOptions, port
from vit_porting.pipeline.destination import replace_folder
from vit_porting.safety import FolderBusyError, FolderLock, make_scratch, remove_stale_scratch
from vit_porting.workers.protocol import WorkerError

# What one port asks Ray for. Its processes run one after another, so its need is the largest of
# them (plus this task's own process). Measured (benchmarks/results/*-x86_64-2cpu.json, "port"):
# past a GB of weights the largest process is 3.27x (cait_m48_448) to 3.59x (cvt-w24-384-22k)
# the weight bytes; below, the frameworks and the activations dominate: 1.51 to 3.22 GB
# (cvt-13-224 .. cait_s24_384). Hence memory = TASK_MEMORY + max(MEMORY_FLOOR, MEMORY_RATIO x
# weight bytes); tests/test_collection.py checks the constants against every committed result.
MEMORY_RATIO = 3.6
MEMORY_FLOOR = 3.3e9
TASK_MEMORY = 0.5e9  # the task process: Ray's worker, the comparison of memory-mapped outputs
# the thread pools of the port's workers follow the CPUs the task was given (Ray sets OMP_NUM_THREADS)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
SCRATCH = "{variant}.collect"
LOCAL_OBJECT_STORE = 128 * 2**20  # results are small dicts; the default takes 30 % of the memory
USER_ERRORS = (PortError, MappingFileError, FamilyError, FolderBusyError)
# the local instance's token: one per process (Ray's token loader keeps the first it reads)
_LOCAL_TOKEN = secrets.token_hex(32)


def port_resources(weight_bytes: int, cpus: int = 1) -> dict:
    """The Ray resource request of one port: its CPUs and its memory in bytes (see the constants)."""
    return {"num_cpus": cpus, "memory": int(TASK_MEMORY + max(MEMORY_FLOOR, MEMORY_RATIO * weight_bytes))}


@dataclass
class CollectionOptions:
    weights: str = "pretrained"
    seed: int = 0
    force: bool = False
    out: str = str(DEFAULT_ARTIFACTS)  # a local path, or an fsspec URL finished folders are copied to
    address: str | None = None  # an existing Ray cluster; None: RAY_ADDRESS, else a local instance
    num_cpus: int | None = None  # CPUs of the local instance (default: this machine's)
    cpus_per_port: int = 1
    retries: int = 1  # a port killed by a signal or out of memory is run again this many times
    exports: bool = True
    batch: int = 2
    progress: bool = True
    command: str | None = None  # recorded in collection.json and the card
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    def settings(self) -> dict:
        """What makes two ports of a variant the same port: a folder made with other settings is
        not skipped. (``input_seed``, ``photos``, the output budget and the mapping are the
        defaults of ``vit-port port``; a collection does not change them.)"""
        weights = self.weights if self.weights in ("random", "pretrained") else str(Path(self.weights).resolve())
        return {"weights": weights, "seed": self.seed, "batch": self.batch, "input_seed": 0, "photos": True,
                "output_budget_mb": DEFAULT_BUDGET_MB, "exports": self.exports, "mapping": None}


# -- where folders go ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputRoot:
    """A local path (ports are renamed into it; on a cluster, a path every node mounts) or an
    fsspec URL (each port is written and verified on its node, then copied there)."""

    text: str

    @property
    def remote(self) -> bool:
        return "://" in self.text

    @property
    def fs(self) -> Any:
        return fsspec.core.url_to_fs(self.text)[0]

    @property
    def path(self) -> str:
        return fsspec.core.url_to_fs(self.text)[1].rstrip("/")

    def folder(self, variant: str) -> str:
        return f"{self.path}/{variant}"

    def scratch_parent(self) -> Path:
        """Where the tasks' scratch folders go: the root itself (a rename puts a port in place),
        or this machine's temporary folder for a remote root."""
        return Path(tempfile.gettempdir()) / f"vit-port-collection-{os.getuid()}" if self.remote else Path(self.path)

    def verify(self, variant: str) -> list[str]:
        folder = self.folder(variant)
        return verify_manifest(folder, self.fs) if self.remote else verify_manifest(Path(folder))

    def install(self, folder: Path, variant: str, force: bool) -> None:
        """Put a finished, verified folder in place: a rename, or a copy to a scratch name on the
        remote root, checked file by file, then a move (the old folder is moved aside first)."""
        if not self.remote:
            final = Path(self.folder(variant))
            with FolderLock(final, f"vit-port collection {variant}"):  # not while a port or parity holds it
                replace_folder(folder, final, force)
            return
        fs, final = self.fs, self.folder(variant)
        if fs.exists(final):
            if not force:
                raise PortError(f"{self.text}/{variant} already exists; pass --force to replace it")
            if not is_port_folder(final, fs):
                raise PortError(f"{self.text}/{variant} is not an artifact folder of a port (no manifest.json of "
                                "vit-porting); --force replaces only those")
        # a name of this copy's own: a killed copy's leftovers are never taken for another's
        scratch = f"{self.path}/.{SCRATCH.format(variant=variant)}-{os.getpid()}-{secrets.token_hex(4)}"
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            target = f"{scratch}/new/{file.relative_to(folder).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(file), target)
            if fs.size(target) != file.stat().st_size:
                raise PortError(f"{target}: copy has {fs.size(target)} bytes, not {file.stat().st_size}")
        if fs.exists(final):
            fs.mv(final, f"{scratch}/old", recursive=True)
        fs.mv(f"{scratch}/new", final, recursive=True)
        fs.rm(scratch, recursive=True)


# -- resume ------------------------------------------------------------------------------------------


def _weights_match(weights: str, seed: int, origin: dict) -> bool:
    kind = origin.get("kind")
    if weights in ("random", "pretrained"):
        return kind == weights and (weights != "random" or origin.get("seed") == seed)
    requested = Path(weights).resolve()
    made_from = Path(origin.get("file") or "")
    return kind == "file" and requested in (made_from, made_from.parent)


def settings_differences(root: OutputRoot, spec: VariantSpec, settings: dict) -> list[str]:
    """How the variant's existing folder was made differently from what is asked (empty: the same)."""
    fs, folder = root.fs, root.folder(spec.name)
    config = json.loads(fs.cat_file(f"{folder}/{METADATA_NAME}"))
    report = json.loads(fs.cat_file(f"{folder}/parity.json"))
    origin = config.get("origin") or {}
    recorded = {**report.get("options", {}), "exports": bool(report.get("exports")), "mapping": report.get("mapping")}
    found = []
    if not _weights_match(settings["weights"], settings["seed"], origin):
        found.append(f"weights: {origin.get('description')!r}, asked {settings['weights']!r}"
                     + (f" seed {settings['seed']}" if settings["weights"] == "random" else ""))
    if config.get("config") != json.loads(json.dumps(spec.to_dict()["config"])):
        changed = sorted(k for k, v in spec.to_dict()["config"].items()
                         if json.loads(json.dumps(v)) != (config.get("config") or {}).get(k))
        found.append(f"architecture: {', '.join(changed)} differ")
    for key in ("batch", "input_seed", "photos", "output_budget_mb", "exports", "mapping"):
        if recorded.get(key) != settings[key]:
            found.append(f"{key}: {recorded.get(key)!r}, asked {settings[key]!r}")
    return found


def existing_state(root: OutputRoot, spec: VariantSpec, settings: dict) -> tuple[str, str | None]:
    """('absent' | 'verified' | 'stale', why stale): whether the variant's folder can be skipped."""
    if not root.fs.exists(root.folder(spec.name)):
        return "absent", None
    problems = root.verify(spec.name)
    if problems:
        return "stale", f"does not verify against its manifest ({problems[0]})"
    differences = settings_differences(root, spec, settings)
    if differences:
        return "stale", "was made with other settings (" + "; ".join(differences) + ")"
    return "verified", None


# -- the Ray task ------------------------------------------------------------------------------------


def one_line(message: str, limit: int = 300) -> str:
    """A failure in one line: its first line, and its last when that says more (a traceback's
    exception line)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()] or ["(no message)"]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def transient(exc: WorkerError) -> bool:
    """A worker killed by a signal (the kernel's OOM killer, a co-tenant's memory pressure) or out
    of memory may pass on a second attempt; a Python error, a refused mapping or checkpoint, or
    failed parity is deterministic and gives the same result again."""
    return not exc.user_error and bool(re.search(r"exit code -\d+|MemoryError|Killed", exc.message))


def port_task(spec_dict: dict, settings: dict, root_text: str, force: bool, retries: int, cpus: int) -> dict:
    """One variant's port, in a Ray worker process that exits after it (``max_calls=1``): the
    port's scratch folder is cleaned first (a previous attempt may have been killed), the port
    is retried while its failure is ``transient``, and the folder is verified before it is put
    in place. A user-facing error is returned, not raised, so that Ray does not retry it."""
    started = time.perf_counter()
    for name in THREAD_ENV:
        os.environ[name] = str(cpus)
    root, lines = OutputRoot(root_text), []
    spec = variant_from_dict(spec_dict)
    scratch = make_scratch(root.scratch_parent(), SCRATCH.format(variant=spec.name))
    result: dict = {"variant": spec.name, "node": platform.node(), "pid": os.getpid(), "attempts": 0,
                    "log": lines}
    try:
        while True:
            result["attempts"] += 1  # a failed port leaves nothing in the scratch folder
            options = PortOptions(weights=settings["weights"], seed=settings["seed"], batch=settings["batch"],
                                  input_seed=settings["input_seed"], photos=settings["photos"],
                                  exports=settings["exports"], output_budget_mb=settings["output_budget_mb"],
                                  mapping=settings["mapping"], out_root=scratch, log=lines.append)
            try:
                report = port(spec, options)
                break
            except WorkerError as exc:
                if not transient(exc) or result["attempts"] > retries:
                    raise
                lines.append(f"attempt {result['attempts']} failed ({one_line(exc.message)}); trying again")
        problems = verify_manifest(scratch / spec.name)
        if problems:
            raise PortError(f"{spec.name}: the finished folder does not verify ({problems[0]})")
        root.install(scratch / spec.name, spec.name, force)
        result.update(status="ported", passed=bool(report["passed"]))
    except WorkerError as exc:
        result.update(status="error", error=one_line(exc.message))
    except USER_ERRORS as exc:
        result.update(status="error", error=one_line(str(exc)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # this task's own
    result.update(seconds=round(time.perf_counter() - started, 1),
                  task_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  workers_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
    return result


# -- Ray --------------------------------------------------------------------------------------------


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[dict]:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local instance; yields what the
    collection records as its engine. A session the caller already started is used as it is."""
    try:
        import ray
    except ImportError:
        raise PortError("vit-port collection runs on Ray, which is not installed: "
                        "pip install 'vit-porting[collection]'") from None

    package_root = str(Path(__file__).resolve().parents[2])
    families = os.environ.get("VIT_PORTING_FAMILIES", "")
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield _engine(ray, "caller's session")
        return
    if address:
        # the nodes run their own installed vit-porting; only plug-in families need passing on
        env = {"env_vars": {"VIT_PORTING_FAMILIES": families}} if families else None
        try:
            ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PortError(f"no Ray cluster at {address} (--address or RAY_ADDRESS): {one_line(str(exc))}") from None
        try:
            yield _engine(ray, "cluster")
        finally:
            ray.shutdown()
        return
    temp = tempfile.mkdtemp(prefix="vit-port-ray-")
    # Ray turns token authentication on for a new local instance (and says so: quieted here); with
    # the token in the environment it writes no ~/.ray/auth_token. It sets RAY_AUTH_MODE itself.
    local_env = {"RAY_AUTH_TOKEN": _LOCAL_TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
                 "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    auth_level = auth_logger.level
    try:
        with _environment(RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", ""), **local_env):
            if not os.environ["RAY_AUTH_MODE"]:
                del os.environ["RAY_AUTH_MODE"]
            auth_logger.setLevel(logging.ERROR)
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _temp_dir=temp,
                     object_store_memory=LOCAL_OBJECT_STORE,
                     logging_level=logging.WARNING, log_to_driver=False)
            try:
                yield _engine(ray, "local")
            finally:
                ray.shutdown()
    finally:
        auth_logger.setLevel(auth_level)
        shutil.rmtree(temp, ignore_errors=True)


def _engine(ray: Any, mode: str) -> dict:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return {"name": "ray", "version": ray.__version__, "mode": mode,
            "address": ray.get_runtime_context().gcs_address, "nodes": len(nodes),
            "cpus": resources.get("CPU"), "memory_gb": round(resources.get("memory", 0) / 1e9, 1),
            "largest_node_memory": max((n["Resources"].get("memory", 0) for n in nodes), default=0),
            "largest_node_cpus": max((n["Resources"].get("CPU", 0) for n in nodes), default=0)}


# -- the collection ------------------------------------------------------------------------------


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="variant", file=sys.stderr, disable=not enabled,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def run_collection(specs: list[VariantSpec], options: CollectionOptions) -> dict:
    """Port ``specs`` (one family) on Ray into ``options.out``; write and return collection.json.

    A variant whose folder verifies against its manifest and was made with the same settings is
    skipped (``force`` ports it again); a folder that does not verify or was made otherwise is
    never replaced without ``force``: the variant is reported as an error instead. A failing
    variant does not stop the others."""
    families = {spec.family for spec in specs}
    if len(families) != 1:
        raise PortError(f"a collection is one family; the variants asked for are of {', '.join(sorted(families))}")
    (family,) = families
    started, load_start = time.perf_counter(), os.getloadavg()
    root = OutputRoot(options.out if "://" in options.out else str(Path(options.out).resolve()))
    settings, log = options.settings(), options.log
    previous = previous_collection(root.fs, root.path, family)
    entries: dict[str, dict] = {}
    todo: list[VariantSpec] = []
    for spec in specs:
        state, why = ("absent", None) if options.force else existing_state(root, spec, settings)
        if state == "verified":
            entries[spec.name] = {"status": "skipped", "why": "its folder verifies and was made with these settings"}
        elif state == "stale":
            entries[spec.name] = {"status": "error",
                                  "error": f"{options.out.rstrip('/')}/{spec.name} {why}; --force replaces it"}
        else:
            todo.append(spec)
    facts = _model_facts(specs, previous)
    engine: dict = {"name": "ray", "started": False, "why": "every variant was skipped or refused"}
    if todo:
        log(f"{family}: {len(todo)} to port, {len(specs) - len(todo)} skipped or refused; starting Ray")
        with ray_session(options.address, options.num_cpus) as engine:
            log(f"Ray {engine['version']} ({engine['mode']}) at {engine['address']}: {engine['nodes']} node(s), "
                f"{engine['cpus']:.0f} CPUs, {engine['memory_gb']} GB for tasks")
            for spec, result in _run_tasks(todo, facts, options, settings, root, engine):
                entries[spec.name] = result
    for name, entry in entries.items():
        if entry.get("log") is not None:
            write_text(root.fs, f"{collection_dir(root.path, family)}/logs/{name}.log",
                       "\n".join(entry.pop("log")) + "\n")
    records = []
    for spec in specs:
        entry = entries[spec.name]
        summary = folder_summary(root.fs, root.folder(spec.name)) if entry["status"] in ("ported", "skipped") else None
        if entry["status"] == "skipped":  # who made the folder: known if the last collection did
            before = previous.get(spec.name) or {}
            entry["ported_by"] = before.get("ported_by") if before.get("ported") == summary["ported"] else None
        records.append(variant_entry(spec, facts.get(spec.name), summary, **entry))
    collection = build_collection(
        family, records, command=options.command, engine={k: v for k, v in engine.items() if "largest" not in k},
        out=options.out, settings=settings, toolkit_version=__version__,
        wall_s=round(time.perf_counter() - started, 1),
        machine={"node": platform.node(), "cpus": os.cpu_count(), "load_average_start": load_start,
                 "load_average_end": os.getloadavg()})
    json_path, card_path = write_collection(root.fs, root.path, collection)
    log(f"{collection['summary']['passed']}/{len(specs)} passed; {json_path}, {card_path}")
    return collection


def _run_tasks(todo: list[VariantSpec], facts: dict, options: CollectionOptions, settings: dict,
               root: OutputRoot, engine: dict) -> Iterator[tuple[VariantSpec, dict]]:
    """Submit one task per variant (largest first: the longest port starts first) and yield each
    result as it finishes; a task Ray could not run yields an error result."""
    import ray

    task = ray.remote(max_calls=1)(port_task)
    pending: dict[Any, VariantSpec] = {}
    resources_of: dict[str, dict] = {}
    for spec in sorted(todo, key=lambda s: -facts[s.name]["weight_bytes"]):
        request = port_resources(facts[spec.name]["weight_bytes"], options.cpus_per_port)
        resources_of[spec.name] = request
        if request["memory"] > engine["largest_node_memory"] or request["num_cpus"] > engine["largest_node_cpus"]:
            yield spec, {"status": "error", "task": {"resources": request},
                         "error": f"needs {request['memory'] / 1e9:.1f} GB and {request['num_cpus']} CPU(s) for one "
                                  f"port; the largest Ray node offers {engine['largest_node_memory'] / 1e9:.1f} GB and "
                                  f"{engine['largest_node_cpus']:.0f} (a node with more memory, or --cpus-per-port)"}
            continue
        ref = task.options(name=f"port {spec.name}", max_retries=options.retries, retry_exceptions=False,
                           **request).remote(spec.to_dict(), settings, root.text, options.force,
                                                          options.retries, options.cpus_per_port)
        pending[ref] = spec
    bar = _progress(len(todo), len(todo) - len(pending), todo[0].family, options.progress)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            if not done:
                bar.refresh()  # the elapsed time moves while the ports run
                continue
            spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task's process died (killed, OOM, node lost)
                result = {"status": "error", "error": f"the Ray task died: {one_line(str(exc))}"}
                _discard_dead_scratch(root.scratch_parent(), spec.name)
            entry = {"status": result["status"], "log": result.get("log")}
            if result.get("error"):
                entry["error"] = result["error"]
            entry["task"] = {"resources": resources_of[spec.name],
                             **{k: v for k, v in result.items() if k not in ("variant", "status", "error", "log",
                                                                                 "passed")}}
            if result["status"] == "ported":
                entry["ported_by"] = {"engine": "ray", "version": engine["version"], "mode": engine["mode"],
                                      "address": engine["address"], "node": result["node"]}
            bar.set_postfix_str(f"{spec.name} " + ("ERROR" if result.get("error") else
                                                   "passed" if result.get("passed") else "FAILED"))
            bar.update(1)
            yield spec, entry
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


def _discard_dead_scratch(parent: Path, variant: str, wait_s: float = 10.0) -> None:
    """Remove a dead task's scratch folder (on this machine) once its process is gone: Ray reports
    the death when the process has closed its connection, a moment before the kernel has finished
    it, and a folder whose owner still shows as running is never removed."""
    prefix = f".{SCRATCH.format(variant=variant)}-"
    deadline = time.monotonic() + wait_s
    while True:
        remove_stale_scratch(parent)
        if time.monotonic() > deadline or not any(p.name.startswith(prefix) for p in parent.glob(".*")):
            return
        time.sleep(0.2)


def _model_facts(specs: list[VariantSpec], previous: dict) -> dict[str, dict]:
    """``model_facts`` with its worker's files in a temporary folder of this call's own."""
    with tempfile.TemporaryDirectory(prefix="vit-port-facts-") as work:
        return model_facts(specs, Path(work), previous)


def collection_from_reports(family: str, out: str, command: str | None = None,
                            specs: list[VariantSpec] | None = None) -> dict:
    """collection.json and the card of ``family`` from whatever folders are under ``out``, without
    porting or verifying: the parity reports CI's per-variant jobs upload (their JSON files only),
    or folders made one ``vit-port port`` at a time. A variant without a report is an error."""
    root = OutputRoot(out if "://" in out else str(Path(out).resolve()))
    specs = specs or resolve_variants(family, None)
    facts = _model_facts(specs, previous_collection(root.fs, root.path, family))
    records = []
    for spec in specs:
        folder = root.folder(spec.name)
        if root.fs.exists(f"{folder}/parity.json"):
            summary = folder_summary(root.fs, folder)
            records.append(variant_entry(spec, facts.get(spec.name), summary, status="reported"))
        else:
            records.append(variant_entry(spec, facts.get(spec.name), status="error",
                                         error=f"no parity report under {out.rstrip('/')}/{spec.name}"))
    collection = build_collection(family, records, command=command, out=out, toolkit_version=__version__,
                                  engine={"name": "reports", "why": "built from parity reports; nothing ported"})
    write_collection(root.fs, root.path, collection)
    return collection


def exit_code(collection: dict) -> int:
    """0 when every variant passed parity, else 1."""
    return 0 if collection["summary"]["passed"] == collection["summary"]["variants"] else 1


def resolve_variants(family: str, names: list[str] | None) -> list[VariantSpec]:
    """The family's variants, or the ``names`` asked for (each must be one of them)."""
    variants = get_family(family).variant_map()
    if not names:
        return list(variants.values())
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise PortError(f"--variants {','.join(unknown)}: not a variant of {family}; its variants: "
                        f"{', '.join(variants)}")
    return [variants[n] for n in names]
