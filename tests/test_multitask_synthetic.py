"""Multi-task enrichment (``m3bert.enrich``) on synthetic tasks: partial labels, weighting, sampling,
bad input, resume.

Audio is a few seconds of seeded synthetic signal per clip; the encoder is the tiny random
config, so every test here runs in seconds on two cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import m3bert.enrich as mt
from m3bert.core.errors import ConfigError, DataError
from m3bert.core.registry import Registry
from m3bert.enrich.config import upgrade_config_dict
from m3bert.enrich.heads import (
    HeadConfig,
    MultiTaskHeads,
    TaskInfo,
    load_heads,
    multilabel_loss,
    save_heads,
    task_weighting,
)
from m3bert.models.encoder import Encoder
from m3bert.models.hub import load_encoder
from m3bert.tasks.registry import Clip, TaskData
from m3bert.train.optim import OptimConfig
from m3bert.train.weighting import (
    WEIGHTINGS,
    EqualWeighting,
    ReweightWeighting,
    UncertaintyWeighting,
    WeightingConfig,
    create_weighting,
    reciprocal_loss_weights,
    uncertainty_weighted_loss,
)
from m3bert.windows import pool_windows

SR = 22050


def _tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * r.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids OpenMP contention (10x here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mt_audio")
    for i in range(24):
        sf.write(d / f"clip{i:02d}.wav", _tone(1.5, 110.0 * (1 + i % 4), seed=i), SR)
    return d


def _split(i: int) -> str:
    return ("train", "train", "train", "valid", "test")[i % 5] if i % 5 != 4 else "test"


def synthetic_tasks(audio_dir: Path) -> list[TaskData]:
    """Three datasets over disjoint clips (partial labels) plus a tag task sharing clips with the first."""
    cls = [Clip(f"c{i}", audio_dir / f"clip{i:02d}.wav", i % 4 % 2, _split(i), f"g{i}") for i in range(0, 10)]
    reg = [Clip(f"r{i}", audio_dir / f"clip{i:02d}.wav", np.array([i % 4 * 0.5 + 1.0], np.float32), _split(i), f"g{i}")
           for i in range(10, 20)]
    tags = [Clip(f"t{i}", audio_dir / f"clip{i:02d}.wav", np.array([i % 2, (i // 2) % 2, 1], np.float32), _split(i),
                 f"g{i}", target_mask=np.array([1, 1, 0 if i % 3 == 0 else 1], np.float32)) for i in range(14, 24)]
    return [
        TaskData("syn-class", "multiclass", ["low", "high"], cls),
        TaskData("syn-reg", "regression", ["pitchiness"], reg),
        TaskData("syn-tags", "multilabel", ["a", "b", "c"], tags),
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One input cache for the module: features / hidden states are computed once per clip."""
    return tmp_path_factory.mktemp("mt_cache")


@pytest.fixture(scope="module")
def base_encoder():
    enc, _ = load_encoder("random:m2bert-tiny:3")
    return enc


def small_config(**kw) -> mt.EnrichConfig:
    cfg = mt.EnrichConfig(epochs=2, batch_size=4, eval_batch_size=8, early_stopping=0, seed=5, threads=1)
    cfg.enrichment.dim = 32
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# ---------------------------------------------------------------------------------------------
# pure maths
# ---------------------------------------------------------------------------------------------


def test_pool_windows_is_the_clip_time_average():
    torch.manual_seed(0)
    states = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 3, 2])
    weights = (torch.arange(5)[None] < lengths[:, None]).float()
    owner = torch.tensor([0, 0, 1])
    pooled = pool_windows(states, weights, owner, 2)
    want0 = torch.cat([states[0, :5], states[1, :3]]).mean(0)  # all frames of sample 0, not mean of means
    assert torch.allclose(pooled[0], want0, atol=1e-6)
    assert torch.allclose(pooled[1], states[2, :2].mean(0), atol=1e-6)


