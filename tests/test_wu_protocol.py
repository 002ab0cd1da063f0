"""Wu et al. (2021)'s downstream protocol ``wu`` (sec. 3.4) and the three training scenarios (sec. 2.2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m3bert.evaluate import wu_protocol
from m3bert.evaluate.probe_grid import fit_grid, grid_configs
from m3bert.evaluate.probes import get_protocol
from m3bert.evaluate.representations import Representation
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks.registry import Clip, Task, TaskData


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def test_wu_protocol_is_the_papers_classifier():
    p = get_protocol("wu")
    assert p is wu_protocol.WU_PROTOCOL
    assert p.pooling == "mean" and p.split == "predefined" and p.default_seeds == 10
    assert p.probe.hidden == (512,) and p.probe.lrs == (1e-3,) and p.probe.dropout == 0.0
    assert p.probe.early_stop_patience == 10 and p.probe.lr_plateau_patience is None and p.probe.l2 == 0.0
    # one probe on the output representation: nothing is selected on the validation metric
    assert grid_configs(5, p.probe) == [(4, 1e-3)]
    lin = get_protocol("wu-linear")
    assert lin.probe.hidden == () and lin.probe.early_stop_patience == 10 and lin.default_seeds == 10


def test_wu_probe_stops_ten_epochs_after_its_best_validation_loss():
    # labels unrelated to the inputs: the probe memorises the training set, the validation loss
    # turns up after a few epochs, and early stopping must end the run exactly 10 epochs later
    r = np.random.default_rng(0)
    x = r.normal(size=(120, 3, 16)).astype(np.float32)
    y = r.integers(0, 3, 120)
    fit = fit_grid(x[:80], y[:80], label_type="multiclass", n_outputs=3, config=wu_protocol.WU_PROBE, seed=0,
                   x_valid=x[80:], y_valid=y[80:])
    assert fit.configs == [(2, 1e-3)]
    assert fit.n_epochs[0] == fit.best_epoch[0] + 10
    assert fit.n_epochs[0] < wu_protocol.MAX_EPOCHS
    assert fit.final_lr[0] == pytest.approx(1e-3)  # no plateau schedule


class ClassRep(Representation):
    """Features: the class as a bump in the last of two hidden states (scaled by ``signal``) + noise."""

    kind = "fake"

    def __init__(self, name: str, signal: float) -> None:
        self.name, self.signal = name, signal

    @property
    def cache_key(self) -> str:
        return f"class-rep:{self.name}:{self.signal}"

    @property
    def layer_names(self) -> list[str]:
        return ["input", "output"]

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        x = np.random.default_rng(int(clip.clip_id.split("-")[1])).normal(size=(2, 8)).astype(np.float32)
        x[1, int(clip.target)] += 3 * self.signal
        x[0, int(clip.target)] += 3 * (1 - self.signal)  # the input layer says the opposite: "last" must be read
        return x


def _task(n: int = 60) -> tuple[Task, TaskData]:
    clips = [Clip(f"clip-{i}", f"/nowhere/{i}.wav", i % 3, ["train", "train", "train", "valid", "test"][i % 5],
                  group=f"song{i}") for i in range(n)]
    data = TaskData("synth-dance", "multiclass", ["a", "b", "c"], clips).validate()
    return Task("synth-dance", "multiclass", "high-level", ["accuracy", "macro_f1"], loader=lambda root, **kw: data), data


def test_wu_bench_runs_ten_trials_on_the_last_layer_and_reports_macro_f1():
    res = run_benchmark([ClassRep("pretrained", 1.0), ClassRep("scrambled", 0.0)], [_task()], protocol="wu",
                        progress=False)
    assert res["protocol"]["name"] == "wu" and res["seeds"] == list(range(10))
    rows = {r["representation"]: r for r in res["results"]}
    for row in rows.values():
        assert len(row["runs"]) == 10
        for run in row["runs"]:
            assert run["selected"]["layer_name"] == "output" and run["selected"]["lr"] == 1e-3
            assert 0.0 <= run["metrics"]["macro_f1"] <= 1.0
            assert run["selected"]["n_epochs"] <= run["selected"]["best_epoch"] + 10
    good = rows["pretrained"]["summary"]["metrics"]["macro_f1"]
    bad = rows["scrambled"]["summary"]["metrics"]["macro_f1"]
    assert good["mean"] > 0.9 and bad["mean"] < 0.6
    assert good["n"] == 10 and good["half_width"] is not None


def _enrich_supports(arch: str) -> bool:
    from m3bert.models.base import get_architecture

    return "enrichment" in {f.name for f in dataclasses.fields(get_architecture(arch).config_cls)}


@pytest.mark.skipif(not _enrich_supports("pase+"), reason="m3bert enrich needs the pase/enrich edit of issue 13 item 4 "
                    "(an enrichment field on PaseConfig, build_modules by architecture)")
def test_the_three_scenarios_train_a_pase_plus_as_wu_describes(tiny_corpus, tmp_path):
    """Sec. 2.2: supervised from scratch (random encoder, trained), frozen (pre-trained encoder fixed),
    fine-tuned (pre-trained encoder trained), each with the MLP on the mean-pooled output."""
    from m3bert.enrich import load_config, run_enrich
    from m3bert.enrich.config import SCENARIOS
    from m3bert.models.hub import load_encoder
    from m3bert.tasks.registry import load_task

    spec = "random:pase+-tiny:3"  # stands in for a pre-trained PASE+ (any model folder or run works the same)
    base = load_encoder(spec)[0].state_dict()
    dance = load_task(f"builtin-dance:{tiny_corpus}")  # the first 2 s of each clip: the scenarios, not the music, are tested
    dance = dataclasses.replace(dance, clips=[dataclasses.replace(c, start=0.0, end=2.0) for c in dance.clips])
    moved = {}
    for scenario in SCENARIOS:
        # Wu's classifier on the toolkit's enrich model: a 512-wide layer (here per frame, before the mean
        # pooling), then the output layer; no dropout
        cfg = load_config(None, [f"scenario={scenario}", "epochs=1", "batch_size=4", "enrichment.dim=512",
                                 "enrichment.dropout=0", "heads.hidden=0", "optim.lr=1e-3", "encoder_lr_scale=1"])
        summary = run_enrich(cfg, model=spec, tasks=[dance], out=tmp_path / scenario, progress=False)
        assert summary["scenario"] == scenario and 0.0 <= summary["test"]["builtin-dance"]["macro_f1"] <= 1.0
        model = load_encoder(tmp_path / scenario)[0]
        assert model.architecture == "pase+" and model.enrichment is not None
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("enrichment.")}
        assert set(state) == set(base)
        moved[scenario] = {k: float((state[k].float() - base[k].float()).abs().max()) for k in base}
        states = model(torch.zeros(1, 20, 160).uniform_(-0.1, 0.1))
        assert len(states) == 4 and states[-1].shape == (1, 20, 512) and model.layer_dims[-1] == 512
    assert max(moved["frozen"].values()) == 0.0  # weights and batch-norm statistics untouched
    conv = "blocks.0.conv.weight"
    assert 0.0 < moved["finetune"][conv] < moved["scratch"][conv]  # fine-tuning starts from the pre-trained weights
