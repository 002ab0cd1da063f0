"""The probe grid: every probe of a protocol's hyper-parameter grid trained at once, as one wide model.

Why one vectorised trainer: the MARBLE constrained protocol (Yuan 2023, thesis ch. 3.2) trains
one small MLP per (layer, learning rate) pair -- with 5 hidden states and 6 learning rates that is
36 probes per task and seed, each tiny. Trained one by one on a CPU most of the time goes to
Python overhead. Here the whole grid is *one* wide model: every weight has a leading grid axis
``G`` and a forward pass is a batched matmul ``(G, B, D) @ (G, D, H)``. Each probe still has its
own initialisation, learning rate (Adam with a per-probe step size), dropout stream, plateau
schedule, early stopping and best-on-validation snapshot, and the probes share nothing but the
minibatch order -- so probe ``g`` trained inside the grid equals probe ``g`` trained alone
(tested). Probes that stopped early are dropped from the active set, so the grid costs what
its probes cost.

Deviation, on purpose: MARBLE monitors the validation *metric* for early stopping; here every
probe monitors its validation *loss* (defined for every label type, smooth, and computed for the
whole grid in one pass), and the validation metric picks the best probe afterwards
(:func:`m3bert.evaluate.probes.run_probe`).

Weighted sum: the learned softmax-weighted sum mixes the hidden states ``mix_layers`` (default:
all). MARBLE mixes the transformer layers 1..L and leaves out hidden state 0, the input
projection; the benchmark runner passes every hidden state but the one named ``"input"``. Its
weights therefore have one entry per mixed layer (L, not L + 1). With fewer than two layers to
mix there is no weighted-sum probe (a sum of one layer is that layer, already in the grid).

Losses: multiclass -> cross-entropy; multilabel -> BCE on known labels (``target_mask``);
regression -> MSE on targets standardised with train statistics (predictions are mapped back).
Inputs are standardised per hidden state and dimension with train statistics
(:func:`m3bert.core.numeric.standardisation`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from m3bert.core.errors import ConfigError, DataError
from m3bert.core.numeric import standardisation
from m3bert.core.progress import progress as progress_bar

MARBLE_LRS = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)
LAYER_CHOICES = ("each+weighted", "each", "weighted", "last")
STD_FLOOR = 1e-8  # relative std floor of the input / target standardisation (features of any scale)


@dataclass(frozen=True)
class ProbeConfig:
    """One probe family and its hyper-parameter grid."""

    hidden: tuple[int, ...] = (512,)  # hidden layer widths (ReLU); () = linear probe
    dropout: float = 0.2  # dropout after every hidden activation (training only)
    batch_size: int = 64  # minibatch size; 0 = scikit-learn's min(200, n_train)
    lrs: tuple[float, ...] = MARBLE_LRS  # Adam learning rates tried (one probe each)
    layers: str | tuple[int, ...] = "each+weighted"  # inputs tried: LAYER_CHOICES or hidden-state indices
    max_epochs: int = 100  # passes over the training set
    early_stop_patience: int | None = 20  # epochs without validation-loss improvement; None = never stop
    lr_plateau_patience: int | None = 6  # epochs without improvement before lr *= lr_plateau_factor
    lr_plateau_factor: float = 0.1  # ReduceLROnPlateau factor
    l2: float = 0.0  # scikit-learn-style L2 penalty alpha: 0.5 * l2 * ||W||^2 / batch
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates
    adam_eps: float = 1e-8  # Adam epsilon (torch / scikit-learn default)
    min_delta: float = 1e-4  # relative improvement of the validation loss that counts (torch's plateau rule)
    bf16: bool | None = False  # bfloat16 autocast for the matmuls; None = where the CPU does bf16 natively. Off by
    # default: measured on AVX512-BF16 (perf/probes.py) the casts of the (G, D, 512) weights cost more than the matmuls save

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers not in LAYER_CHOICES:
            raise ConfigError(f"probe layers={self.layers!r}, expected one of {LAYER_CHOICES} or a tuple of indices")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ConfigError(f"probe lrs={self.lrs!r}, expected positive learning rates")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"probe dropout={self.dropout}, expected [0, 1)")
        if self.max_epochs < 1 or self.batch_size < 0:
            raise ConfigError(f"probe max_epochs={self.max_epochs}, batch_size={self.batch_size}: expected >= 1 and >= 0")


def config_to_dict(config: ProbeConfig) -> dict[str, Any]:
    """``ProbeConfig`` as JSON values (tuples become lists), as results.json records it."""
    d = dataclasses.asdict(config)
    d["hidden"] = list(config.hidden)
    d["lrs"] = list(config.lrs)
    d["layers"] = config.layers if isinstance(config.layers, str) else list(config.layers)
    d["adam_betas"] = list(config.adam_betas)
    return d


# ---------------------------------------------------------------------------------------------
# pure functions


def mixed_layers(n_layers: int, mix_layers: Sequence[int] | None = None) -> list[int]:
    """The hidden states the weighted sum mixes: ``mix_layers`` checked and sorted, default all."""
    if mix_layers is None:
        return list(range(n_layers))
    out = sorted({int(i) for i in mix_layers})
    if any(not 0 <= i < n_layers for i in out):
        raise ConfigError(f"probe mix_layers {list(mix_layers)}: index out of range for {n_layers} hidden states")
    return out


def grid_configs(n_layers: int, config: ProbeConfig, *, mix_layers: Sequence[int] | None = None) -> list[tuple[int, float]]:
    """The grid as ``(layer, lr)`` pairs; layer ``-1`` = learned softmax-weighted sum of ``mix_layers`` (default all)."""
    spec = config.layers
    mix = mixed_layers(n_layers, mix_layers)
    if isinstance(spec, str):
        layers: list[int] = []
        if spec in ("each", "each+weighted"):
            layers = list(range(n_layers))
        if spec == "last":
            layers = [n_layers - 1]
        if spec in ("weighted", "each+weighted") and len(mix) > 1:
            layers.append(-1)
        elif spec == "weighted":  # one layer to mix (or none): the weighted sum is that layer
            layers = [mix[0] if mix else n_layers - 1]
    else:
        layers = [int(i) if int(i) >= 0 else n_layers + int(i) for i in spec]
        if any(not 0 <= i < n_layers for i in layers):
            raise ConfigError(f"probe layers {list(spec)}: index out of range for {n_layers} hidden states")
    return [(layer, lr) for layer in layers for lr in config.lrs]


def layer_label(layer: int) -> str:
    """How reports name a grid layer: its index, or "weighted" for the learned weighted sum."""
    return "weighted" if layer < 0 else str(layer)


def _config_seed(seed: int, layer: int, lr: float) -> int:
    """A probe's own seed, from the run seed and its grid coordinates (not its position)."""
    h = hashlib.sha1(f"{seed}|{layer}|{lr!r}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def probe_loss(out: torch.Tensor, y: torch.Tensor, *, label_type: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-probe mean loss ``(G,)`` of outputs ``out (G, B, C)`` against targets ``y``.

    ``y``: multiclass ``(B,)`` int64; multilabel / regression ``(B, C)`` float32.
    ``mask`` (multilabel): ``(B, C)``, 1 where the label is known.
    """
    G, B, C = out.shape
    if label_type == "multiclass":
        return F.cross_entropy(out.reshape(G * B, C), y.repeat(G), reduction="none").view(G, B).mean(1)
    if label_type == "multilabel":
        el = F.binary_cross_entropy_with_logits(out, y.expand(G, B, C), reduction="none")
        if mask is None:
            return el.mean((1, 2))
        return (el * mask).sum((1, 2)) / mask.sum().clamp_min(1.0)
    if label_type == "regression":
        return (out - y).pow(2).mean((1, 2))
    raise ConfigError(f"label_type={label_type!r}, expected multiclass, multilabel or regression")


def grid_forward(params: dict[str, Any], x: torch.Tensor, layer_index: torch.Tensor, *, dropout: float = 0.0,
                 generators: Sequence[torch.Generator] | None = None, bf16: bool = False,
                 mix_index: torch.Tensor | None = None) -> torch.Tensor:
    """Outputs ``(G, B, C)`` of the probe grid for features ``x (B, L, D)``.

    ``layer_index (G,)``: the hidden state each probe reads, -1 = its softmax-weighted sum of the
    hidden states ``mix_index (M,)`` (default all L; weights ``params["mix"] (G, M)``).
    Weighted-sum probes must come last (one block) so
    the fixed-layer block never back-propagates into its input. Dropout (training) draws each
    probe's mask from its own generator so a probe's stream does not depend on the grid.
    ``bf16``: matmuls in bfloat16 autocast (parameters and their updates stay float32), the CPU
    analogue of the 16-bit mixed precision MARBLE's trainer uses.
    """
    G = layer_index.shape[0]
    n_fixed = int((layer_index >= 0).sum())
    if bool((layer_index[:n_fixed] < 0).any()):
        raise ConfigError("grid_forward: weighted-sum probes (layer -1) must come after the fixed-layer probes")
    # one batched matmul for the whole grid: slicing the weights per block would make autograd
    # zero-fill and scatter a full-size gradient per block, which costs more than the matmul
    h = x.index_select(1, layer_index[:n_fixed]).transpose(0, 1)  # (n_fixed, B, D)
    if n_fixed < G:
        w = torch.softmax(params["mix"][n_fixed:], dim=1)  # (G_w, M)
        xm = x if mix_index is None else x.index_select(1, mix_index)  # (B, M, D)
        h = torch.cat([h, torch.einsum("gl,bld->gbd", w, xm)], 0)
    n_hidden = len(params["W"]) - 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for k, (W, b) in enumerate(zip(params["W"], params["b"])):
            h = torch.baddbmm(b, h, W)
            if k < n_hidden:
                h = torch.relu(h)
                if dropout > 0 and generators is not None:
                    keep = torch.stack([torch.rand(h.shape[1:], generator=gen) >= dropout for gen in generators])
                    h = h * keep / (1 - dropout)
    return h.float()


def init_params(configs: Sequence[tuple[int, float]], *, n_layers: int, n_in: int, n_out: int,
                hidden: Sequence[int], seed: int) -> dict[str, Any]:
    """Per-probe initialisation as ``torch.nn.Linear`` does (U(+-1/sqrt(fan_in))), each probe from its own seed.

    ``n_layers``: the number of hidden states the weighted sum mixes (the width of ``mix``)."""
    dims = [n_in, *hidden, n_out]
    G = len(configs)
    Ws = [torch.empty(G, a, b) for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.empty(G, 1, b) for b in dims[1:]]
    for g, (layer, lr) in enumerate(configs):
        gen = torch.Generator().manual_seed(_config_seed(seed, layer, lr))
        for W, b in zip(Ws, bs):
            bound = 1.0 / math.sqrt(W.shape[1])
            W[g].uniform_(-bound, bound, generator=gen)
            b[g].uniform_(-bound, bound, generator=gen)
    return {"W": Ws, "b": bs, "mix": torch.zeros(G, n_layers)}


def _flat(params: dict[str, Any]) -> list[torch.Tensor]:
    return [*params["W"], *params["b"], params["mix"]]


def _unflat(flat: list[torch.Tensor], n: int) -> dict[str, Any]:
    return {"W": flat[:n], "b": flat[n:2 * n], "mix": flat[2 * n]}


class _GridAdam:
    """``torch.optim.Adam`` (fused kernel) over per-probe *views* of the grid tensors.

    Each probe is one parameter group with its own learning rate, so plateau schedules are per
    probe; the views are detached leaves sharing storage with the grid tensors, so the optimizer
    updates the grid in place and no per-step copies are made.
    """

    def __init__(self, flat: list[torch.Tensor], lrs: Sequence[float], config: ProbeConfig,
                 state: list[dict[torch.Tensor, Any]] | None = None) -> None:
        self.views = [[p.detach()[g] for p in flat] for g in range(len(lrs))]
        groups = [{"params": vs, "lr": float(lr)} for vs, lr in zip(self.views, lrs)]
        fused = {"fused": True} if fused_adam_available() else {"foreach": True}
        self.opt = torch.optim.Adam(groups, betas=config.adam_betas, eps=config.adam_eps, **fused)
        if state is not None:  # carried over from before a compaction, per probe
            for vs, st in zip(self.views, state):
                for v, s in zip(vs, st):
                    if s:
                        self.opt.state[v] = s

    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        for g, vs in enumerate(self.views):
            for v, gr in zip(vs, grads):
                v.grad = None if gr is None else gr[g]
        self.opt.step()

    def probe_state(self, g: int) -> list[dict[str, Any]]:
        return [self.opt.state.get(v, {}) for v in self.views[g]]

    def lr(self, g: int) -> float:
        return float(self.opt.param_groups[g]["lr"])

    def scale_lr(self, g: int, factor: float) -> None:
        self.opt.param_groups[g]["lr"] *= factor


@functools.cache
def fused_adam_available() -> bool:
    """Whether torch has the fused CPU Adam kernel: one tiny Adam step, tried on first use only."""
    try:
        p = torch.zeros(2, requires_grad=True)
        p.grad = torch.ones(2)
        torch.optim.Adam([p], fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused CPU kernel
        return False


@functools.cache
def default_bf16() -> bool:
    """bf16 autocast only where the CPU has native bf16 matmul (AVX512-BF16 / AMX); else it is slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # pragma: no cover - private helper moved
        return False


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class GridFit:
    """A trained probe grid: the best-on-validation parameters of every probe and its history."""

    configs: list[tuple[int, float]]  # (layer, lr) per probe, weighted-sum probes (layer -1) last
    params: dict[str, Any]  # best parameters, grid axis first
    label_type: str
    x_mean: np.ndarray  # (L, D) input standardisation
    x_std: np.ndarray  # (L, D)
    y_mean: np.ndarray | None  # (C,) regression target standardisation
    y_std: np.ndarray | None
    mix_layers: list[int]  # hidden states the weighted-sum probes mix
    best_epoch: list[int]  # per probe, 1-based; the last epoch without validation
    n_epochs: list[int]  # epochs each probe trained
    valid_loss: list[float | None]  # best validation loss per probe
    final_lr: list[float]  # learning rate after plateau reductions
    bf16: bool = False  # matmuls ran in bfloat16 autocast

    def predict(self, x: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
        """Outputs ``(G, n, C)``: class probabilities, tag probabilities or target values."""
        xs = _as_tensor((x - self.x_mean) / self.x_std)
        li = torch.tensor([c[0] for c in self.configs])
        mi = _mix_index(self.mix_layers, x.shape[1])
        outs = []
        with torch.no_grad():
            for i in range(0, xs.shape[0], chunk):
                outs.append(grid_forward(self.params, xs[i:i + chunk], li, bf16=self.bf16, mix_index=mi))
        out = torch.cat(outs, dim=1) if outs else torch.zeros(len(self.configs), 0, self.params["b"][-1].shape[-1])
        if self.label_type == "multiclass":
            return torch.softmax(out, -1).numpy()
        if self.label_type == "multilabel":
            return torch.sigmoid(out).numpy()
        return out.numpy() * self.y_std + self.y_mean

    def layer_weights(self, g: int) -> list[float] | None:
        """Probe ``g``'s softmax weights, one per hidden state of ``mix_layers``; None for a fixed-layer probe."""
        if self.configs[g][0] >= 0:
            return None
        return torch.softmax(self.params["mix"][g], 0).tolist()


def _mix_index(mix_layers: Sequence[int], n_layers: int) -> torch.Tensor | None:
    """The index tensor for :func:`grid_forward`, None when every hidden state is mixed."""
    return None if list(mix_layers) == list(range(n_layers)) else torch.tensor(list(mix_layers), dtype=torch.long)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _check_xy(where: str, x: np.ndarray, y: np.ndarray, label_type: str) -> None:
    if x.ndim != 3:
        raise DataError(f"{where}: features shape {x.shape}, expected (n_clips, n_layers, dim)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x.shape[0]} feature rows but {y.shape[0]} targets")
    if x.shape[0] == 0:
        raise DataError(f"{where}: no examples")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: features contain NaN/inf")
    if label_type != "multiclass" and y.ndim != 2:
        raise DataError(f"{where}: {label_type} targets shape {y.shape}, expected (n, n_outputs)")


def fit_grid(x_train: np.ndarray, y_train: np.ndarray, *, label_type: str, n_outputs: int, config: ProbeConfig,
             seed: int, x_valid: np.ndarray | None = None, y_valid: np.ndarray | None = None,
             mask_train: np.ndarray | None = None, mask_valid: np.ndarray | None = None,
             configs: Sequence[tuple[int, float]] | None = None, progress: bool = False,
             mix_layers: Sequence[int] | None = None) -> GridFit:
    """Train every probe of the grid at once.

    ``x_* (n, L, D)`` features; ``y_*``: multiclass ``(n,)`` int, otherwise ``(n, n_outputs)``;
    ``mask_* (n, n_outputs)`` known-label masks (multilabel). ``mix_layers``: the hidden states
    the weighted-sum probes mix (default all; the runner leaves out the input embedding).
    Without a validation set every probe trains ``max_epochs`` and keeps its last parameters.
    """
    _check_xy("probe train set", x_train, y_train, label_type)
    n_train, L, D = x_train.shape
    has_valid = x_valid is not None and len(x_valid) > 0
    if has_valid:
        _check_xy("probe validation set", x_valid, y_valid, label_type)
        if x_valid.shape[1:] != (L, D):
            raise DataError(f"probe validation features {x_valid.shape[1:]} differ from train {(L, D)}")
    mix = mixed_layers(L, mix_layers)
    configs = list(configs) if configs is not None else grid_configs(L, config, mix_layers=mix)
    G = len(configs)
    if any(c[0] < 0 for c in configs) and not mix:
        raise ConfigError("probe grid: a weighted-sum probe needs at least one hidden state to mix (mix_layers is empty)")
    mix_index = _mix_index(mix, L)

    x_mean, x_std = standardisation(x_train, rel_min_std=STD_FLOOR)
    xt = _as_tensor((x_train - x_mean) / x_std)
    y_mean = y_std = None
    if label_type == "multiclass":
        yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
        if int(yt.min()) < 0 or int(yt.max()) >= n_outputs:
            raise DataError(f"probe: class index out of range [0, {n_outputs}) in train targets")
    else:
        ya = np.asarray(y_train, dtype=np.float32)
        if label_type == "regression":
            y_mean, y_std = standardisation(ya, rel_min_std=STD_FLOOR)
            ya = (ya - y_mean) / y_std
        yt = torch.from_numpy(ya)
    mt = torch.from_numpy(np.asarray(mask_train, dtype=np.float32)) if mask_train is not None else None
    if has_valid:
        xv = _as_tensor((x_valid - x_mean) / x_std)
        if label_type == "multiclass":
            yv = torch.from_numpy(np.asarray(y_valid, dtype=np.int64))
        else:
            yva = np.asarray(y_valid, dtype=np.float32)
            yv = torch.from_numpy((yva - y_mean) / y_std if label_type == "regression" else yva)
        mv = torch.from_numpy(np.asarray(mask_valid, dtype=np.float32)) if mask_valid is not None else None

    # weighted-sum probes last: grid_forward runs them as their own block
    order = sorted(range(G), key=lambda g: configs[g][0] < 0)
    configs = [configs[g] for g in order]
    bf16 = default_bf16() if config.bf16 is None else bool(config.bf16)
    params = init_params(configs, n_layers=len(mix), n_in=D, n_out=n_outputs, hidden=config.hidden, seed=seed)
    n_w = len(params["W"])
    best = {"W": [w.clone() for w in params["W"]], "b": [b.clone() for b in params["b"]], "mix": params["mix"].clone()}
    flat = [p.requires_grad_() for p in _flat(params)]
    opt = _GridAdam(flat, [c[1] for c in configs], config)
    layer_index = torch.tensor([c[0] for c in configs])
    active = torch.arange(G)  # global probe index of each row of the live tensors
    dropout_gens = [torch.Generator().manual_seed(_config_seed(seed, *c) ^ 0x5EED) for c in configs]
    order_gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    batch = config.batch_size or min(200, n_train)

    best_loss = torch.full((G,), math.inf)
    since_best = torch.zeros(G, dtype=torch.long)
    since_plateau = torch.zeros(G, dtype=torch.long)
    plateau_best = torch.full((G,), math.inf)
    best_epoch = [0] * G
    n_epochs = [0] * G
    final_lr = [c[1] for c in configs]

    bar = None
    if progress:
        bar = progress_bar(total=config.max_epochs, desc=f"probe grid ({G})", leave=False, unit="epoch")
    for epoch in range(1, config.max_epochs + 1):
        perm = torch.randperm(n_train, generator=order_gen)
        live_gens = [dropout_gens[int(i)] for i in active]
        li = layer_index[active]
        for start in range(0, n_train, batch):
            idx = perm[start:start + batch]
            cur = _unflat(flat, n_w)
            out = grid_forward(cur, xt[idx], li, dropout=config.dropout, generators=live_gens, bf16=bf16,
                               mix_index=mix_index)
            loss = probe_loss(out, yt[idx], label_type=label_type, mask=mt[idx] if mt is not None else None)
            total = loss.sum()
            if config.l2 > 0:
                total = total + 0.5 * config.l2 * sum(W.pow(2).sum() for W in cur["W"]) / len(idx)
            opt.step(torch.autograd.grad(total, flat, allow_unused=True))
        for i in active.tolist():
            n_epochs[i] = epoch
        if bar is not None:
            bar.update(1)
        if not has_valid:
            continue

        with torch.no_grad():
            cur = _unflat([p.detach() for p in flat], n_w)
            vloss = probe_loss(grid_forward(cur, xv, li, bf16=bf16, mix_index=mix_index), yv, label_type=label_type, mask=mv)
            improved = (vloss < best_loss[active] * (1 - config.min_delta)) | ~torch.isfinite(best_loss[active])
            rows = torch.nonzero(improved).flatten()
            if rows.numel():
                gl = active[rows]
                for bw, w in zip(best["W"], cur["W"]):
                    bw[gl] = w[rows]
                for bb, b in zip(best["b"], cur["b"]):
                    bb[gl] = b[rows]
                best["mix"][gl] = cur["mix"][rows]
                best_loss[gl] = vloss[rows]
                for g in gl.tolist():
                    best_epoch[g] = epoch
            since_best[active] = torch.where(improved, 0, since_best[active] + 1)
            if config.lr_plateau_patience is not None:
                # torch's ReduceLROnPlateau rule: its own best, counter reset after each reduction
                p_imp = (vloss < plateau_best[active] * (1 - config.min_delta)) | ~torch.isfinite(plateau_best[active])
                plateau_best[active] = torch.where(p_imp, vloss, plateau_best[active])
                since_plateau[active] = torch.where(p_imp, 0, since_plateau[active] + 1)
                for row in torch.nonzero(since_plateau[active] > config.lr_plateau_patience).flatten().tolist():
                    g = int(active[row])
                    opt.scale_lr(row, config.lr_plateau_factor)
                    final_lr[g] = opt.lr(row)
                    since_plateau[g] = 0
            if config.early_stop_patience is not None:
                keep = since_best[active] < config.early_stop_patience
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        break
                    rows = torch.nonzero(keep).flatten()
                    state = [opt.probe_state(int(r)) for r in rows]
                    lrs = [opt.lr(int(r)) for r in rows]
                    active = active[rows]
                    flat = [p.detach()[rows].clone().requires_grad_() for p in flat]
                    opt = _GridAdam(flat, lrs, config, state=state)
    if bar is not None:
        bar.close()

    if has_valid:
        final = best
    else:
        final = _unflat([p.detach() for p in flat], n_w)
        best_epoch = list(n_epochs)
    return GridFit(configs=configs, params=final, bf16=bf16, label_type=label_type, x_mean=x_mean, x_std=x_std,
                   y_mean=y_mean, y_std=y_std, mix_layers=mix, best_epoch=best_epoch, n_epochs=n_epochs,
                   valid_loss=[float(x) if math.isfinite(x) else None for x in best_loss.tolist()] if has_valid else [None] * G,
                   final_lr=final_lr)
