"""MERT-style pre-training (issue 14): k-means targets (deterministic, bounded, aligned, resumable),
the `mert` objective (finite decreasing loss, masked-only accuracy), in-batch mixup, and the
`m3bert targets` + `m3bert pretrain --set objective.name=mert` pipeline (exact resume, export, embed)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_song, make_song_store
from safetensors.torch import load_file

from m3bert.core.errors import CheckpointError, ConfigError, DataError
from m3bert.features import get_feature_set
from m3bert.pretrain.data import Batch, TrainBatches, split_by_group, store_groups
from m3bert.pretrain.loop import load_pretrain_config, pretrain
from m3bert.pretrain.mixup import MixupConfig, inbatch_mixup
from m3bert.pretrain.objectives import MIXUP_STREAM, create_objective
from m3bert.pretrain.targets import ClusterTargets, assign, build_targets, load_codebook, sample_plan, store_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "m2bert-tiny.yaml"
N_SONGS, SECONDS = 6, 4.0


_song = make_song


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return make_song_store(tmp_path_factory.mktemp("mert_store"), n_songs=N_SONGS, seconds=SECONDS)


@pytest.fixture(scope="module")
def store(store_dir):
    from m3bert.features.store import FeatureStore

    return FeatureStore.open(store_dir)


@pytest.fixture(scope="module")
def targets_dir(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("mert_targets") / "mfcc"
    build_targets(store, out, k=12, seed=0, sample_frames=400, frames_per_chunk=80, progress=False)
    return out


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Counting:
    """A store that records every chunk read (and can die at the n-th read, like a kill)."""

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


class FakeStore:
    """``n`` chunks of seeded random frames with the real 324-channel layout (no audio needed)."""

    def __init__(self, n: int, *, seed: int = 0):
        self.feature_set = get_feature_set("m3bert324")
        lengths = [40 + (7 * i) % 23 for i in range(n)]
        self.rows = [{"chunk_id": f"f{i:04d}#0", "source": f"f{i:04d}", "sha1": f"{i:040x}", "n_frames": n_i}
                     for i, n_i in enumerate(lengths)]
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seed = seed

    def __len__(self):
        return len(self.rows)

    def get(self, i, normalize=True):
        r = np.random.default_rng([self.seed, i])
        centres = np.random.default_rng(self.seed).standard_normal((6, 324)) * 3
        return (centres[r.integers(0, 6, int(self.lengths[i]))] + r.standard_normal((int(self.lengths[i]), 324))).astype(np.float32)


def tiny(*overrides: str):
    base = ["train.threads=1", "train.log_every=2", "data.max_frames=64", "data.val_fraction=0.2"]
    return load_pretrain_config(TINY, overrides=base + list(overrides))


def mert_cfg(targets: Path, *overrides: str):
    return tiny("objective.name=mert", f"objective.targets={targets}", "masking.policies=[cfm]",
                "masking.cfm.ratio=0.5", "masking.cfm.min_span=5", "masking.cfm.max_span=5", *overrides)


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def test_targets_are_deterministic_per_seed(tmp_path, store):
    kw = dict(k=12, sample_frames=400, frames_per_chunk=80, progress=False)
    build_targets(store, tmp_path / "a", seed=3, **kw)
    build_targets(store, tmp_path / "b", seed=3, **kw)
    build_targets(store, tmp_path / "c", seed=4, **kw)
    a, b, c = (ClusterTargets.open(tmp_path / x, store=store) for x in "abc")
    assert np.array_equal(np.asarray(a.ids), np.asarray(b.ids)) and a.ids.dtype == np.int16
    assert np.array_equal(a.centers(), b.centers())
    assert not np.array_equal(a.centers(), c.centers())  # another seed: another sample and initialisation
    rec = json.loads((tmp_path / "a" / "targets.json").read_text())
    assert rec["k"] == 12 and rec["teacher"]["group"] == "mfcc+dmfcc" and rec["teacher"]["channels"] == [12, 52]
    assert rec["teacher"]["normalisation"] == {"store_cmvn": "clip"} and rec["usage"]["clusters_used"] <= 12
    # a second run is a no-op; other settings in the same folder are refused
    assert build_targets(store, tmp_path / "a", seed=3, **kw)["already_done"]
    with pytest.raises(DataError, match="other settings"):
        build_targets(store, tmp_path / "a", seed=5, **kw)


def test_codebook_round_trip_gives_the_same_assignments(targets_dir, store):
    t = ClusterTargets.open(targets_dir, store=store)
    centers, meta = load_codebook(targets_dir)
    assert centers.shape == (12, 40) and meta["teacher"]["group"] == "mfcc+dmfcc"
    channels = store.feature_set.spec.channels("mfcc+dmfcc")
    for i in range(len(store)):
        assert np.array_equal(assign(store.get(i)[:, channels], centers), t.get(i))
    raw = load_file(str(targets_dir / "codebook.safetensors"))
    assert np.array_equal(raw["centers"].numpy(), centers)


def test_altered_codebook_is_refused(tmp_path, targets_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(targets_dir, copy)
    data = bytearray((copy / "codebook.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one bit of one centre
    (copy / "codebook.safetensors").write_bytes(bytes(data))
    with pytest.raises(DataError, match="altered"):
        load_codebook(copy)


def test_targets_align_with_store_frames_and_batches(targets_dir, store):
    t = ClusterTargets.open(targets_dir, store=store)
    assert len(t) == len(store) and int(t.offsets[-1]) == int(store.lengths.sum())
    assert [t.get(i).shape[0] for i in range(len(store))] == store.lengths.tolist()
    centers = t.centers()
    channels = store.feature_set.spec.channels("mfcc+dmfcc")
    train, _ = split_by_group(store_groups(store), val_fraction=0.34, seed=0)
    data = TrainBatches(store, train, seed=1, micro_batch=3, n_accum=1, max_frames=50, targets=[t])
    plain = TrainBatches(store, train, seed=1, micro_batch=3, n_accum=1, max_frames=50)
    for step in (0, 3):
        batch = data.micro_batch_at(step, 0)
        assert torch.equal(batch.frames, plain.micro_batch_at(step, 0).frames)  # targets never change the crops
        assert batch.targets.shape == (1, 3, 50) and batch.targets.dtype == torch.int64
        for b in range(3):
            n = int(batch.lengths[b])
            # the ids of the cropped frames are those of exactly these frames
            want = assign(batch.frames[b, :n, channels].numpy(), centers)
            assert np.array_equal(batch.targets[0, b, :n].numpy(), want)
    # targets of another store are refused
    with pytest.raises(DataError, match="another store"):
        ClusterTargets.open(targets_dir, store=FakeStore(len(store)))


@pytest.mark.parametrize("n_chunks", [40, 400])
def test_fit_reads_at_most_the_sample_budget(tmp_path, n_chunks):
    """Memory flat in store size: the fit reads the planned chunks only, however big the store."""
    budget, per_chunk = 300, 30
    s = Counting(FakeStore(n_chunks))
    summary = build_targets(s, tmp_path / "t", group="mel", k=8, sample_frames=budget, frames_per_chunk=per_chunk,
                            progress=False)
    fit_reads = s.reads[: len(s.reads) - n_chunks]  # then assignment reads every chunk once, in order
    assert s.reads[len(fit_reads):] == list(range(n_chunks))
    assert len(fit_reads) == math.ceil(budget / per_chunk) == summary["fit"]["n_chunks_read"]
    assert len(set(fit_reads)) == len(fit_reads) and summary["fit"]["n_sample"] == budget
    plan = sample_plan(s.lengths, seed=0, sample_frames=budget, frames_per_chunk=per_chunk)
    assert [i for i, _ in plan] == fit_reads and sum(len(x) for _, x in plan) == budget


def test_killed_assignment_resumes_and_matches_a_straight_build(tmp_path):
    fake = FakeStore(60)
    kw = dict(group="mel+cqt", k=8, sample_frames=400, frames_per_chunk=40, commit_every=5, progress=False)
    build_targets(fake, tmp_path / "straight", **kw)
    fit_reads = math.ceil(400 / 40)
    dying = Counting(fake, die_at=fit_reads + 23)  # dies while assigning chunk 23
    with pytest.raises(KeyboardInterrupt):
        build_targets(dying, tmp_path / "killed", **kw)
    assert not (tmp_path / "killed" / "targets.json").exists()  # nothing a reader trusts
    with pytest.raises(DataError, match="interrupted build"):
        ClusterTargets.open(tmp_path / "killed")
    progress = json.loads((tmp_path / "killed" / ".progress.json").read_text())
    assert progress["done"] == 20  # the last commit before the kill
    again = Counting(fake)
    build_targets(again, tmp_path / "killed", **kw)
    assert again.reads == list(range(20, 60))  # codebook reused, assignment continued at chunk 20
    a, b = (ClusterTargets.open(tmp_path / x, store=fake) for x in ("straight", "killed"))
    assert np.array_equal(np.asarray(a.ids), np.asarray(b.ids))
    assert not (tmp_path / "killed" / ".progress.json").exists()
    assert store_fingerprint(fake) == a.record["request"]["store"]["fingerprint"]


def test_hidden_state_targets(tmp_path, store):
    """The second iteration: k-means over a model's hidden states; the model id is recorded."""
    from m3bert.models import create_model

    enc = create_model("m2bert-tiny", seed=0)
    enc.feature_config = store.feature_set.to_dict()
    enc.save_pretrained(tmp_path / "model")
    s = build_targets(store, tmp_path / "t", model=str(tmp_path / "model"), layer=1, k=10, sample_frames=300,
                      progress=False)
    rec = json.loads((tmp_path / "t" / "targets.json").read_text())
    assert rec["teacher"]["kind"] == "hidden_states" and rec["teacher"]["layer"] == 1 and rec["dim"] == 64
    assert len(rec["teacher"]["model_id"]) == 16 and s["label"] == "layer1-k10"
    with pytest.raises(ConfigError, match="--layer"):
        build_targets(store, tmp_path / "t2", model=str(tmp_path / "model"), layer=9, k=10, progress=False)
    with pytest.raises(ConfigError, match="not both"):
        build_targets(store, tmp_path / "t3", model=str(tmp_path / "model"), group="mfcc", progress=False)
    with pytest.raises(DataError, match="fewer than k"):
        build_targets(store, tmp_path / "t4", k=500, sample_frames=300, progress=False)
    assert not (tmp_path / "t4").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# Objective and mixup
