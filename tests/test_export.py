"""``m3bert export``: run / checkpoint -> clean model directory, validated and atomic."""

from __future__ import annotations

import json
import os
import stat

import pytest

from m3bert.app.cli import main
from m3bert.models.hub import export_model
from m3bert.embed import load_model
from m3bert.core.errors import CheckpointError
from m3bert.features import get_feature_set
from m3bert.models import EnrichmentConfig, create_model


def make_run(root, *, kind="pretrain", enrichment=False, with_best=True):
    """A run directory as the trainers write it: run.json + checkpoints/{best,last} = model
    directories plus trainer files."""
    fs = get_feature_set("m3bert324").to_dict()
    names = ("best", "last") if with_best else ("last",)
    for seed, name in enumerate(names):
        extra = {"enrichment": EnrichmentConfig(n_layers=1, dim=32)} if enrichment else {}
        enc = create_model("m2bert-tiny", seed=seed + 10, **extra)
        enc.feature_config = fs
        ckpt = root / "checkpoints" / name
        enc.save_pretrained(ckpt, extra={"step": 100 * (seed + 1)})
        (ckpt / "state.json").write_text(json.dumps({"step": 100 * (seed + 1)}))
        (ckpt / "optimizer.safetensors").write_bytes(b"trainer state, not for export")
        (ckpt / "heads.safetensors").write_bytes(b"heads")
    (root / "run.json").write_text(json.dumps({"kind": kind, "config": {}, "seed": 0}))
    return root


def test_export_best_checkpoint_to_clean_model_dir(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "model"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == (run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "m3bert-model" and cfg["step"] == 100  # original config kept
    assert cfg["export"]["run_kind"] == "pretrain"
    exported, best = load_model(out), load_model(run / "checkpoints" / "best")
    assert exported.model_id == best.model_id == cfg["export"]["model_id"]
    assert exported.model_id == load_model(run).model_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_last_multitask_and_overwrite(tmp_path):
    run = make_run(tmp_path / "mt", kind="multitask", enrichment=True)
    out = tmp_path / "model"
    info = export_model(run, out, checkpoint="last")
    m = load_model(out)
    assert info["run_kind"] == "multitask" and m.n_hidden_states == 4 and m.layer_dims == [64, 64, 64, 32]
    assert m.model_id == load_model(run / "checkpoints" / "last").model_id != load_model(run).model_id
    with pytest.raises(CheckpointError, match="already exists"):
        export_model(run, out)
    export_model(run, out, overwrite=True)
    assert load_model(out).model_id == load_model(run / "checkpoints" / "best").model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "mt"]


def test_export_falls_back_to_last_and_refuses_bad_runs(tmp_path, capsys):
    run = make_run(tmp_path / "run", with_best=False)
    export_model(run, tmp_path / "m1")
    assert load_model(tmp_path / "m1").model_id == load_model(run / "checkpoints" / "last").model_id
    # weights that do not fit the architecture are refused before anything is written
    bad = make_run(tmp_path / "bad")
    cfg_path = bad / "checkpoints" / "best" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["hidden"] = 128
    cfg["model"]["n_heads"] = 4
    cfg_path.write_text(json.dumps(cfg))
    assert main(["export", str(bad), "--out", str(tmp_path / "m2")]) == 1
    assert "weights do not match" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match="without a usable checkpoint"):
        export_model(empty, tmp_path / "m3")
    with pytest.raises(CheckpointError, match="needs a run directory"):
        export_model(run / "checkpoints" / "last", tmp_path / "m4", checkpoint="best")


# -- issue 12, item 1: export must never delete what it did not create ---------------------------------


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_export_refuses_out_that_holds_or_is_the_source(tmp_path, capsys):
    """`export RUN_A --out PARENT --overwrite` (PARENT holding runs) deleted every other run with exit 0."""
    parent = tmp_path / "runs"
    run_a, run_b = make_run(parent / "a"), make_run(parent / "b")
    (parent / "notes.txt").write_text("mine")
    before = _tree(parent)
    for out in (parent, run_a, run_a / "checkpoints", run_a / "exported", tmp_path):
        assert main(["export", str(run_a), "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert "error:" in err and ("source" in err or "not an exported model folder" in err), err
    assert _tree(parent) == before and (parent / "notes.txt").read_text() == "mine"
    assert load_model(run_b).n_hidden_states == load_model(run_a).n_hidden_states  # both runs still load


def test_export_overwrite_replaces_only_an_exported_model_folder(tmp_path):
    run = make_run(tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.npy").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not an exported model folder"):
        export_model(run, other, overwrite=True)
    assert (other / "data.npy").read_bytes() == b"not a model"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        export_model(run, a_file, overwrite=True)
    assert a_file.read_text() == "x"
    # an exported model with an extra file of the user's is not ours to delete either
    out = tmp_path / "model"
    export_model(run, out)
    (out / "README.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="not an exported model folder"):
        export_model(run, out, overwrite=True)
    (out / "README.txt").unlink()
    export_model(run, out, overwrite=True, checkpoint="last")  # a clean model folder is replaced
    assert load_model(out).model_id == load_model(run / "checkpoints" / "last").model_id


def test_written_files_respect_the_umask(tmp_path):
    """Atomic writes left 0600 files and 0700 model folders despite umask 022 (issue 12, item 7)."""
    old = os.umask(0o022)
    try:
        run = make_run(tmp_path / "run")
        out = tmp_path / "model"
        export_model(run, out)
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        for name in ("config.json", "model.safetensors"):
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
        os.umask(0o077)
        export_model(run, tmp_path / "private")
        assert stat.S_IMODE((tmp_path / "private" / "config.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
