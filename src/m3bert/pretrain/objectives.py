"""Pre-training objectives: a registry, so new targets never touch the training loop.

An objective is an ``nn.Module`` that owns its head(s) and knows how to turn a clean batch
into a loss::

    out = objective(encoder, batch)          # ObjectiveOutput(loss, logs)
    sums = objective.evaluate(encoder, batch)  # {"loss[cfm+ccm]": (sum, count), ...}

It corrupts the input itself (masking belongs to the objective: MERT's discrete targets mask
too, Wu et al.'s workers predict from clean input), computes targets from the clean frames,
and reports JSON-able logs. The loop only sums losses, steps the optimizer and checkpoints
``objective.state_dict()`` as ``head.safetensors``.

Registered here: ``reconstruction`` -- M2BERT's masked reconstruction (Greer et al. 2023):
the masking policies of :mod:`m3bert.pretrain.masking`, a two-layer head, Huber loss (delta 1) over the
masked cells only (never padding); ``mert`` / ``mert_acoustic`` -- MERT's masked prediction of
discrete k-means targets (+ CQT reconstruction) with in-batch mixup (Yuan 2023 thesis, chapter 5),
see :class:`Mert`. Wu et al.'s ``workers`` (regression of hand-crafted features and of the
waveform from clean input) is registered by :mod:`m3bert.pretrain.workers`.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry
from m3bert.models.heads import ReconstructionHead, ReconstructionHeadConfig
from m3bert.pretrain.masking import MaskingConfig, apply_masking
from m3bert.pretrain.mixup import MixupConfig, inbatch_mixup
from m3bert.pretrain.targets import read_targets_header


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch."""

    loss: torch.Tensor  # scalar, differentiable
    logs: dict[str, float] = field(default_factory=dict)  # plain numbers for the metrics log


class Objective(nn.Module):
    """Base class: subclasses set ``config_class`` and implement ``forward`` and ``evaluate``."""

    config_class: ClassVar[type]

    def __init__(self, cfg: Any, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> None:
        super().__init__()
        self.cfg, self.encoder_cfg, self.spec, self.masking = cfg, encoder_cfg, spec, masking

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:  # pragma: no cover
        """Validation sums: ``{name: (sum of per-cell losses, number of cells)}``."""
        raise NotImplementedError

    def selection_key(self) -> str:
        """The validation entry (without ``val/``) that picks the ``best`` checkpoint (lower is better)."""
        return f"loss[{'+'.join(self.masking.policies)}]"

    def data_targets(self, readers: list[Any]) -> list[Any]:
        """The target readers the batches carry (the opened ``objective.targets``; an objective may
        narrow them to what it reads)."""
        return list(readers)

    def on_run_end(self, out: Path) -> None:
        """Called by the loop on the main process when a run (or a ``stop_after`` slice) ends."""


_REGISTRY: Registry = Registry("objective")


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register an :class:`Objective` subclass under ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        return _REGISTRY.register(name)(cls)

    return deco


def available_objectives() -> list[str]:
    return sorted(_REGISTRY)


def objective_config(data: dict[str, Any] | Any) -> Any:
    """Resolve an ``objective:`` config mapping (``name`` picks the class) into its dataclass."""
    if dataclasses.is_dataclass(data):
        return data
    data = dict(data or {})
    name = data.get("name", "reconstruction")
    if name not in _REGISTRY:
        raise ConfigError(f"objective.name={name!r}; registered: {available_objectives()}")
    return from_dict(_REGISTRY[name].config_class, {**data, "name": name}, where="objective")


def create_objective(cfg: dict[str, Any] | Any, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig,
                     encoder: nn.Module | None = None) -> Objective:
    """The registered objective of ``cfg``; ``encoder`` reaches the classes that set ``uses_encoder``
    (a head shaped after the encoder, e.g. the workers' waveform decoder)."""
    cfg = objective_config(cfg)
    cls = _REGISTRY[cfg.name]
    extra = {"encoder": encoder} if getattr(cls, "uses_encoder", False) else {}
    return cls(cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking, **extra)


# ---------------------------------------------------------------------------------------------
# Losses (pure)
# ---------------------------------------------------------------------------------------------


def cell_losses(pred: torch.Tensor, target: torch.Tensor, *, loss: str, huber_delta: float = 1.0) -> torch.Tensor:
    """Element-wise loss of the selected cells, ``(n,) -> (n,)`` float32."""
    pred, target = pred.float(), target.float()
    if loss == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    if loss == "l1":
        return (pred - target).abs()
    if loss == "mse":
        return (pred - target) ** 2
    raise ConfigError(f"objective.loss={loss!r}; expected 'huber', 'l1' or 'mse'")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, loss: str = "huber",
                huber_delta: float = 1.0) -> torch.Tensor:
    """Mean loss over the True cells of ``mask``; ``pred``/``target``/``mask`` all ``(B, T, C)``."""
    n = int(mask.sum())
    if n == 0:
        return pred.sum() * 0.0  # keeps the graph (DDP needs every parameter to get a gradient)
    return cell_losses(pred[mask], target[mask], loss=loss, huber_delta=huber_delta).mean()


