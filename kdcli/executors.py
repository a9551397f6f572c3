"""Where a sweep's runs execute: here (in this process or local worker processes), on Ray, or on Slurm.

An executor only places runs. Each run is `fn(payload, device, threads) -> dict`, a picklable
module-level function that sets up its own store and torch threads and calls one ordinary cached
stage, so a run gives the same cache key, and hence the same artifact, on every executor; it reports
its own failure as `{"error": "one line"}`. `run` yields `Started(index, job_id)` when a run is
handed over and `Finished(index, result)` when it ends; a run whose worker dies (or whose job Slurm
kills) finishes with an error too.

Ray and submitit are imported inside the executor that needs them (extras `kdcli[ray]`,
`kdcli[slurm]`).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter

EXECUTORS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local")

RunFn = Callable[[dict, str, int], dict]


@dataclass
class Started:
    index: int
    job_id: str | None = None


@dataclass
class Finished:
    index: int
    result: dict  # {"id", "skipped"} or {"error"}


def first_line(exc: BaseException) -> str:
    """A failed run's one-line report: kdcli's own message, else `Type: first line of the message`."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, KdcliError) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _import(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise UsageError(f"--executor needs {module} ({exc}); pip install 'kdcli[{extra}]'") from exc


# -- local -------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_local_worker(counter, device: str, threads: int) -> None:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if device.startswith("cuda") and torch.cuda.device_count():  # one GPU per worker, round robin
        device = f"cuda:{index % torch.cuda.device_count()}"
    _WORKER.update(device=device, threads=threads)


def _call_local_worker(fn: RunFn, payload: dict) -> dict:
    return fn(payload, _WORKER["device"], _WORKER["threads"])


class LocalExecutor:
    """`jobs` == 1: every run in this process, one after the other. `jobs` > 1: spawned worker
    processes that split the CPU cores (or take one GPU each, round robin)."""

    def __init__(self, jobs: int, device: str):
        self.jobs, self.device = jobs, device

    def run(self, fn: RunFn, payloads: list[dict]) -> Iterator[Started | Finished]:
        if self.jobs == 1:
            threads = torch.get_num_threads()
            for i, payload in enumerate(payloads):
                yield Started(i)
                yield Finished(i, fn(payload, self.device, threads))
            return
        spawn = multiprocessing.get_context("spawn")
        threads = max(1, available_cores() // self.jobs)
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=spawn, initializer=_init_local_worker,
                                 initargs=(spawn.Value("i", 0), self.device, threads)) as pool:
            futures = {pool.submit(_call_local_worker, fn, payload): i for i, payload in enumerate(payloads)}
            queued = iter(range(len(payloads)))  # the pool starts runs in submission order
            try:
                for i in itertools.islice(queued, self.jobs):
                    yield Started(i)
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker process died (BrokenProcessPool, ...)
                        result = {"error": first_line(exc)}
                    yield Finished(futures[future], result)
                    for i in itertools.islice(queued, 1):
                        yield Started(i)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


# -- Ray ---------------------------------------------------------------------------------------------
def _call_ray_task(fn: RunFn, payload: dict, device: str, threads: int) -> dict:
    return fn(payload, device, threads)


class RayExecutor:
    """One Ray task per run with `cpus_per_run` CPUs and `gpus_per_run` GPUs. Joins the cluster at
    `address`, or the instance already started in this process, or starts a local one (and stops it
    at the end). Ray hands each task its GPUs through CUDA_VISIBLE_DEVICES, so a task uses "cuda"."""

    def __init__(self, address: str | None, cpus_per_run: float, gpus_per_run: float):
        self.address, self.cpus, self.gpus = address, cpus_per_run, gpus_per_run

    def run(self, fn: RunFn, payloads: list[dict]) -> Iterator[Started | Finished]:
        ray = _import("ray", "ray")
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except Exception as exc:  # ConnectionError, a bad address, ...
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise KdcliError(f"could not start or join {where}: {first_line(exc)}") from exc
        try:
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_call_ray_task)
            device = "cuda" if self.gpus > 0 else "cpu"
            threads = max(1, int(self.cpus))
            refs = {}
            for i, payload in enumerate(payloads):
                ref = task.remote(fn, payload, device, threads)
                refs[ref] = i
                yield Started(i, ref.task_id().hex()[:12])
            try:
                while refs:
                    done, _ = ray.wait(list(refs), num_returns=1)
                    for ref in done:
                        i = refs.pop(ref)
                        try:
                            result = ray.get(ref)
                        except Exception as exc:  # a worker crash, an out-of-memory kill, ...
                            result = {"error": first_line(exc)}
                        yield Finished(i, result)
            except BaseException:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started_here:
                ray.shutdown()