# ---------------------------------------------------------------------------------------------


def _objective_and_batch(store, targets_dir, *overrides: str, seed: int = 0):
    from m3bert.models import Encoder

    cfg = mert_cfg(targets_dir, *overrides)
    cfg.model.n_input = 324
    torch.manual_seed(seed)
    enc = Encoder(cfg.model, feature_config=store.feature_set.to_dict())
    obj = create_objective(cfg.objective, encoder_cfg=cfg.model, spec=store.feature_set.spec, masking=cfg.masking)
    t = ClusterTargets.open(targets_dir, store=store)
    data = TrainBatches(store, np.arange(len(store)), seed=seed, micro_batch=4, n_accum=1, max_frames=64, targets=[t])
    return enc, obj, data


def test_mert_loss_is_finite_and_decreases(store, targets_dir):
    torch.set_num_threads(1)
    enc, obj, data = _objective_and_batch(store, targets_dir, "objective.mixup.prob=0.0", "model.dropout=0.0")
    params = [*enc.parameters(), *obj.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = data.micro_batch_at(0, 0)
    losses, logs = [], []
    for _ in range(15):
        out = obj(enc, batch)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for p in params)  # every head and the encoder learn (DDP needs it)
        opt.step()
        losses.append(float(out.loss.detach()))
        logs.append(out.logs)
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert set(logs[0]) >= {"loss", "ce[mfcc+dmfcc-k12]", "acc[mfcc+dmfcc-k12]", "cqt_loss", "masked_fraction"}
    assert logs[-1]["acc[mfcc+dmfcc-k12]"] > logs[0]["acc[mfcc+dmfcc-k12]"]
    assert logs[0]["loss"] == pytest.approx(logs[0]["ce[mfcc+dmfcc-k12]"] + logs[0]["cqt_loss"], rel=1e-5)
    # mert_acoustic: the same objective without the CQT head
    _, acoustic, _ = _objective_and_batch(store, targets_dir, "objective.name=mert_acoustic")
    assert acoustic.cqt_head is None and obj.cqt_head is not None


