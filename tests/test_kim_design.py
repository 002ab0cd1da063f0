"""The multi-source experiment: its design (phases, balance), the statistics behind the two findings
(known effects are recovered, verdicts follow the intervals), the synthetic taste profile it writes in
the published layout, and a reduced end-to-end run of ``m3bert multisource experiment``."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from m3bert.app.cli import main
from m3bert.app.multisource_experiment import CORPUS_SETTINGS, run_experiment, synth_taste_profile, training_config
from m3bert.core.config import load_yaml
from m3bert.core.errors import ConfigError, DataError
from m3bert.enrich import load_multisource_config
from m3bert.enrich.design import MULTI, experiment_design, findings, verdict
from m3bert.models.kim import STRATEGIES
from m3bert.tasks.registry import load_task

SOURCES = ["bpm", "tag", "year", "lyrics"]


def test_design_has_the_three_phases_and_balances_sources():
    runs = experiment_design(SOURCES, seeds=[0, 1])
    phases = Counter(r.phase for r in runs)
    assert phases == {1: 8, 2: 10, 3: 20}  # SS-R per source x seed; 5 strategies x all; 5 x n in {2, 3} x seeds
    assert all(r.strategy == "ss-r" and r.n == 1 for r in runs if r.phase == 1)
    assert {(r.strategy, r.n) for r in runs if r.phase == 3} == {(s, n) for s in MULTI for n in (2, 3)}
    presence = Counter(s for r in runs if r.phase == 3 for s in r.sources)
    assert max(presence.values()) - min(presence.values()) <= 1
    assert experiment_design(SOURCES, seeds=[0, 1]) == runs  # seeded
    assert len({r.name({s: s for s in SOURCES}) for r in runs}) == len(runs)
    with pytest.raises(DataError, match="two distinct sources"):
        experiment_design(["bpm"], seeds=[0])


def _rows(effect_n: float, effect_r: float, noise: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k, run in enumerate(experiment_design(SOURCES, seeds=[0, 1, 2])):
        n_star = 0 if run.strategy == "ss-r" else run.n - 2
        base = effect_n * n_star + effect_r * STRATEGIES[run.strategy].size_code + noise * rng.standard_normal()
        for t, (mu, sd) in enumerate([(0.6, 0.05), (0.3, 0.2), (0.9, 0.01)]):
            rows.append({"run": f"r{k}", "strategy": run.strategy, "n": run.n, "task": f"t{t}",
                         "score": mu + sd * (base + 0.1 * rng.standard_normal())})
    return rows


def test_findings_recover_known_effects_and_mark_them():
    both = findings(_rows(0.5, 2.0, 0.1), n_boot=200)
    assert both["finding1"]["verdict"] == "holds" and both["finding2"]["verdict"] == "holds"
    assert both["finding2"]["model2"]["beta_r"] > 0 and both["finding1"]["estimate"] > 0
    reverse = findings(_rows(-0.5, -2.0, 0.1), n_boot=200)
    assert reverse["finding1"]["verdict"] == "does not hold" and reverse["finding2"]["verdict"] == "does not hold"
    null = findings(_rows(0.0, 0.0, 1.0, seed=3), n_boot=200)
    assert null["finding1"]["verdict"] == "within noise" and null["finding2"]["verdict"] == "within noise"
    assert set(both["strategy_means"]) == {s.label for s in STRATEGIES.values()}
    assert verdict(0.1, 0.2) == "holds" and verdict(-0.2, -0.1) == "does not hold" and verdict(-0.1, 0.1) == "within noise"


def test_corpus_settings_file_and_synthetic_taste_profile(tiny_corpus, tmp_path):
    yaml_cfg = load_multisource_config("configs/kim-corpus.yaml", ["multisource.strategy=mss-cr", "seed=1"])
    assert yaml_cfg == training_config(None, [], "mss-cr", 1)  # configs/kim-corpus.yaml = the experiment's defaults
    assert CORPUS_SETTINGS["multisource.crop_frames"] == yaml_cfg.multisource.crop_frames == 108
    assert load_yaml("configs/kim-corpus.yaml")["sampling"] == "algorithm1"
    root = synth_taste_profile(tiny_corpus, tmp_path / "taste", n_users=120, seed=0)
    lines = (root / "train_triplets.txt").read_text().splitlines()
    assert all(len(x.split("\t")) == 3 for x in lines) and len({x.split("\t")[0] for x in lines}) == 120
    data = load_task(f"taste-profile:{root}", min_users=2, min_items=2)
    assert data.label_type == "regression" and len(data.clips) > 10 and all(c.path.exists() for c in data.clips)


@pytest.mark.slow
def test_experiment_command_end_to_end_reduced(tiny_corpus, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "exp"
    argv = ["multisource", "experiment", "--corpus", str(tiny_corpus), "--out", str(out), "--sources",
            "builtin-tempo,builtin-key", "--targets", "builtin-dance", "--seeds", "1", "--probe-seeds", "2",
            "--probe-epochs", "5", "--taste-users", "0", "--set", "epochs=1", "--set", "batch_size=8",
            "--set", "multisource.crop_frames=64", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "more learning sources -> better (RQ1):" in text and "report:" in text
    res = json.loads((out / "report.json").read_text())
    assert len(res["design"]) == 2 + 5 and res["findings"]["n_runs"] == 7
    assert res["findings"]["finding1"]["verdict"] == "not estimable"  # one n among multi-source runs
    md = (out / "report.md").read_text()
    assert "| 2. less sharing / later concatenation -> better (RQ2)" in md and "| rand |" in md
    assert main(argv) == 0  # a finished experiment resumes: every run is skipped
    with pytest.raises(ConfigError, match="both a learning source and a held-out target"):
        run_experiment(tiny_corpus, out, sources=["builtin-key", "builtin-tempo"], targets=["builtin-key"])


def test_a_slope_the_design_cannot_estimate_is_said_so():
    rows = [r for r in _rows(0.5, 1.0, 0.1) if r["n"] in (1, 4)]  # SS-R and all four sources: one n among multi
    f = findings(rows, n_boot=50)
    assert f["finding1"]["verdict"] == "not estimable" and f["finding1"]["estimate"] is None
    assert f["finding2"]["verdict"] in ("holds", "does not hold", "within noise")
