"""`m3bert enrich` (here through its alias `m3bert finetune`) end to end on the tiny built-in corpus:
a frozen run over four tasks of mixed types (multiclass, multilabel, regression), export, and what
the exported model is."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import m3bert.enrich as mt
from m3bert.app.cli import COMMANDS, main
from m3bert.app.commands import enrich as enrich_command
from m3bert.embed import load_model
from m3bert.enrich.heads import load_heads
from m3bert.features import get_feature_set
from m3bert.models.encoder import Encoder, create_model

TASKS = ("builtin-dance", "builtin-key", "builtin-tags", "builtin-tempo")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids OpenMP contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A (randomly initialised) tiny M2BERT saved as a model directory, standing in for a pre-training run."""
    enc = create_model("m2bert-tiny", seed=11)
    enc.feature_config = get_feature_set("m3bert324").to_dict()
    return enc.save_pretrained(tmp_path_factory.mktemp("m2bert") / "model")


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("mt_cli") / "run2"
    argv = ["finetune", "--model", str(pretrained), *sum((["--task", f"{t}:{tiny_corpus}"] for t in TASKS), []),
            "--scenario", "frozen", "--weighting", "uncertainty", "--sampling", "temperature:2",
            "--config", "configs/multitask-demo.yaml", "--epochs", "3", "--set", "threads=1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return out


def test_frozen_multitask_run_from_cli(run_dir, pretrained, capsys):
    run = json.loads((run_dir / "run.json").read_text())
    assert run["kind"] == "enrich" and run["config"]["scenario"] == "frozen"
    assert {t["label_type"] for t in run["tasks"]} == {"multiclass", "multilabel", "regression"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert len(epochs) == 3
    for e in epochs:
        assert set(e["train_loss"]) == set(TASKS) and set(e["weights_now"]) == set(TASKS)
        assert sum(e["label_share"].values()) == pytest.approx(1.0)
        assert sum(e["task_probability"].values()) == pytest.approx(1.0)
        assert set(e["valid"]) == set(TASKS)
        assert all(np.isfinite(e["valid"][t]["loss"]) for t in TASKS)
    # the learned uncertainty weights moved away from their initial values
    assert epochs[-1]["weights_now"] != epochs[0]["weights_now"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["test"]) == set(TASKS)

    # the frozen encoder is bit-for-bit the pre-trained one; only the enrichment layer is new
    before = Encoder.from_pretrained(pretrained).state_dict()
    best = Encoder.from_pretrained(run_dir / "checkpoints" / "best")
    after = best.state_dict()
    assert set(after) - set(before) == {k for k in after if k.startswith("enrichment.")} != set()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # resuming a finished run is a no-op that reports the same numbers
    capsys.readouterr()
    assert main(["finetune", "--resume", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "builtin-tags" in out and "aggregate" in out
    assert json.loads((run_dir / "summary.json").read_text())["valid"] == summary["valid"]


def test_exported_model_is_m3bert(run_dir, tiny_corpus, tmp_path):
    model_dir = tmp_path / "m3bert"
    assert main(["export", str(run_dir), "--out", str(model_dir)]) == 0
    model = Encoder.from_pretrained(model_dir).eval()
    assert model.enrichment is not None and model.n_hidden_states == 1 + model.cfg.n_layers + 1
    x = torch.randn(2, 50, model.cfg.n_input)
    with torch.no_grad():
        states = model(x, torch.tensor([50, 31]))
    assert torch.allclose(states[-1], model.enrichment(states[-2]))  # the last hidden state is the enrichment output

    # the exported model's clip embedding is exactly the representation the heads were trained on
    emb = load_model(str(model_dir))
    heads, _ = load_heads(run_dir / "checkpoints" / "best")
    data = mt.prepare_data([f"{t}:{tiny_corpus}" for t in TASKS], model, scenario="frozen",
                           cache_dir=run_dir / "cache", progress=False)
    i = data.split("valid")[0]
    batch = mt.collate(data, [i], data.tasks)
    with torch.no_grad():
        pooled = mt.represent(model, batch, input_kind=data.input_kind)[0].numpy()
    assert data.samples[i].start is None and data.samples[i].end is None  # whole files in the tiny corpus
    vec = emb.embed(str(data.samples[i].path), level="clip", layers=-1)
    np.testing.assert_allclose(vec, pooled, rtol=1e-4, atol=1e-5)
    assert heads.task_names == list(TASKS)


def test_finetune_cli_refuses_bad_requests(run_dir, pretrained, tiny_corpus, capsys):
    # same --out with a different config: refused, nothing overwritten
    argv = ["finetune", "--model", str(pretrained), "--task", f"builtin-dance:{tiny_corpus}", "--out", str(run_dir),
            "--no-progress"]
    assert main(argv) == 1
    assert "exists with a different" in capsys.readouterr().err
    assert main(["finetune", "--model", str(pretrained), "--out", str(run_dir)]) == 1
    assert main(["finetune", "--resume", str(run_dir), "--epochs", "2"]) == 1


def test_enrich_command_module_and_finetune_alias(run_dir, capsys):
    """``m3bert enrich`` is the command module; ``finetune`` is the same command under its earlier name."""
    assert COMMANDS["finetune"] is enrich_command and COMMANDS["enrich"] is enrich_command
    parser = argparse.ArgumentParser()
    enrich_command.add_arguments(parser)
    capsys.readouterr()
    assert enrich_command.run(parser.parse_args(["--resume", str(run_dir), "--no-progress"])) == 0
    assert "enrich run" in capsys.readouterr().out
