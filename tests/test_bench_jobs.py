"""Probe fits in worker processes (evaluate.jobs): same scores as one process, order kept, errors raised."""

from __future__ import annotations

import pytest
import torch

from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.baselines import get_baseline
from m3bert.evaluate.jobs import fork_available, run_jobs
from m3bert.evaluate.runner import run_benchmark


def _boom() -> None:
    raise DataError("clip x.wav: bad")


def test_run_jobs_keeps_order_and_raises():
    jobs = [lambda i=i: i * i for i in range(7)]
    assert run_jobs(jobs, workers=2) == [i * i for i in range(7)]
    assert run_jobs(jobs, workers=1) == [i * i for i in range(7)]
    with pytest.raises(DataError, match="x.wav"):
        run_jobs([lambda: 1, _boom], workers=2)


@pytest.mark.skipif(not fork_available(), reason="fork start method not available")
def test_two_workers_give_the_scores_of_one(tiny_corpus, tmp_path):
    spec = [f"builtin-pitch:{tiny_corpus}", f"builtin-key:{tiny_corpus}"]
    kw = dict(protocol="linear", seeds=2, probe_overrides={"max_epochs": 15}, progress=False,
              settings=["paper", "paper-meanstd"], cache_dir=tmp_path / "cache")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker uses: the sequential run then does the same arithmetic
    try:
        one = run_benchmark([get_baseline("mfcc"), get_baseline("raw"), get_baseline("chance")], spec, workers=1, **kw)
        two = run_benchmark([get_baseline("mfcc"), get_baseline("raw"), get_baseline("chance")], spec, workers=2, **kw)
    finally:
        torch.set_num_threads(old)
    key = [(r["representation"], r["task"], r["setting"]) for r in one["results"]]
    assert key == [(r["representation"], r["task"], r["setting"]) for r in two["results"]]
    assert len(key) == 12
    for a, b in zip(one["results"], two["results"]):
        assert [x["score"] for x in a["runs"]] == [x["score"] for x in b["runs"]]
        assert [x["metrics"] for x in a["runs"]] == [x["metrics"] for x in b["runs"]]


def test_bad_worker_count_is_refused(tiny_corpus):
    with pytest.raises(ConfigError, match="workers"):
        run_benchmark([get_baseline("chance")], [f"builtin-pitch:{tiny_corpus}"], workers=0, progress=False)
