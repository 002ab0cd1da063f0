"""Probe fits in worker processes.

A benchmark's probes are many small, independent fits (representation x setting x seed, per task)
whose tiny matrix products keep one core busy at best: with one process the second core of a
2-core machine idles through the whole probing phase (measured in the demo: 619 CPU s in 532 s
wall). :func:`run_jobs` runs such fits in ``workers`` forked processes, one torch thread each.

Forking (not spawning) lets the workers read the extracted features and the task from the
parent's memory without pickling them; only each job's result travels back. Results come back
in job order, so a report does not depend on scheduling, and every fit is seeded on its own, so
the scores equal a sequential run with one torch thread (tests/test_bench_jobs.py). Where ``fork``
is not available (Windows, macOS' default) the jobs run in this process.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Sequence

import torch

_JOBS: Sequence[Callable[[], Any]] = ()


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run(i: int) -> Any:
    return _JOBS[i]()


def fork_available() -> bool:
    return "fork" in mp.get_all_start_methods()


def run_jobs(jobs: Sequence[Callable[[], Any]], *, workers: int = 1) -> list[Any]:
    """``[job() for job in jobs]``, in ``workers`` forked processes when ``workers > 1`` (order kept;
    an exception in a job is raised here)."""
    global _JOBS
    if workers <= 1 or len(jobs) <= 1 or not fork_available():
        return [job() for job in jobs]
    _JOBS = jobs
    try:
        with mp.get_context("fork").Pool(min(int(workers), len(jobs)), initializer=_init_worker) as pool:
            return pool.map(_run, range(len(jobs)), chunksize=1)
    finally:
        _JOBS = ()
