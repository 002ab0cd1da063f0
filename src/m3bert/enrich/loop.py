"""The enrich training loop: evaluation, checkpoints, the run directory, :func:`train_enrich`, the summary.

Reading order: evaluation (:func:`evaluate`, in :mod:`m3bert.enrich.scores`) -> checkpoints (:class:`TrainerState`) -> the run
directory -> the loop (:func:`train_enrich`) -> the summary. The model itself (encoder +
enrichment layer + heads, the optimiser's param groups) is built by :mod:`m3bert.enrich.model`.

* A batch mixes datasets; a task's loss is computed over the samples that have its label and a
  head never sees the others (see :mod:`m3bert.enrich.heads`). The per-task losses are combined
  by a loss weighting (:mod:`m3bert.train.weighting`): ``equal``, ``reweight`` (Wu et al. 2021:
  the reciprocal of each task's mean validation loss over the first, equal-weighted epochs, then
  retrain) or ``uncertainty`` (Kendall et al. 2018, which the M3BERT discussion proposes).
* Scenarios (Wu et al.): ``frozen`` (the paper's: only enrichment + heads train; the encoder's
  hidden states are cached once), ``finetune`` (the encoder trains too, at ``encoder_lr_scale`` x
  the lr), ``scratch`` (random encoder of the same architecture, trained at the full lr).

Run directory (docs/ARCHITECTURE.md): ``run.json`` (kind ``"enrich"``), ``metrics.jsonl``,
``summary.json``, ``checkpoints/{last,best}/`` (each a model directory + heads + trainer state),
``cache/``. Resume is exact: the sampling order of an epoch is a pure function of (seed, epoch),
and the torch RNG, optimiser, loss-weighting state and partial-epoch accumulators are checkpointed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from m3bert.core.config import from_dict
from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.core.io import atomic_write_json, read_json, versions
from m3bert.core.progress import progress as progress_bar
from m3bert.enrich.config import EnrichConfig, upgrade_config_dict
from m3bert.enrich.heads import (
    HEADS_CONFIG,
    HeadsBundle,
    MultiTaskHeads,
    TaskInfo,
    heads_description,
    load_heads,
    task_weighting,
)
from m3bert.enrich.model import batch_losses, build_modules, make_optimizer, resolve_encoder, set_train_mode
from m3bert.enrich.multisource import prepare_multisource_data, strategy_record
from m3bert.enrich.multisource import steps_per_epoch as plan_steps
from m3bert.enrich.samples import PreparedData, collate, prepare_data
from m3bert.enrich.sampling import epoch_batches, epoch_draws, label_shares, parse_sampling, sampling_probs
from m3bert.enrich.scores import aggregate_score, evaluate, finite_or_none, task_scores  # noqa: F401  (re-exported)
from m3bert.models.base import ModelBase, load_model_dir
from m3bert.train import checkpoint as ckpt
from m3bert.train.optim import check_finite_step
from m3bert.train.run import RUN_FILE, MetricsLog, init_run_dir
from m3bert.train.schedule import lr_at
from m3bert.train.weighting import LossWeighting

RUN_KIND = "enrich"
LEGACY_RUN_KIND = "multitask"  # the stage's earlier name; such runs are upgraded and resumed
RUN_COMPARE = ("config", "model", "task_specs", "grid")  # what must match to continue an existing run


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where the loop is; saved in every checkpoint's state.json (optimiser + RNG beside it)."""

    phase: str = "train"  # "calibrate" (reweight's equal-weighted epochs) or "train"
    epoch: int = 0  # epochs completed in this phase
    step_in_epoch: int = 0  # steps done in the current (unfinished) epoch
    global_step: int = 0  # optimiser steps since the (last) start from the initial weights
    best_score: float | None = None  # best validation aggregate so far
    best_epoch: int = -1  # epoch (1-based) of the best score
    bad_epochs: int = 0  # epochs since the best (early stopping)
    calib_losses: dict[str, list[float]] = field(default_factory=dict)  # reweight: valid loss per calibration epoch
    reweights: dict[str, float] | None = None  # reweight: the weights computed after calibration
    acc: dict[str, Any] = field(default_factory=dict)  # partial-epoch sums of losses / weights / counts
    done: bool = False  # training finished (epochs or early stopping)
    stopped_early: bool = False  # finished by early stopping
    log_lines: int = 0  # lines of metrics.jsonl covered by this checkpoint (later ones are replayed on resume)