def mask_rows(frames: torch.Tensor, batch: Any, *, masking: MaskingConfig, spec: Any,
              policies: list[str] | None = None, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask row ``i`` of ``frames (B, T, C)`` with ``batch.rng(i, stream)`` over its real frames only.

    Returns ``(corrupted (B, T, C), loss_mask (B, T, C) bool)``.
    """
    lengths = batch.lengths.tolist()
    corrupted = frames.clone()
    mask = torch.zeros(frames.shape, dtype=torch.bool, device=frames.device)
    for i, n in enumerate(lengths):
        x, m = apply_masking(frames[i : i + 1, :n], [n], rng=batch.rng(i, stream), cfg=masking, spec=spec,
                             policies=policies)
        corrupted[i, :n], mask[i, :n] = x[0], m[0]
    return corrupted, mask


# ---------------------------------------------------------------------------------------------
# Masked reconstruction (M2BERT)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReconstructionConfig:
    """Masked reconstruction of the input frames."""

    name: str = "reconstruction"  # registered objective name
    loss: str = "huber"  # per-cell loss: huber (paper) | l1 | mse
    huber_delta: float = bounded(1.0, gt=0)  # Huber threshold (paper: 1)
    layer: int = -1  # hidden state the head reads (-1 = last transformer layer)
    head: ReconstructionHeadConfig = field(default_factory=ReconstructionHeadConfig)  # head settings
    eval_policies: list[str] = field(default_factory=lambda: ["cfm", "ccm", "pm"])  # also scored alone at validation

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = from_dict(ReconstructionHeadConfig, self.head, where="objective.head")
        if self.loss not in ("huber", "l1", "mse"):
            raise ConfigError(f"objective.loss={self.loss!r}; expected 'huber', 'l1' or 'mse'")
        if float(self.huber_delta) <= 0:
            raise ConfigError(f"objective.huber_delta={self.huber_delta!r}; expected > 0")


@register_objective("reconstruction")
class Reconstruction(Objective):
    """Corrupt with the masking policies, reconstruct every cell, score only the masked ones."""

    config_class = ReconstructionConfig

    def __init__(self, cfg: ReconstructionConfig, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> None:
        super().__init__(cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking)
        self.head = ReconstructionHead(encoder_cfg.hidden, encoder_cfg.n_input, cfg=cfg.head)

    def corrupt(self, batch: Any, *, policies: list[str] | None = None, stream: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each row with its own generator (so masks do not depend on batch composition).

        Returns ``(corrupted (B, T, C), loss_mask (B, T, C) bool)``.
        """
        return mask_rows(batch.frames, batch, masking=self.masking, spec=self.spec, policies=policies, stream=stream)

    def reconstruct(self, encoder: nn.Module, corrupted: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states = encoder(corrupted, lengths)
        return self.head(states[self.cfg.layer])

    def _to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        device = self.head.dense.weight.device
        return [t.to(device, non_blocking=True) for t in tensors]

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:
        """``batch`` lives on the CPU (masks are drawn there); tensors move to the head's device."""
        corrupted, mask = self.corrupt(batch)
        corrupted, mask, frames, lengths = self._to_device(corrupted, mask, batch.frames, batch.lengths)
        pred = self.reconstruct(encoder, corrupted, lengths)
        loss = masked_loss(pred, frames, mask, loss=self.cfg.loss, huber_delta=self.cfg.huber_delta)
        real = float(batch.lengths.sum()) * batch.frames.shape[-1]
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "masked_fraction": float(mask.sum()) / max(real, 1.0)})

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:
        """Held-out loss for the training policy combination and each policy alone, plus the
        loss of predicting zero (the CMVN mean) on the training policy's cells as a yardstick."""
        out: dict[str, tuple[float, float]] = {}
        combos = ["+".join(self.masking.policies)] + [p for p in self.cfg.eval_policies
                                                      if [p] != list(self.masking.policies)]
        for combo in combos:
            policies = combo.split("+")
            corrupted, mask = self.corrupt(batch, policies=policies, stream=zlib.crc32(combo.encode()))
            corrupted, mask, frames, lengths = self._to_device(corrupted, mask, batch.frames, batch.lengths)
            pred = self.reconstruct(encoder, corrupted, lengths)
            per_cell = cell_losses(pred[mask], frames[mask], loss=self.cfg.loss, huber_delta=self.cfg.huber_delta)
            out[f"loss[{combo}]"] = (float(per_cell.sum()), float(per_cell.numel()))
            if combo == combos[0]:
                zero = cell_losses(torch.zeros_like(frames[mask]), frames[mask], loss=self.cfg.loss,
                                   huber_delta=self.cfg.huber_delta)
                out[f"zero_baseline[{combo}]"] = (float(zero.sum()), float(zero.numel()))
        return out


