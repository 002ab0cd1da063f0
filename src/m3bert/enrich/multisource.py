"""Kim et al. (2020) multi-source representation learning on the enrich trainer's machinery.

"One deep music representation to rule them all?" trains a CNN (:mod:`m3bert.models.kim`) from
several *learning sources* at once and compares where the network branches (SS-R, MSS-CR,
MS-CR@2/4/6, MS-SR@FC). Here that is an enrich run (:func:`m3bert.enrich.loop.train_enrich`:
samples with partial labels, the sampler, checkpoints with exact resume, the run directory,
``summary.json``) whose config has a ``multisource`` section; this module holds what differs:

* :func:`prepare_multisource_data`: any registered task is a source; each source's labels become
  distributions by :mod:`m3bert.enrich.factors` (fitted on the training split), inputs are the
  raw feature frames of every excerpt (cached once), standardised per band with the training
  excerpts' statistics (the paper's; the model folder then carries them) and cropped at random
  every step (:func:`m3bert.enrich.samples.collate_crops`);
* :func:`build_multisource_modules`: the network with the strategy's branch point and one
  ``fc-output`` head per source on its own branch (``MultiTaskHeads`` slices), dropout 0.5 before it;
* :func:`multisource_losses`: KL(z || softmax) per source, computing only the branches a batch needs;
* :data:`KIM_PRESET` / :func:`load_multisource_config`: Algorithm 1 as the default schedule: a
  source at random per iteration (``sampling: algorithm1``), batch 128, Adam at a fixed 2.5e-4,
  ``L = l x m`` iterations per epoch, 200 epochs, L2 1e-6 (here decoupled decay: the optimiser every
  trainer shares has no coupled L2; at 1e-6 both are negligible). The other samplers stay selectable.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from m3bert.audio import load_audio
from m3bert.core.config import Overrides, apply_overrides, from_dict, load_yaml, to_dict
from m3bert.core.errors import ConfigError, DataError, M3bertError
from m3bert.core.io import atomic_save_npy, atomic_write_json, config_hash, read_json
from m3bert.core.progress import progress as progress_bar
from m3bert.enrich.config import EnrichConfig
from m3bert.enrich.factors import factor_names, fit_factorizer
from m3bert.enrich.heads import MultiTaskHeads, TaskInfo, distribution_loss, task_weighting
from m3bert.enrich.samples import Batch, PreparedData, Sample, build_samples, load_task_data
from m3bert.features import feature_set_from_dict
from m3bert.features.normalize import CmvnAccumulator
from m3bert.models.kim import KimConfig, KimEncoder, get_strategy, strategy_overrides
from m3bert.train.optim import make_adam
from m3bert.train.weighting import LossWeighting

# Algorithm 1 and sec. 3 of the paper (musmtl/config.py: BATCH_SZ 128, LEARN_RATE 0.00025, N_EPOCHES 200, L2 1e-6)
KIM_PRESET: dict[str, Any] = {
    "scenario": "scratch",
    "sampling": "algorithm1",
    "batch_size": 128,
    "eval_batch_size": 128,
    "epochs": 200,
    "early_stopping": 0,
    "optim": {"lr": 2.5e-4, "weight_decay": 1e-6, "max_grad_norm": 0.0, "fused": False},
    "schedule": {"name": "constant", "warmup_fraction": 0.0},
    "heads": {"hidden": 0, "dropout": 0.5},
    "weighting": {"name": "equal"},
    "multisource": {"strategy": "ss-r"},
}
METRICS = ["kl", "top1"]  # of every source (m3bert.enrich.heads.DISTRIBUTION_METRICS), primary first


def load_multisource_config(path: str | Path | None = None, overrides: Overrides = None) -> EnrichConfig:
    """Dataclass defaults <- :data:`KIM_PRESET` <- YAML ``path`` <- dotted ``overrides``."""
    data = _merge(copy.deepcopy(KIM_PRESET), load_yaml(path) if path is not None else {})
    where = str(path) if path is not None else "multisource preset"
    full = to_dict(from_dict(EnrichConfig, data, where=where))
    return from_dict(EnrichConfig, apply_overrides(full, overrides), where=where)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    for k, v in top.items():
        base[k] = _merge(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


# ---------------------------------------------------------------------------------------------
# data: sources -> factor distributions, raw frames cached, corpus CMVN
# ---------------------------------------------------------------------------------------------


def _load_frames(s: Sample, feature_set: Any) -> np.ndarray:
    offset = float(s.start or 0.0)
    duration = None if s.end is None else float(s.end) - offset
    wave = load_audio(s.path, sample_rate=feature_set.sample_rate, offset=offset, duration=duration,
                      min_samples=int(feature_set.min_samples))
    return np.asarray(feature_set.extract(wave, sample_rate=feature_set.sample_rate, normalize=False), np.float32)


def apply_factors(samples: list[Sample], infos: list[TaskInfo], *, k: int, seed: int,
                  max_iter: int) -> tuple[list[TaskInfo], list[dict[str, Any]]]:
    """Replace every source's labels by its factor distribution (fitted on train); drop empty rows."""
    out_infos, described = [], []
    for info in infos:
        have = [s for s in samples if info.name in s.labels]
        train = [s for s in have if s.split == "train"]
        targets = lambda ss: np.asarray([s.labels[info.name] for s in ss])  # noqa: E731
        masks = lambda ss: (np.stack([s.masks.get(info.name, np.ones(len(info.classes), np.float32)) for s in ss])  # noqa: E731
                            if info.label_type == "multilabel" else None)
        f = fit_factorizer(info.name, info.label_type, info.classes, targets(train), k=k, seed=seed,
                           train_masks=masks(train), max_iter=max_iter)
        z, has = f.transform(targets(have), masks(have))
        dropped = 0
        for s, zi, ok in zip(have, z, has):
            s.masks.pop(info.name, None)
            if ok:
                s.labels[info.name] = zi
            else:
                del s.labels[info.name]
                dropped += 1
        out_infos.append(TaskInfo(name=info.name, label_type="distribution", classes=factor_names(f),
                                  metrics=list(METRICS)))
        described.append({**f.describe(), "source_label_type": info.label_type, "n_labelled": len(have) - dropped,
                          "n_dropped_empty": dropped})
    return out_infos, described


