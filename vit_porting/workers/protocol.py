"""Plumbing shared by the per-runtime worker processes.

Each runtime runs in its own process (``python -m vit_porting.workers.run_torch JOB.json``, ...): importing
TensorFlow and torch into one process aborts or crashes it, two thread pools fight over the
cores, and an artifact is only proven when it loads from disk in a process that did not
write it. A job is a JSON file; the worker writes a JSON result beside it and exits 2 with
a one-paragraph message on an error the user can act on.

A worker dies with the process that started it: a port killed with SIGKILL must not leave a
worker computing and writing into a folder nobody will ever rename into place.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vit_porting.safety import ENVIRONMENT_ERRNOS, describe_os_error, write_text_atomic
from vit_porting.workers.jobs import Job

USER_ERROR_EXIT = 2
PARENT_ENV = "VIT_PORTING_PARENT_PID"  # set by run_worker: the process this worker must not outlive
_PR_SET_PDEATHSIG = 1

# Keep TensorFlow's C++ start-up chatter out of the user's terminal.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}


class WorkerError(RuntimeError):
    """A worker process failed; ``message`` is what it said went wrong."""

    def __init__(self, module: str, job: str, message: str, user_error: bool):
        self.module, self.job, self.message, self.user_error = module, job, message, user_error
        super().__init__(message)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _arm_parent_death() -> Callable[[], None] | None:
    """``preexec_fn`` for a worker on Linux: between fork and exec, ask the kernel for SIGKILL
    when this process dies (``PR_SET_PDEATHSIG``, kept across exec), so the worker dies even
    while still importing its framework; if this process died before the call, exit at once.
    prctl is looked up here, before the fork, so the child only calls it. None elsewhere:
    ``worker_main`` polls instead."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _poll_parent(parent: int) -> None:
    """Where the kernel cannot end a worker with its parent (no PR_SET_PDEATHSIG), end it when
    its parent changes (the parent died and the worker was adopted)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _refuse(result_path: Path, message: str) -> None:
    """Report a user error and exit; on a disk too full for the result, stderr's last line says it."""
    print(message, file=sys.stderr)
    try:
        write_text_atomic(result_path, json.dumps({"ok": False, "error": message, "user_error": True}))
    except OSError:
        pass
    sys.exit(USER_ERROR_EXIT)


def worker_main(handlers: dict[type[Job] | str, Callable[[Any], Any]], user_errors: tuple[type, ...],
                argv: list[str] | None = None) -> None:
    """A worker process's body: read the job file, run its handler, write the result. The toolkit's
    workers name each job by its record (``jobs.py``), which the file is read into and the handler
    returns; a tool's own worker (a benchmark's) may name a job by a string and pass dicts."""
    if os.environ.get(PARENT_ENV) and not sys.platform.startswith("linux"):  # Linux: armed before exec
        _poll_parent(int(os.environ[PARENT_ENV]))
    argv = sys.argv[1:] if argv is None else argv
    data = json.loads(Path(argv[0]).read_text())
    result_path = Path(data["result"])
    kind = next(k for k in handlers if (k if isinstance(k, str) else k.name) == data["job"])
    job = data if isinstance(kind, str) else kind.from_json(data)
    start = time.perf_counter()
    try:
        result = handlers[kind](job)
    except user_errors as exc:
        _refuse(result_path, str(exc))
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        # a full disk's write() names no file: the job's output does
        _refuse(result_path, describe_os_error(exc, data.get("out") or data.get("outputs")))
    payload = result if isinstance(result, dict) else result.to_json()
    payload.update(ok=True, seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
    write_text_atomic(result_path, json.dumps(payload, indent=1, default=str))


WORKERS = ("torch", "keras", "onnx", "savedmodel", "litert", "eval")  # vit_porting.workers.run_<name>


def worker_module(worker: str) -> str:
    """The module a worker runs: one of ``WORKERS`` by its short name, else any importable module
    named in full (a benchmark's worker)."""
    return f"vit_porting.workers.run_{worker}" if worker in WORKERS else worker


def run_worker(worker: str, job: dict, work_dir: Path, env: dict | None = None, python: str | None = None) -> dict:
    """Run one job in a fresh process and return its result (raises WorkerError). ``python``: another
    environment's interpreter, for a tool that cannot share ours (the benchmarks' nobuco, Keras 2)."""
    module = worker_module(worker)
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{module.rsplit('.', 1)[-1]}-{job['job']}-{time.monotonic_ns()}"
    job = {**job, "result": str(work_dir / f"{stem}.result.json")}
    job_path = work_dir / f"{stem}.job.json"
    job_path.write_text(json.dumps(job, indent=1, default=str))
    full_env = {**os.environ, **QUIET_ENV, **(env or {}), PARENT_ENV: str(os.getpid())}
    repo_root = str(Path(__file__).resolve().parents[2])  # the folder holding vit_porting/
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, full_env.get("PYTHONPATH")]))
    proc = subprocess.run([python or sys.executable, "-m", module, str(job_path)], env=full_env,
                          stderr=subprocess.PIPE, text=True, preexec_fn=_arm_parent_death())
    result_path = Path(job["result"])
    try:  # written under a temporary name: present means complete (an older worker's may be torn)
        result = json.loads(result_path.read_text())
    except (FileNotFoundError, ValueError):
        result = None
    if proc.returncode != 0 or not result or not result.get("ok"):
        if result and result.get("error"):
            raise WorkerError(module, job["job"], result["error"], bool(result.get("user_error")))
        if proc.returncode == USER_ERROR_EXIT and proc.stderr.strip():  # no room left for the result file
            raise WorkerError(module, job["job"], proc.stderr.strip().splitlines()[-1], True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkerError(module, job["job"],
                          f"{module} {job['job']} failed (exit code {proc.returncode}):\n{tail}", False)
    return result


def call(job: Job, work_dir: Path, env: dict | None = None) -> Any:
    """Run ``job`` in a fresh process of its worker and return its result record (raises WorkerError)."""
    return job.result_type.from_json(run_worker(job.worker, job.to_json(), work_dir, env=env))