def test_multilabel_loss_ignores_unknown_labels():
    logits = torch.tensor([[2.0, -1.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = multilabel_loss(logits, target, mask)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2])
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad[0, 2] == 0


def test_reweight_is_reciprocal_of_mean_validation_loss():
    w = reciprocal_loss_weights({"a": 2.0, "b": 0.5}, normalize=False)
    assert w == {"a": 0.5, "b": 2.0}
    wn = reciprocal_loss_weights({"a": 2.0, "b": 0.5, "c": 1.0})
    assert math.isclose(sum(wn.values()) / 3, 1.0)
    assert math.isclose(wn["b"] / wn["a"], 4.0) and math.isclose(wn["c"] / wn["a"], 2.0)
    with pytest.raises(DataError, match="finite and > 0"):
        reciprocal_loss_weights({"a": float("nan")})
    rw = ReweightWeighting(["a", "b"], WeightingConfig(name="reweight", reweight_normalize=False), regression=["b"])
    rw.set_from_losses({"a": 4.0, "b": 0.25})
    total, used = rw.combine({"a": torch.tensor(4.0), "b": torch.tensor(0.25)})
    assert used == {"a": 0.25, "b": 4.0} and math.isclose(float(total), 2.0)  # each contributes equally


def test_uncertainty_weights_move_the_right_way_and_reach_kendall_optimum():
    tasks = [TaskInfo("cls", "multiclass", ["x", "y"]), TaskInfo("reg", "regression", ["v"]),
             TaskInfo("small", "multiclass", ["x", "y"])]
    uw = task_weighting(tasks, WeightingConfig(name="uncertainty"))  # regression tasks get Kendall's Gaussian form
    assert isinstance(uw, UncertaintyWeighting) and uw.regression.tolist() == [False, True, False]
    # at s = 0: classification weight 1, regression weight 1/2 (Kendall's two forms)
    assert uw.current_weights() == {"cls": 1.0, "reg": 0.5, "small": 1.0}
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    fixed = {"cls": torch.tensor(3.0), "reg": torch.tensor(3.0), "small": torch.tensor(0.1)}
    for _ in range(400):
        opt.zero_grad()
        total, _ = uw.combine(fixed)
        total.backward()
        opt.step()
    s = uw.log_vars.detach()
    assert s[0] > 0 > s[2]  # the high-loss task grows its variance, the low-loss one shrinks it
    assert math.isclose(float(s[0]), math.log(2 * 3.0), abs_tol=1e-3)  # classification optimum s = log 2L
    assert math.isclose(float(s[1]), math.log(3.0), abs_tol=1e-3)  # regression optimum s = log L
    w = uw.current_weights()
    assert w["cls"] < w["small"]
    # pure function agrees with the module
    total, weights = uncertainty_weighted_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, math.log(2.0)]),
                                               torch.tensor([False, True]))
    assert torch.allclose(weights, torch.tensor([1.0, 0.25]))
    assert math.isclose(float(total), 1.0 + 0.5 + 0.5 * math.log(2.0), rel_tol=1e-6)


def test_weighting_family_is_a_registry_over_loss_names():
    assert isinstance(WEIGHTINGS, Registry) and sorted(WEIGHTINGS) == ["equal", "reweight", "uncertainty"]
    eq = create_weighting(["a", "b"], WeightingConfig())  # names only: no task objects needed (pre-training can reuse it)
    assert isinstance(eq, EqualWeighting) and eq.task_names == ["a", "b"]
    total, used = eq.combine({"b": torch.tensor(2.0)})
    assert float(total) == 2.0 and used == {"b": 1.0}
    with pytest.raises(DataError, match="no task has a label"):
        eq.combine({})
    with pytest.raises(ConfigError, match="unknown loss weighting 'gradnorm'"):
        create_weighting(["a"], WeightingConfig(name="gradnorm"))
    with pytest.raises(ConfigError, match="already registered"):
        WEIGHTINGS.add("equal", EqualWeighting)
    with pytest.raises(ConfigError, match="not among"):
        create_weighting(["a"], WeightingConfig(name="uncertainty"), regression=["b"])
    with pytest.raises(ConfigError, match="unique"):
        create_weighting(["a", "a"], WeightingConfig())