def test_accuracy_counts_masked_frames_only(store, targets_dir):
    """Targets are class 0 on the masked frames and 1 elsewhere; a head that always says 1 must
    score exactly 0 (it would score ~50 % if unmasked frames were counted)."""
    enc, obj, data = _objective_and_batch(store, targets_dir, "objective.logits=linear")
    batch = data.micro_batch_at(0, 0)
    _, frame_mask, _ = obj._inputs(batch, train=False, stream=zlib.crc32(b"cfm"))
    real = torch.arange(batch.frames.shape[1])[None] < batch.lengths[:, None]
    assert frame_mask.any() and not (frame_mask & ~real).any() and (real & ~frame_mask).any()
    ids = torch.where(frame_mask, 0, 1)
    ids[~real] = -1
    batch = Batch(batch.frames, batch.lengths, batch.keys, batch.indices, ids[None])
    head = obj.codebooks[0].proj
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[1] = 10.0
    sums = obj.evaluate(enc, batch)
    n_masked = float(frame_mask.sum())
    assert sums["acc[mfcc+dmfcc-k12]"] == (0.0, n_masked)
    assert sums["ce[mfcc+dmfcc-k12]"][1] == n_masked and sums["cqt_loss"][1] == n_masked
    assert sums["cqt_zero_baseline"][0] > 0


