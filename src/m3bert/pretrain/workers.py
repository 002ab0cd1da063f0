"""Wu et al. (2021) workers: self-supervised multi-task pre-training of a waveform encoder.

    m3bert targets --workers L,P,M,C,T --store STORE --out TARGETS
    m3bert pretrain --store STORE --config configs/pase-plus.yaml --targets TARGETS --out RUN \\
        --workers W,L,P,M,C,T --set objective.weighting=reweighted

Section 3.2 of the paper (after PASE, Pascual et al. 2019 / PASE+, Ravanelli et al. 2020): the
encoder reads the *clean* waveform (nothing is masked) and small workers read its last hidden
state: ``W`` reconstructs the waveform with a decoder that applies the encoder's (strided) layers
in reverse (transposed 1-D convolutions back to the 160 samples of each frame), mean absolute
error; ``L`` (log power spectrum), ``P`` (prosody), ``M`` (MFCC), ``C`` (chroma) and ``T``
(tempogram) each regress their standardised features (:mod:`m3bert.pretrain.worker_targets`) with
an MLP over frames (PASE's worker: one hidden layer of 256 units, PReLU), mean squared error. Any
subset is selected by letter (``objective.workers: "W,L,P"``).

Section 3.3, loss weighting, through the one mechanism :mod:`m3bert.train.weighting`
(``WEIGHTINGS``): ``equal`` (the plain sum), ``uncertainty`` (Kendall et al., the workers as
Gaussian losses) and ``reweight`` (alias ``reweighted``, Wu et al.): the reciprocal of each
worker's mean validation loss over the first ``reweight_epochs`` epochs (paper: 10) of an
equal-weighted run, then a retraining from scratch with those fixed weights.
:func:`pretrain_workers` runs that as two phases in one run folder: phase 1 is the equal run in
``RUN/reweight-phase1/`` (the full run's config and learning-rate schedule, validated every epoch,
stopped after ``reweight_epochs`` epochs), the weights and the losses they came from go to
``RUN/worker_weights.json`` (the commit point of phase 1: with it, phase 1 never runs again), and
phase 2 is a fresh run from the same initial weights in ``RUN``. Each phase is an ordinary
pre-training run, so either resumes exactly after a kill. An epoch is ``ceil(training chunks /
data.effective_batch)`` steps unless ``reweight_steps_per_epoch`` says otherwise.

Per-worker losses are in the metrics log (``train/loss[L]``, ``val/loss[L]`` ..., and
``val/weighted[L]`` = weight x loss, each worker's share of the total), and
:func:`plot_worker_losses` draws the paper's Figure 4 (validation loss per worker against steps,
log scale; a re-weighted run gets its equal phase beside it) into ``RUN/worker_losses.png`` at the
end of every workers run.

Deviations: Wu et al.'s workers are "MLP with convolutional layers"; as in PASE's released
workers these are 1x1 convolutions, i.e. an MLP applied to each frame. The decoder mirrors only
the encoder's strided layers (SincNet's 251-tap filters and the stride-1 blocks are not inverted:
they cost most and add no upsampling); its last layer is a linear projection to one channel. The
re-weights are the plain reciprocals (``reweight_normalize: false``), as the paper has it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from m3bert.core.config import bounded, from_dict
from m3bert.core.errors import CheckpointError, ConfigError, DataError
from m3bert.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from m3bert.features.wu import WORKER_FEATURES
from m3bert.pretrain.data import split_by_group, store_groups
from m3bert.pretrain.loop import PretrainConfig, load_pretrain_config, open_store, pretrain, store_location
from m3bert.pretrain.masking import MaskingConfig
from m3bert.pretrain.objectives import Objective, ObjectiveOutput, objective_config, register_objective
from m3bert.pretrain.targets import read_targets_header
from m3bert.pretrain.worker_targets import KIND, parse_workers
from m3bert.train.checkpoint import read_state, recover_checkpoint
from m3bert.train.run import MetricsLog
from m3bert.train.weighting import WEIGHTINGS, LossWeighting, WeightingConfig, create_weighting, reciprocal_loss_weights

WAVEFORM = "W"  # the waveform-reconstruction worker (its target is the input itself)
LETTERS = ("W", "L", "P", "M", "C", "T")  # the paper's workers, in its order (WLP baseline, then M, C, T)
ALIASES = {"reweighted": "reweight"}  # the paper's and the word for train.weighting's "reweight"
PHASE1 = "reweight-phase1"  # RUN/reweight-phase1/: the equal-weighted calibration run
WEIGHTS_FILE = "worker_weights.json"  # RUN/worker_weights.json: the re-weights and the losses they came from
PLAN_FILE = "reweight-config.yaml"  # RUN/reweight-config.yaml: the requested config of a two-phase run
PLOT_FILE = "worker_losses.png"


@dataclass
class WorkersConfig:
    """Wu et al.'s workers over the encoder's last hidden state, and how their losses are weighted."""

    name: str = "workers"  # registered objective name
    workers: str | list[str] = "W,L,P,M,C,T"  # the paper's letters: W waveform, L LPS, P prosody, M MFCC, C chroma, T tempogram
    targets: list[str] | str = field(default_factory=list)  # TARGETS folder of `m3bert targets --workers` (not needed for W alone)
    standardize: bool = True  # regress (x - mean) / std of the training chunks (PASE); false = raw feature values
    weighting: str = "equal"  # train.weighting: equal | reweight (= reweighted, Wu et al.) | uncertainty (Kendall et al.)
    reweight_epochs: int = bounded(10, ge=1)  # reweight: epochs of the equal run whose validation losses are averaged (paper: 10)
    reweight_steps_per_epoch: int = bounded(0, ge=0)  # reweight: steps per epoch; 0 = ceil(training chunks / data.effective_batch)
    reweight_normalize: bool = False  # reweight: scale the reciprocals to mean 1 (the paper uses them as they are)
    reweight_losses: dict[str, float] = field(default_factory=dict)  # reweight: phase 1's mean validation loss per worker (set by pretrain_workers)
    uncertainty_init: float = 0.0  # uncertainty: initial log-variance of every worker
    hidden: int = bounded(256, ge=1)  # width of each feature worker's hidden layer (PASE: 256)
    layer: int = -1  # hidden state the workers read (-1 = the last = the embedding)
    decoder_strides: list[int] = field(default_factory=list)  # W: upsampling strides, coarse to fine; [] = the encoder's, reversed
    decoder_channels: list[int] = field(default_factory=list)  # W: channels after each upsampling (with decoder_strides; [] = 64 each)
    plot: bool = True  # draw RUN/worker_losses.png (the paper's Figure 4) at the end of the run

    def __post_init__(self) -> None:
        self.workers = ",".join(parse_workers(self.workers, allowed=LETTERS))
        self.weighting = ALIASES.get(str(self.weighting), str(self.weighting))
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"objective.weighting={self.weighting!r}; expected one of "
                              f"{sorted(set(WEIGHTINGS) | set(ALIASES))}")
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        # absolute, so a resumed run (config.yaml) finds them from any working directory
        self.targets = [str(Path(t).expanduser().resolve()) for t in targets if str(t)]
        unknown = sorted(set(self.reweight_losses) - set(self.letters))
        if unknown:
            raise ConfigError(f"objective.reweight_losses names worker(s) {unknown} not in objective.workers={self.workers}")
        if any(int(s) < 1 for s in self.decoder_strides) or any(int(c) < 1 for c in self.decoder_channels):
            raise ConfigError(f"objective.decoder_strides={self.decoder_strides}, decoder_channels={self.decoder_channels}; "
                              "expected positive integers")

    @property
    def letters(self) -> list[str]:
        return self.workers.split(",")


# ---------------------------------------------------------------------------------------------
# Worker modules
# ---------------------------------------------------------------------------------------------


class FrameMLP(nn.Module):
    """PASE's regression worker: ``(B, T, D) -> (B, T, C)``, one hidden layer + PReLU, per frame."""

    def __init__(self, d_in: int, d_out: int, *, hidden: int) -> None:
        super().__init__()
        # 1x1 convolutions over (B, D, T), as PASE's workers: PReLU's slopes are per channel (dim 1)
        self.net = nn.Sequential(nn.Conv1d(d_in, hidden, 1), nn.PReLU(hidden), nn.Conv1d(hidden, d_out, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.transpose(1, 2)).transpose(1, 2)


class WaveDecoder(nn.Module):
    """``(B, T, D) -> (B, T, prod(strides))``: transposed 1-D convs, each upsampling by its stride.

    Block ``i`` is ``ConvTranspose1d(kernels[i], strides[i])`` cropped (centred) to exactly
    ``strides[i]`` x its input length, then PReLU; a 1x1 convolution projects to one channel and
    the samples are regrouped into frames, so output frame ``t`` holds what hidden state ``t`` generated.
    """

    def __init__(self, d_in: int, *, strides: Sequence[int], kernels: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        if not len(strides) == len(kernels) == len(channels) >= 1:
            raise ConfigError(f"decoder: {len(strides)} strides, {len(kernels)} kernels, {len(channels)} channel counts; "
                              "expected one of each per layer")
        self.strides, self.kernels = [int(s) for s in strides], [max(int(k), int(s)) for k, s in zip(kernels, strides)]
        ups, acts, c_in = [], [], d_in
        for s, k, c in zip(self.strides, self.kernels, channels):
            ups.append(nn.ConvTranspose1d(c_in, int(c), kernel_size=k, stride=s))
            acts.append(nn.PReLU(int(c)))
            c_in = int(c)
        self.ups, self.acts = nn.ModuleList(ups), nn.ModuleList(acts)
        self.out = nn.Conv1d(c_in, 1, kernel_size=1)
        self.samples_per_frame = math.prod(self.strides)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.transpose(1, 2)  # (B, D, T)
        for s, k, up, act in zip(self.strides, self.kernels, self.ups, self.acts):
            n, start = x.shape[-1] * s, (k - s) // 2
            x = act(up(x)[..., start : start + n])  # (B, C, (L - 1) s + k) cropped to (B, C, L s)
        y = self.out(x)  # (B, 1, T * samples_per_frame)
        return y.reshape(h.shape[0], h.shape[1], self.samples_per_frame)


def mirror_encoder(encoder: nn.Module | None, encoder_cfg: Any, samples_per_frame: int
                   ) -> tuple[list[int], list[int], list[int]]:
    """The encoder's strided conv layers in reverse: ``(strides, kernels, channels)``, coarse to fine.

    From the encoder config's ``strides``/``kernels``/``channels`` (PASE / PASE+; layer ``i`` reads
    ``channels[i - 1]``, layer 0 ``sinc_filters``): the mirror of layer ``i`` maps back to its input
    width. Without a strided front end (M2BERT): strides ``2, 2, 2, 2, samples_per_frame / 16``.
    """
    cfg = getattr(encoder, "cfg", encoder_cfg)
    strides = [int(s) for s in (getattr(cfg, "strides", None) or [])]
    channels = [int(c) for c in (getattr(cfg, "channels", None) or [])]
    kernels = [int(k) for k in (getattr(cfg, "kernels", None) or [2 * s for s in strides])]
    if strides and len(channels) == len(strides) == len(kernels):
        c_in = [int(getattr(cfg, "sinc_filters", channels[0])), *channels[:-1]]
        layers = [(s, k, c) for s, k, c in zip(strides, kernels, c_in) if s > 1][::-1]
        return [s for s, _, _ in layers], [k for _, k, _ in layers], [c for _, _, c in layers]
    strides = [2, 2, 2, 2, samples_per_frame // 16] if samples_per_frame % 16 == 0 else [samples_per_frame]
    return strides, [2 * s for s in strides], [64] * len(strides)


# ---------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------


@register_objective("workers")
class Workers(Objective):
    """Workers on the clean input (see the module docstring); ``loss = weighting(per-worker losses)``."""

    config_class = WorkersConfig
    uses_encoder = True  # create_objective passes the encoder: the W decoder mirrors it

    def __init__(self, cfg: WorkersConfig, *, encoder_cfg: Any, spec: Any, masking: MaskingConfig,
                 encoder: nn.Module | None = None) -> None:
        super().__init__(cfg, encoder_cfg=encoder_cfg, spec=spec, masking=masking)
        self.letters = cfg.letters
        self.keys = {w: WORKER_FEATURES[w] for w in self.letters if w != WAVEFORM}
        if encoder is not None:
            d = int(list(encoder.layer_dims)[cfg.layer])
        else:
            d = int(encoder_cfg.hidden)
        dims: dict[str, int] = {}
        if self.keys:
            if len(cfg.targets) != 1:
                raise ConfigError(f"objective workers={cfg.workers}: {len(cfg.targets)} targets folders given, expected one "
                                  "built with `m3bert targets --workers L,P,M,C,T --store STORE --out TARGETS` "
                                  "(pass --targets TARGETS or --set objective.targets=TARGETS)")
            header = read_targets_header(cfg.targets[0], kind=KIND)
            missing = [w for w, k in self.keys.items() if k not in header["features"]]
            if missing:
                raise DataError(f"{cfg.targets[0]}: holds targets for workers {header['workers']}, not for {missing}; "
                                f"build them with `m3bert targets --workers {','.join(self.keys)} ...`")
            dims = {k: int(header["dims"][k]) for k in self.keys.values()}
        self.heads = nn.ModuleDict({w: FrameMLP(d, dims[k], hidden=cfg.hidden) for w, k in self.keys.items()})
        self.decoder = None
        if WAVEFORM in self.letters:
            n = int(spec.n_channels)
            strides, kernels, channels = mirror_encoder(encoder, encoder_cfg, n)
            if cfg.decoder_strides:
                strides = [int(x) for x in cfg.decoder_strides]
                kernels = [2 * x for x in strides]
                channels = [int(x) for x in cfg.decoder_channels] or [64] * len(strides)
            if math.prod(strides) != n:
                raise ConfigError(f"objective.decoder_strides={strides} upsample each frame to {math.prod(strides)} samples; "
                                  f"the input frames hold {n} (their product must equal the frame size)")
            self.decoder = WaveDecoder(d, strides=strides, kernels=kernels, channels=channels)
        self.weighting: LossWeighting = create_weighting(
            self.letters, WeightingConfig(name=cfg.weighting, reweight_epochs=cfg.reweight_epochs,
                                          reweight_normalize=cfg.reweight_normalize,
                                          uncertainty_init=cfg.uncertainty_init), regression=self.letters)
        if cfg.weighting == "reweight":
            if set(cfg.reweight_losses) != set(self.letters):
                raise ConfigError(f"objective.weighting=reweight needs the mean validation losses of an equal-weighted run "
                                  f"for workers {self.letters} (objective.reweight_losses, got {sorted(cfg.reweight_losses)}); "
                                  "`m3bert pretrain` (pretrain_workers) runs that calibration as phase 1 and sets them")
            self.weighting.set_from_losses(cfg.reweight_losses)

    # -- data --------------------------------------------------------------------------------
    def data_targets(self, readers: Sequence[Any]) -> list[Any]:
        """The worker targets restricted to this run's workers (none when only ``W`` runs)."""
        if not self.keys:
            return []
        return [readers[0].select(list(self.keys.values()), standardize=self.cfg.standardize)]

    # -- losses ------------------------------------------------------------------------------
    def per_frame(self, encoder: nn.Module, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({worker: (B, T) loss of each frame, the mean over its channels}, valid (B, T) bool)``."""
        device = next(encoder.parameters()).device
        frames, lengths = batch.frames.to(device, non_blocking=True), batch.lengths.to(device)
        states = encoder(frames, lengths)
        h = states[self.cfg.layer]
        if h.shape[:2] != frames.shape[:2]:
            raise DataError(f"objective workers: the encoder returned {tuple(h.shape[:2])} frames for input "
                            f"{tuple(frames.shape[:2])}; the workers need one hidden state per input frame")
        valid = torch.arange(frames.shape[1], device=device)[None, :] < lengths[:, None]
        out: dict[str, torch.Tensor] = {}
        if self.keys and not set(self.keys.values()) <= set(batch.features or {}):
            have = sorted(batch.features or {})
            raise DataError(f"objective workers: batches carry targets {have}, the workers need "
                            f"{sorted(self.keys.values())}; pass the objective's data_targets to the batches")
        for w in self.letters:
            if w == WAVEFORM:
                out[w] = (self.decoder(h).float() - frames.float()).abs().mean(dim=-1)  # MAE
            else:
                target = batch.features[self.keys[w]].to(device, non_blocking=True)
                out[w] = ((self.heads[w](h).float() - target.float()) ** 2).mean(dim=-1)  # MSE
        return out, valid

    def forward(self, encoder: nn.Module, batch: Any) -> ObjectiveOutput:
        per, valid = self.per_frame(encoder, batch)
        losses = {w: per[w][valid].mean() for w in self.letters}
        total, weights = self.weighting.combine(losses)
        logs = {"loss": float(total.detach())}
        for w in self.letters:
            logs[f"loss[{w}]"] = float(losses[w].detach())
            logs[f"weight[{w}]"] = float(weights[w])
        return ObjectiveOutput(total, logs)

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:
        """Held-out sums over the real frames: each worker's loss, weight x loss, their weighted
        total (the selection key), the unweighted sum, and each worker's loss when predicting 0
        (silence; the training mean of a standardised target) as a yardstick."""
        per, valid = self.per_frame(encoder, batch)
        n = float(valid.sum())
        weights = self.weighting.current_weights()
        out: dict[str, tuple[float, float]] = {}
        total = plain = 0.0
        for w in self.letters:
            s = float(per[w][valid].sum())
            out[f"loss[{w}]"] = (s, n)
            out[f"weighted[{w}]"] = (weights[w] * s, n)
            total += weights[w] * s
            plain += s
            ref = (batch.frames if w == WAVEFORM else batch.features[self.keys[w]])[valid.cpu()].float()
            out[f"zero_baseline[{w}]"] = (float((ref.abs() if w == WAVEFORM else ref ** 2).mean(dim=-1).sum()), n)
        out["loss[weighted]"] = (total, n)
        out["loss[sum]"] = (plain, n)
        return out

    def selection_key(self) -> str:
        return "loss[weighted]"

    def on_run_end(self, out: Path) -> None:
        if self.cfg.plot:
            plot_worker_losses(out)


# ---------------------------------------------------------------------------------------------
# Figure 4
# ---------------------------------------------------------------------------------------------


def worker_curves(run: str | Path, *, weighted: bool = False) -> dict[str, list[tuple[int, float]]]:
    """``{worker: [(step, validation loss)]}`` from ``run``'s metrics log (``weighted``: weight x loss)."""
    prefix = "val/weighted[" if weighted else "val/loss["
    curves: dict[str, list[tuple[int, float]]] = {}
    for rec in MetricsLog(run).records():
        for k, v in rec.items():
            if k.startswith(prefix) and k.endswith("]") and k[len(prefix):-1] in LETTERS:
                curves.setdefault(k[len(prefix):-1], []).append((int(rec["step"]), float(v)))
    return {w: curves[w] for w in LETTERS if w in curves}


def plot_worker_losses(run: str | Path, *, out: str | Path | None = None) -> Path | None:
    """Wu et al.'s Figure 4 for a run folder: validation loss per worker against steps, log scale.

    One panel per phase: a re-weighted run shows its equal phase 1 (``reweight-phase1/``) beside
    the re-weighted run, whose curves are weight x loss (each worker's share of the total, what
    the paper's right panel balances). Written atomically to ``RUN/worker_losses.png`` (or ``out``);
    ``None`` when the log holds no per-worker validation losses yet.
    """
    import matplotlib.figure  # heavy: matplotlib, needed for the figure only

    run = Path(run)
    record = read_json(run / "run.json") if (run / "run.json").is_file() else {}
    weighting = ((record.get("config") or {}).get("objective") or {}).get("weighting", "equal")
    panels = []
    if (run / PHASE1 / "metrics.jsonl").is_file():
        panels.append(("phase 1: equal weighted", worker_curves(run / PHASE1)))
    names = {"equal": "equal weighted", "reweight": "re-weighted", "uncertainty": "uncertainty weighted"}
    panels.append((names.get(weighting, weighting) + (" (weight x loss)" if weighting != "equal" else ""),
                   worker_curves(run, weighted=weighting != "equal")))
    panels = [(t, c) for t, c in panels if c]
    if not panels:
        return None
    fig = matplotlib.figure.Figure(figsize=(5.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (title, curves) in zip(axes, panels):
        for i, (w, pts) in enumerate(curves.items()):
            steps, vals = zip(*pts)
            ax.plot(steps, [max(v, 1e-12) for v in vals], marker="o", ms=3, color=f"C{LETTERS.index(w)}", label=w)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation loss per worker")
    axes[-1].legend(title="worker", fontsize=8)
    fig.suptitle(f"{run.name}: per-worker validation losses (Wu et al. 2021, Fig. 4)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    path = Path(out) if out is not None else run / PLOT_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# The two-phase re-weighted run
# ---------------------------------------------------------------------------------------------


def needs_reweighting(cfg: PretrainConfig) -> bool:
    """A workers run with ``reweight`` weighting and no calibration yet: a two-phase run."""
    obj = cfg.objective
    return (obj.get("name") == "workers" and ALIASES.get(obj.get("weighting"), obj.get("weighting")) == "reweight"
            and not obj.get("reweight_losses"))


def is_reweighted_run(out: str | Path) -> bool:
    return (Path(out) / PLAN_FILE).is_file()


def steps_per_epoch(cfg: PretrainConfig, store: Any) -> int:
    """``objective.reweight_steps_per_epoch``, or the steps one pass over the training chunks takes."""
    if cfg.objective.get("reweight_steps_per_epoch"):
        return int(cfg.objective["reweight_steps_per_epoch"])
    train, _ = split_by_group(store_groups(store), val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    return max(1, math.ceil(len(train) / cfg.data.effective_batch))


def reweight_from_log(run: str | Path, letters: Sequence[str], *, max_step: int, normalize: bool
                      ) -> dict[str, Any]:
    """Wu et al.'s re-weights from a run's metrics log: each worker's mean validation loss over the
    validations at steps <= ``max_step``, and its reciprocal."""
    records = [r for r in MetricsLog(run).records()
               if int(r.get("step", 0)) <= max_step and all(f"val/loss[{w}]" in r for w in letters)]
    if not records:
        raise DataError(f"{run}/metrics.jsonl: no per-worker validation losses at steps <= {max_step}; the "
                        "equal-weighted phase must validate (data.val_fraction > 0)")
    means = {w: float(np.mean([r[f"val/loss[{w}]"] for r in records])) for w in letters}
    return {"weights": reciprocal_loss_weights(means, normalize=normalize), "mean_val_losses": means,
            "normalize": normalize, "validations": [{"step": int(r["step"]), **{w: r[f"val/loss[{w}]"] for w in letters}}
                                                    for r in records]}


def _with(cfg: PretrainConfig, **objective: Any) -> PretrainConfig:
    """A copy of ``cfg`` with some objective settings replaced."""
    data = cfg.to_dict()
    return from_dict(PretrainConfig, {**data, "objective": {**data["objective"], **objective}}, where="pretrain config")


def pretrain_workers(cfg: PretrainConfig | None, *, store: Any, out: str | Path, resume: bool = False,
                     progress: bool = True, stop_after: int | None = None,
                     resume_overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Pre-train as :func:`m3bert.pretrain.loop.pretrain` does; a workers run with ``reweight``
    weighting runs as the two phases of the module docstring (resumable in either).

    ``stop_after`` bounds the steps of this call over both phases (an interruption for tests and
    time-sliced jobs). Under torchrun every rank runs both phases (each an ordinary data-parallel
    run); rank 0 alone writes the files of this function, and every rank derives the same weights
    from phase 1's log (complete when the phase's final barrier is passed).
    """
    out = Path(out)
    main = os.environ.get("RANK", "0") == "0"
    if resume and not is_reweighted_run(out):
        return pretrain(None, store=store, out=out, resume=True, progress=progress, stop_after=stop_after,
                        resume_overrides=resume_overrides)
    if not resume:
        if cfg is None:
            raise ConfigError("pretrain needs a config (or resume=True)")
        if not needs_reweighting(cfg):
            return pretrain(cfg, store=store, out=out, progress=progress, stop_after=stop_after)
        if main and (is_reweighted_run(out) or (out / "run.json").exists()):
            raise CheckpointError(f"{out} already holds a run; continue it with `m3bert pretrain --resume {out}` "
                                  "or choose another --out")
        store = open_store(store)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "reweight.json", {"store": store_location(store)})
            atomic_write_text(out / PLAN_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # a two-phase run lives here
    else:
        if cfg is not None:
            raise ConfigError("resume takes its config from the run folder; pass cfg=None")
        allowed = [o for o in (resume_overrides or []) if o.startswith("train.") and not o.startswith("train.steps")]
        if len(allowed) != len(resume_overrides or []):
            raise ConfigError(f"on resume only train.* settings other than train.steps may change, got "
                              f"{list(resume_overrides or [])}; the rest would break exact continuation")
        cfg = load_pretrain_config(out / PLAN_FILE, overrides=allowed)
        store = open_store(store if store is not None else read_json(out / "reweight.json")["store"])
    letters = objective_config(cfg.objective).letters
    budget = math.inf if stop_after is None else int(stop_after)
    phase1 = out / PHASE1
    summary1: dict[str, Any] | None = None
    if not (out / WEIGHTS_FILE).is_file():
        spe = steps_per_epoch(cfg, store)
        n1 = min(int(cfg.objective["reweight_epochs"]) * spe, cfg.train.steps)
        last = recover_checkpoint(phase1 / "checkpoints" / "last") if (phase1 / "run.json").is_file() else None
        if last is None and phase1.exists() and main:
            shutil.rmtree(phase1, ignore_errors=True)  # killed before its first checkpoint: start phase 1 again
        done = int(read_state(last)["state"]["step"]) if last is not None else 0
        todo = int(min(n1 - done, budget))
        if todo > 0:
            if (phase1 / "run.json").is_file():
                summary1 = pretrain(None, store=store, out=phase1, resume=True, progress=progress, stop_after=todo,
                                    resume_overrides=resume_overrides)
            else:
                equal = _with(cfg, weighting="equal")
                equal.train = dataclasses.replace(equal.train, eval_every=spe)  # one validation per epoch
                summary1 = pretrain(equal, store=store, out=phase1, progress=progress, stop_after=todo)
            budget -= todo
            done += todo
        if done < n1:
            return {"run": str(out), "phase": 1, "finished": False, "phase1": summary1}
        calib = reweight_from_log(phase1, letters, max_step=n1, normalize=bool(cfg.objective["reweight_normalize"]))
        calib.update(epochs=int(cfg.objective["reweight_epochs"]), steps_per_epoch=spe, phase1_steps=n1, phase1=PHASE1)
        if main:
            atomic_write_json(out / WEIGHTS_FILE, calib)  # phase 1's commit point
    else:
        calib = read_json(out / WEIGHTS_FILE)
    if budget <= 0:
        return {"run": str(out), "phase": 1, "finished": False, "phase1": summary1, "reweight": calib}
    stop = None if budget == math.inf else int(budget)
    if (out / "run.json").is_file():
        summary = pretrain(None, store=store, out=out, resume=True, progress=progress, stop_after=stop,
                           resume_overrides=resume_overrides)
    else:
        summary = pretrain(_with(cfg, reweight_losses=calib["mean_val_losses"]), store=store, out=out,
                           progress=progress, stop_after=stop)
    return {**summary, "phase": 2, "reweight": {k: calib[k] for k in ("weights", "mean_val_losses", "phase1_steps")}}