# -- Slurm -------------------------------------------------------------------------------------------
class SlurmExecutor:
    """One Slurm job per run through submitit (`cluster="local"`: submitit's local executor, which
    runs the jobs as processes of this machine). Job logs go to `folder`, which, like the store,
    must be on a filesystem the compute nodes share."""

    def __init__(self, folder: Path, partition: str | None, time_limit: int, cpus_per_run: float,
                 gpus_per_run: float, cluster: str = "slurm", poll_seconds: float = 5.0):
        self.folder, self.partition, self.time_limit = folder, partition, time_limit
        self.cpus, self.gpus, self.cluster, self.poll = cpus_per_run, gpus_per_run, cluster, poll_seconds

    def _executor(self):
        submitit = _import("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        executor.update_parameters(timeout_min=self.time_limit, cpus_per_task=max(1, int(self.cpus)),
                                   gpus_per_node=int(self.gpus), nodes=1, tasks_per_node=1)
        if self.cluster == "slurm" and self.partition:
            executor.update_parameters(slurm_partition=self.partition)
        return submitit, executor

    def run(self, fn: RunFn, payloads: list[dict]) -> Iterator[Started | Finished]:
        try:
            submitit, executor = self._executor()
        except (RuntimeError, ValueError, OSError) as exc:  # no sbatch on this machine, a bad parameter
            raise KdcliError(f"could not set up the Slurm executor: {first_line(exc)}") from exc
        device = "cuda" if self.gpus > 0 else "cpu"
        threads = max(1, int(self.cpus))
        jobs = {}
        try:
            for i, payload in enumerate(payloads):
                try:
                    job = executor.submit(fn, payload, device, threads)
                except Exception as exc:  # sbatch refused the job
                    yield Started(i)
                    yield Finished(i, {"error": first_line(exc)})
                    continue
                jobs[job.job_id] = (i, job)
                yield Started(i, str(job.job_id))
            for job in submitit.helpers.as_completed([job for _, job in jobs.values()],
                                                     poll_frequency=self.poll):
                i, _ = jobs.pop(job.job_id)
                try:
                    result = job.result()
                except Exception as exc:  # the job failed, timed out or was cancelled
                    result = {"error": first_line(exc)}
                yield Finished(i, result)
        except BaseException:
            for _, job in jobs.values():
                job.cancel(check=False)
            raise


# -- progress ----------------------------------------------------------------------------------------
class RunProgress:
    """A rich progress bar over a sweep's runs counting done, cached, running and failed (with the
    running job ids where the executor has them); hidden when quiet or not on a terminal."""

    def __init__(self, reporter: Reporter, total: int):
        self.reporter, self.total = reporter, total
        self.running: dict[int, str | None] = {}
        self.counts = {"done": 0, "cached": 0, "failed": 0}
        self._bar = None

    def __enter__(self) -> RunProgress:
        if not self.reporter.quiet and self.reporter.console.is_terminal:
            self._bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=self.reporter.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.describe(), total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def describe(self) -> str:
        ids = [job for job in self.running.values() if job]
        shown = f" [{', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}]" if ids else ""
        return (f"done {self.counts['done']}, cached {self.counts['cached']}, running {len(self.running)}"
                f"{shown}, failed {self.counts['failed']}")

    def update(self, event: Started | Finished) -> None:
        if isinstance(event, Started):
            self.running[event.index] = event.job_id
        else:
            self.running.pop(event.index, None)
            outcome = "failed" if "error" in event.result else "cached" if event.result["skipped"] else "done"
            self.counts[outcome] += 1
        if self._bar is not None:
            self._bar.update(self._task, description=self.describe(), advance=isinstance(event, Finished))