def test_config_loads_with_enrich_defaults_and_upgrades_legacy(tmp_path):
    default = mt.EnrichConfig()
    assert isinstance(default.optim, OptimConfig) and (default.optim.lr, default.optim.fused) == (1e-3, False)
    assert mt.load_config("configs/multitask.yaml") == default
    # a partial optim section keeps enrich's own defaults (lr 1e-3, the non-fused kernel)
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 0.1\nencoder_lr_scale: 0.5\n")
    cfg = mt.load_config(tmp_path / "c.yaml")
    assert (cfg.optim.lr, cfg.optim.fused, cfg.optim.weight_decay, cfg.encoder_lr_scale) == (1e-3, False, 0.1, 0.5)
    # overrides: CLI strings or a mapping of dotted keys, the same config either way
    as_strings = mt.load_config("configs/multitask-demo.yaml", ["optim.lr=0.02", "weighting.name=reweight", "epochs=4"])
    as_dict = mt.load_config("configs/multitask-demo.yaml", {"optim.lr": 0.02, "weighting.name": "reweight", "epochs": 4})
    assert as_strings == as_dict and as_dict.optim.lr == 0.02 and as_dict.sampling == "temperature:2"
    with pytest.raises(ConfigError, match="unknown key"):
        mt.load_config(None, {"optim.finetune_encoder_lr_scale": 0.5})
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        mt.EnrichConfig(encoder_lr_scale=0.0)
    # a config stored by the stage's earlier 'multitask' form
    legacy = default.to_dict()
    legacy["optim"]["finetune_encoder_lr_scale"] = legacy.pop("encoder_lr_scale")
    del legacy["optim"]["fused"]
    assert upgrade_config_dict(legacy) == default.to_dict() and mt.EnrichConfig.from_dict(legacy) == default
    assert type(mt.EnrichConfig.from_dict(legacy).optim) is OptimConfig  # the one optimiser config


def test_sampling_shares_match_the_scheme():
    sizes = {"big": 900, "mid": 90, "small": 10}
    assert mt.sampling_probs(sizes, "proportional") == pytest.approx({"big": 0.9, "mid": 0.09, "small": 0.01})
    assert mt.sampling_probs(sizes, "uniform") == pytest.approx({k: 1 / 3 for k in sizes})
    t2 = mt.sampling_probs(sizes, "temperature:2")
    z = 30 + math.sqrt(90) + math.sqrt(10)
    assert t2 == pytest.approx({"big": 30 / z, "mid": math.sqrt(90) / z, "small": math.sqrt(10) / z})
    # empirical shares of one epoch of draws (disjoint pools -> label share == draw share)
    pools, start = {}, 0
    for k, n in sizes.items():
        pools[k] = np.arange(start, start + n)
        start += n
    has = {k: np.isin(np.arange(start), p) for k, p in pools.items()}
    for spec, want in (("uniform", mt.sampling_probs(sizes, "uniform")), ("temperature:2", t2),
                       ("proportional", mt.sampling_probs(sizes, "proportional"))):
        draws = mt.epoch_draws(pools, start, spec, n_draws=20000, seed=1, epoch=0)
        shares = mt.label_shares(draws, has)
        for k in sizes:
            assert abs(shares[k] - want[k]) < 0.015, (spec, k, shares)
    # proportional = a plain epoch: every sample exactly once; same (seed, epoch) -> same order
    d = mt.epoch_draws(pools, start, "proportional", n_draws=start, seed=1, epoch=3)
    assert sorted(d.tolist()) == list(range(start))
    assert np.array_equal(d, mt.epoch_draws(pools, start, "proportional", n_draws=start, seed=1, epoch=3))
    assert not np.array_equal(d, mt.epoch_draws(pools, start, "proportional", n_draws=start, seed=1, epoch=4))
    # uniform over a small task cycles its pool: each of its samples drawn about equally often
    d = mt.epoch_draws(pools, start, "uniform", n_draws=3000, seed=2, epoch=0)
    counts = np.bincount(d[np.isin(d, pools["small"])] - 990, minlength=10)
    assert counts.max() - counts.min() <= 1
    for bad in ("temperature:0", "temperature:x", "zipf", "uniform:2"):
        with pytest.raises(ConfigError):
            mt.parse_sampling(bad)


