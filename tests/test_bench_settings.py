"""Several probing settings in one benchmark run: shared features, side-by-side report, which layer won."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from m3bert.core.errors import ConfigError
from m3bert.evaluate.baselines import ChanceBaseline
from m3bert.evaluate.probe_grid import ProbeConfig
from m3bert.evaluate.probes import Setting, get_protocol, layer_selection, parse_setting, run_probe
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks import metrics as M
from tests.test_bench_runner import FAST, FakeRep, synthetic_task


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


class PoolingRep(FakeRep):
    """Three hidden states: "input" (noise), "layer1" (the label), "layer2" (noise, the last layer).
    ``meanstd`` doubles the width. Counts its extractions per pooling."""

    poolings = ("mean", "meanstd")

    def __init__(self, name):
        super().__init__(name, 1.0)
        self.by_pooling: dict[str, int] = {}

    @property
    def layer_names(self):
        return ["input", "layer1", "layer2"]

    def embed_clip(self, clip, *, pooling="mean"):
        self.by_pooling[pooling] = self.by_pooling.get(pooling, 0) + 1
        x = super().embed_clip(clip, pooling=pooling)  # (2, 8): noise, signal
        r = np.random.default_rng(1000 + int(clip.clip_id.split("-")[1]))
        out = np.stack([x[0], x[1], r.normal(size=8).astype(np.float32)])
        return np.concatenate([out, np.abs(out)], -1) if pooling == "meanstd" else out


def test_settings_share_features_and_are_reported_side_by_side(tmp_path):
    task, data = synthetic_task(n=60)
    rep = PoolingRep("m")
    res = run_benchmark([rep, ChanceBaseline()], [(task, data)], seeds=2, progress=False, probe_overrides=FAST,
                        settings=["paper", "marble", "marble-meanstd", "l1=1:mean"], out_dir=tmp_path / "r",
                        cache_dir=tmp_path / "cache")
    # one extraction per pooling, shared by the settings that pool alike
    assert rep.by_pooling == {"mean": 60, "meanstd": 60}
    assert [s["name"] for s in res["settings"]] == ["paper", "marble", "marble-meanstd", "l1"]
    rows = {(r["setting"], r["representation"]): r for r in res["results"]}
    assert len(rows) == 8
    assert rows[("paper", "m")]["layers"] == "last" and rows[("paper", "m")]["pooling"] == "mean"
    assert rows[("marble-meanstd", "m")]["feature_shape"] == [3, 16]
    assert rows[("l1", "m")]["layers"] == [1]
    # same seeds and split in every setting; the output layer is noise, layer 1 the label
    assert rows[("paper", "m")]["summary"]["score"]["mean"] < 0.6
    assert rows[("l1", "m")]["summary"]["score"]["mean"] > 0.9
    assert all(run["selected"]["layer_name"] == "layer2" for run in rows[("paper", "m")]["runs"])
    won = {(w["setting"], w["representation"]): w for w in res["layer_selection"]}
    assert won[("paper", "m")]["layer"] == "layer2" and won[("paper", "m")]["count"] == 2
    assert won[("l1", "m")]["layer"] == "layer1"
    assert ("paper", "chance") not in won  # nothing is selected for chance
    # comparisons and taxonomy are per setting
    best = {(c["setting"], c["task"]): c["best"] for c in res["comparisons"] if c["is_best"]}
    assert best[("l1", task.name)] == "m"
    assert {t["setting"] for t in res["taxonomy"]} == {"paper", "marble", "marble-meanstd", "l1"}
    # the report shows the settings side by side with the layer that won
    on_disk = json.loads((tmp_path / "r" / "results.json").read_text())
    assert on_disk["layer_selection"] == res["layer_selection"]
    md = (tmp_path / "r" / "report.md").read_text()
    side = md.split("## Settings side by side")[1].split("## ")[0]
    header = [l for l in side.splitlines() if l.startswith("| task")][0]
    assert "paper (last, mean)" in header and "marble-meanstd (each+weighted, meanstd)" in header
    line = [l for l in side.splitlines() if l.startswith(f"| {task.name} | m |")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2].endswith("[layer2 (2/2))]") or "[layer2 (2/2)]" in cells[2]
    assert "[layer1 (2/2)]" in cells[5]
    assert "## Which layer won" in md and "## Results: setting marble" in md
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Settings side by side" in html and "**" not in html and "[layer1 (2/2)]" in html
    # a second run reuses the on-disk cache for both poolings
    again = PoolingRep("m")
    run_benchmark([again], [(task, data)], seeds=1, progress=False, probe_overrides=FAST,
                  settings=["paper", "marble-meanstd"], cache_dir=tmp_path / "cache", power=False)
    assert again.by_pooling == {}


def test_without_settings_the_numbers_are_the_protocols():
    """No ``settings``: one setting named after the protocol with its layers and pooling, and the same
    numbers as that setting asked explicitly and as the probe run by hand on the predefined split."""
    task, data = synthetic_task(n=60)
    plain = run_benchmark([FakeRep("m", 1.0)], [(task, data)], seeds=2, progress=False, probe_overrides=FAST)
    proto = get_protocol("marble")
    asked = run_benchmark([FakeRep("m", 1.0)], [(task, data)], seeds=2, progress=False, probe_overrides=FAST,
                          settings=[Setting("marble", proto.probe.layers, proto.pooling)])
    assert plain["settings"] == [{"name": "marble", "layers": "each+weighted", "pooling": "mean",
                                  "description": "the protocol's layers and pooling"}]
    a, b = plain["results"][0], asked["results"][0]
    assert a["setting"] == "marble" and [r["score"] for r in a["runs"]] == [r["score"] for r in b["runs"]]
    feats = FakeRep("m", 1.0).embed_clips(data.clips)
    y = data.target_matrix(data.clips)
    split = np.array([c.split for c in data.clips])
    cfg = dataclasses.replace(ProbeConfig(), **FAST)
    for seed, run in zip((0, 1), a["runs"]):
        out = run_probe(feats[split == "train"], y[split == "train"], feats[split == "test"], label_type="multiclass",
                        n_outputs=3, config=cfg, seed=seed, score_fn=lambda t, p, m: M.accuracy(t, p),
                        x_valid=feats[split == "valid"], y_valid=y[split == "valid"], mix_layers=[1])
        assert run["metrics"]["accuracy"] == M.accuracy(y[split == "test"], out.test_pred)


def test_layer_won_on_a_constructed_case():
    results = [
        {"setting": "marble", "representation": "enc", "task": "t", "layer_names": ["input", "layer1", "layer2"],
         "runs": [{"selected": {"layer": "1", "layer_name": "layer1"}},
                  {"selected": {"layer": "weighted", "layer_weights": [0.2, 0.8], "mixed_layers": [1, 2]}},
                  {"selected": {"layer": "1", "layer_name": "layer1"},
                   "folds": [{"selected": {"layer": "2", "layer_name": "layer2"}},
                             {"selected": {"layer": "weighted", "layer_weights": [0.4, 0.6], "mixed_layers": [1, 2]}},
                             {"selected": {"layer": "1", "layer_name": "layer1"}}]}]},
        {"setting": "marble", "representation": "tie", "task": "t", "layer_names": ["input", "layer1"],
         "runs": [{"selected": {"layer": "weighted", "layer_weights": [1.0], "mixed_layers": [1]}},
                  {"selected": {"layer": "0", "layer_name": "input"}}]},
        {"setting": "marble", "representation": "chance", "task": "t", "layer_names": ["none"],
         "runs": [{"selected": {"predictor": "chance"}}]},
    ]
    won = {w["representation"]: w for w in layer_selection(results)}
    assert set(won) == {"enc", "tie"}
    enc = won["enc"]  # picks: layer1, weighted, then the three folds of run 3 (layer2, weighted, layer1)
    assert enc["n"] == 5 and enc["counts"] == {"layer1": 2, "layer2": 1, "weighted": 2}
    assert enc["layer"] == "layer1" and enc["count"] == 2  # a tie with "weighted" goes to the earlier layer
    assert enc["weights"] == {"layer1": 0.3, "layer2": 0.7} and enc["top_layer"] == "layer2"
    assert won["tie"]["layer"] == "input" and won["tie"]["top_layer"] == "layer1"


def test_setting_specs_and_early_pooling_errors():
    assert parse_setting("marble").layers == "each+weighted"
    s = parse_setting("out=last:meanstd")
    assert (s.name, s.layers, s.pooling) == ("out", "last", "meanstd")
    assert parse_setting("two=1,2").layers == (1, 2) and parse_setting("two=1,2").pooling is None
    for bad in ("nonesuch", "x=middle:mean", "=last", ""):
        with pytest.raises(ConfigError):
            parse_setting(bad)
    task, data = synthetic_task(n=30)
    rep = FakeRep("m", 1.0)
    rep.poolings = ("mean",)  # a representation that can only time-average
    with pytest.raises(ConfigError, match="cannot pool 'meanstd'"):
        run_benchmark([rep], [(task, data)], seeds=1, progress=False, settings=["marble-meanstd"])
    assert rep.calls == 0  # refused before any extraction
    with pytest.raises(ConfigError, match="unique"):
        run_benchmark([rep], [(task, data)], seeds=1, progress=False, settings=["paper", "paper=last:mean"])
    with pytest.raises(ConfigError, match="pairs"):
        run_benchmark([rep], [(task, data)], seeds=1, progress=False, pairs=[("m", "nobody")])


def test_cli_settings_kfold_and_pairs(tmp_path, capsys):
    """``m3bert bench --setting ... --split kfold --pair A::B`` on click tracks of two tempo classes."""
    import soundfile as sf

    from m3bert.app.cli import main
    from tests.test_rhythm import SR, clicks

    for cls, bpm in (("slow", 80.0), ("fast", 120.0)):
        for i in range(6):
            path = tmp_path / "data" / cls / f"{cls}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, clicks(bpm * (1 + 0.01 * i), seconds=3.0, offset=0.05 * i), SR)
    out = tmp_path / "report"
    rc = main(["bench", "--baseline", "tempogram-stats", "--baseline", "chance", "--task", f"folder:{tmp_path / 'data'}",
               "--protocol", "linear", "--seeds", "1", "--max-epochs", "20", "--setting", "paper", "--setting", "marble",
               "--split", "kfold", "--folds", "3", "--pair", "tempogram-stats::chance", "--report", str(out), "--quiet",
               "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in res["settings"]] == ["paper", "marble"] and res["split"] == "kfold"
    assert all(r["runs"][0]["n_test"] == 12 and len(r["runs"][0]["folds"]) == 3 for r in res["results"])
    tempo = [r for r in res["results"] if r["representation"] == "tempogram-stats"]
    assert all(r["summary"]["score"]["mean"] >= 0.75 for r in tempo)  # the tempogram separates 80 from 120 BPM
    pairs = {p["setting"]: p for p in res["pairs"]}
    assert set(pairs) == {"paper", "marble"} and pairs["paper"]["a"] == "tempogram-stats"
    assert pairs["paper"]["difference"] >= 0.25 and pairs["paper"]["decided"]
    assert {p["setting"] for p in res["power"]} == {"paper", "marble"}
    md = (out / "report.md").read_text()
    assert "## Paired comparisons on the test clips" in md and "tempogram-stats better" in md
    assert main(["bench", "--baseline", "chance", "--task", "builtin-dance", "--pair", "chance", "--report",
                 str(tmp_path / "x")]) == 1
    assert "--pair 'chance': expected A::B" in capsys.readouterr().err
