"""Pre-training over a feature store (M2BERT masked reconstruction, MERT masked prediction, Wu et
al.'s workers, any registered objective) of any registered architecture, with exact resume and DDP.

    cfg = load_pretrain_config("configs/m2bert-small.yaml", overrides=["optim.lr=1e-4"])
    summary = pretrain(cfg, store="STORE", out="RUN")
    summary = pretrain(None, store=None, out="RUN", resume=True)   # continue exactly

The loop is in :func:`pretrain`, top to bottom. What makes resume exact: the learning rate is
a pure function of the step (:mod:`m3bert.train.schedule`), every batch, crop and mask is a
pure function of ``(seed, step, sample position)`` (:mod:`m3bert.pretrain.data`), dropout is
re-seeded from ``(seed, step, rank)`` at every step, and the checkpoint holds the weights,
the head, the Adam moments and the step. Run ``N`` steps, or ``N/2`` + kill + resume: same
weights (tests/test_pretrain.py checks it).

Data parallel: launched by ``torchrun``, every rank builds the same model (same seed), takes
its own slice of each global batch (rank-major), and DDP averages gradients; rank 0 alone
writes the run directory. The effective batch ``data.effective_batch`` is fixed by the
config and split as ``batch_size x accumulation x world_size``, so the samples of a step do
not depend on how many processes run it. Buffers (batch-norm statistics) are rank 0's everywhere.

GPU (issue 18): bf16 autocast on CUDA, batches built ahead by loader processes (``train.workers``)
in page-locked memory and copied non-blocking, fused Adam, optional ``torch.compile``
(``train.compile``); the log carries the model's TFLOP/s and, on a known GPU, its MFU.

Longer than 500 lines because the loop is one function read top to bottom, with its config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from m3bert.core.config import Overrides, apply_overrides, bounded, from_dict, load_config, load_yaml, parse_override, to_dict
from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.core.io import atomic_write_json, atomic_write_text, config_hash, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.features.store import FeatureStore
from m3bert.models.base import DEFAULT_ARCHITECTURE, get_architecture
from m3bert.models.encoder import EncoderConfig, nominal_peak_flops
from m3bert.models.hub import weights_digest
from m3bert.pretrain.data import TrainBatches, batch_loader, split_by_group, store_groups, validation_batches
from m3bert.pretrain.masking import MaskingConfig
from m3bert.pretrain.objectives import Objective, create_objective, objective_config
from m3bert.pretrain.targets import open_targets
from m3bert.train.checkpoint import load_checkpoint, recover_checkpoint, save_checkpoint
from m3bert.train.optim import OptimConfig, check_finite_step, make_adam
from m3bert.train.run import MetricsLog
from m3bert.train.schedule import ScheduleConfig, lr_at, set_lr

PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which chunks, how long, how many at a time."""

    max_frames: int = bounded(1294, ge=1)  # random crop of each chunk (frames); 1294 = 30 s, shorter is cheaper on CPU
    batch_size: int = bounded(8, ge=1)  # micro-batch per process (chunks per forward/backward)
    val_fraction: float = bounded(0.05, ge=0, lt=1)  # fraction of songs (source files) held out for validation
    val_max_chunks: int = bounded(256, ge=0)  # cap on validation chunks, chosen by seed (0 = all held-out chunks)
    val_batch_size: int = bounded(0, ge=0)  # validation batch size (0 = batch_size)
    effective_batch: int = bounded(128, ge=1)  # chunks per optimizer step = batch_size x accumulation x processes (paper: 128)


