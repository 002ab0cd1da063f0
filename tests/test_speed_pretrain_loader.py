"""Issue 18.4: the pre-training batch loader (worker processes, pinned memory) builds exactly the
batches of ``TrainBatches.micro_batch_at``; the CUDA path (pinned, non-blocking) runs where a GPU is."""

from __future__ import annotations

import pytest
import torch
from conftest import make_song_store

from m3bert.features.store import FeatureStore
from m3bert.pretrain.data import TrainBatches, batch_loader, split_by_group, store_groups


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    store = FeatureStore.open(make_song_store(tmp_path_factory.mktemp("loader"), n_songs=4, seconds=6.0))
    train, _ = split_by_group(store_groups(store), val_fraction=0.0, seed=0)
    return TrainBatches(store, train, seed=3, micro_batch=2, n_accum=2, max_frames=100)


def _equal(a, b):
    assert torch.equal(a.frames, b.frames) and torch.equal(a.lengths, b.lengths)
    assert a.keys == b.keys and a.indices == b.indices


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_the_loops_batches(data, workers):
    got = list(batch_loader(data, start=5, end=8, workers=workers))
    want = [data.micro_batch_at(step, micro, 0) for step in range(5, 8) for micro in range(2)]
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        _equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_pinned_batches_reach_the_gpu_unchanged(data):
    got = list(batch_loader(data, start=0, end=2, workers=1, pin_memory=True))
    assert all(b.frames.is_pinned() for b in got)
    on_gpu = got[0].to("cuda")
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.frames.cpu(), data.micro_batch_at(0, 0, 0).frames)


def test_a_run_with_loader_workers_ends_with_the_same_weights(tmp_path, data):
    """train.workers only moves where batches are built: the same weights, bit for bit, and the
    logged model throughput (TFLOP/s of model FLOPs) is there."""
    import json
    from pathlib import Path

    from m3bert.pretrain.loop import load_pretrain_config, pretrain

    tiny = Path(__file__).resolve().parents[1] / "configs" / "m2bert-tiny.yaml"
    base = ["train.threads=1", "train.log_every=2", "data.max_frames=64", "data.val_fraction=0.2", "train.steps=4"]
    a = pretrain(load_pretrain_config(tiny, overrides=base), store=data.store, out=tmp_path / "a", progress=False)
    b = pretrain(load_pretrain_config(tiny, overrides=base + ["train.workers=2"]), store=data.store, out=tmp_path / "b",
                 progress=False)
    assert a["weights_sha1"] == b["weights_sha1"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("model_tflops", 0) > 0 for x in lines)