# ---------------------------------------------------------------------------------------------
# MERT: masked prediction of discrete targets + CQT reconstruction, with in-batch mixup
# ---------------------------------------------------------------------------------------------

MIXUP_STREAM = 0x31C5  # generator stream of each row's mixup draws (training masks use stream 0)


@dataclass
class MertConfig:
    """MERT-style masked prediction (Yuan 2023 thesis, chapter 5): L = a * sum_c CE_c + w * L_CQT (eq. 5.6)."""

    name: str = "mert"  # registered objective name
    targets: list[str] | str = field(default_factory=list)  # TARGETS folder(s) of `m3bert targets`; one head per codebook
    acoustic_weight: float = bounded(1.0, ge=0)  # alpha of eq. 5.6, on the sum of the codebooks' cross-entropies
    cqt_weight: float = bounded(1.0, ge=0)  # musical loss weight (thesis Table 5.4: 1 best of 1/2/5); 0 = acoustic only
    cqt_group: str = "cqt"  # FeatureSpec group(s) the musical head reconstructs from the clean input
    cqt_loss: str = "mse"  # mse (thesis 5.1.3 and Algorithm 1) | huber | l1
    logits: str = "cosine"  # cosine = HuBERT eq. 5.4, cos(T(o_t), e_c) / tau | linear = a softmax layer
    proj_dim: int = bounded(64, ge=1)  # width of T(o_t) and the codeword embeddings e_c (MERT-95M: final_dim 64)
    temperature: float = bounded(0.1, gt=0)  # tau of eq. 5.4 (HuBERT: 0.1)
    layer: int = -1  # hidden state the heads read (-1 = last transformer layer)
    head: ReconstructionHeadConfig = field(default_factory=ReconstructionHeadConfig)  # the CQT head
    mixup: MixupConfig = field(default_factory=MixupConfig)  # in-batch noise mixup of the input (prob 0 = off)

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = from_dict(ReconstructionHeadConfig, self.head, where="objective.head")
        if isinstance(self.mixup, dict):
            self.mixup = from_dict(MixupConfig, self.mixup, where="objective.mixup")
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        # absolute, so a resumed run (config.yaml) finds them from any working directory
        self.targets = [str(Path(t).expanduser().resolve()) for t in targets if str(t)]
        if self.cqt_loss not in ("mse", "huber", "l1"):
            raise ConfigError(f"objective.cqt_loss={self.cqt_loss!r}; expected 'mse', 'huber' or 'l1'")
        if self.logits not in ("cosine", "linear"):
            raise ConfigError(f"objective.logits={self.logits!r}; expected 'cosine' or 'linear'")
        if self.acoustic_weight == 0 and self.cqt_weight == 0:
            raise ConfigError("objective.acoustic_weight and objective.cqt_weight are both 0: nothing to learn")


@dataclass
class MertAcousticConfig(MertConfig):
    """MERT without the musical teacher: masked cluster prediction only."""

    name: str = "mert_acoustic"  # registered objective name
    cqt_weight: float = bounded(0.0, ge=0)  # no CQT reconstruction