def test_grid_paper_is_table4():
    pts = mt.grid_points("paper")
    assert len(pts) == 3 * 3 * 3 * 2
    assert {p["batch_size"] for p in pts} == {16, 24, 32}
    assert {p["optim.lr"] for p in pts} == {2e-5, 3e-5, 4e-5}
    assert {p["epochs"] for p in pts} == {2, 3, 4}
    assert {p["enrichment.dropout"] for p in pts} == {0.05, 0.1}


# ---------------------------------------------------------------------------------------------
# partial labels: gradient isolation through a real optimiser
# ---------------------------------------------------------------------------------------------


def test_absent_task_head_does_not_move(audio_dir, base_encoder, cache_dir):
    cfg = small_config(scenario="frozen")
    cfg.optim.weight_decay = 0.1  # decoupled decay must not touch an absent head either
    data = mt.prepare_data(synthetic_tasks(audio_dir), base_encoder, scenario="frozen", cache_dir=cache_dir, progress=False)
    model, heads, weighting = mt.build_modules(base_encoder, data.tasks, cfg)
    opt = mt.make_optimizer(model, heads, weighting, cfg)
    train = data.split("train")
    only_class = [i for i in train if set(data.samples[i].labels) == {"syn-class"}]
    only_reg = [i for i in train if set(data.samples[i].labels) == {"syn-reg"}]
    assert len(only_class) >= 2 and len(only_reg) >= 2

    def step(indices):
        batch = mt.collate(data, indices, data.tasks)
        losses = mt.batch_losses(model, heads, batch, input_kind=data.input_kind)
        total, _ = weighting.combine(losses)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return losses

    step(only_class[:2] + only_reg[:2])  # both heads get Adam momentum
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    enr_before = model.enrichment.layers[0].weight.clone()
    losses = step(only_reg[:2])  # syn-class absent
    assert set(losses) == {"syn-reg"}
    after = heads.state_dict()
    for k in before:
        if k.startswith("heads.syn-class."):
            assert torch.equal(before[k], after[k]), k
        if k.startswith("heads.syn-reg.") and k.endswith("weight"):
            assert not torch.equal(before[k], after[k]), k
    assert not torch.equal(enr_before, model.enrichment.layers[0].weight)  # shared layer trains on everything

    # a sample without a task's label contributes nothing to that head's gradient
    batch_mixed = mt.collate(data, only_class[:2] + only_reg[:2], data.tasks)
    batch_alone = mt.collate(data, only_class[:2], data.tasks)
    model.eval(), heads.eval()
    grads = []
    for b in (batch_mixed, batch_alone):
        heads.zero_grad(set_to_none=True)
        losses = mt.batch_losses(model, heads, b, input_kind=data.input_kind)
        losses["syn-class"].backward()
        grads.append(heads.heads["syn-class"].net[0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_uncertainty_log_var_of_absent_task_is_untouched(audio_dir, base_encoder, cache_dir):
    cfg = small_config(scenario="frozen")
    cfg.weighting.name = "uncertainty"
    data = mt.prepare_data(synthetic_tasks(audio_dir), base_encoder, scenario="frozen", cache_dir=cache_dir, progress=False)
    model, heads, weighting = mt.build_modules(base_encoder, data.tasks, cfg)
    opt = mt.make_optimizer(model, heads, weighting, cfg)
    only_reg = [i for i in data.split("train") if set(data.samples[i].labels) == {"syn-reg"}]
    before = weighting.log_vars.detach().clone()
    batch = mt.collate(data, only_reg[:3], data.tasks)
    total, _ = weighting.combine(mt.batch_losses(model, heads, batch, input_kind=data.input_kind))
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    names = weighting.task_names
    after = weighting.log_vars.detach()
    for i, n in enumerate(names):
        assert (after[i] != before[i]) == (n == "syn-reg"), n


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_training(audio_dir, base_encoder, cache_dir):
    def run(tasks):
        mt.prepare_data(tasks, base_encoder, scenario="frozen", cache_dir=cache_dir, progress=False)

    tasks = synthetic_tasks(audio_dir)
    no_valid = TaskData("syn-class", "multiclass", ["low", "high"], [c for c in tasks[0].clips if c.split != "valid"])
    with pytest.raises(DataError, match=r"syn-class: no labelled samples in split 'valid'"):
        run([no_valid, tasks[1]])
    bad_label = synthetic_tasks(audio_dir)
    bad_label[0].clips[0].target = 7
    with pytest.raises(DataError, match=r"target=7, expected a class index in \[0, 2\)"):
        run(bad_label)
    nan = synthetic_tasks(audio_dir)
    nan[1].clips[2].target = np.array([np.nan], np.float32)
    with pytest.raises(DataError, match="non-finite target"):
        run(nan)
    leak = synthetic_tasks(audio_dir)
    leak[2].clips[0] = Clip("t-leak", audio_dir / "clip00.wav", np.array([1, 0, 1], np.float32), "test", "gx")
    with pytest.raises(DataError, match="one split across all enrichment tasks"):
        run(leak)
    with pytest.raises(ConfigError, match="given more than once"):
        run([tasks[0], tasks[0]])
    with pytest.raises(ConfigError, match="scenario"):
        mt.EnrichConfig(scenario="supervised")


# ---------------------------------------------------------------------------------------------
# heads round trip, training, exact resume
# ---------------------------------------------------------------------------------------------


def test_heads_round_trip(tmp_path):
    tasks = [TaskInfo("a", "multiclass", ["x", "y"], ["accuracy"]),
             TaskInfo("b", "regression", ["v"], ["r2"], target_mean=[1.0], target_std=[2.0])]
    heads = MultiTaskHeads(8, tasks, HeadConfig(hidden=4))
    uw = UncertaintyWeighting(["a", "b"], WeightingConfig(name="uncertainty", uncertainty_init=0.3), regression=["b"])
    save_heads(tmp_path, heads, uw)
    h2, w2 = load_heads(tmp_path)
    assert h2.tasks["b"].target_std == [2.0]
    for (k, v), (k2, v2) in zip(heads.state_dict().items(), h2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(uw.log_vars, w2.log_vars)
    assert torch.equal(uw.regression, w2.regression)  # rebuilt from the tasks' label types


@pytest.mark.parametrize("scenario,weighting", [("finetune", "reweight"), ("frozen", "uncertainty")])
def test_resume_is_exact(audio_dir, base_encoder, cache_dir, tmp_path, scenario, weighting):
    cfg = small_config(scenario=scenario, epochs=3, sampling="temperature:2")
    cfg.weighting.name = weighting
    cfg.weighting.reweight_epochs = 1
    tasks = synthetic_tasks(audio_dir)
    full = mt.train_enrich(cfg, model=base_encoder, tasks=tasks, out=tmp_path / "full", progress=False,
                              cache_dir=cache_dir)
    assert full["status"] == "done"
    part = tmp_path / "part"
    r = mt.train_enrich(cfg, model=base_encoder, tasks=tasks, out=part, progress=False, stop_after_steps=3,
                           cache_dir=cache_dir)
    assert r["status"] == "interrupted"
    r = mt.train_enrich(cfg, model=base_encoder, tasks=tasks, out=part, progress=False, stop_after_steps=4,
                           cache_dir=cache_dir)
    assert r["status"] == "interrupted"
    resumed = mt.train_enrich(cfg, model=base_encoder, tasks=tasks, out=part, progress=False, cache_dir=cache_dir)
    for name in ("last", "best"):
        a = Encoder.from_pretrained(tmp_path / "full" / "checkpoints" / name).state_dict()
        b = Encoder.from_pretrained(part / "checkpoints" / name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        ha, _ = load_heads(tmp_path / "full" / "checkpoints" / name)
        hb, _ = load_heads(part / "checkpoints" / name)
        assert all(torch.equal(v, hb.state_dict()[k]) for k, v in ha.state_dict().items())
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (part / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in lines]
    assert strip(la) == strip(lb)
    assert resumed["valid"] == full["valid"]
    if weighting == "reweight":
        events = [json.loads(x) for x in la]
        rw = [e for e in events if e["event"] == "reweight"]
        assert len(rw) == 1
        calib = [e for e in events if e["event"] == "epoch" and e["phase"] == "calibrate"]
        want = reciprocal_loss_weights({t: calib[0]["valid"][t]["loss"] for t in rw[0]["weights"]})
        assert rw[0]["weights"] == pytest.approx(want)


def test_single_task_run_and_grid_selection(audio_dir, base_encoder, cache_dir, tmp_path):
    tasks = synthetic_tasks(audio_dir)
    one = mt.train_enrich(small_config(epochs=2), model=base_encoder, tasks=[tasks[1]], out=tmp_path / "one",
                             progress=False, cache_dir=cache_dir)
    assert list(one["valid"]) == ["syn-reg"] and np.isfinite(one["valid"]["syn-reg"]["r2"])
    grid = {"optim.lr": [1e-5, 3e-3], "enrichment.dropout": [0.0]}
    out = tmp_path / "grid"
    summary = mt.run_enrich(small_config(epochs=2), model=base_encoder, tasks=tasks, out=out, grid=grid,
                              progress=False)
    pts = json.loads((out / "grid.json").read_text())["points"]
    assert len(pts) == 2
    best = max(pts, key=lambda p: p["valid_aggregate"])
    assert summary["best_point"] == best["name"]
    sub = Encoder.from_pretrained(out / "grid" / best["name"] / "checkpoints" / "best").state_dict()
    top = Encoder.from_pretrained(out / "checkpoints" / "best").state_dict()
    assert all(torch.equal(sub[k], top[k]) for k in sub)
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "enrich" and run["grid"] == grid


def test_scenarios_decide_what_trains(audio_dir, base_encoder, cache_dir, tmp_path):
    tasks = synthetic_tasks(audio_dir)[:1]
    base = base_encoder.state_dict()
    enc_keys = [k for k in base if not k.startswith("enrichment.")]
    cfg = small_config(epochs=1, scenario="finetune")
    model, heads, weighting = mt.build_modules(base_encoder, [TaskInfo("x", "multiclass", ["a", "b"])], cfg)
    lrs = {g["name"]: g["base_lr"] for g in mt.make_optimizer(model, heads, weighting, cfg).param_groups}
    assert lrs == {"enrichment+heads": cfg.optim.lr, "encoder": cfg.optim.lr * cfg.encoder_lr_scale}
    assert all(torch.equal(model.state_dict()[k], base[k]) for k in enc_keys)  # starts from the pre-trained weights
    changed = {}
    for scenario in ("finetune", "scratch"):
        mt.train_enrich(small_config(epochs=1, scenario=scenario), model=base_encoder, tasks=tasks,
                           out=tmp_path / scenario, progress=False, cache_dir=cache_dir)
        after = Encoder.from_pretrained(tmp_path / scenario / "checkpoints" / "last").state_dict()
        changed[scenario] = [k for k in enc_keys if not torch.equal(after[k], base[k])]
    assert len(changed["finetune"]) > 0  # the encoder trained
    assert set(changed["scratch"]) >= {k for k in enc_keys if k.endswith(".weight") and "norm" not in k}  # not the pre-trained weights


def test_legacy_multitask_run_still_resumes(audio_dir, base_encoder, cache_dir, tmp_path):
    """A run directory written under the stage's earlier name (run.json kind 'multitask') resumes."""
    tasks = synthetic_tasks(audio_dir)[:1]
    cfg = small_config(epochs=1)
    out = tmp_path / "legacy"
    first = mt.train_enrich(cfg, model=base_encoder, tasks=tasks, out=out, progress=False, cache_dir=cache_dir)
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "enrich" and run["config"] == cfg.to_dict()
    legacy = json.loads(json.dumps(run["config"]))
    legacy["optim"]["finetune_encoder_lr_scale"] = legacy.pop("encoder_lr_scale")
    del legacy["optim"]["fused"]
    (out / "run.json").write_text(json.dumps({**run, "kind": "multitask", "config": legacy}))
    again = mt.train_enrich(mt.EnrichConfig.from_dict(legacy), model=base_encoder, tasks=tasks, out=out, progress=False,
                            cache_dir=cache_dir)
    assert again["valid"] == first["valid"]
    run2 = json.loads((out / "run.json").read_text())
    assert run2["kind"] == "enrich" and run2["config"] == cfg.to_dict() and run2["upgraded_from"] == "multitask"
