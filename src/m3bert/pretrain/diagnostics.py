"""How much has masked reconstruction learned? A run's checkpoints against trivial predictors.

Greer et al. (2023, "Pre-training objective function") train M2BERT to reconstruct masked input
cells under a Huber loss (delta 1). A falling loss alone does not say the model learned anything
a one-line rule could not do: with per-clip CMVN, predicting zero is already the clip mean, and
most masked frames sit next to visible ones. So the loss of every kept checkpoint of a run is
measured here on *exactly* the run's validation (same held-out chunks, crops, masks, loss and
precision as ``pretrain.loop.validate``) next to three predictors that learn nothing:

* ``zeros``          predict 0 everywhere (the CMVN mean; the run logs it as ``zero_baseline``);
* ``channel_mean``   each masked cell gets its channel's mean over the visible (unmasked, real)
                     cells of the same row; a channel with no visible cell in the row (CCM masks
                     whole channels) gets the channel's mean over all validation frames;
* ``nearest_frame``  each masked cell copies the same channel of the nearest visible frame of the
                     same row (the earlier one on a tie; padding is never a source); a channel with
                     no visible cell in the row falls back as above.

``step 0`` is the untrained model (the run's seed and architecture before its first update: the
demo's "no pre-training" twin), built the way the loop builds it. Only the reconstruction objective
(M2BERT) is measured; MERT's discrete targets have no such yardsticks here.

Deviation: none from the paper's loss; the predictors are this project's yardsticks (issue 17).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.core.io import read_json
from m3bert.core.registry import Registry
from m3bert.features.store import FeatureStore
from m3bert.models.base import get_architecture
from m3bert.pretrain.data import split_by_group, store_groups, validation_batches
from m3bert.pretrain.loop import PretrainConfig, load_pretrain_config
from m3bert.pretrain.objectives import Reconstruction, cell_losses, create_objective
from m3bert.train.checkpoint import load_checkpoint

# A predictor: (frames (B, T, C), loss_mask (B, T, C) bool, lengths (B,), fallback (C,)) -> prediction (B, T, C)
Predictor = Callable[..., np.ndarray]
PREDICTORS: Registry = Registry("trivial predictor")
KEPT = re.compile(r"^step-(\d+)$")


def visible_cells(mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(B, T, C)`` True on the cells the model sees unchanged: real (before the row's length) and unmasked."""
    t = np.arange(mask.shape[1])[None, :, None]
    return (t < np.asarray(lengths)[:, None, None]) & ~mask


@PREDICTORS.register("zeros")
def predict_zeros(frames: np.ndarray, mask: np.ndarray, lengths: np.ndarray, *, fallback: np.ndarray) -> np.ndarray:
    """0 everywhere: ``(B, T, C)``."""
    return np.zeros_like(frames)


@PREDICTORS.register("channel_mean")
def predict_channel_mean(frames: np.ndarray, mask: np.ndarray, lengths: np.ndarray, *,
                         fallback: np.ndarray) -> np.ndarray:
    """Each row's per-channel mean over its visible cells (``fallback[c]`` where none): ``(B, T, C)``."""
    vis = visible_cells(mask, lengths)
    count = vis.sum(axis=1)  # (B, C)
    total = np.where(vis, frames, 0.0).sum(axis=1, dtype=np.float64)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.asarray(fallback, dtype=np.float64)[None, :])
    return np.broadcast_to(mean[:, None, :], frames.shape).astype(frames.dtype)