def test_mixup_is_seeded_and_leaves_targets_alone(store, targets_dir):
    enc, obj, data = _objective_and_batch(store, targets_dir, "objective.mixup.prob=1.0", "model.dropout=0.0")
    batch = data.micro_batch_at(2, 0)
    clean, ids = batch.frames.clone(), batch.targets.clone()
    a, fm_a, n_a = obj._inputs(batch, train=True)
    b, fm_b, n_b = obj._inputs(batch, train=True)
    assert torch.equal(a, b) and torch.equal(fm_a, fm_b) and n_a == n_b == 4  # prob 1: every row mixed
    no_mix, _, n0 = obj._inputs(batch, train=False)
    assert n0 == 0 and not torch.equal(a, no_mix)
    out = obj(enc, batch)
    assert torch.equal(batch.frames, clean) and torch.equal(batch.targets, ids)  # targets stay the clip's own
    assert out.logs["mixed_fraction"] == 1.0
    # another sample key (step) mixes differently; the pure function leaves padding untouched
    rngs = lambda bt: [bt.rng(i, MIXUP_STREAM) for i in range(bt.frames.shape[0])]  # noqa: E731
    x1, _ = inbatch_mixup(batch.frames, batch.lengths, rngs=rngs(batch), cfg=MixupConfig(prob=1.0))
    x2, _ = inbatch_mixup(batch.frames, batch.lengths, rngs=rngs(batch), cfg=MixupConfig(prob=1.0))
    other = data.micro_batch_at(3, 0)
    x3, _ = inbatch_mixup(other.frames, other.lengths, rngs=rngs(other), cfg=MixupConfig(prob=1.0))
    assert torch.equal(x1, x2) and not torch.equal(x3 - other.frames, x1 - batch.frames)
    lengths = torch.tensor([64, 30, 64, 10])
    padded = batch.frames.clone()
    for i, n in enumerate(lengths.tolist()):
        padded[i, n:] = 0
    x4, _ = inbatch_mixup(padded, lengths, rngs=rngs(batch), cfg=MixupConfig(prob=1.0, gain=[0.2, 0.2]))
    for i, n in enumerate(lengths.tolist()):
        assert not x4[i, n:].any()
    changed = (x4 != padded).any(-1).float().mean()
    assert 0 < changed < 1  # excerpts, not whole clips
    x5, n5 = inbatch_mixup(padded, lengths, rngs=rngs(batch), cfg=MixupConfig(prob=0.0))
    assert n5 == 0 and torch.equal(x5, padded)
    with pytest.raises(ConfigError, match="gain"):
        MixupConfig(gain=[0.5, 0.1])


