"""The whole pipeline end to end (tiny preset, real music from a fake .deb): every stage runs, the
report is consistent with results.json, the learning curve starts at the untrained twin, the
diagnostics reproduce the run's validation, the M3BERT model is a real enrichment of the M2BERT
encoder, a rerun resumes, and without real music the demo falls back to the built-in corpus."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_real_music import FakeDownloader, make_fake_deb

from m3bert.app import demo_stages as st
from m3bert.app.demo import DemoConfig, Stages, demo_config, run_demo
from m3bert.app.demo_evidence import data_section, pair_of
from m3bert.app.demo_report import score_of

STAGES = {"corpus", "music", "features", "music-features", "pretrain", "diagnostics", "enrich", "export", "bench",
          "curve", "analysis", "ablation"}


@pytest.fixture(scope="module")
def demo_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    deb = make_fake_deb(tmp_path_factory.mktemp("deb"))
    cfg = demo_config("tiny", bench_seeds=2, ablation="masking", pretrain_data="real+builtin",
                      music_packages="hyperrogue-music", music_min_seconds=1.0)
    torch.set_num_threads(1)  # tiny probes: one thread is ~10x faster than two on a shared machine (measured)
    lines: list[str] = []
    results = run_demo(out, config=cfg, progress=False, say=lines.append, corpus=tiny_corpus,
                       music_downloader=FakeDownloader(deb))
    return out, cfg, results, lines, deb


def test_every_stage_ran_and_wrote_the_report(demo_run):
    out, cfg, results, lines, _deb = demo_run
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    assert stages == STAGES
    for name in ("report.html", "report.md", "report.json", "results.json", "diagnostics.json", "music/manifest.json"):
        assert (out / name).is_file(), name
    reps = [r["name"] for r in results["representations"]]
    assert reps == ["M3BERT", "M2BERT", "M2BERT, no pre-training", "mfcc", "raw", "tempogram-stats", "chance"]
    tasks = {t["name"] for t in results["tasks"]}
    assert tasks == {f"builtin-{t}" for t in cfg.bench_tasks}
    assert [s["name"] for s in results["settings"]] == list(cfg.settings)
    assert set(cfg.held_out) == {"key", "pitch", "instrument"}
    md = (out / "report.md").read_text()
    for title in ("What this demo shows", "Pre-training data", "Answers: does pre-training help",
                  "Learning curve: probe score", "Masked reconstruction against trivial predictors", "held out",
                  "Masking ablation", "Interpretability: units vs audio descriptors"):
        assert title in md, title
    assert "real recorded music" in md and "hyperrogue-music" in md
    # pre-training read the real music and the built-in corpus
    pre = json.loads((out / "stages" / "pretrain.json").read_text())["summary"]
    assert pre["data"] == "real+builtin" and len(pre["stores"]) == 2
    run = json.loads((out / "runs" / "m2bert" / "run.json").read_text())
    assert run["store"] == [str(out / "music_store"), str(out / "store")]
    for name in ("m2bert", "m3bert"):
        res = json.loads((out / "analysis" / name / "analysis.json").read_text())
        assert res["inputs"]["task"]["split"] == "test" and res["inputs"]["n_done"] == cfg.analysis_clips
    summary = "\n".join(lines)
    assert "m3bert demo: summary" in summary and "Answers (setting paper" in summary
    assert "Learning curve (held-out task score by pre-training step)" in summary


def test_report_numbers_come_from_results(demo_run):
    out, cfg, results, _lines, _deb = demo_run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(results["results"]))
    md = (out / "report.md").read_text()
    # every M2BERT-vs-M3BERT cell in the report is the rounded mean of results.json (headline setting)
    section = md.split("M2BERT vs M3BERT (enrichment")[1]
    seen = 0
    for row in section.splitlines():
        m = re.match(r"\| (builtin-[\w-]+) \| (enrichment|held out) \| ([-\d.]+)", row)
        if m:
            seen += 1
            want = score_of(results, "M2BERT", m.group(1), cfg.headline_setting)["mean"]
            assert float(m.group(3)) == pytest.approx(want, abs=6e-4)
    assert seen == len(cfg.bench_tasks)
    # the answers table shows the paired differences of results.json
    answers = [s for s in on_disk["sections"] if s["title"].startswith("Answers")][0]
    assert len(answers["table"]["rows"]) == len(cfg.settings) * len(cfg.bench_tasks)
    for row in answers["table"]["rows"]:
        p = pair_of(results, "M2BERT", "M2BERT, no pre-training", row[1], row[0])
        assert row[4].startswith(f"{p['difference']:+.3f}")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # loss curve, learning curve, trivial predictors


def test_learning_curve_starts_at_the_untrained_twin(demo_run):
    out, cfg, results, _lines, _deb = demo_run
    curve = json.loads((out / "curve" / "results.json").read_text())
    assert [r["name"] for r in curve["representations"]] == ["step 0", "step 6", "step 12"]
    assert {t["name"] for t in curve["tasks"]} == {f"builtin-{t}" for t in cfg.held_out}
    assert (out / "runs" / "m2bert" / "checkpoints" / "step-00000006").is_dir()
    for t in cfg.held_out:
        task = f"builtin-{t}"
        twin = [r for r in results["results"] if r["representation"] == "M2BERT, no pre-training"
                and r["task"] == task and r["setting"] == cfg.headline_setting][0]
        step0 = [r for r in curve["results"] if r["representation"] == "step 0" and r["task"] == task][0]
        # same model, features, seeds and splits: the same probe scores as the benchmark's untrained twin
        assert [x["score"] for x in step0["runs"]] == pytest.approx([x["score"] for x in twin["runs"]])
        assert pair_of(curve, "step 12", "step 0", task, None) is not None


def test_diagnostics_reproduce_the_runs_validation(demo_run):
    out, cfg, _results, _lines, _deb = demo_run
    diag = json.loads((out / "diagnostics.json").read_text())
    assert [c["step"] for c in diag["checkpoints"]] == [0, 6, 12]
    assert diag["combos"] == ["cfm+ccm", "cfm", "ccm"]
    logged = [json.loads(x) for x in (out / "runs" / "m2bert" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in logged if "val/loss[cfm+ccm]" in r}
    for ck in diag["checkpoints"][1:]:
        assert ck["loss"]["cfm+ccm"] == pytest.approx(val[ck["step"]]["val/loss[cfm+ccm]"], rel=1e-5)
    assert set(diag["predictors"]) == {"zeros", "channel_mean", "nearest_frame"}


def test_m3bert_model_is_the_frozen_m2bert_plus_enrichment(demo_run):
    from m3bert.models.encoder import Encoder

    out, _cfg, _results, _lines, _deb = demo_run
    m2 = Encoder.from_pretrained(out / "models" / "m2bert")
    m3 = Encoder.from_pretrained(out / "models" / "m3bert")
    assert m2.enrichment is None and m3.enrichment is not None
    assert m3.n_hidden_states == m2.n_hidden_states + 1
    s2, s3 = m2.state_dict(), m3.state_dict()
    for k, v in s2.items():  # frozen scenario: the encoder weights are unchanged
        assert torch.equal(v, s3[k]), k
    x = torch.randn(1, 40, m2.cfg.n_input)
    with torch.no_grad():
        a, b = m2.eval()(x), m3.eval()(x)
    np.testing.assert_allclose(a[-1].numpy(), b[-2].numpy(), atol=1e-6)


def test_rerun_reuses_every_stage(demo_run, tiny_corpus):
    out, cfg, results, _lines, deb = demo_run
    lines: list[str] = []
    dl = FakeDownloader(deb)
    again = run_demo(out, config=cfg, progress=False, say=lines.append, corpus=tiny_corpus, music_downloader=dl)
    reused = [line for line in lines if "reusing the result" in line]
    assert len(reused) == len(STAGES), lines
    assert dl.calls == []
    assert again["results"] == json.loads(json.dumps(results["results"]))


def test_a_rerun_with_other_enrichment_redoes_it(demo_run, tiny_corpus):
    """Changing a stage's settings reruns that stage on top of the old outputs (no 'exists' refusal);
    the stages it does not depend on are reused. (Runs last on demo_run: it changes the outputs.)"""
    out, cfg, _results, _lines, deb = demo_run
    other = demo_config("tiny", bench_seeds=2, ablation="masking", pretrain_data="real+builtin",
                        music_packages="hyperrogue-music", music_min_seconds=1.0, enrich_epochs=1)
    lines: list[str] = []
    run_demo(out, config=other, progress=False, say=lines.append, corpus=tiny_corpus,
             music_downloader=FakeDownloader(deb))
    ran = {m.group(1) for m in map(re.compile(r"\[(\S+)\] running").match, lines) if m}
    assert ran == {"enrich", "export", "bench", "analysis"}, lines
    assert json.loads((out / "runs" / "m3bert" / "run.json").read_text())["config"]["epochs"] == 1


def test_without_real_music_the_demo_falls_back(tmp_path, tiny_corpus):
    deb = make_fake_deb(tmp_path)
    cfg = demo_config("tiny", pretrain_data="real", music_packages="hyperrogue-music")
    summary = st.gather_music(cfg, tmp_path / "music", say=lambda m: None,
                              downloader=FakeDownloader(deb, fail=("hyperrogue-music",)))
    assert summary["n_files"] == 0 and summary["failed"][0]["package"] == "hyperrogue-music"
    # a failed gather is not recorded as done: a rerun tries the network again
    stages = Stages(tmp_path / "out", say=lambda m: None)
    stages.run("music", ["k"], lambda: summary, keep=lambda s: s["n_files"] > 0)
    assert not (tmp_path / "out" / "stages" / "music.json").exists()
    sec = data_section(cfg, {"music": {"summary": summary, "seconds": 1.0}, "pretrain": {"summary": {"data": "builtin"}}})
    assert "fell back to the built-in corpus" in sec.text and "built-in corpus" in sec.text


def test_bad_demo_config_is_refused():
    from m3bert.core.errors import ConfigError

    with pytest.raises(ConfigError, match="masking"):
        DemoConfig(masking="cfm+xyz")
    with pytest.raises(ConfigError, match="unknown task"):
        DemoConfig(enrich_tasks=("dance", "genre"))
    with pytest.raises(ConfigError, match="preset"):
        demo_config("huge")
    with pytest.raises(ConfigError, match="pretrain_data"):
        DemoConfig(pretrain_data="internet")
    with pytest.raises(ConfigError, match="headline_setting"):
        DemoConfig(settings=("paper",), headline_setting="marble")
    with pytest.raises(ConfigError, match="not registered"):
        DemoConfig(music_packages="no-such-data")
    long, small = demo_config("long"), demo_config("small")
    assert long.pretrain_steps >= 8 * small.pretrain_steps and long.music_packages == "full"
    assert long.split == "heldout-kfold"
    assert "marble" in long.settings and long.keep_every * long.curve_points == long.pretrain_steps


def test_heldout_kfold_cross_validates_only_the_held_out_tasks():
    cfg = demo_config("small", split="heldout-kfold")
    kw = st.bench_kwargs(cfg)
    assert kw["split"] == {"*": "predefined", **{f"builtin-{t}": "kfold" for t in cfg.held_out}}
    assert kw["n_folds"] == cfg.n_folds and not set(cfg.held_out) & set(cfg.enrich_tasks)
    assert "split" not in st.bench_kwargs(demo_config("small")) or st.bench_kwargs(demo_config("small"))["split"] == "predefined"
    with pytest.raises(Exception, match="split"):
        DemoConfig(split="loo")


def test_a_changed_pretrain_request_starts_a_fresh_run(tmp_path):
    """Rerunning the demo with another step budget must not resume the old run to its old budget."""
    from conftest import make_song_store

    store = make_song_store(tmp_path, n_songs=3, seconds=8.0)
    cfg = demo_config("tiny")
    run = tmp_path / "run"
    first = st.run_pretrain(cfg, str(store), run, masking="cfm", steps=2, seed=0, progress=False)
    assert first["end_step"] == 2
    again = st.run_pretrain(cfg, str(store), run, masking="cfm", steps=3, seed=0, progress=False)
    assert again["end_step"] == 3
    assert json.loads((run / "run.json").read_text())["config"]["train"]["steps"] == 3
    # the same request again is a finished run: resumed, nothing retrained
    assert st.run_pretrain(cfg, str(store), run, masking="cfm", steps=3, seed=0, progress=False)["end_step"] == 3