@PREDICTORS.register("nearest_frame")
def predict_nearest_frame(frames: np.ndarray, mask: np.ndarray, lengths: np.ndarray, *,
                          fallback: np.ndarray) -> np.ndarray:
    """Each cell copies the same channel of the nearest visible frame of its row (the earlier
    one on a tie); ``fallback[c]`` where the row has no visible cell in channel ``c``: ``(B, T, C)``."""
    b, t, c = frames.shape
    vis = visible_cells(mask, lengths)
    steps = np.broadcast_to(np.arange(t)[None, :, None], vis.shape)
    far = 2 * t + 2
    prev = np.maximum.accumulate(np.where(vis, steps, -far), axis=1)  # last visible frame at or before t
    nxt = np.minimum.accumulate(np.where(vis, steps, 3 * far)[:, ::-1], axis=1)[:, ::-1]  # first at or after t
    d_prev, d_next = steps - prev, nxt - steps
    source = np.where(d_prev <= d_next, prev, nxt)
    found = np.minimum(d_prev, d_next) < far
    pred = np.take_along_axis(frames, np.clip(source, 0, t - 1), axis=1)
    return np.where(found, pred, np.asarray(fallback, dtype=frames.dtype)[None, None, :])


# ---------------------------------------------------------------------------------------------
# The run's validation, reproduced
# ---------------------------------------------------------------------------------------------


