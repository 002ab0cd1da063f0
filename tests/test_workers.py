"""Wu et al. (2021) workers (issue 13, item 3): worker targets beside a wave16k store (aligned,
standardised by recorded statistics, resumable), every worker's output shape and loss, subsets by
letter, equal / uncertainty / re-weighted loss weighting, the two-phase re-weighted run (exact
resume after a kill in either phase, also kill -9 of the CLI), Figure 4, export and embedding."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_song
from safetensors.torch import load_file

from m3bert.core.errors import ConfigError, DataError
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store
from m3bert.features.waveform import frames_to_waveform
from m3bert.features.wu import worker_features
from m3bert.models import create_model
from m3bert.pretrain.data import Batch, TrainBatches, split_by_group, store_groups
from m3bert.pretrain.loop import load_pretrain_config
from m3bert.pretrain.objectives import create_objective
from m3bert.pretrain.targets import open_targets
from m3bert.pretrain.worker_targets import WorkerTargets, build_worker_targets, chunk_waveform, parse_workers
from m3bert.pretrain.workers import (
    LETTERS,
    PHASE1,
    WEIGHTS_FILE,
    WorkersConfig,
    plot_worker_losses,
    pretrain_workers,
    worker_curves,
)

ROOT = Path(__file__).resolve().parents[1]
N_SONGS, SECONDS, SR = 6, 2.0, 16000
KEYS = {"L": "lps", "P": "prosody", "M": "mfcc", "C": "chroma", "T": "tempogram"}
TINY = ROOT / "configs" / "pase-plus-tiny.yaml"  # the named config pase+-tiny, workers objective
# a tiny PASE+ with all six workers re-weighted: 4 training songs, 2 per step -> 2 steps an epoch,
# phase 1 = 2 epochs = 4 steps, then STEPS steps from scratch
STEPS = 12


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("wave_store")
    (root / "audio").mkdir()
    for i in range(N_SONGS):
        sf.write(root / "audio" / f"song{i}.wav", make_song(i, SECONDS, SR), SR)
    extract_to_store(root / "audio", root / "store", feature_set=get_feature_set("wave16k"), progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def store(store_dir):
    return FeatureStore.open(store_dir)


@pytest.fixture(scope="module")
def targets_dir(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("worker_targets") / "t"
    build_worker_targets(store, out, workers="L,P,M,C,T", seed=0, val_fraction=0.34, progress=False)
    return out


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Dying:
    """A store that dies (like a kill) at its n-th chunk read and records the chunks read."""

    def __init__(self, inner, *, die_at: int | None = None):
        self.inner, self.reads, self.die_at = inner, [], die_at

    def get(self, i, **kw):
        if self.die_at is not None and len(self.reads) == self.die_at:
            raise KeyboardInterrupt("killed")
        self.reads.append(int(i))
        return self.inner.get(i, **kw)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def cli_args(store_dir, targets_dir, *extra: str) -> list[str]:
    args = ["--store", str(store_dir), "--config", str(TINY), "--no-progress", "--targets", str(targets_dir),
            "--workers", "W,L,P,M,C,T"]
    over = ["objective.weighting=reweighted", "objective.reweight_epochs=2", f"train.steps={STEPS}",
            "train.save_every=2", "train.eval_every=4", "train.log_every=2", "train.threads=1", "data.max_frames=40",
            "data.batch_size=2", "data.effective_batch=2", "data.val_fraction=0.34", "data.val_max_chunks=2", *extra]
    for o in over:
        args += ["--set", o]
    return args


def tiny_cfg(targets_dir, *overrides: str):
    over = [f"objective.targets={targets_dir}", "train.threads=1", "data.max_frames=50", "data.val_fraction=0.34",
            *overrides]
    return load_pretrain_config(TINY, overrides=over)


def _objective(store, targets_dir, *overrides: str, seed: int = 0):
    cfg = tiny_cfg(targets_dir, *overrides)
    cfg.model.n_input = 160
    torch.manual_seed(seed)
    enc = create_model("pase+-tiny")
    obj = create_objective(cfg.objective, encoder_cfg=cfg.model, spec=store.feature_set.spec, masking=cfg.masking,
                           encoder=enc)
    targets = obj.data_targets(open_targets(cfg.objective["targets"], store=store))
    data = TrainBatches(store, np.arange(len(store)), seed=seed, micro_batch=3, n_accum=1, max_frames=60, targets=targets)
    return enc, obj, data


def _weights(run: Path) -> dict[str, torch.Tensor]:
    d = run / "checkpoints" / "last"
    return {**load_file(str(d / "model.safetensors")), **{f"head.{k}": v for k, v in load_file(str(d / "head.safetensors")).items()}}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def test_targets_align_with_the_store_and_are_standardised_features(store, targets_dir):
    t = WorkerTargets.open(targets_dir, store=store)
    rec = t.record
    assert rec["kind"] == "workers" and rec["workers"] == ["L", "P", "M", "C", "T"]
    assert rec["dims"] == {"lps": 1025, "prosody": 4, "mfcc": 20, "chroma": 12, "tempogram": 384}
    assert len(t) == len(store) and np.array_equal(t.offsets, np.concatenate([[0], np.cumsum(store.lengths)]))
    train, _ = split_by_group(store_groups(store), val_fraction=0.34, seed=0)
    raw = {i: worker_features(chunk_waveform(store, i), names=list(KEYS.values())) for i in range(len(store))}
    for k in KEYS.values():
        allx = np.concatenate([raw[i][k] for i in train]).astype(np.float64)
        np.testing.assert_allclose(rec["stats"][k]["mean"], allx.mean(0), rtol=1e-5, atol=1e-4)
        std = np.where(allx.std(0) > 1e-6, allx.std(0), 1.0)
        np.testing.assert_allclose(rec["stats"][k]["std"], std, rtol=1e-4, atol=1e-6)
    for i in range(len(store)):
        # the chunk's own samples: the rows of 160 flattened back (wave16k's half-frame shift undone)
        wave = chunk_waveform(store, i)
        assert np.array_equal(wave, frames_to_waveform(store.get(i, normalize=False), n_samples=wave.size))
        got, plain = t.get(i), t.select(list(KEYS.values()), standardize=False).get(i)
        for k in KEYS.values():
            assert got[k].shape == (store.lengths[i], rec["dims"][k]) and got[k].dtype == np.float32
            assert np.array_equal(plain[k], raw[i][k])
            want = (raw[i][k] - np.float32(rec["stats"][k]["mean"])) / np.float32(rec["stats"][k]["std"])
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)
    # standardised over the training chunks: mean 0, std 1 per (non-constant) channel there
    lps = np.concatenate([t.get(i)["lps"] for i in train])
    assert np.abs(lps.mean(0)).max() < 1e-3 and np.abs(lps.std(0) - 1).max() < 1e-3
    # open_targets picks the reader by the recorded kind
    (opened,) = open_targets([targets_dir], store=store)
    assert isinstance(opened, WorkerTargets)


def test_targets_refuse_other_stores_and_settings(tmp_path, store, targets_dir):
    class Other(Dying):
        rows = [dict(r, sha1="0" * 40) for r in store.rows]

    with pytest.raises(DataError, match="another store"):
        WorkerTargets.open(targets_dir, store=Other(store))
    with pytest.raises(DataError, match="other settings"):
        build_worker_targets(store, targets_dir, workers="L,P,M,C,T", seed=1, val_fraction=0.34, progress=False)

    class Mfcc(Dying):
        feature_set = get_feature_set("m3bert324")

    with pytest.raises(DataError, match="wave16k"):
        build_worker_targets(Mfcc(store), tmp_path / "x", workers="L", progress=False)
    with pytest.raises(ConfigError, match="unknown worker"):
        build_worker_targets(store, tmp_path / "y", workers="L,Q", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_killed_targets_build_resumes_where_it_stopped(tmp_path, store):
    kw = dict(workers="P,C", seed=0, val_fraction=0.34, commit_every=2, progress=False)
    straight = build_worker_targets(store, tmp_path / "straight", **kw)
    assert not straight["already_done"] and straight["dims"] == {"prosody": 4, "chroma": 12}
    dying = Dying(store, die_at=5)
    with pytest.raises(KeyboardInterrupt):
        build_worker_targets(dying, tmp_path / "killed", **kw)
    assert not (tmp_path / "killed" / "targets.json").exists()  # nothing a reader trusts
    with pytest.raises(DataError, match="interrupted build"):
        WorkerTargets.open(tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / ".progress.json").read_text())["done"] == 4  # last commit
    again = Dying(store)
    build_worker_targets(again, tmp_path / "killed", **kw)
    assert again.reads == [4, 5]  # continued at chunk 4 (statistics are read from the arrays, not the store)
    a, b = (WorkerTargets.open(tmp_path / x, store=store) for x in ("straight", "killed"))
    for k in ("prosody", "chroma"):
        assert np.array_equal(np.asarray(a.arrays[k]), np.asarray(b.arrays[k]))
    assert a.record["stats"] == b.record["stats"]
    assert build_worker_targets(store, tmp_path / "killed", **kw)["already_done"]


# ---------------------------------------------------------------------------------------------
# Workers: shapes, losses, subsets
# ---------------------------------------------------------------------------------------------


def test_every_worker_has_its_shape_and_its_loss(store, targets_dir):
    enc, obj, data = _objective(store, targets_dir, "objective.workers=W,L,P,M,C,T")
    enc.eval()
    batch = data.micro_batch_at(0, 0)
    lengths = torch.tensor([60, 37, 12])  # padded rows: their padding must not count
    batch = Batch(batch.frames, lengths, batch.keys, batch.indices, None,
                  {k: v * (torch.arange(60)[None, :, None] < lengths[:, None, None]) for k, v in batch.features.items()})
    h = enc(batch.frames, lengths)[-1]
    assert h.shape == (3, 60, 64)
    valid = torch.arange(60)[None, :] < lengths[:, None]
    out = obj(enc, batch)
    dims = {"L": 1025, "P": 4, "M": 20, "C": 12, "T": 384}
    with torch.no_grad():
        wave = obj.decoder(h)
        assert wave.shape == (3, 60, 160)
        want = {"W": float((wave - batch.frames).abs()[valid].mean())}  # MAE over the real frames' samples
        for w, c in dims.items():
            pred = obj.heads[w](h)
            assert pred.shape == (3, 60, c)
            want[w] = float(((pred - batch.features[KEYS[w]]) ** 2)[valid].mean())  # MSE over real cells
    for w in LETTERS:
        assert out.logs[f"loss[{w}]"] == pytest.approx(want[w], rel=1e-5)
        assert out.logs[f"weight[{w}]"] == 1.0
    assert float(out.loss.detach()) == pytest.approx(sum(want.values()), rel=1e-5)  # equal: the plain sum
    sums = obj.evaluate(enc, batch)
    n = float(valid.sum())
    for w in LETTERS:
        assert sums[f"loss[{w}]"][1] == n and sums[f"loss[{w}]"][0] / n == pytest.approx(want[w], rel=1e-5)
    assert sums["loss[weighted]"][0] / n == pytest.approx(sum(want.values()), rel=1e-5)
    assert obj.selection_key() == "loss[weighted]"

    # zero loss when every prediction is its target
    class Echo(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, h):
            return self.value

    for w in dims:
        obj.heads[w] = Echo(batch.features[KEYS[w]])
    obj.decoder = Echo(batch.frames)
    zero = obj(enc, batch)
    assert all(zero.logs[f"loss[{w}]"] == 0.0 for w in LETTERS) and float(zero.loss) == 0.0


def test_worker_subsets_by_letter_and_clear_errors(store, targets_dir):
    enc, obj, data = _objective(store, targets_dir, "objective.workers=L,T")
    assert obj.decoder is None and sorted(obj.heads) == ["L", "T"]
    batch = data.micro_batch_at(1, 0)
    assert sorted(batch.features) == ["lps", "tempogram"]  # only the selected workers' arrays are read
    assert set(obj(enc, batch).logs) == {"loss", "loss[L]", "loss[T]", "weight[L]", "weight[T]"}
    enc, obj, data = _objective(store, targets_dir, "objective.workers=W")  # no targets needed
    assert obj.decoder is not None and not obj.heads and data.micro_batch_at(0, 0).features is None
    assert parse_workers("wlp", allowed=LETTERS) == ["W", "L", "P"] and WorkersConfig(workers=["T", "W"]).letters == ["T", "W"]
    with pytest.raises(ConfigError, match=r"unknown worker\(s\) \['X'\].*W,L,P,M,C,T"):
        WorkersConfig(workers="W,L,X")
    with pytest.raises(ConfigError, match="named twice"):
        WorkersConfig(workers="L,L")
    with pytest.raises(ConfigError, match="objective.weighting"):
        WorkersConfig(weighting="fancy")
    with pytest.raises(ConfigError, match="targets folders given"):
        _objective(store, targets_dir, "objective.workers=L", "objective.targets=[]")


def test_cli_refuses_unknown_workers_in_one_line(tmp_path, store_dir, targets_dir, capsys):
    from m3bert.app.cli import main

    args = cli_args(store_dir, targets_dir)
    args[args.index("W,L,P,M,C,T")] = "W,L,Z"
    assert main(["pretrain", *args, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("m3bert pretrain: error:") and "unknown worker(s) ['Z']" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# Loss weighting
# ---------------------------------------------------------------------------------------------


def test_equal_uncertainty_and_reweighted_weights(store, targets_dir):
    _, eq, _ = _objective(store, targets_dir, "objective.workers=W,L,T")
    losses = {"W": torch.tensor(0.2), "L": torch.tensor(1.5), "T": torch.tensor(0.01)}
    total, w = eq.weighting.combine(losses)
    assert float(total) == pytest.approx(1.71) and w == {"W": 1.0, "L": 1.0, "T": 1.0}
    # Kendall et al.: 0.5 exp(-s) L + 0.5 s per (Gaussian) worker, s learned
    _, un, _ = _objective(store, targets_dir, "objective.workers=W,L,T", "objective.weighting=uncertainty",
                          "objective.uncertainty_init=0.3")
    total, w = un.weighting.combine(losses)
    assert float(total.detach()) == pytest.approx(sum(0.5 * math.exp(-0.3) * float(v) + 0.15 for v in losses.values()), rel=1e-6)
    assert w["L"] == pytest.approx(0.5 * math.exp(-0.3))
    assert [n for n, p in un.named_parameters() if n.startswith("weighting.")] == ["weighting.log_vars"]
    # Wu et al.: the reciprocal of each worker's mean validation loss of the equal phase
    calib = {"W": 0.2, "L": 1.25, "T": 0.05}
    _, rw, _ = _objective(store, targets_dir, "objective.workers=W,L,T", "objective.weighting=reweighted",
                          f"objective.reweight_losses={json.dumps(calib)}")
    total, w = rw.weighting.combine(losses)
    assert w == pytest.approx({k: 1 / v for k, v in calib.items()})
    assert float(total) == pytest.approx(sum(float(losses[k]) / calib[k] for k in calib), rel=1e-6)
    assert rw.cfg.weighting == "reweight"  # the paper's word is an alias of train.weighting's name
    with pytest.raises(ConfigError, match="reweight_losses"):  # no calibration: only the two-phase run sets it
        _objective(store, targets_dir, "objective.workers=W,L,T", "objective.weighting=reweight")


# ---------------------------------------------------------------------------------------------
# The two-phase re-weighted run: CLI, kill -9, exact resume, Figure 4, export, embed
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, store_dir, targets_dir):
    from m3bert.app.cli import main

    run = tmp_path_factory.mktemp("straight") / "run"
    torch.set_num_threads(1)
    assert main(["pretrain", *cli_args(store_dir, targets_dir), "--out", str(run)]) == 0
    return run


def test_reweighted_run_weights_are_the_reciprocal_phase1_losses(straight_run):
    calib = json.loads((straight_run / WEIGHTS_FILE).read_text())
    assert calib["steps_per_epoch"] == 2 and calib["phase1_steps"] == 4 and calib["epochs"] == 2
    # recomputed from phase 1's log: one validation per epoch, the mean over the first 2 epochs
    val = [json.loads(x) for x in (straight_run / PHASE1 / "metrics.jsonl").read_text().splitlines() if "val/" in x]
    assert [v["step"] for v in val] == [2, 4]
    for w in LETTERS:
        mean = float(np.mean([v[f"val/loss[{w}]"] for v in val]))
        assert calib["mean_val_losses"][w] == pytest.approx(mean, rel=1e-12)
        assert calib["weights"][w] == pytest.approx(1.0 / mean, rel=1e-12)
    cfg = json.loads((straight_run / "run.json").read_text())["config"]["objective"]
    assert cfg["weighting"] == "reweight" and cfg["reweight_losses"] == calib["mean_val_losses"]
    phase1 = json.loads((straight_run / PHASE1 / "run.json").read_text())["config"]["objective"]
    assert phase1["weighting"] == "equal"
    # phase 2 logs the weights it trains with, and weight x loss per worker at validation
    train = [json.loads(x) for x in (straight_run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert train[0]["train/weight[T]"] == pytest.approx(calib["weights"]["T"])
    curves, weighted = worker_curves(straight_run), worker_curves(straight_run, weighted=True)
    assert list(curves) == list(LETTERS) and [s for s, _ in curves["L"]] == [4, 8, 12]
    for w in LETTERS:
        for (s1, v), (s2, wv) in zip(curves[w], weighted[w]):
            assert s1 == s2 and wv == pytest.approx(v * calib["weights"][w], rel=1e-6)  # float32 weights
    # Figure 4: written at the end of the run; also for any run folder on demand
    png = (straight_run / "worker_losses.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert plot_worker_losses(straight_run / PHASE1, out=straight_run / "p1.png") == straight_run / "p1.png"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_stop_in_phase1_kill_9_in_phase2_resume_exactly_then_export_and_embed(tmp_path, store_dir, targets_dir,
                                                                              straight_run):
    import soundfile as sf

    from m3bert.app.cli import main
    from m3bert.embed import load_model

    args = cli_args(store_dir, targets_dir)
    cfg = load_pretrain_config(TINY, overrides=[f"objective.targets={targets_dir}",
                                                *[args[i + 1] for i, a in enumerate(args) if a == "--set"]])
    run = tmp_path / "run"
    part = pretrain_workers(cfg, store=store_dir, out=run, progress=False, stop_after=3)  # inside phase 1 (4 steps)
    assert part["phase"] == 1 and not part["finished"] and not (run / WEIGHTS_FILE).exists()
    # the CLI finishes phase 1, computes the weights, starts phase 2 from scratch and is killed (-9)
    proc = subprocess.Popen([sys.executable, "-m", "m3bert", "pretrain", "--resume", str(run), "--no-progress"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoints" / "last" / "state.json"  # phase 2's checkpoint
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["state"]["step"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["state"]["step"]
    assert 2 <= killed_at < STEPS, proc.stderr.read().decode()[-2000:]
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads(state.read_text())["state"]["step"] == STEPS
    # bit-identical to the straight run, in both phases, with the same re-weights
    assert json.loads((run / WEIGHTS_FILE).read_text()) == json.loads((straight_run / WEIGHTS_FILE).read_text())
    _assert_same_weights(_weights(run / PHASE1), _weights(straight_run / PHASE1))
    _assert_same_weights(_weights(run), _weights(straight_run))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0  # finished: nothing left to do

    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architecture"] == "pase+" and config["feature_set"]["name"] == "wave16k"
    sf.write(tmp_path / "clip.wav", make_song(11, 1.5, 44100), 44100)
    emb = load_model(str(tmp_path / "model")).embed(str(tmp_path / "clip.wav"))
    assert emb.shape == (64,) and np.isfinite(emb).all()
