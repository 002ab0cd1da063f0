"""The model of the enrich stage: encoder + enrichment layer + task heads + loss weighting.

* :func:`build_modules`: the M3BERT model is the pre-trained M2BERT encoder plus a shared,
  time-distributed dense *enrichment* layer (Greer et al. 2023, fig. 1) whose output is the
  M3BERT representation, plus one head per task on the time average of that output (figs. 3, 4).
* :func:`make_optimizer`: what trains at which lr in each scenario (Wu et al.): ``frozen`` (the
  paper's: only enrichment + heads), ``finetune`` (the encoder too, at ``encoder_lr_scale`` x the
  lr), ``scratch`` (a random encoder of the same architecture, at the full lr).
* :func:`represent` / :func:`batch_losses`: a :class:`~m3bert.enrich.samples.Batch` -> clip
  representations -> per-task losses over the rows that carry each task's label.

A config with a ``multisource`` strategy (Kim et al. 2020) builds, optimises and scores the
multi-source CNN instead (:mod:`m3bert.enrich.multisource`); the loop does not tell them apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.enrich.config import EnrichConfig
from m3bert.enrich.heads import MultiTaskHeads, TaskInfo, task_loss, task_weighting
from m3bert.enrich.multisource import build_multisource_modules, make_multisource_optimizer, multisource_losses
from m3bert.enrich.samples import Batch, PreparedData
from m3bert.models.base import DEFAULT_ARCHITECTURE, ModelBase, get_architecture
from m3bert.models.hub import load_encoder
from m3bert.models.kim import KimEncoder
from m3bert.train.optim import make_adam
from m3bert.train.weighting import LossWeighting
from m3bert.windows import pool_windows


def resolve_encoder(model: str | Path | ModelBase) -> tuple[Any, str]:
    """``--model`` (a pre-training run dir, a checkpoint dir, a model dir or ``random:CONFIG[:SEED]``)
    or an in-memory model -> (model, source description for run.json)."""
    if isinstance(model, ModelBase):
        return model, "<in memory>"
    return load_encoder(model)


def build_modules(
    base: Any, tasks: list[TaskInfo], cfg: EnrichConfig, *, data: PreparedData | None = None
) -> tuple[Any, MultiTaskHeads, LossWeighting]:
    """The M3BERT model (encoder + enrichment), heads and loss weighting, seeded by ``cfg.seed``.

    ``frozen`` / ``finetune`` start from ``base``'s weights (every key except ``enrichment.*``);
    ``scratch`` keeps the random initialisation of the same architecture. A multi-source config
    builds the strategy's network on the feature set ``data`` normalises with.
    """
    if cfg.multisource.strategy:
        if data is None or data.feature_set is None:
            raise ConfigError("a multisource run needs its prepared data (feature set with the training statistics)")
        return build_multisource_modules(base, tasks, cfg, feature_config=data.feature_set.to_dict())
    arch = get_architecture(getattr(base, "architecture", None) or DEFAULT_ARCHITECTURE)
    if "enrichment" not in {f.name for f in dataclasses.fields(arch.config_cls)}:
        raise ConfigError(f"architecture {arch.name!r} has no enrichment layer (its config has no 'enrichment' field); "
                          "m3bert enrich trains one on m2bert, pase and pase+ encoders")
    mcfg = arch.config_cls.from_dict({**base.cfg.to_dict(), "enrichment": dataclasses.asdict(cfg.enrichment)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = arch.model_cls(mcfg, feature_config=base.feature_config)
        heads = MultiTaskHeads(model.layer_dims[-1], tasks, cfg.heads)
        weighting = task_weighting(tasks, cfg.weighting)
    if cfg.scenario != "scratch":
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("enrichment.")}
        own = model.state_dict()
        missing = sorted(k for k in own if not k.startswith("enrichment.") and k not in state)
        if missing:
            raise CheckpointError(f"pre-trained encoder lacks weights {missing[:5]} for its own architecture")
        own.update(state)
        model.load_state_dict(own, strict=True)
    trainable_encoder = cfg.scenario != "frozen"
    for name, p in model.named_parameters():
        p.requires_grad_(trainable_encoder or name.startswith("enrichment."))
    return model, heads, weighting


def make_optimizer(model: Any, heads: MultiTaskHeads, weighting: LossWeighting, cfg: EnrichConfig) -> torch.optim.Optimizer:
    """Adam (decoupled decay) with param groups: enrichment + heads (lr), loss weights (lr, no decay),
    encoder (``encoder_lr_scale`` x lr when finetuning, the full lr from scratch)."""
    if isinstance(model, KimEncoder):
        return make_multisource_optimizer(model, heads, weighting, cfg)
    o = cfg.optim
    groups = [
        {"name": "enrichment+heads", "params": list(model.enrichment.parameters()) + list(heads.parameters()),
         "lr": o.lr, "base_lr": o.lr, "weight_decay": o.weight_decay},
    ]
    wparams = [p for p in weighting.parameters() if p.requires_grad]
    if wparams:
        groups.append({"name": "loss-weights", "params": wparams, "lr": o.lr, "base_lr": o.lr, "weight_decay": 0.0})
    if cfg.scenario != "frozen":
        enc_lr = o.lr * (cfg.encoder_lr_scale if cfg.scenario == "finetune" else 1.0)
        enc = [p for n, p in model.named_parameters() if not n.startswith("enrichment.")]
        groups.append({"name": "encoder", "params": enc, "lr": enc_lr, "base_lr": enc_lr, "weight_decay": o.weight_decay})
    return make_adam(groups, o)


def set_train_mode(model: Any, heads: MultiTaskHeads, scenario: str) -> None:
    """Train mode for what trains; a frozen encoder stays in eval mode (no dropout), as when cached."""
    heads.train()
    model.train(scenario != "frozen")
    if model.enrichment is not None:
        model.enrichment.train()


def represent(model: Any, batch: Batch, *, input_kind: str) -> torch.Tensor:
    """The M3BERT clip representation ``(B, D)``: time average of the enrichment output.

    Enrichment is per frame, so it commutes with stitching: on cached stitched hidden states this
    *is* the exported model's clip embedding.
    """
    if input_kind == "hidden":
        enriched = model.enrichment(batch.inputs)  # (W, T, D)
    else:
        enriched = model(batch.inputs, batch.lengths)[-1]  # (W, T, D)
    return pool_windows(enriched, batch.frame_weights, batch.owner, batch.n_samples)


def batch_losses(model: Any, heads: MultiTaskHeads, batch: Batch, *, input_kind: str) -> dict[str, torch.Tensor]:
    """Per-task mean losses over the rows carrying each task's label (absent tasks left out)."""
    if isinstance(model, KimEncoder):
        return multisource_losses(model, heads, batch)
    pooled = represent(model, batch, input_kind=input_kind)
    outputs = heads(pooled, batch.rows)
    return {t: task_loss(heads.tasks[t].label_type, out, batch.targets[t], batch.masks[t]) for t, out in outputs.items()}
