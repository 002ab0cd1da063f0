"""``m3bert multisource`` end to end on the tiny built-in corpus: every strategy trains from the CLI
with Algorithm 1, exports, embeds with the d / d x m of Table 4; resume is exact after kill -9; the
existing samplers stay selectable; bad requests are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_test_signal
from m3bert.app.cli import main
from m3bert.core.errors import ConfigError
from m3bert.embed import load_model
from m3bert.enrich import EnrichConfig, load_config, load_multisource_config, train_enrich
from m3bert.enrich.heads import load_heads

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("builtin-tempo", "builtin-tags", "builtin-key")
FAST = ["--set", "batch_size=8", "--set", "eval_batch_size=16", "--set", "multisource.crop_frames=64",
        "--set", "threads=1", "--set", "multisource.factors=8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _argv(corpus, out, strategy, sources, *extra, cache=None):
    argv = ["multisource", "train", "--strategy", strategy, "--model", "random:kim-cnn-tiny", "--out", str(out),
            "--no-progress", *FAST, *extra]
    for s in sources:
        argv += ["--source", f"{s}:{corpus}"]
    if cache is not None:
        argv += ["--cache", str(cache)]
    return argv


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_every_strategy_trains_exports_and_embeds_with_table4_dims(tiny_corpus, tmp_path, capsys):
    cache = tmp_path / "cache"
    wave = make_test_signal(3.0, sample_rate=22050, seed=5)
    for strategy, sources, dim in [("ss-r", SOURCES[:1], 64), ("mss-cr", SOURCES, 192), ("ms-cr@2", SOURCES, 192),
                                   ("ms-cr@4", SOURCES[:2], 128), ("ms-cr@6", SOURCES, 192), ("ms-sr@fc", SOURCES, 64)]:
        run = tmp_path / strategy
        assert main(_argv(tiny_corpus, run, strategy, sources, "--epochs", "1", "--set", "log_every=1",
                          cache=cache)) == 0
        rec = json.loads((run / "run.json").read_text())
        assert rec["config"]["sampling"] == "algorithm1" and rec["config"]["optim"]["lr"] == 2.5e-4
        assert rec["multisource"]["sources"] == list(sources)
        methods = {"builtin-tempo": "gmm", "builtin-tags": "normalised", "builtin-key": "onehot"}
        assert {f["task"]: f["method"] for f in rec["factors"]} == {s: methods[s] for s in sources}
        steps = [r for r in _records(run) if r["event"] == "step"]
        assert len(steps) == -(-rec["n_samples"]["train"] // 8) * len(sources)  # L = l x m
        assert all(len(r["loss"]) == 1 for r in steps)  # Algorithm 1: one source per iteration
        heads, _ = load_heads(run / "checkpoints" / "last")
        assert set(heads.tasks) == set(sources) and {t.label_type for t in heads.tasks.values()} == {"distribution"}
        model = tmp_path / f"{strategy}-model"
        assert main(["export", str(run), "--out", str(model), "--checkpoint", "last"]) == 0
        emb = load_model(model)
        v = emb.embed(wave, sample_rate=22050)
        assert v.shape == (dim,) and np.isfinite(v).all(), strategy
        assert emb.feature_set.config.cmvn == "corpus" and emb.feature_set.cmvn_stats is not None
    assert "MS-SR@FC on 3 source(s)" in capsys.readouterr().out


def test_resume_after_kill_9_is_exact(tiny_corpus, tmp_path):
    cache = tmp_path / "cache"
    extra = ["--epochs", "3", "--set", "checkpoint_every=1", "--set", "batch_size=4"]
    straight = tmp_path / "straight"
    assert main(_argv(tiny_corpus, straight, "ms-cr@2", SOURCES[:2], *extra, cache=cache)) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "m3bert", *_argv(tiny_corpus, killed, "ms-cr@2", SOURCES[:2], *extra, cache=cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["state"]["global_step"] >= 5:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert main(["multisource", "train", "--resume", str(killed), "--cache", str(cache), "--no-progress"]) == 0
    for name in ("last", "best"):
        a = load_file(str(straight / "checkpoints" / name / "model.safetensors"))
        b = load_file(str(killed / "checkpoints" / name / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    drop = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert drop(_records(straight)) == drop(_records(killed))
    assert json.loads((straight / "summary.json").read_text())["test"] == json.loads((killed / "summary.json").read_text())["test"]


def test_the_other_samplers_stay_selectable(tiny_corpus, tmp_path):
    run = tmp_path / "uniform"
    assert main(_argv(tiny_corpus, run, "mss-cr", SOURCES, "--epochs", "1", "--set", "sampling=uniform",
                      "--set", "log_every=1", cache=tmp_path / "cache")) == 0
    steps = [r for r in _records(run) if r["event"] == "step"]
    assert any(len(r["loss"]) > 1 for r in steps)  # mixed batches: several sources per step
    assert json.loads((run / "summary.json").read_text())["status"] == "done"


def test_bad_requests_are_refused(tiny_corpus, tmp_path, capsys):
    assert main(_argv(tiny_corpus, tmp_path / "a", "ss-r", SOURCES[:2])) == 1
    assert "SS-R learns from one source" in capsys.readouterr().err
    assert main(["multisource", "train", "--strategy", "mss-cr", "--model", "random:m2bert-tiny", "--out",
                 str(tmp_path / "b"), "--source", f"builtin-tempo:{tiny_corpus}", "--source",
                 f"builtin-key:{tiny_corpus}", "--no-progress"]) == 1
    assert "needs a kim-cnn model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="algorithm1"):
        load_config(None, ["sampling=algorithm1"])
    with pytest.raises(ConfigError, match="scratch"):
        load_multisource_config(None, ["scenario=frozen"])
    cfg = load_multisource_config(ROOT / "configs" / "kim-paper.yaml", ["multisource.strategy=mss-cr"])
    assert cfg == load_multisource_config(None, ["multisource.strategy=mss-cr"])  # the file spells out the preset
    assert EnrichConfig().multisource.strategy == ""  # M3BERT enrichment is unchanged by default


def test_an_enrich_run_stored_before_the_multisource_section_still_resumes(tiny_corpus, tmp_path):
    """run.json written by the earlier code has no 'multisource' key: resuming reads it as off."""
    cfg = load_config(None, ["epochs=1", "batch_size=4", "threads=1"])
    out = tmp_path / "old"
    tasks = [f"builtin-key:{tiny_corpus}"]
    first = train_enrich(cfg, model="random:m2bert-tiny", tasks=tasks, out=out, progress=False, stop_after_steps=1)
    assert first["status"] == "interrupted"
    rec = json.loads((out / "run.json").read_text())
    del rec["config"]["multisource"]
    (out / "run.json").write_text(json.dumps(rec))
    done = train_enrich(cfg, model="random:m2bert-tiny", tasks=tasks, out=out, progress=False)
    assert done["status"] == "done" and json.loads((out / "run.json").read_text())["config"]["multisource"]["strategy"] == ""
