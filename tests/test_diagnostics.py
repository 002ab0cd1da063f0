"""Trivial predictors of masked cells (hand-computed), and a run's checkpoints scored on exactly its
own validation (the losses the run logged, the untrained twin at step 0)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_song_store

from m3bert.core.errors import ConfigError
from m3bert.models.hub import load_encoder, weights_digest
from m3bert.pretrain.diagnostics import (
    PREDICTORS,
    build_module,
    kept_checkpoints,
    predict_channel_mean,
    predict_nearest_frame,
    predict_zeros,
    reconstruction_diagnostics,
)
from m3bert.pretrain.loop import load_pretrain_config, pretrain
from m3bert.pretrain.objectives import cell_losses

FALLBACK = np.array([-7.0, 9.0], dtype=np.float32)


def _batch():
    """One row of 6 frames x 2 channels: frames 2-3 masked in both channels (a CFM span), channel 1
    masked in every frame (a CCM block)."""
    x = np.array([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [6.0, 50.0], [8.0, 60.0]]], dtype=np.float32)
    mask = np.zeros_like(x, dtype=bool)
    mask[0, 2:4, :] = True
    mask[0, :, 1] = True
    return x, mask, np.array([6])


def test_trivial_predictors_match_a_hand_computation():
    x, mask, lengths = _batch()
    zeros = predict_zeros(x, mask, lengths, fallback=FALLBACK)
    mean = predict_channel_mean(x, mask, lengths, fallback=FALLBACK)
    near = predict_nearest_frame(x, mask, lengths, fallback=FALLBACK)
    assert not zeros.any()
    # channel 0: visible frames 0, 1, 4, 5 -> (1 + 2 + 6 + 8) / 4 = 4.25; channel 1 has no visible cell -> fallback
    np.testing.assert_allclose(mean[0, :, 0], 4.25)
    np.testing.assert_allclose(mean[0, :, 1], 9.0)
    # frame 2 is 1 from frame 1 and 2 from frame 4 -> 2.0; frame 3 is 1 from frame 4 -> 6.0
    np.testing.assert_allclose(near[0, 2:4, 0], [2.0, 6.0])
    np.testing.assert_allclose(near[0, :, 1], 9.0)
    # Huber (delta 1) over the 8 masked cells, by hand:
    # channel 0: zeros |3|,|4| -> 2.5 + 3.5; mean |1.25|,|0.25| -> 0.75 + 0.03125; nearest |1|,|2| -> 0.5 + 1.5
    # channel 1 (fallback 9): |1|,|11|,|21|,|31|,|41|,|51| -> 0.5 + 10.5 + 20.5 + 30.5 + 40.5 + 50.5 = 153
    # channel 1 (zeros): 9.5 + 19.5 + 29.5 + 39.5 + 49.5 + 59.5 = 207
    m = torch.from_numpy(mask)
    target = torch.from_numpy(x)

    def loss(pred):
        return float(cell_losses(torch.from_numpy(pred)[m], target[m], loss="huber", huber_delta=1.0).mean())

    assert loss(zeros) == pytest.approx((2.5 + 3.5 + 207.0) / 8)
    assert loss(mean) == pytest.approx((0.75 + 0.03125 + 153.0) / 8)
    assert loss(near) == pytest.approx((0.5 + 1.5 + 153.0) / 8)


def test_nearest_frame_copy_is_right_at_span_edges():
    t, c = 8, 1
    x = np.arange(1, t + 1, dtype=np.float32).reshape(1, t, c).repeat(4, axis=0)  # frame k holds k + 1
    mask = np.zeros((4, t, c), dtype=bool)
    lengths = np.array([8, 8, 6, 8])
    mask[0, 0:2] = True  # span at the start: both copy frame 2 (the first visible)
    mask[1, 5:8] = True  # span at the end of a full row: all copy frame 4
    mask[2, 3:6] = True  # span at the end of a 6-frame row: the padding (frames 6, 7) is never a source
    mask[3, 1:4] = True  # odd span in the middle: frame 2 is 2 from frame 0 and 2 from frame 4 (a tie)
    near = predict_nearest_frame(x, mask, lengths, fallback=np.array([-1.0], dtype=np.float32))[..., 0]
    np.testing.assert_array_equal(near[0, 0:2], [3.0, 3.0])
    np.testing.assert_array_equal(near[1, 5:8], [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(near[2, 3:6], [3.0, 3.0, 3.0])
    # frame 1 -> frame 0, frame 3 -> frame 4, frame 2 ties (2 each side) -> the earlier, frame 0
    np.testing.assert_array_equal(near[3, 1:4], [1.0, 1.0, 5.0])
    # unmasked cells copy themselves (distance 0)
    np.testing.assert_array_equal(near[3, [0, 4, 5]], [1.0, 5.0, 6.0])
    # a row with nothing visible falls back
    all_masked = np.ones((1, t, c), dtype=bool)
    assert (predict_nearest_frame(x[:1], all_masked, np.array([8]), fallback=np.array([-1.0], np.float32)) == -1).all()


def test_predictor_registry_names():
    assert set(PREDICTORS) == {"zeros", "channel_mean", "nearest_frame"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    store = make_song_store(root, n_songs=6, seconds=4.0)
    cfg = load_pretrain_config(Path(__file__).resolve().parents[1] / "configs" / "m2bert-tiny.yaml", overrides=[
        "train.threads=1", "train.steps=4", "train.keep_every=2", "train.eval_every=2", "train.log_every=2",
        "data.max_frames=64", "data.val_fraction=0.34", "data.batch_size=4", "data.effective_batch=4",
        "train.precision=fp32", "seed=3"])
    pretrain(cfg, store=store, out=root / "run", progress=False)
    return root / "run", store


def test_checkpoint_losses_are_the_runs_own_validation(run):
    path, store = run
    assert [s for s, _ in kept_checkpoints(path)] == [2, 4]
    res = reconstruction_diagnostics(path)
    logged = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    val = {row["step"]: row for row in logged if any(k.startswith("val/") for k in row)}
    assert res["combos"][0] == "cfm+ccm" and res["n_chunks"] > 0
    for ck in res["checkpoints"][1:]:
        for combo in res["combos"]:
            assert ck["loss"][combo] == pytest.approx(val[ck["step"]][f"val/loss[{combo}]"], rel=1e-5)
    assert res["predictors"]["zeros"]["cfm+ccm"] == pytest.approx(val[4]["val/zero_baseline[cfm+ccm]"], rel=1e-6)
    # the untrained model at step 0 differs from the trained ones, and every number is finite
    assert res["checkpoints"][0]["step"] == 0
    assert res["checkpoints"][0]["loss"]["cfm+ccm"] != res["checkpoints"][-1]["loss"]["cfm+ccm"]
    assert all(np.isfinite(v) for p in res["predictors"].values() for v in p.values())
    only = reconstruction_diagnostics(path, combos=["cfm"], checkpoints=[], predictors=["nearest_frame"])
    assert only["combos"] == ["cfm"] and [c["step"] for c in only["checkpoints"]] == [0]
    assert only["predictors"]["nearest_frame"]["cfm"] == pytest.approx(res["predictors"]["nearest_frame"]["cfm"])
    with pytest.raises(ConfigError, match="trivial predictor"):
        reconstruction_diagnostics(path, predictors=["oracle"])


def test_step0_is_the_random_twin_of_the_named_config(run):
    """Step 0 of a run built from a named config (as the demo builds it) is ``random:NAME:SEED``."""
    from m3bert.features.store import FeatureStore
    from m3bert.models.encoder import get_model_config

    path, store = run
    arch = get_model_config("m2bert-tiny").to_dict()
    arch.pop("enrichment", None)
    cfg = load_pretrain_config(None, overrides={**{f"model.{k}": v for k, v in arch.items() if k != "n_input"},
                                                "seed": 5})
    fs = FeatureStore.open(store).feature_set
    cfg.model = dataclasses.replace(cfg.model, n_input=int(fs.n_channels))
    enc, _obj = build_module(cfg, fs)
    twin, _ = load_encoder("random:m2bert-tiny:5")
    assert weights_digest(enc) == weights_digest(twin)