class CodewordHead(nn.Module):
    """Logits over one codebook's ``k`` classes from hidden states ``(n, H) -> (n, k)``.

    ``cosine``: HuBERT's eq. 5.4 (thesis line 405-409), ``cos(T(o_t), e_c) / tau`` with a learned
    projection ``T`` and learned codeword embeddings ``e_c``; ``linear``: one linear layer.
    """

    def __init__(self, hidden: int, k: int, *, kind: str, proj_dim: int, temperature: float) -> None:
        super().__init__()
        self.kind, self.temperature = kind, float(temperature)
        self.proj = nn.Linear(hidden, proj_dim if kind == "cosine" else k)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        if kind == "cosine":
            self.codewords = nn.Parameter(torch.randn(k, proj_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.proj(h).float()
        if self.kind == "cosine":
            return F.normalize(z, dim=-1) @ F.normalize(self.codewords.float(), dim=-1).T / self.temperature
        return z


@register_objective("mert")
class Mert(Objective):
    """Masked prediction of k-means class ids (one head per codebook) + CQT reconstruction at masked frames.

    Per step: in-batch mixup of the clean input (training only, :mod:`m3bert.pretrain.mixup`) ->
    the masking policies (which must include CFM: a *frame* is masked when every channel of it is)
    -> encoder -> at the masked frames, cross-entropy against each codebook's ids of the clean
    clip and MSE against the clean clip's CQT channels. ``loss = acoustic_weight * sum_c CE_c +
    cqt_weight * L_CQT`` (thesis eq. 5.6 with the musical weight of Table 5.4). The CQT loss is the
    mean squared error over the masked frames' CQT cells, as the thesis's text ("mean squared error",
    line 425) and Algorithm 1 (``Mean_Square_Error(z[mask_idx], y_CQT[mask_idx])``) have it; its
    eq. 5.5 writes an unsquared L2 norm summed over all frames, which neither of them follows.
    Several codebooks' cross-entropies are summed (HuBERT/fairseq's criterion sums over target sets).
    """

    config_class = MertConfig

    def __init__(self, cfg: MertConfig, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig) -> None:
        super().__init__(cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking)
        if "cfm" not in masking.policies:
            raise ConfigError(f"objective {cfg.name}: masking.policies={list(masking.policies)} has no frame masking; "
                              "masked prediction needs whole masked frames: include 'cfm' (e.g. masking.policies=[cfm])")
        if cfg.acoustic_weight > 0 and not cfg.targets:
            raise ConfigError(f"objective {cfg.name}: no objective.targets; build k-means targets with "
                              "`m3bert targets --store STORE --out TARGETS` and pass --set objective.targets=TARGETS")
        headers = [read_targets_header(p) for p in cfg.targets] if cfg.acoustic_weight > 0 else []
        self.labels = [h["label"] if [x["label"] for x in headers].count(h["label"]) == 1 else f"{h['label']}#{c}"
                       for c, h in enumerate(headers)]
        self.codebooks = nn.ModuleList([CodewordHead(encoder_cfg.hidden, int(h["k"]), kind=cfg.logits,
                                                     proj_dim=cfg.proj_dim, temperature=cfg.temperature)
                                        for h in headers])
        self.cqt_head = None
        if cfg.cqt_weight > 0:
            channels = torch.as_tensor(spec.channels(cfg.cqt_group), dtype=torch.long)
            self.register_buffer("cqt_channels", channels, persistent=False)
            self.cqt_head = ReconstructionHead(encoder_cfg.hidden, len(channels), cfg=cfg.head)

    def _inputs(self, batch: Any, *, train: bool, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(corrupted input (B, T, C), masked frames (B, T) bool, rows mixed)``, all on the CPU."""
        x, n_mixed = batch.frames, 0
        if train and self.cfg.mixup.prob > 0:
            rngs = [batch.rng(i, MIXUP_STREAM) for i in range(x.shape[0])]
            x, n_mixed = inbatch_mixup(x, batch.lengths, rngs=rngs, cfg=self.cfg.mixup)
        corrupted, mask = mask_rows(x, batch, masking=self.masking, spec=self.spec, stream=stream)
        return corrupted, mask.all(dim=-1), n_mixed

    def _per_frame(self, encoder: nn.Module, batch: Any, corrupted: torch.Tensor, frame_mask: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
        """Per-masked-frame terms: ``ce[label]``, ``correct[label]`` and ``cqt`` / ``cqt_zero`` (each ``(n,)``)."""
        device = next(self.parameters()).device
        if self.codebooks and (batch.targets is None or batch.targets.shape[0] != len(self.codebooks)):
            have = 0 if batch.targets is None else batch.targets.shape[0]
            raise DataError(f"objective {self.cfg.name}: batches carry {have} target set(s), the objective has "
                            f"{len(self.codebooks)} codebook head(s); pass the targets to the batches")
        states = encoder(corrupted.to(device, non_blocking=True), batch.lengths.to(device))
        fm = frame_mask.to(device)
        h = states[self.cfg.layer][fm]
        out: dict[str, torch.Tensor] = {"_anchor": states[self.cfg.layer].sum() * 0.0}
        for c, head in enumerate(self.codebooks):
            ids = batch.targets[c].to(device)[fm]
            if bool((ids < 0).any()):
                raise DataError(f"objective {self.cfg.name}: a masked real frame has no class id (targets shorter than the clip)")
            logits = head(h)
            out[f"ce[{self.labels[c]}]"] = F.cross_entropy(logits, ids, reduction="none")
            out[f"correct[{self.labels[c]}]"] = (logits.argmax(-1) == ids).float()
        if self.cqt_head is not None:
            target = batch.frames.to(device)[fm][:, self.cqt_channels].float()  # the clean clip's CQT
            out["cqt"] = cell_losses(self.cqt_head(h), target, loss=self.cfg.cqt_loss).mean(dim=1)
            out["cqt_zero"] = cell_losses(torch.zeros_like(target), target, loss=self.cfg.cqt_loss).mean(dim=1)
        return out

    def _total(self, terms: dict[str, torch.Tensor], reduce: str) -> torch.Tensor:
        """``acoustic_weight * sum_c CE_c + cqt_weight * L_CQT`` as a mean (training) or sum (validation)."""
        agg = (lambda t: t.mean()) if reduce == "mean" else (lambda t: t.sum())
        total = terms["_anchor"]
        for label in self.labels:
            total = total + self.cfg.acoustic_weight * agg(terms[f"ce[{label}]"])
        if self.cqt_head is not None:
            total = total + self.cfg.cqt_weight * agg(terms["cqt"])
        return total

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:
        corrupted, frame_mask, n_mixed = self._inputs(batch, train=self.training)
        terms = self._per_frame(encoder, batch, corrupted, frame_mask)
        n = int(frame_mask.sum())
        if n == 0:  # cannot happen with CFM (>= 1 frame per row); keeps every parameter in the graph
            loss = terms["_anchor"] + sum(p.sum() * 0.0 for p in self.parameters())
        else:
            loss = self._total(terms, "mean")
        logs = {"loss": float(loss.detach()), "masked_fraction": n / max(float(batch.lengths.sum()), 1.0),
                "mixed_fraction": n_mixed / max(batch.frames.shape[0], 1)}
        if n:
            for label in self.labels:
                logs[f"ce[{label}]"] = float(terms[f"ce[{label}]"].detach().mean())
                logs[f"acc[{label}]"] = float(terms[f"correct[{label}]"].mean())
            if self.cqt_head is not None:
                logs["cqt_loss"] = float(terms["cqt"].detach().mean())
        return ObjectiveOutput(loss, logs)

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:
        """Held-out sums over the masked frames of fixed masks, no mixup: the combined loss (the
        selection key), each codebook's cross-entropy and accuracy, the CQT loss and the CQT loss
        of predicting zero (the CMVN mean) as a yardstick."""
        combo = "+".join(self.masking.policies)
        corrupted, frame_mask, _ = self._inputs(batch, train=False, stream=zlib.crc32(combo.encode()))
        terms = self._per_frame(encoder, batch, corrupted, frame_mask)
        n = float(frame_mask.sum())
        out = {f"loss[{combo}]": (float(self._total(terms, "sum")), n)}
        for label in self.labels:
            out[f"ce[{label}]"] = (float(terms[f"ce[{label}]"].sum()), n)
            out[f"acc[{label}]"] = (float(terms[f"correct[{label}]"].sum()), n)
        if self.cqt_head is not None:
            out["cqt_loss"] = (float(terms["cqt"].sum()), n)
            out["cqt_zero_baseline"] = (float(terms["cqt_zero"].sum()), n)
        return out


@register_objective("mert_acoustic")
class MertAcoustic(Mert):
    """``mert`` with the CQT weight 0 by default: masked cluster prediction only."""

    config_class = MertAcousticConfig
