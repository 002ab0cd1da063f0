"""The enrich stage's config: :class:`EnrichConfig`, loaded by the shared loader of :mod:`m3bert.core.config`.

``load_config("configs/multitask.yaml", ["optim.lr=5e-4"])`` = defaults <- YAML <- dotted
overrides (CLI strings ``"a.b=v"`` or a mapping ``{"a.b": v}``); unknown keys are errors. The
config is stored in ``run.json``; a config stored by the stage's earlier name (run kind
``"multitask"``, with ``optim.finetune_encoder_lr_scale``) is upgraded by :func:`upgrade_config_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3bert.core.config import Overrides, bounded, from_dict
from m3bert.core.config import load_config as load_dataclass_config
from m3bert.core.errors import ConfigError
from m3bert.enrich.heads import HeadConfig
from m3bert.enrich.sampling import parse_sampling
from m3bert.models.encoder import EnrichmentConfig
from m3bert.train.optim import OptimConfig
from m3bert.train.schedule import ScheduleConfig
from m3bert.train.weighting import WEIGHTINGS, WeightingConfig

SCENARIOS = ("frozen", "finetune", "scratch")
# Kim et al. 2020's representation strategies (m3bert.models.kim.STRATEGIES); "" = M3BERT enrichment
MULTISOURCE_STRATEGIES = ("", "ss-r", "mss-cr", "ms-cr@2", "ms-cr@4", "ms-cr@6", "ms-sr@fc")
SOURCE_CMVN = ("corpus", "model")


@dataclass
class MultiSourceConfig:
    """Kim et al. (2020) multi-source representation learning (``m3bert multisource``); off when ``strategy`` is empty."""

    strategy: str = ""  # "" (M3BERT enrichment) | ss-r | mss-cr | ms-cr@2 | ms-cr@4 | ms-cr@6 | ms-sr@fc
    factors: int = bounded(50, ge=1)  # k: pLSA topics / GMM components per source (paper: 50)
    factor_iter: int = bounded(400, ge=1)  # iterations of the pLSA (KL-NMF) and GMM fits
    crop_frames: int = bounded(0, ge=0)  # frames of each random training crop; 0 = the model's max_frames (2.5 s)
    cmvn: str = "corpus"  # "corpus": per-band mean/std of the training excerpts (paper) | "model": the feature set's own
    shared_lr_divide: bool = False  # shared layers at lr / m, as the authors' released code (the paper states one lr)

    def __post_init__(self) -> None:
        self.strategy = str(self.strategy).lower()
        if self.strategy not in MULTISOURCE_STRATEGIES:
            raise ConfigError(f"multisource.strategy={self.strategy!r}; expected one of {list(MULTISOURCE_STRATEGIES)}")
        if self.cmvn not in SOURCE_CMVN:
            raise ConfigError(f"multisource.cmvn={self.cmvn!r}; expected one of {list(SOURCE_CMVN)}")


@dataclass
class EnrichConfig:
    """Everything that shapes a multi-task enrichment run (stored in run.json)."""

    scenario: str = "frozen"  # "frozen" (paper) | "finetune" | "scratch" (Wu et al.)
    epochs: int = bounded(10, ge=1)  # training epochs (after any reweight calibration)
    batch_size: int = bounded(16, ge=1)  # samples per step (paper grid: 16 / 24 / 32)
    eval_batch_size: int = bounded(32, ge=1)  # samples per evaluation forward pass
    sampling: str = "proportional"  # "proportional" | "uniform" | "temperature:T"
    samples_per_epoch: int = bounded(0, ge=0)  # draws per epoch; 0 = the number of distinct training samples
    enrichment: EnrichmentConfig = field(default_factory=EnrichmentConfig)  # the M3BERT layer (dropout: paper grid .05 / .1)
    heads: HeadConfig = field(default_factory=HeadConfig)  # per-task heads
    weighting: WeightingConfig = field(default_factory=WeightingConfig)  # loss balancing
    # Adam (decoupled decay, never on loss weights); lr 1e-3: the enrichment layer and heads start
    # from scratch; the non-fused kernel, as enrich always used (earlier runs stay bit-identical)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, fused=False))
    encoder_lr_scale: float = bounded(0.1, gt=0)  # finetune: encoder lr = optim.lr x this (pre-trained weights move gently)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # lr schedule (paper: 7 % warmup, linear decay)
    early_stopping: int = bounded(3, ge=0)  # stop after this many epochs without a better validation score; 0 = off
    checkpoint_every: int = bounded(0, ge=0)  # also save checkpoints/last every this many steps; 0 = end of epoch only
    log_every: int = bounded(0, ge=0)  # also log a step line every this many steps; 0 = per epoch only
    seed: int = bounded(0, ge=0)  # seeds initialisation, sampling and dropout
    threads: int = bounded(0, ge=0)  # torch CPU threads; 0 = leave torch's default
    multisource: MultiSourceConfig = field(default_factory=MultiSourceConfig)  # Kim et al. 2020 (off by default)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"scenario={self.scenario!r}; expected one of {SCENARIOS}")
        parse_sampling(self.sampling)
        if self.multisource.strategy and self.scenario != "scratch":
            raise ConfigError(f"multisource.strategy={self.multisource.strategy!r} trains a representation network from "
                              f"scratch (Kim et al. 2020); scenario={self.scenario!r}, expected 'scratch'")
        if not self.multisource.strategy and parse_sampling(self.sampling)[0] == "algorithm1":
            raise ConfigError("sampling='algorithm1' is Kim et al.'s multi-source schedule; set multisource.strategy")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected a positive integer")
        for name in ("samples_per_epoch", "early_stopping", "checkpoint_every", "log_every", "threads"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected an integer >= 0")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr={self.optim.lr!r}; expected > 0")
        if not self.encoder_lr_scale > 0:
            raise ConfigError(f"encoder_lr_scale={self.encoder_lr_scale!r}; expected > 0")
        if not 0 <= self.enrichment.dropout < 1:
            raise ConfigError(f"enrichment.dropout={self.enrichment.dropout!r}; expected [0, 1)")
        if self.weighting.name not in WEIGHTINGS:
            raise ConfigError(f"weighting.name={self.weighting.name!r}; expected one of {sorted(WEIGHTINGS)}")
        if self.weighting.reweight_epochs < 1:
            raise ConfigError(f"weighting.reweight_epochs={self.weighting.reweight_epochs}; expected >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnrichConfig":
        """From a stored config (``run.json``), upgrading one stored by the ``multitask`` form."""
        return from_dict(cls, upgrade_config_dict(data), where="enrich")


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict of the stage's earlier ``multitask`` form -> the current form (else unchanged).

    That form kept the finetune encoder's lr factor in ``optim.finetune_encoder_lr_scale`` and
    always used the non-fused optimiser. A config stored before the ``multisource`` section existed
    gets its default (off), which is what such a run did.
    """
    data = copy.deepcopy(dict(data))
    if "multisource" not in data and "scenario" in data:
        data["multisource"] = dataclasses.asdict(MultiSourceConfig())
    optim = data.get("optim")
    if isinstance(optim, dict) and "finetune_encoder_lr_scale" in optim:
        data.setdefault("encoder_lr_scale", optim.pop("finetune_encoder_lr_scale"))
        optim.setdefault("fused", False)
    return data


def load_config(path: str | Path | None = None, overrides: Overrides = None) -> EnrichConfig:
    """Defaults <- YAML file <- dotted overrides (``["a.b=v"]`` or ``{"a.b": v}``); unknown keys are errors."""
    return load_dataclass_config(EnrichConfig, path, overrides)