def save_checkpoint(
    directory: Path, *, model: ModelBase, heads: MultiTaskHeads, weighting: LossWeighting,
    optimizer: torch.optim.Optimizer, state: TrainerState, extra: dict[str, Any]
) -> None:
    """Model directory + ``heads.safetensors`` + optimiser/RNG/state (exact resume) + ``heads.json``.

    The directory is swapped in atomically by :mod:`m3bert.train.checkpoint`; ``heads.json`` is
    then written atomically beside it (it only describes the run's tasks, so if a crash fell in
    between, the next save or :func:`ensure_heads_json` rewrites it).
    """
    ckpt.save_checkpoint(directory, model=model, modules={"heads": HeadsBundle(heads, weighting)},
                         optimizer=optimizer, state=dataclasses.asdict(state),
                         model_extra={"trainer": {"kind": RUN_KIND, **extra}})
    atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


def load_checkpoint(
    directory: Path, *, model: ModelBase, heads: MultiTaskHeads, weighting: LossWeighting, optimizer: torch.optim.Optimizer
) -> TrainerState:
    """Restore weights, heads, loss weights, optimiser and RNG; return the loop state."""
    raw = ckpt.load_checkpoint(directory, model=model, modules={"heads": HeadsBundle(heads, weighting)},
                               optimizer=optimizer, restore_rng=True)
    if (directory / HEADS_CONFIG).is_file():
        weighting.load_extra_state_json(read_json(directory / HEADS_CONFIG).get("weighting_state") or {})
    try:
        return from_dict(TrainerState, raw, where=f"{directory}/state.json")
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{directory}: invalid trainer state ({exc})") from exc


def ensure_heads_json(directory: Path, heads: MultiTaskHeads, weighting: LossWeighting) -> None:
    """Write ``heads.json`` into a checkpoint that lacks it (a crash between the two writes)."""
    if directory.is_dir() and not (directory / HEADS_CONFIG).is_file():
        atomic_write_json(directory / HEADS_CONFIG, heads_description(heads, weighting))


# ---------------------------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------------------------


def open_run_dir(out: Path, record: dict[str, Any]) -> bool:
    """Create ``out`` with ``run.json`` = ``record``, or check it is the same run (True if it existed).

    A run of the stage's earlier name (kind ``"multitask"``) has its ``run.json`` upgraded in
    place first (kind ``"enrich"``, config in the current form), so it resumes like any other.
    """
    run_json = out / RUN_FILE
    if run_json.is_file():
        old = read_json(run_json)
        if isinstance(old, dict) and old.get("kind") == LEGACY_RUN_KIND and isinstance(old.get("config"), dict):
            upgraded = {**old, "kind": RUN_KIND, "config": upgrade_config_dict(old["config"]),
                        "upgraded_from": LEGACY_RUN_KIND}
            atomic_write_json(run_json, upgraded)
        elif (isinstance(old, dict) and old.get("kind") == RUN_KIND and isinstance(old.get("config"), dict)
              and upgrade_config_dict(old["config"]) != old["config"]):
            # stored before a config section existed: the section's defaults are what that run did
            atomic_write_json(run_json, {**old, "config": upgrade_config_dict(old["config"])})
    return init_run_dir(out, record, kinds=(RUN_KIND, LEGACY_RUN_KIND), compare=RUN_COMPARE)