@dataclass
class TrainConfig:
    """Length of the run, numerics, hardware and bookkeeping."""

    steps: int = bounded(200_000, ge=1)  # optimizer steps T (paper: 200k Small, 500k Large)
    precision: str = "fp32"  # fp32 (reference) | bf16 (autocast; ~2x faster on AVX512-BF16 CPUs and GPUs)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int = bounded(0, ge=0)  # torch CPU threads per process (0 = torch's default)
    workers: int = bounded(0, ge=0)  # loader processes building batches ahead (0 = in the loop); same batches either way
    compile: bool = False  # torch.compile the encoder (dynamic shapes); pays on GPUs after warm-up, ~0-5 % on CPU
    pin_memory: str = "auto"  # auto (on CUDA) | on | off: batches in page-locked memory, copied non-blocking
    log_every: int = bounded(50, ge=1)  # steps between metrics lines
    eval_every: int = bounded(1000, ge=1)  # steps between validations (and 'best' checkpoint updates)
    save_every: int = bounded(500, ge=1)  # steps between 'last' checkpoints
    keep_every: int = bounded(0, ge=0)  # steps between kept checkpoints checkpoints/step-N (0 = none)


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs besides the feature store."""

    seed: int = bounded(0, ge=0)  # the one seed every random choice derives from
    architecture: str = DEFAULT_ARCHITECTURE  # registered encoder family (models.base): m2bert | pase | pase+ | ...
    model: Any = field(default_factory=EncoderConfig)  # the architecture's config (n_input comes from the store)
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # input corruption (paper's best: cfm+ccm)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "reconstruction"})  # registered objective + its settings
    data: DataConfig = field(default_factory=DataConfig)  # batching and validation split
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning-rate schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # run length, precision, logging, checkpoints

    def __post_init__(self) -> None:
        config_cls = get_architecture(self.architecture).config_cls
        self.model = config_cls.from_dict(self.model) if isinstance(self.model, dict) else self.model
        if not isinstance(self.model, config_cls):
            raise ConfigError(f"model: a {type(self.model).__name__}, expected the settings of architecture {self.architecture!r}")
        self.objective = dataclasses.asdict(objective_config(self.objective))
        if self.train.precision not in PRECISIONS:
            raise ConfigError(f"train.precision={self.train.precision!r}; expected one of {PRECISIONS}")
        if self.train.device not in ("auto", "cpu", "cuda") and not str(self.train.device).startswith("cuda:"):
            raise ConfigError(f"train.device={self.train.device!r}; expected auto, cpu or cuda")
        if self.train.pin_memory not in ("auto", "on", "off"):
            raise ConfigError(f"train.pin_memory={self.train.pin_memory!r}; expected auto, on or off")
        for name in ("steps", "log_every", "eval_every", "save_every"):
            if int(getattr(self.train, name)) < 1:
                raise ConfigError(f"train.{name}={getattr(self.train, name)!r}; expected a positive integer")
        if self.data.max_frames < 1 or self.data.max_frames > getattr(self.model, "max_frames", math.inf):
            raise ConfigError(f"data.max_frames={self.data.max_frames}; expected 1..model.max_frames={self.model.max_frames}")
        if self.data.batch_size < 1 or self.data.effective_batch < 1:
            raise ConfigError(f"data.batch_size={self.data.batch_size}, data.effective_batch="
                              f"{self.data.effective_batch}; expected positive integers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per step so that batch_size x accumulation x world_size = effective_batch."""
        per = self.data.batch_size * world_size
        if self.data.effective_batch % per:
            raise ConfigError(f"data.effective_batch={self.data.effective_batch} is not a multiple of data.batch_size="
                              f"{self.data.batch_size} x {world_size} process(es); change one of them")
        return self.data.effective_batch // per


def load_pretrain_config(path: str | Path | None = None, *, overrides: Overrides = None) -> PretrainConfig:
    """YAML preset (or defaults) + dotted overrides -> ``PretrainConfig`` (``m3bert.core.config.load_config``).

    An ``objective.name=NAME`` override switches the objective first (to NAME's defaults), so the
    other ``objective.*`` overrides may name NAME's own settings: ``--set objective.name=mert
    --set objective.targets=TARGETS`` on top of a reconstruction preset; ``architecture=NAME``
    likewise switches the ``model`` settings to that architecture's defaults.
    """
    name, rest = _switch_override(overrides, "objective.name")
    arch, rest = _switch_override(rest, "architecture")
    if name is None and arch is None:
        return load_config(PretrainConfig, path, overrides)
    where = str(path) if path is not None else PretrainConfig.__name__
    data = to_dict(from_dict(PretrainConfig, load_yaml(path) if path is not None else {}, where=where))
    if name is not None and data["objective"].get("name") != name:
        data["objective"] = dataclasses.asdict(objective_config({"name": name}))
    if arch is not None and data["architecture"] != arch:
        data["architecture"], data["model"] = arch, to_dict(get_architecture(arch).config_cls.from_dict({}))
    return from_dict(PretrainConfig, apply_overrides(data, rest), where=where)