def test_mert_config_errors_are_one_line(tmp_path, store_dir, targets_dir, capsys):
    from m3bert.app.cli import main

    base = ["pretrain", "--store", str(store_dir), "--config", str(TINY), "--no-progress", "--set", "train.steps=2",
            "--set", "data.max_frames=64", "--set", "objective.name=mert"]
    cases = [([], "objective.targets"), (["--set", f"objective.targets={targets_dir}", "--set", "masking.policies=[ccm]"],
                                         "include 'cfm'"),
             (["--set", f"objective.targets={tmp_path / 'none'}"], "no targets.json"),
             (["--set", "objective.cqt_loss=abs"], "objective.cqt_loss")]
    for extra, named in cases:
        rc = main([*base, *extra, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("m3bert pretrain: error:") and named in err, err
        assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# The pipeline: targets -> pretrain (exact resume) -> export -> embed
# ---------------------------------------------------------------------------------------------


def _weights(run: Path) -> dict[str, torch.Tensor]:
    d = run / "checkpoints" / "last"
    return {**load_file(str(d / "model.safetensors")), **{f"head.{k}": v for k, v in load_file(str(d / "head.safetensors")).items()}}


def test_mert_pretraining_resumes_exactly(tmp_path, store, targets_dir):
    over = ["train.steps=8", "train.save_every=3", "train.eval_every=4", "objective.mixup.prob=0.5"]
    straight = pretrain(mert_cfg(targets_dir, *over), store=store, out=tmp_path / "a", progress=False)
    part = pretrain(mert_cfg(targets_dir, *over), store=store, out=tmp_path / "b", progress=False, stop_after=5)
    assert not part["finished"]
    rest = pretrain(None, store=store, out=tmp_path / "b", resume=True, progress=False)
    assert rest["start_step"] == 5 and rest["finished"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.startswith("head.codebooks.0.") for k in a) and "head.cqt_head.out.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert straight["weights_sha1"] == rest["weights_sha1"]
    val = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines() if "val/" in x]
    assert [v["step"] for v in val] == [4, 8]
    assert {"val/acc[mfcc+dmfcc-k12]", "val/ce[mfcc+dmfcc-k12]", "val/cqt_loss", "val/cqt_zero_baseline",
            "val/loss[cfm]"} <= set(val[-1])
    assert 0.0 <= val[-1]["val/acc[mfcc+dmfcc-k12]"] <= 1.0 and straight["best"]["metric"] == "val/loss[cfm]"
    run = json.loads((tmp_path / "a/run.json").read_text())
    assert run["targets"][0]["k"] == 12 and run["config"]["objective"]["targets"] == [str(targets_dir.resolve())]

    # resuming against other targets is refused
    other = tmp_path / "other_targets"
    build_targets(store, other, k=12, seed=7, sample_frames=400, frames_per_chunk=80, progress=False)
    cfg_path = tmp_path / "b" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace(str(targets_dir.resolve()), str(other)))
    with pytest.raises(CheckpointError, match="other targets"):
        pretrain(None, store=store, out=tmp_path / "b", resume=True, progress=False)


def test_cli_targets_pretrain_export_embed(tmp_path, store_dir):
    import soundfile as sf

    from m3bert.app.cli import main
    from m3bert.embed import load_model

    t = tmp_path / "targets"
    assert main(["targets", "--store", str(store_dir), "--out", str(t), "--group", "mel", "--k", "10",
                 "--sample-frames", "500", "--no-progress"]) == 0
    assert json.loads((t / "targets.json").read_text())["label"] == "mel-k10"
    run = tmp_path / "run"
    args = ["pretrain", "--store", str(store_dir), "--config", str(TINY), "--no-progress", "--out", str(run),
            "--objective", "mert", "--targets", str(t)]
    for o in ["train.threads=1", "train.steps=4", "train.save_every=2", "train.eval_every=2", "data.max_frames=64",
              "data.val_fraction=0.2", "masking.policies=[cfm]"]:
        args += ["--set", o]
    assert main(args) == 0
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0  # finished: nothing left, still fine
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    sf.write(tmp_path / "clip.wav", _song(11, 3.0), 44100)
    emb = load_model(str(tmp_path / "model")).embed(str(tmp_path / "clip.wav"))
    assert emb.shape == (64,) and np.isfinite(emb).all()
    assert main(["targets", "--store", str(store_dir), "--out", str(tmp_path / "bad"), "--k", "1"]) == 1