def run_record(config: EnrichConfig, source: str, data: PreparedData, **more: Any) -> dict[str, Any]:
    """The ``run.json`` of a run (``more``: e.g. the grid)."""
    return {"kind": RUN_KIND, "config": config.to_dict(), "seed": config.seed, "model": source,
            "task_specs": data.specs, "tasks": [t.to_dict() for t in data.tasks], **more, "versions": versions()}


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train_enrich(
    config: EnrichConfig,
    *,
    model: str | Path | ModelBase,
    tasks: Sequence[Any] | None = None,
    out: str | Path,
    data: PreparedData | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train one enrichment run into ``out`` (resuming it if it exists with the same config).

    ``model``: ``--model`` spec or an in-memory :class:`Encoder` (the pre-trained M2BERT).
    ``tasks``: specs ``"NAME[:PATH]"`` or :class:`TaskData`; or pass ready ``data``
    (:func:`~m3bert.enrich.samples.prepare_data`, e.g. shared by the grid). ``stop_after_steps``
    stops (after saving ``checkpoints/last``) once this process has taken that many steps — a
    controlled interruption for time-boxed jobs and resume tests. Returns the run summary.
    """
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, model=model, tasks=tasks, out=Path(out), data=data, cache_dir=cache_dir,
                      progress=progress, stop_after_steps=stop_after_steps)
    finally:
        torch.set_num_threads(previous_threads)


def _new_acc(tasks: Sequence[TaskInfo]) -> dict[str, Any]:
    z = {t.name: 0.0 for t in tasks}
    return {"loss_sum": dict(z), "loss_n": dict(z), "weight_sum": dict(z), "total_sum": 0.0, "steps": 0}


def _train(config: EnrichConfig, *, model: str | Path | ModelBase, tasks: Sequence[Any] | None, out: Path,
           data: PreparedData | None, cache_dir: str | Path | None, progress: bool,
           stop_after_steps: int | None) -> dict[str, Any]:
    # -- inputs, run directory ----------------------------------------------------------------
    base, source = resolve_encoder(model)
    multisource = bool(config.multisource.strategy)
    if data is None:
        if tasks is None:
            raise ConfigError("train_enrich: pass tasks= (specs or TaskData) or data=")
        cache = Path(cache_dir or out / "cache")
        if multisource:  # Kim et al.: sources -> label factors, raw frames cropped per step
            data = prepare_multisource_data(tasks, base, config, cache_dir=cache, progress=progress)
        else:
            data = prepare_data(tasks, base, scenario=config.scenario, cache_dir=cache, progress=progress)
    elif data.input_kind != ("frames" if multisource else "hidden" if config.scenario == "frozen" else "windows"):
        raise ConfigError(f"prepared data holds {data.input_kind!r} inputs, not those of scenario {config.scenario!r}")
    tasks_info = data.tasks
    more = {"multisource": strategy_record(config, tasks_info), "factors": data.factors} if multisource else {}
    record = run_record(
        config, source, data, **more,
        n_samples={s: len(data.split(s)) for s in ("train", "valid", "test")},
        n_labelled={t.name: {s: int(sum(t.name in data.samples[i].labels for i in data.split(s)))
                             for s in ("train", "valid", "test")} for t in tasks_info},
        rejects=data.rejects,
    )
    existed = open_run_dir(out, record)
    log = MetricsLog(out)
    last, best = out / "checkpoints" / "last", out / "checkpoints" / "best"
    for d in (last, best):
        ckpt.recover_checkpoint(d)

    # -- what an epoch draws --------------------------------------------------------------------
    train_idx, valid_idx = data.split("train"), data.split("valid")
    has_label = data.has_label(list(range(len(data.samples))))
    pools = {t.name: np.array([j for j, i in enumerate(train_idx) if t.name in data.samples[i].labels], np.int64)
             for t in tasks_info}
    steps_per_epoch = plan_steps(config, len(train_idx), len(tasks_info))  # Algorithm 1: L = l x m
    n_draws = config.samples_per_epoch or (steps_per_epoch * config.batch_size if scheme_is_a1(config) else len(train_idx))
    total_steps = config.epochs * steps_per_epoch
    scheme = parse_sampling(config.sampling)[0]
    reweight = config.weighting.name == "reweight"
    restart = reweight and config.weighting.reweight_restart
    if reweight and not restart and config.weighting.reweight_epochs >= config.epochs:
        raise ConfigError(f"weighting.reweight_epochs={config.weighting.reweight_epochs} must be < epochs={config.epochs} "
                          "when weighting.reweight_restart is false")
    extra = {"scenario": config.scenario, "tasks": [t.name for t in tasks_info], "weighting": config.weighting.name,
             "sampling": config.sampling, "pretrained": source}

    def fresh(phase: str):
        """Modules from the initial weights; reweight calibrates with equal weights first."""
        cfg = config
        if phase == "calibrate":
            cfg = dataclasses.replace(config, weighting=dataclasses.replace(config.weighting, name="equal"))
        m, h, w = build_modules(base, tasks_info, cfg, data=data)
        return m, h, w, make_optimizer(m, h, w, config)

    def checkpoint(directory: Path, extra_info: dict[str, Any] | None = None) -> None:
        state.log_lines = log.n_lines()
        save_checkpoint(directory, model=net, heads=heads, weighting=weighting, optimizer=opt, state=state,
                        extra={**extra, **(extra_info or {})})

    # -- start or resume ------------------------------------------------------------------------
    state = TrainerState(phase="calibrate" if reweight else "train")
    if existed and (last / "state.json").is_file():
        phase = ckpt.read_state(last)["state"].get("phase", state.phase)
        net, heads, weighting, opt = fresh(phase)
        state = load_checkpoint(last, model=net, heads=heads, weighting=weighting, optimizer=opt)
        log.truncate_lines(state.log_lines)  # lines after that checkpoint will be written again
    else:
        net, heads, weighting, opt = fresh(state.phase)
        torch.manual_seed(config.seed)
        log.truncate_lines(0)  # a run that never checkpointed starts over
    steps_this_process = 0
    t0 = time.time()

    while not state.done:
        # -- reweight: after the calibration epochs, weights = reciprocal mean validation losses --
        if state.phase == "calibrate" and state.epoch >= config.weighting.reweight_epochs:
            mean_losses = {t: float(np.mean(v)) for t, v in state.calib_losses.items()}
            calib = state.calib_losses
            if restart:  # Wu et al.: retrain from the initial weights with those weights
                net, heads, weighting, opt = fresh("train")
                torch.manual_seed(config.seed)
                state = TrainerState(phase="train")
            else:  # ... or carry on with the same model and optimiser
                weighting = task_weighting(tasks_info, config.weighting)
                state = dataclasses.replace(state, phase="train", acc={})
            state.calib_losses = calib
            state.reweights = weighting.set_from_losses(mean_losses)  # type: ignore[attr-defined]
            log.append({"event": "reweight", "mean_valid_loss": mean_losses, "weights": state.reweights,
                        "restart": restart})
            checkpoint(last)
            continue

        # -- one epoch of steps (resuming mid-epoch where a checkpoint left off) ------------------
        epochs_in_phase = config.weighting.reweight_epochs if state.phase == "calibrate" else config.epochs
        epoch = state.epoch
        # the epoch's draws depend only on (seed, epoch): a restarted run replays the same order
        batch_task: list[str] | None = None
        if scheme_is_a1(config):  # Algorithm 1: one source per batch
            draws, batch_task = epoch_batches(pools, steps_per_epoch, config.batch_size, seed=config.seed, epoch=epoch)
        else:
            draws = epoch_draws(pools, len(train_idx), config.sampling, n_draws=n_draws, seed=config.seed, epoch=epoch)
        sample_ids = np.asarray(train_idx, np.int64)[draws]
        if not state.acc:
            state.acc = _new_acc(tasks_info)
        acc = state.acc
        set_train_mode(net, heads, config.scenario)
        bar = progress_bar(total=steps_per_epoch, initial=state.step_in_epoch, disable=not progress, leave=False,
                   desc=f"{state.phase} epoch {epoch + 1}/{epochs_in_phase}", unit="step")
        while state.step_in_epoch < steps_per_epoch:
            b = state.step_in_epoch
            batch = collate(data, sample_ids[b * config.batch_size:(b + 1) * config.batch_size].tolist(), tasks_info,
                            crop_seed=(config.seed, epoch, b, 13), only_task=batch_task[b] if batch_task else None)
            losses = batch_losses(net, heads, batch, input_kind=data.input_kind)
            total, used = weighting.combine(losses)
            opt.zero_grad(set_to_none=True)  # absent heads keep grad None: Adam skips them (no momentum, no decay)
            total.backward()
            params = [p for g in opt.param_groups for p in g["params"]]
            grad_norm = nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm if config.optim.max_grad_norm > 0
                                                 else math.inf)
            factor = lr_at(state.global_step, peak=1.0, total_steps=total_steps, cfg=config.schedule)
            check_finite_step(step=state.global_step + 1, loss=float(total.detach()), grad_norm=float(grad_norm),
                              lr=config.optim.lr * factor)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            opt.step()
            for t, loss in losses.items():
                k = int(batch.rows[t].numel())
                acc["loss_sum"][t] += float(loss.detach()) * k
                acc["loss_n"][t] += k
                acc["weight_sum"][t] += used[t] * k
            acc["total_sum"] += float(total.detach())
            acc["steps"] += 1
            state.step_in_epoch += 1
            state.global_step += 1
            steps_this_process += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
            if config.log_every and state.global_step % config.log_every == 0:
                log.append({"event": "step", "phase": state.phase, "epoch": epoch + 1, "step": state.global_step,
                            "lr": factor * config.optim.lr, "loss": {t: float(v.detach()) for t, v in losses.items()},
                            "weights": used, "total": float(total.detach())})
            if state.step_in_epoch == steps_per_epoch:
                break
            stop = stop_after_steps is not None and steps_this_process >= stop_after_steps
            if stop or (config.checkpoint_every and state.global_step % config.checkpoint_every == 0):
                checkpoint(last)
            if stop:
                bar.close()
                return {"status": "interrupted", "out": str(out), "global_step": state.global_step}
        bar.close()

        # -- end of epoch: validate, log, select, checkpoint ------------------------------------
        valid = evaluate(net, heads, data, valid_idx, batch_size=config.eval_batch_size)
        score = aggregate_score(valid, tasks_info)
        line = {
            "event": "epoch", "phase": state.phase, "epoch": epoch + 1, "step": state.global_step,
            "lr_peak": config.optim.lr,
            "train_loss": {t: acc["loss_sum"][t] / acc["loss_n"][t] if acc["loss_n"][t] else None for t in acc["loss_sum"]},
            "train_total": acc["total_sum"] / max(1, acc["steps"]),
            "weights_used": {t: acc["weight_sum"][t] / acc["loss_n"][t] if acc["loss_n"][t] else None for t in acc["loss_sum"]},
            "weights_now": weighting.current_weights(),
            "label_share": label_shares(sample_ids, has_label),
            "task_probability": (None if scheme == "proportional"
                                 else sampling_probs({t: len(p) for t, p in pools.items()}, config.sampling)),
            "valid": valid,
            "valid_aggregate": finite_or_none(score),
        }
        state.epoch += 1
        state.step_in_epoch = 0
        state.acc = {}
        if state.phase == "calibrate":
            for t, r in valid.items():
                state.calib_losses.setdefault(t, []).append(r["loss"])
        if state.phase == "train" or not restart:  # selection only among models of the final objective's run
            if math.isfinite(score) and (state.best_score is None or score > state.best_score):
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                checkpoint(best, {"epoch": state.epoch, "valid": valid, "valid_aggregate": score})
            else:
                state.bad_epochs += 1
            line["best_aggregate"] = state.best_score
            if config.early_stopping and state.bad_epochs >= config.early_stopping:
                state.done = state.stopped_early = True
            if state.phase == "train" and state.epoch >= config.epochs:
                state.done = True
        line["elapsed_s"] = round(time.time() - t0, 3)
        log.append(line)
        checkpoint(last)
        if not state.done and stop_after_steps is not None and steps_this_process >= stop_after_steps:
            return {"status": "interrupted", "out": str(out), "global_step": state.global_step}
    ensure_heads_json(best, heads, weighting)
    return finish_run(out, data, config)


def scheme_is_a1(config: EnrichConfig) -> bool:
    return parse_sampling(config.sampling)[0] == "algorithm1"


def finish_run(out: Path, data: PreparedData, config: EnrichConfig) -> dict[str, Any]:
    """Evaluate the best checkpoint on valid and test; write ``summary.json``."""
    best = out / "checkpoints" / "best"
    if not (best / "config.json").is_file():
        raise CheckpointError(f"{best}: no best checkpoint (no epoch produced a finite validation score)")
    model = load_model_dir(best)
    heads, _ = load_heads(best)
    state = ckpt.read_state(out / "checkpoints" / "last")["state"]
    summary: dict[str, Any] = {
        "out": str(out),
        "status": "done",
        "scenario": config.scenario,
        "weighting": config.weighting.name,
        "sampling": config.sampling,
        "best_epoch": state.get("best_epoch"),
        "epochs_run": state.get("epoch"),
        "stopped_early": state.get("stopped_early", False),
        "reweights": state.get("reweights"),
        "rejects": len(data.rejects),
    }
    if config.multisource.strategy:
        summary["multisource"] = strategy_record(config, data.tasks)
    for split in ("valid", "test"):
        idx = data.split(split)
        res = evaluate(model, heads, data, idx, batch_size=config.eval_batch_size) if idx else {}
        summary[split] = res
        summary[f"{split}_aggregate"] = finite_or_none(aggregate_score(res, data.tasks)) if res else None
    summary["primary_metrics"] = {t.name: t.metrics[0] for t in data.tasks}
    atomic_write_json(out / "summary.json", summary)
    return summary