def prepare_multisource_data(tasks: Sequence[Any], base: Any, cfg: EnrichConfig, *, cache_dir: str | Path,
                             progress: bool = True) -> PreparedData:
    """Sources -> samples with factor-distribution labels and cached raw frames (module doc)."""
    if not isinstance(base, KimEncoder):
        raise ConfigError(f"multisource.strategy={cfg.multisource.strategy!r} needs a kim-cnn model "
                          f"(e.g. --model random:kim-cnn), got architecture {getattr(base, 'architecture', '?')!r}")
    if not base.feature_config:
        raise ConfigError("the kim-cnn model has no feature_set; use random:kim-cnn or a model folder that names one")
    datas, specs = load_task_data(tasks)
    samples, infos = build_samples(datas)
    strategy_overrides(cfg.multisource.strategy, [t.name for t in infos])  # SS-R one source, the others >= 2
    raw_fs = feature_set_from_dict({**base.feature_config, "cmvn_stats": None})
    if int(raw_fs.n_channels) != int(base.cfg.n_input):
        raise ConfigError(f"feature set {raw_fs.name!r} gives {raw_fs.n_channels} channels, the model takes {base.cfg.n_input}")
    root = Path(cache_dir) / f"frames-{raw_fs.config_hash(with_stats=False)}"
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "index.json"
    index: dict[str, Any] = read_json(index_path) if index_path.is_file() else {}
    kept, rejects, arrays, n_frames = [], [], [], []
    dirty = 0
    for s in progress_bar(samples, desc="caching frames", disable=not progress, unit="clip", leave=False):
        try:
            st = s.path.stat()
            entry = config_hash([s.key, st.st_size, st.st_mtime_ns], n_chars=20)
        except OSError:
            entry = s.key
        path = root / f"{entry}.npy"
        if entry not in index or not path.is_file():
            try:
                arr = _load_frames(s, raw_fs)
            except M3bertError as exc:
                rejects.append({"path": str(s.path), "start": str(s.start), "end": str(s.end), "reason": str(exc)})
                continue
            atomic_save_npy(path, arr)
            index[entry] = {"n_frames": int(arr.shape[0]), "path": str(s.path), "start": s.start, "end": s.end}
            dirty += 1
            if dirty % 64 == 0:
                atomic_write_json(index_path, index)
        kept.append(s)
        arrays.append(path)
        n_frames.append(int(index[entry]["n_frames"]))
    if dirty:
        atomic_write_json(index_path, index)
    infos, described = apply_factors(kept, infos, k=cfg.multisource.factors, seed=cfg.seed,
                                     max_iter=cfg.multisource.factor_iter)
    for info in infos:
        for split in ("train", "valid"):
            if not any(info.name in s.labels and s.split == split for s in kept):
                raise DataError(f"source {info.name}: no usable samples in split {split!r} after skipping "
                                f"{len(rejects)} unreadable excerpt(s), e.g. {rejects[:2]}")
    feature_set = raw_fs
    if cfg.multisource.cmvn == "corpus":  # the paper: per-band mean / std of the training excerpts
        acc = CmvnAccumulator(int(raw_fs.n_channels))
        for s, p in zip(kept, arrays):
            if s.split == "train":
                acc.update(np.load(p, mmap_mode="r"))
        mean, std = acc.mean_std()
        feature_set = feature_set_from_dict({**raw_fs.to_dict(), "config": {**raw_fs.config_dict(), "cmvn": "corpus"}})
        feature_set.set_cmvn_stats(mean, std)
    else:
        feature_set = feature_set_from_dict(base.feature_config)
    crop = int(cfg.multisource.crop_frames or base.cfg.max_frames)
    if crop > base.cfg.max_frames:
        raise ConfigError(f"multisource.crop_frames={crop} exceeds the model's max_frames={base.cfg.max_frames}")
    return PreparedData(tasks=infos, samples=kept, input_kind="frames", arrays=arrays, starts=[[0] for _ in kept],
                        n_frames=n_frames, window_frames=int(base.cfg.max_frames), rejects=rejects, specs=specs,
                        feature_set=feature_set, crop_frames=crop, factors=described)


