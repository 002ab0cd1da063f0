"""Runner, feature cache and report on synthetic tasks (a fake representation: no audio, no model)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from m3bert.core.errors import AudioError, DataError
from m3bert.evaluate.baselines import ChanceBaseline
from m3bert.evaluate.cache import FeatureCache
from m3bert.evaluate.report import Figure, Section, Table
from m3bert.evaluate.representations import Representation
from m3bert.evaluate.runner import run_benchmark
from m3bert.tasks.registry import Clip, Task, TaskData

FAST = {"hidden": (16,), "lrs": (1e-3, 1e-2), "max_epochs": 12, "early_stop_patience": 4, "lr_plateau_patience": 2,
        "bf16": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


class FakeRep(Representation):
    """Features = a class-dependent centre in layer 1 (scaled by ``signal``) + per-clip noise."""

    kind = "fake"

    def __init__(self, name: str, signal: float, *, fail_ids: set[str] = frozenset(), crash_at: int | None = None):
        self.name, self.signal, self.fail_ids, self.crash_at = name, signal, set(fail_ids), crash_at
        self.calls = 0

    @property
    def cache_key(self) -> str:
        return f"fake:{self.name}:{self.signal}"

    @property
    def layer_names(self) -> list[str]:
        return ["input", "layer1"]

    def embed_clip(self, clip: Clip, *, pooling: str = "mean") -> np.ndarray:
        self.calls += 1
        if self.crash_at is not None and self.calls > self.crash_at:
            raise KeyboardInterrupt  # an interrupted extraction
        if clip.clip_id in self.fail_ids:
            raise AudioError(f"{clip.path}: unreadable or corrupt audio file (test)")
        r = np.random.default_rng(int(clip.clip_id.split("-")[1]))
        x = r.normal(size=(2, 8)).astype(np.float32)
        label = clip.target if isinstance(clip.target, (int, np.integer)) else int(np.argmax(clip.target))
        x[1, label] += self.signal * 3
        return x


def synthetic_task(n=90, n_classes=3, name="synth-genre", label_type="multiclass", taxonomy="high-level", metrics=None,
                   split_source="predefined"):
    clips = []
    for i in range(n):
        split = ["train", "train", "train", "valid", "test"][i % 5]
        c = i % n_classes
        target = c if label_type == "multiclass" else np.eye(n_classes, dtype=np.float32)[c]
        clips.append(Clip(f"clip-{i}", f"/nowhere/{i}.wav", target, split, group=f"song{i}"))
    data = TaskData(name, label_type, [f"c{k}" for k in range(n_classes)], clips, skipped=[("/nowhere/x.wav", "missing")],
                    split_source=split_source)
    metrics = metrics or (["accuracy", "macro_f1"] if label_type == "multiclass" else ["roc_auc_macro", "pr_auc_macro"])
    task = Task(name, label_type, taxonomy, metrics, loader=lambda root, **kw: data,
                score_metrics=metrics if label_type == "multilabel" else None)
    return task, data.validate()


def test_benchmark_report_numbers_come_from_results_json(tmp_path):
    reps = [FakeRep("strong", 1.0), FakeRep("weak", 0.0), ChanceBaseline()]
    tasks = [synthetic_task(), synthetic_task(name="synth-tags", label_type="multilabel", taxonomy="acoustic")]
    extra = Section("Masking ablation", text="A demo section.", table=Table(["policy", "accuracy"], [["CFM", 0.61234]]),
                    figures=[Figure("a plot", b"\x89PNG fake")])
    run_benchmark(reps, tasks, protocol="marble", seeds=2, out_dir=tmp_path / "rep", cache_dir=tmp_path / "cache",
                  progress=False, probe_overrides=FAST, sections=[extra])
    out = tmp_path / "rep"
    for f in ("results.json", "report.md", "report.html"):
        assert (out / f).is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["seeds"] == [0, 1] and on_disk["protocol"]["probe"]["hidden"] == [16]
    assert on_disk["sections"][0]["title"] == "Masking ablation"

    by = {(r["representation"], r["task"]): r for r in on_disk["results"]}
    strong, weak = by[("strong", "synth-genre")], by[("weak", "synth-genre")]
    assert strong["summary"]["metrics"]["accuracy"]["mean"] > 0.9
    assert weak["summary"]["metrics"]["accuracy"]["mean"] < 0.6
    assert by[("chance", "synth-genre")]["summary"]["metrics"]["accuracy"]["mean"] == pytest.approx(1 / 3, abs=0.01)
    assert by[("chance", "synth-tags")]["summary"]["metrics"]["roc_auc_macro"]["mean"] == 0.5
    assert [r["seed"] for r in strong["runs"]] == [0, 1]
    best = [c for c in on_disk["comparisons"] if c["task"] == "synth-genre" and c["is_best"]]
    assert best[0]["representation"] == "strong"

    # every "mean ± ci" in the markdown main table is a number of results.json
    md = (out / "report.md").read_text()
    table = md.split("## Results")[1].split("## ")[0]
    lines = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| representation")]
    header = [h.strip() for h in table.split("| representation")[1].splitlines()[0].split("|")[1:-1]]
    assert len(lines) == 3
    for line in lines:
        cells = [c.strip().strip("*").replace(" ≈", "") for c in line.strip("|").split("|")]
        rep = cells[0]
        for col, cell in zip(header, cells[1:]):
            task, metric = col.split(" ")
            r = by[(rep, task)]["summary"]
            s = r["score"] if metric == "score" else r["metrics"][metric]
            mean, ci = (float(v) for v in cell.split(" ± "))
            assert mean == pytest.approx(s["mean"], abs=5e-4) and ci == pytest.approx(s["half_width"], abs=5e-4)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # task bars, taxonomy, the extra section's figure
    assert "Masking ablation" in html and "0.612" in html
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1))
    assert png.startswith(b"\x89PNG")
    assert (out / "figures" / "figure-01.png").is_file()


def test_feature_cache_extracts_once_and_resumes(tmp_path):
    task, data = synthetic_task(n=150)
    cache = FeatureCache(tmp_path)
    crashing = FakeRep("m", 1.0, crash_at=100)  # dies inside the second part of 64 clips
    with pytest.raises(KeyboardInterrupt):
        cache.get(crashing, task.name, data.clips)
    rep = FakeRep("m", 1.0)
    got = cache.get(rep, task.name, data.clips)
    assert rep.calls == 150 - 64  # part 0 was kept
    assert got.features.shape == (150, 2, 8) and got.ok.all()
    again = FakeRep("m", 1.0)
    got2 = cache.get(again, task.name, data.clips)
    assert again.calls == 0 and got2.from_cache
    np.testing.assert_array_equal(got.features, got2.features)
    fresh = FakeRep("m", 1.0)
    np.testing.assert_array_equal(fresh.embed_clips(data.clips), got.features)
    # another clip set or pooling is another entry
    assert cache.get(FakeRep("m", 1.0), task.name, data.clips[:10]).features.shape[0] == 10


def test_failed_clips_raise_or_are_skipped_and_recorded(tmp_path):
    task, data = synthetic_task(n=60)
    bad = FakeRep("m", 1.0, fail_ids={"clip-3", "clip-7"})
    with pytest.raises(AudioError, match="corrupt"):
        run_benchmark([bad], [(task, data)], seeds=1, progress=False, probe_overrides=FAST, cache_dir=tmp_path)
    res = run_benchmark([FakeRep("m", 1.0, fail_ids={"clip-3", "clip-7"})], [(task, data)], seeds=1, progress=False,
                        probe_overrides=FAST, cache_dir=tmp_path, skip_missing=True)
    row = res["results"][0]
    assert sorted(f["clip_id"] for f in row["failures"]) == ["clip-3", "clip-7"]
    run = row["runs"][0]
    assert run["n_train"] + run["n_valid"] + run["n_test"] == 58
    assert res["tasks"][0]["skipped"] == [["/nowhere/x.wav", "missing"]]


def test_kim_protocol_draws_a_new_group_split_per_seed_without_a_predefined_split(tmp_path):
    task, data = synthetic_task(n=60, split_source="random")  # a task whose loader drew its split (DEAM, Ballroom)
    res = run_benchmark([FakeRep("m", 1.0)], [(task, data)], protocol="kim", seeds=2, progress=False,
                        probe_overrides={"max_epochs": 10, "hidden": (16, 16), "bf16": False})
    runs = res["results"][0]["runs"]
    assert all(r["n_valid"] == 0 and r["n_test"] == 12 and r["split"] == "random" for r in runs)  # 80/20 of 60 songs
    assert runs[0]["metrics"] != runs[1]["metrics"] or runs[0]["selected"] != runs[1]["selected"]
    assert res["protocol"]["pooling"] == "slices-meanstd" and res["protocol"]["split"] == "predefined-else-random"
    assert res["results"][0]["split"] == "random" and res["tasks"][0]["split_source"] == "random"


def test_kim_protocol_uses_the_predefined_split_where_one_exists(tmp_path):
    """Kim et al. used a task's predefined split (train + valid vs test); before, every seed drew a
    random 80/20 split (48 / 12 here) even for a task with official lists."""
    task, data = synthetic_task(n=60)  # predefined: 36 train / 12 valid / 12 test
    for c in data.split("test")[6:]:
        c.split = "train"  # 42 / 12 / 6: a 20 % random split would test on 12
    res = run_benchmark([FakeRep("m", 1.0)], [(task, data)], protocol="kim", seeds=2, progress=False,
                        probe_overrides={"max_epochs": 10, "hidden": (16, 16), "bf16": False}, out_dir=tmp_path / "r")
    row = res["results"][0]
    assert row["split"] == "predefined" and res["tasks"][0]["split_source"] == "predefined"
    for r in row["runs"]:
        assert r["split"] == "predefined"
        assert (r["n_train"], r["n_valid"], r["n_test"]) == (54, 0, 6)  # train + valid vs the predefined test
    on_disk = json.loads((tmp_path / "r" / "results.json").read_text())
    assert on_disk["results"][0]["runs"][0]["split"] == "predefined"
    tasks_md = (tmp_path / "r" / "report.md").read_text().split("## Tasks")[1]
    assert "predefined" in tasks_md


def test_write_report_rejects_ragged_section_tables(tmp_path):
    with pytest.raises(DataError, match="cells"):
        Section("x", table=Table(["a", "b"], [[1]])).to_dict()


def test_tasks_sharing_audio_embed_each_clip_once(tmp_path):
    """Clips of one file labelled for several tasks (MTG-Jamendo's tag sets, the built-in tunes) are
    embedded once per representation in a benchmark run, with identical rows in every task."""
    task_a, data_a = synthetic_task(n=40, name="synth-a")
    task_b, data_b = synthetic_task(n=40, name="synth-b", label_type="multilabel")
    for k, (ca, cb) in enumerate(zip(data_a.clips, data_b.clips)):  # real files: signatures carry size + mtime
        path = tmp_path / "audio" / f"{k}.wav"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"RIFF")
        ca.path = cb.path = path
    cache = FeatureCache(tmp_path)
    rep = FakeRep("m", 1.0)
    got_a = cache.get(rep, task_a.name, data_a.clips)
    assert rep.calls == 40
    got_b = cache.get(rep, task_b.name, data_b.clips[::-1])  # same audio, other task, other order
    assert rep.calls == 40
    np.testing.assert_array_equal(got_b.features[::-1], got_a.features)
    # a bounded memo still gives the same rows, it just embeds again
    small = FeatureCache(tmp_path / "small", memo_bytes=0)
    rep2 = FakeRep("m", 1.0)
    small.get(rep2, task_a.name, data_a.clips)
    np.testing.assert_array_equal(small.get(rep2, task_b.name, data_b.clips).features, got_a.features)
    assert rep2.calls == 80


class LayeredRep(FakeRep):
    """Hidden state 0 named "input" (as an m3bert model's), then ``n - 1`` transformer layers."""

    def __init__(self, name, n_states):
        super().__init__(name, 1.0)
        self.n_states = n_states

    @property
    def cache_key(self) -> str:
        return f"layered:{self.n_states}"

    @property
    def layer_names(self) -> list[str]:
        return ["input"] + [f"layer{i}" for i in range(1, self.n_states)]

    def embed_clip(self, clip, *, pooling="mean"):
        x = super().embed_clip(clip, pooling=pooling)  # (2, 8): noise, signal
        return np.concatenate([x[:1]] * (self.n_states - 1) + [x[1:]])[: self.n_states]


def test_marble_weighted_sum_mixes_layers_1_to_L_not_the_input_embedding(tmp_path):
    task, data = synthetic_task(n=60)
    over = {**FAST, "layers": "weighted", "lrs": (1e-2,)}
    res = run_benchmark([LayeredRep("three", 3)], [(task, data)], seeds=1, progress=False, probe_overrides=over)
    sel = res["results"][0]["runs"][0]["selected"]
    assert sel["layer"] == "weighted" and sel["mixed_layers"] == [1, 2]
    assert len(sel["layer_weights"]) == 2  # L weights for L transformer layers (was L + 1, the input included)
    # the default grid: each hidden state (input included) + one weighted sum of layers 1..L
    res = run_benchmark([LayeredRep("three", 3)], [(task, data)], seeds=1, progress=False, probe_overrides=FAST)
    assert res["results"][0]["runs"][0]["selected"]["layer"] in ("0", "1", "2", "weighted")


def test_a_model_with_a_single_hidden_state_is_probed_on_it(tmp_path):
    task, data = synthetic_task(n=60)
    for layers in ("each+weighted", "weighted"):
        res = run_benchmark([LayeredRep("one", 1)], [(task, data)], seeds=1, progress=False,
                            probe_overrides={**FAST, "layers": layers})
        sel = res["results"][0]["runs"][0]["selected"]
        assert sel["layer"] == "0" and sel["layer_name"] == "input" and sel["layer_weights"] is None
