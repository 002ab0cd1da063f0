"""The whole pipeline end to end (tiny preset): every stage runs, the report is consistent with
results.json, the M3BERT model is a real enrichment of the M2BERT encoder, and a rerun resumes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from m3bert.app.demo import DemoConfig, demo_config, run_demo
from m3bert.app.demo_report import score_of


@pytest.fixture(scope="module")
def demo_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo_config("tiny", bench_seeds=2, ablation="masking")
    torch.set_num_threads(2)
    lines: list[str] = []
    results = run_demo(out, config=cfg, progress=False, say=lines.append, corpus=tiny_corpus)
    return out, cfg, results, lines


def test_every_stage_ran_and_wrote_the_report(demo_run):
    out, cfg, results, lines = demo_run
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    assert stages == {"corpus", "features", "pretrain", "enrich", "export", "bench", "analysis", "ablation"}
    for name in ("report.html", "report.md", "report.json", "results.json"):
        assert (out / name).is_file(), name
    reps = [r["name"] for r in results["representations"]]
    assert reps == ["M3BERT", "M2BERT", "M2BERT, no pre-training", "mfcc", "raw", "chance"]
    tasks = {t["name"] for t in results["tasks"]}
    assert tasks == {f"builtin-{t}" for t in cfg.bench_tasks}
    # held-out tasks exist and are named as such in the report
    assert set(cfg.held_out) == {"key", "pitch", "style"}
    md = (out / "report.md").read_text()
    assert "held out" in md and "What this demo shows" in md and "Masking ablation" in md
    # the interpretability section: both models analysed on held-out clips, against random twins
    assert "Interpretability: units vs audio descriptors" in md
    sec = [s for s in json.loads((out / "report.json").read_text())["sections"] if s["title"].startswith("Interpretability")]
    assert len(sec) == 1 and "M3BERT random |r|" in sec[0]["table"]["headers"]  # (tiny preset: no figures)
    for name in ("m2bert", "m3bert"):
        res = json.loads((out / "analysis" / name / "analysis.json").read_text())
        assert res["inputs"]["task"]["split"] == "test" and res["inputs"]["n_done"] == cfg.analysis_clips
        assert list(res["models"]) == ["model", "random"]
    assert any("m3bert demo: summary" in line for line in lines)


def test_report_numbers_come_from_results(demo_run):
    out, _cfg, results, _lines = demo_run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(results["results"]))
    md = (out / "report.md").read_text()
    # every M2BERT-vs-M3BERT cell in the report is the rounded mean of results.json
    section = md.split("M2BERT vs M3BERT")[1]
    for row in section.splitlines():
        m = re.match(r"\| (builtin-\w+) \| (enrichment|held out) \| ([-\d.]+)", row)
        if m:
            assert float(m.group(3)) == pytest.approx(score_of(results, "M2BERT", m.group(1))["mean"], abs=6e-4)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html  # plots are embedded


def test_m3bert_model_is_the_frozen_m2bert_plus_enrichment(demo_run):
    from m3bert.models.encoder import Encoder

    out, _cfg, _results, _lines = demo_run
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
    out, cfg, results, _lines = demo_run
    lines: list[str] = []
    again = run_demo(out, config=cfg, progress=False, say=lines.append, corpus=tiny_corpus)
    reused = [line for line in lines if "reusing the result" in line]
    assert len(reused) == 8, lines
    assert again["results"] == json.loads(json.dumps(results["results"]))


def test_bad_demo_config_is_refused():
    from m3bert.core.errors import ConfigError

    with pytest.raises(ConfigError, match="masking"):
        DemoConfig(masking="cfm+xyz")
    with pytest.raises(ConfigError, match="unknown task"):
        DemoConfig(enrich_tasks=("dance", "genre"))
    with pytest.raises(ConfigError, match="preset"):
        demo_config("huge")