# ---------------------------------------------------------------------------------------------
# model, heads, optimiser, losses
# ---------------------------------------------------------------------------------------------


def build_multisource_modules(base: KimEncoder, tasks: list[TaskInfo], cfg: EnrichConfig, *,
                              feature_config: dict[str, Any]) -> tuple[KimEncoder, MultiTaskHeads, LossWeighting]:
    """The strategy's network (random init, seeded by ``cfg.seed``), one head per source on its branch."""
    names = [t.name for t in tasks]
    mcfg = KimConfig.from_dict({**base.cfg.to_dict(), **strategy_overrides(cfg.multisource.strategy, names)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = KimEncoder(mcfg, feature_config=feature_config)
        slices = {n: list(model.branch_slice(i)) for i, n in enumerate(names)}
        heads = MultiTaskHeads(mcfg.fc_dim, tasks, cfg.heads, slices=slices)
        weighting = task_weighting(tasks, cfg.weighting)
    return model, heads, weighting


def make_multisource_optimizer(model: KimEncoder, heads: MultiTaskHeads, weighting: LossWeighting,
                               cfg: EnrichConfig) -> torch.optim.Optimizer:
    """Adam: branches + heads at lr; shared stages at lr (or lr / m with ``shared_lr_divide``); loss weights."""
    o = cfg.optim
    m = max(1, len(heads.tasks))
    shared_lr = o.lr / m if cfg.multisource.shared_lr_divide else o.lr
    groups = [{"name": "branches+heads", "params": list(model.branches.parameters()) + list(heads.parameters()),
               "lr": o.lr, "base_lr": o.lr, "weight_decay": o.weight_decay}]
    if len(model.shared):
        groups.append({"name": "shared", "params": list(model.shared.parameters()), "lr": shared_lr,
                       "base_lr": shared_lr, "weight_decay": o.weight_decay})
    wparams = [p for p in weighting.parameters() if p.requires_grad]
    if wparams:
        groups.append({"name": "loss-weights", "params": wparams, "lr": o.lr, "base_lr": o.lr, "weight_decay": 0.0})
    return make_adam(groups, o)


def multisource_losses(model: KimEncoder, heads: MultiTaskHeads, batch: Batch) -> dict[str, torch.Tensor]:
    """KL(z || softmax(fc-output)) per source over its labelled rows, running only the branches needed.

    Equal to heads on the whole representation (branches are independent and the network has no
    randomness); Algorithm 1's one-source batches cost one branch, as in the authors' code.
    """
    present = [t for t, idx in batch.rows.items() if idx.numel() > 0]
    order = list(heads.tasks)
    if model.cfg.n_branches > 1:
        needed = sorted({order.index(t) for t in present})
        _, fc = model.pooled(batch.inputs, batch.lengths, branches=needed)
        col = {t: needed.index(order.index(t)) for t in present}
    else:
        _, fc = model.pooled(batch.inputs, batch.lengths)
        col = {t: 0 for t in present}
    d = model.cfg.fc_dim
    out = {}
    for t in present:
        feat = fc[:, col[t] * d:(col[t] + 1) * d].index_select(0, batch.rows[t])
        out[t] = distribution_loss(heads.heads[t](feat), batch.targets[t])
    return out


def steps_per_epoch(cfg: EnrichConfig, n_train: int, n_sources: int) -> int:
    """Algorithm 1's ``L = l x m`` (``l`` = steps for one pass over the training samples); else one pass."""
    l_steps = -(-int(n_train) // int(cfg.batch_size))
    if cfg.samples_per_epoch:
        return -(-int(cfg.samples_per_epoch) // int(cfg.batch_size))
    return l_steps * int(n_sources) if cfg.sampling == "algorithm1" else l_steps


def strategy_record(cfg: EnrichConfig, tasks: Sequence[TaskInfo]) -> dict[str, Any]:
    """What run.json says about the strategy (Table 4 facts)."""
    s = get_strategy(cfg.multisource.strategy)
    m = len(tasks)
    return {"strategy": s.label, "sources": [t.name for t in tasks], "n_sources": m, "shared_stages": s.shared_stages,
            "concatenated": s.concatenated, "size_code": s.size_code}