def validation_indices(store: Any, cfg: PretrainConfig) -> np.ndarray:
    """The held-out chunk indices of a run (the same songs and cap as ``pretrain.loop.pretrain``)."""
    _train, val = split_by_group(store_groups(store), val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    if cfg.data.val_max_chunks and len(val) > cfg.data.val_max_chunks:
        pick = np.random.default_rng([cfg.seed, 0x7A12]).choice(len(val), cfg.data.val_max_chunks, replace=False)
        val = np.sort(val[pick])
    return val


def kept_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """``[(step, RUN/checkpoints/step-N), ...]`` in step order, plus ``last`` when its step was not kept."""
    root = Path(run) / "checkpoints"
    found: dict[int, Path] = {}
    for path in sorted(root.glob("step-*")) if root.is_dir() else []:
        m = KEPT.match(path.name)
        if m and (path / "model.safetensors").is_file():
            found[int(m.group(1))] = path
    last = root / "last"
    if (last / "state.json").is_file():
        step = int(read_json(last / "state.json").get("state", {}).get("step", -1))
        if step > 0 and step not in found:
            found[step] = last
    return sorted(found.items())


def build_module(cfg: PretrainConfig, feature_set: Any) -> tuple[Any, Any]:
    """Encoder + objective as ``pretrain.loop.pretrain`` builds them before step 1 (seeded by ``cfg.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = get_architecture(cfg.architecture).model_cls(cfg.model, feature_config=feature_set.to_dict())
        objective = create_objective(cfg.objective, encoder_cfg=cfg.model, spec=feature_set.spec, masking=cfg.masking,
                                     encoder=encoder)
    return encoder.eval(), objective.eval()


def _channel_means(store: Any, indices: np.ndarray, cfg: PretrainConfig) -> np.ndarray:
    """Per-channel mean ``(C,)`` over the real frames of the validation crops (the fallback prediction)."""
    total, count = None, 0
    for batch in validation_batches(store, indices, seed=cfg.seed, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                                    max_frames=cfg.data.max_frames):
        x = batch.frames.numpy()
        real = np.arange(x.shape[1])[None, :] < batch.lengths.numpy()[:, None]
        s = x[real].sum(axis=0, dtype=np.float64)
        total = s if total is None else total + s
        count += int(real.sum())
    return (total / max(count, 1)).astype(np.float32)


def reconstruction_diagnostics(run: str | Path, *, store: Any = None, checkpoints: Sequence[tuple[int, Path]] | None = None,
                               include_step0: bool = True, predictors: Sequence[str] = tuple(PREDICTORS),
                               combos: Sequence[str] | None = None) -> dict[str, Any]:
    """Masked-cell loss of each checkpoint and of each trivial predictor on the run's validation.

    ``checkpoints``: ``[(step, checkpoint dir), ...]`` (default: :func:`kept_checkpoints`);
    ``include_step0`` adds the untrained model as step 0. Returns ``{"combos", "n_chunks", "n_cells",
    "predictors": {name: {combo: loss}}, "checkpoints": [{"step", "path", "loss": {combo: loss}}, ...]}``,
    losses being means over masked cells. ``combos``: the '+'-joined policy combinations to score
    (default: the training combination and each policy of ``objective.eval_policies`` alone, as the
    run's validation scores them; each combination draws the masks the validation draws for it).
    """
    run = Path(run)
    if not (run / "run.json").is_file():
        raise CheckpointError(f"{run}: no run.json; expected a pre-training run folder")
    cfg = load_pretrain_config(run / "config.yaml")
    record = read_json(run / "run.json")
    store = FeatureStore.open(store if store is not None else record.get("store"))
    feature_set = store.feature_set
    if record.get("feature_set") != feature_set.to_dict():
        raise CheckpointError(f"{run}: was trained on another feature set than the store's; pass the run's store")
    cfg.model = dataclasses.replace(cfg.model, n_input=int(feature_set.n_channels))
    reference_enc, reference_obj = build_module(cfg, feature_set)
    if not isinstance(reference_obj, Reconstruction):
        raise ConfigError(f"{run}: objective {cfg.objective.get('name')!r}; diagnostics measure the "
                          "'reconstruction' objective only")
    unknown = [p for p in predictors if p not in PREDICTORS]
    if unknown:
        raise ConfigError(f"unknown trivial predictor(s) {unknown}; registered: {sorted(PREDICTORS)}")
    models: list[tuple[int, str, Any, Any]] = []
    if include_step0:
        models.append((0, "untrained (seed init)", reference_enc, reference_obj))
    for step, path in (checkpoints if checkpoints is not None else kept_checkpoints(run)):
        enc, obj = build_module(cfg, feature_set)
        load_checkpoint(path, model=enc, modules={"head": obj}, restore_rng=False)
        models.append((int(step), str(path), enc.eval(), obj.eval()))

    policies = list(cfg.masking.policies)
    if combos is None:
        combos = ["+".join(policies)] + [p for p in reference_obj.cfg.eval_policies if [p] != policies]
    combos = list(combos)
    loss_kw = {"loss": reference_obj.cfg.loss, "huber_delta": reference_obj.cfg.huber_delta}
    indices = validation_indices(store, cfg)
    fallback = _channel_means(store, indices, cfg)
    sums = {key: [0.0, 0.0] for key in [(m[0], c) for m in models for c in combos] + [(p, c) for p in predictors for c in combos]}
    n_cells = dict.fromkeys(combos, 0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.train.precision == "bf16" else contextlib.nullcontext
    batches = validation_batches(store, indices, seed=cfg.seed, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                                 max_frames=cfg.data.max_frames)
    with torch.no_grad():
        for batch in batches:
            target = batch.frames
            for combo in combos:
                corrupted, mask = reference_obj.corrupt(batch, policies=combo.split("+"), stream=zlib.crc32(combo.encode()))
                n_cells[combo] += int(mask.sum())
                for step, _path, enc, obj in models:
                    with autocast():
                        pred = obj.reconstruct(enc, corrupted, batch.lengths)
                    per_cell = cell_losses(pred[mask], target[mask], **loss_kw)
                    acc = sums[(step, combo)]
                    acc[0] += float(per_cell.sum())
                    acc[1] += float(per_cell.numel())
                x, m, lengths = target.numpy(), mask.numpy(), batch.lengths.numpy()
                for name in predictors:
                    guess = torch.from_numpy(np.ascontiguousarray(PREDICTORS[name](x, m, lengths, fallback=fallback)))
                    per_cell = cell_losses(guess[mask], target[mask], **loss_kw)
                    acc = sums[(name, combo)]
                    acc[0] += float(per_cell.sum())
                    acc[1] += float(per_cell.numel())

    def mean(key: Any) -> float | None:
        total, count = sums[key]
        return total / count if count else None

    return {
        "run": str(run), "combos": combos, "loss": loss_kw, "precision": cfg.train.precision,
        "n_chunks": int(len(indices)), "n_cells": n_cells,
        "predictors": {p: {c: mean((p, c)) for c in combos} for p in predictors},
        "checkpoints": [{"step": s, "path": path, "loss": {c: mean((s, c)) for c in combos}} for s, path, _e, _o in models],
    }