def _switch_override(overrides: Overrides, key: str) -> tuple[Any, Overrides]:
    """``(value of the last ``key`` override or None, the other overrides)``."""
    if overrides is None:
        return None, overrides
    if isinstance(overrides, Mapping):
        items = [(str(k).strip(), v) for k, v in overrides.items()]
        names = [v for k, v in items if k == key]
        return (names[-1] if names else None), {k: v for k, v in items if k != key}
    names, rest = [], []
    for text in overrides:
        parts, value = parse_override(text)
        if parts == key.split("."):
            names.append(value)
        else:
            rest.append(text)
    return (names[-1] if names else None), rest


# ---------------------------------------------------------------------------------------------
# Pieces the loop uses
# ---------------------------------------------------------------------------------------------


class PretrainModule(nn.Module):
    """Encoder + objective as one module, so DDP sees (and synchronises) every parameter."""

    def __init__(self, encoder: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.encoder, self.objective = encoder, objective

    def forward(self, batch: Any):
        return self.objective(self.encoder, batch)


@dataclass
class Dist:
    """Where this process sits in a (possibly 1-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True if pretrain() initialised the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def setup_distributed(device_kind: str) -> Dist:
    """Join the torchrun job described by the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    owns = False
    if not dist.is_initialized():
        # A bounded collective timeout turns a lost peer into an error instead of a hang.
        timeout = datetime.timedelta(seconds=float(os.environ.get("M3BERT_DIST_TIMEOUT", "1800")))
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo", timeout=timeout)
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def resolve_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        device = torch.device("cuda", dist.local_rank) if name == "cuda" else torch.device(name)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch generator (dropout) for one step on one rank."""
    return int(np.random.SeedSequence([seed, 0xD207, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def open_store(store: Any) -> Any:
    return FeatureStore.open(store) if isinstance(store, (str, Path, list, tuple)) else store


def store_location(store: Any) -> Any:
    for attr in ("paths", "path", "root"):
        value = getattr(store, attr, None)
        if value is not None:
            return [str(p) for p in value] if isinstance(value, (list, tuple)) else str(value)
    return None


def validate(module: PretrainModule, store: Any, indices: np.ndarray, cfg: PretrainConfig, *, dist: Dist,
             autocast: Any, targets: Sequence[Any] = ()) -> dict[str, float]:
    """The objective's held-out numbers (fixed crops and masks: losses per masking policy, masked
    prediction accuracies, ...), summed over ranks."""
    module.eval()
    sync_buffers(module, dist)
    sums: dict[str, list[float]] = {}
    batches = validation_batches(store, indices, seed=cfg.seed, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                                 max_frames=cfg.data.max_frames, rank=dist.rank, world_size=dist.world_size,
                                 targets=targets)
    with torch.no_grad(), autocast():
        for batch in batches:
            for name, (total, count) in module.objective.evaluate(module.encoder, batch).items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += total
                acc[1] += count
    if dist.world_size > 1:
        # every rank evaluates the same policies; ranks without chunks contribute zeros
        names = sorted(set(sums) | set(_gather_names(sums)))
        t = torch.tensor([sums.get(n, [0.0, 0.0])[i] for n in names for i in (0, 1)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        sums = {n: [float(t[2 * j]), float(t[2 * j + 1])] for j, n in enumerate(names)}
    module.train()
    return {f"val/{n}": total / max(count, 1.0) for n, (total, count) in sorted(sums.items())}


def _gather_names(sums: dict[str, Any]) -> list[str]:
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, sorted(sums))
    return [n for names in out for n in names]


def sync_buffers(module: nn.Module, dist: Dist) -> None:
    """Rank 0's buffers on every rank. DDP broadcasts them before each forward, so only the last
    forward's own update (batch-norm running statistics) differs: synced to validate and to end."""
    for b in module.buffers() if dist.world_size > 1 else ():
        torch.distributed.broadcast(b, src=0)


def rank_digests(module: nn.Module, dist: Dist) -> list[str]:
    """Every rank's weight digest (one entry per rank): DDP must leave them identical."""
    sync_buffers(module, dist)
    mine = weights_digest(module)
    if dist.world_size == 1:
        return [mine]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def pretrain(cfg: PretrainConfig | None, *, store: Any, out: str | Path, resume: bool = False, progress: bool = True,
             stop_after: int | None = None, resume_overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Pre-train (or, with ``resume=True``, continue) the run in ``out``; returns a summary.

    ``store`` is a ``FeatureStore``, a path to one (or ``None`` on resume: the path recorded in
    ``run.json``). ``stop_after`` ends this call after that many steps (an interruption for
    tests and time-sliced jobs); rerun with ``resume=True`` to continue.
    """
    out = Path(out)
    run_json = out / "run.json"
    last_dir = out / "checkpoints" / "last"
    if resume:
        if not run_json.is_file():
            raise CheckpointError(f"{out}: no run.json; nothing to resume (start a run with --out {out})")
        record = read_json(run_json)
        if cfg is not None:
            raise ConfigError("resume takes its config from RUN/config.yaml; pass cfg=None")
        allowed = [o for o in (resume_overrides or []) if o.startswith("train.") and not o.startswith("train.steps")]
        if len(allowed) != len(resume_overrides or []):
            raise ConfigError(f"on resume only train.* settings other than train.steps may change, got "
                              f"{list(resume_overrides or [])}; the rest would break exact continuation")
        cfg = load_pretrain_config(out / "config.yaml", overrides=allowed)
        store = store if store is not None else record.get("store")
        if store is None:
            raise ConfigError(f"{run_json}: no store path recorded; pass the store explicitly")
    elif cfg is None:
        raise ConfigError("pretrain needs a config (or resume=True)")
    elif recover_checkpoint(last_dir) is not None or run_json.exists():
        raise CheckpointError(f"{out} already holds a run; continue it with `m3bert pretrain --resume {out}` "
                              "or choose another --out")

    # -- hardware and data ---------------------------------------------------------------------
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    kind = "cuda" if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = setup_distributed(kind)
    try:
        # every rank has checked the run directory above; none may see rank 0's first writes
        # (gloo may connect lazily, so a slow rank could otherwise find run.json and refuse)
        dist.barrier()
        device = resolve_device(cfg.train.device, dist)
        store = open_store(store)
        feature_set = store.feature_set
        cfg.model = dataclasses.replace(cfg.model, n_input=int(feature_set.n_channels))
        n_accum = cfg.accumulation(dist.world_size)
        train_idx, val_idx = split_by_group(store_groups(store), val_fraction=cfg.data.val_fraction, seed=cfg.seed)
        if cfg.data.val_max_chunks and len(val_idx) > cfg.data.val_max_chunks:
            pick = np.random.default_rng([cfg.seed, 0x7A12]).choice(len(val_idx), cfg.data.val_max_chunks, replace=False)
            val_idx = np.sort(val_idx[pick])
        resolved = cfg.to_dict()

        # -- model, objective, targets, optimizer --------------------------------------------------
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            encoder = get_architecture(cfg.architecture).model_cls(cfg.model, feature_config=feature_set.to_dict())
            objective = create_objective(cfg.objective, encoder_cfg=cfg.model, spec=feature_set.spec, masking=cfg.masking,
                                         encoder=encoder)
        # per-frame targets (mert: k-means ids; workers: features), as the objective reads them
        targets = objective.data_targets(open_targets(cfg.objective.get("targets") or [], store=store))
        data = TrainBatches(store, train_idx, seed=cfg.seed, micro_batch=cfg.data.batch_size, n_accum=n_accum,
                            world_size=dist.world_size, max_frames=cfg.data.max_frames, targets=targets)
        module = PretrainModule(encoder, objective).to(device)
        optimizer = make_adam(module.parameters(), cfg.optim)  # the fused kernel on CUDA (one pass over the weights)
        if cfg.train.compile:
            encoder.compile(dynamic=True)  # in place: parameter names (checkpoints) unchanged

        # -- run directory / resume ----------------------------------------------------------------
        start, best = 0, {"value": None, "step": None}
        if resume:
            if record.get("feature_set") != feature_set.to_dict():
                raise CheckpointError(f"{run_json}: the run was trained on feature set "
                                      f"{(record.get('feature_set') or {}).get('name')!r} with other settings or "
                                      f"statistics than the store's {feature_set.to_dict().get('name')!r}; refusing to mix them")
            if [t.describe() for t in targets] != (record.get("targets") or []):
                raise CheckpointError(f"{run_json}: the run was trained on other targets "
                                      f"({[t.get('codebook_sha1') for t in record.get('targets') or []]}) than "
                                      f"{[t.record['codebook_sha1'] for t in targets]}; refusing to mix them")
            if recover_checkpoint(last_dir) is None:
                raise CheckpointError(f"{out}: no checkpoints/last to resume from")
            state = load_checkpoint(last_dir, model=encoder, modules={"head": objective}, optimizer=optimizer,
                                    map_location=device)
            start, best = int(state["step"]), dict(state.get("best") or best)
        elif dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
            atomic_write_json(run_json, {"kind": "pretrain", "config": resolved, "seed": cfg.seed,
                                         "versions": versions(), "feature_set": feature_set.to_dict(),
                                         "store": store_location(store), "world_size": dist.world_size,
                                         "targets": [t.describe() for t in targets],
                                         "n_parameters": {"encoder": encoder.num_parameters(),
                                                          "objective": sum(p.numel() for p in objective.parameters())},
                                         "n_chunks": {"train": len(train_idx), "val": len(val_idx)}})
        dist.barrier()
        log = MetricsLog(out, enabled=dist.is_main, tensorboard=True, purge_step=start if resume else None)
        if resume:
            log.truncate_after_step(start)  # lines after the checkpoint will be written again
        if dist.world_size > 1:
            ddp = nn.parallel.DistributedDataParallel(module)  # device_ids=None: the module sits on one device
        else:
            ddp = module
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.train.precision == "bf16" \
            else contextlib.nullcontext
        model_extra = {"trainer": {"kind": "pretrain", "objective": cfg.objective["name"],
                                   "config_hash": config_hash(resolved)}}

        def save(name: str, step: int) -> None:
            if dist.is_main:
                save_checkpoint(out / "checkpoints" / name, model=encoder, modules={"head": objective},
                                optimizer=optimizer, model_extra={**model_extra, "step": step},
                                state={"step": step, "best": best, "world_size": dist.world_size,
                                       "config_hash": config_hash(resolved)})

        # -- train ---------------------------------------------------------------------------------
        total = cfg.train.steps
        end = total if stop_after is None else min(total, start + int(stop_after))
        bar = None
        if progress and dist.is_main:
            bar = progress_bar(total=total, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)
        module.train()
        t0, frames_done, last_val, rate = time.perf_counter(), 0, {}, 0.0
        window: list[dict[str, float]] = []
        pin = cfg.train.pin_memory == "on" or (cfg.train.pin_memory == "auto" and device.type == "cuda")
        batches = batch_loader(data, start=start, end=end, rank=dist.rank, workers=cfg.train.workers, pin_memory=pin)
        # model FLOPs per step (forward + backward ~ 3x forward) for the logged throughput / MFU
        flops_per_frame = getattr(encoder, "flops_per_frame", None)
        train_flops = 3.0 * flops_per_frame(cfg.data.max_frames) if callable(flops_per_frame) else None
        peak = nominal_peak_flops(device)
        for step in range(start, end):
            lr = lr_at(step, peak=cfg.optim.lr, total_steps=total, cfg=cfg.schedule)
            set_lr(optimizer, lr)
            torch.manual_seed(step_seed(cfg.seed, step, dist.rank))
            logs: dict[str, float] = {}
            for micro in range(n_accum):
                batch = next(batches)  # = data.micro_batch_at(step, micro, dist.rank), built ahead by the loader
                sync = micro == n_accum - 1 or dist.world_size == 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast():
                    result = ddp(batch)
                (result.loss / n_accum).backward()
                for k, v in result.logs.items():
                    logs[k] = logs.get(k, 0.0) + v / n_accum
                frames_done += batch.n_real_frames * dist.world_size
            params = [p for p in module.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf)
            check_finite_step(step=step + 1, loss=logs.get("loss", 0.0), grad_norm=float(grad_norm), lr=lr)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window.append({**logs, "grad_norm": float(grad_norm)})
            rate = frames_done / max(time.perf_counter() - t0, 1e-9)

            if done % cfg.train.log_every == 0 or done == end:
                avg = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                if dist.world_size > 1:
                    t = torch.tensor([avg[k] for k in sorted(avg)], dtype=torch.float64)
                    torch.distributed.all_reduce(t)
                    avg = {k: float(v) / dist.world_size for k, v in zip(sorted(avg), t)}
                window = []
                perf = {}
                if train_flops is not None:
                    perf["model_tflops"] = rate * train_flops / 1e12 / dist.world_size  # per process
                    if peak:
                        perf["mfu"] = perf["model_tflops"] * 1e12 / peak
                log.append({"step": done, "lr": lr, **{f"train/{k}": v for k, v in avg.items()},
                           "frames_per_s": rate, **perf, "epoch": done * data.global_batch / len(train_idx),
                           "time": time.time()})
            if (done % cfg.train.eval_every == 0 or done == total) and len(val_idx):
                last_val = validate(module, store, val_idx, cfg, dist=dist, autocast=autocast, targets=targets)
                key = f"val/{module.objective.selection_key()}"
                log.append({"step": done, **last_val})
                if best["value"] is None or last_val[key] < best["value"]:
                    best = {"value": last_val[key], "step": done, "metric": key}
                    save("best", done)
            if done % cfg.train.save_every == 0 or done == end:
                save("last", done)
            if cfg.train.keep_every and done % cfg.train.keep_every == 0:
                save(f"step-{done:08d}", done)
            if done % cfg.train.save_every == 0 or done == end:
                dist.barrier()  # nobody runs ahead of (or exits before) rank 0's checkpoint
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}", fps=f"{rate:,.0f}",
                                **({"mfu": f"{rate * train_flops / dist.world_size / peak:.1%}"} if peak and train_flops
                                   else {}))
        if bar is not None:
            bar.close()
        log.close()
        if dist.is_main:
            objective.on_run_end(out)  # e.g. the workers' per-loss figure
        digests = rank_digests(module, dist)
        if len(set(digests)) != 1:
            raise CheckpointError(f"data-parallel ranks ended with different weights (digests {digests}); "
                                  "the DDP job is out of sync")
        return {"run": str(out), "start_step": start, "end_step": end, "total_steps": total,
                "finished": end >= total, "best": best, "val": last_val, "frames_per_s": rate,
                "world_size": dist.world_size, "n_accum": n_accum, "weights_sha1": digests}
    finally:
        if dist.owns_group:
            # leave together: a rank that tears down while its peer is still in a collective or
            # in its own teardown can leave that peer waiting forever (seen with gloo on CPU)
            with contextlib.suppress(Exception):
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
