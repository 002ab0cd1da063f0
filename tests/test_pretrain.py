"""Pre-training: schedule, configs, data, checkpoints, exact resume (in-process and killed
subprocess), refusals, DDP with 2 CPU processes, and a learning check -- on a real feature store
built from a few synthetic songs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_song, make_song_store
from safetensors.torch import load_file

from m3bert.core.errors import CheckpointError, ConfigError, TrainingError
from m3bert.embed import load_model
from m3bert.models import create_model
from m3bert.models.hub import export_model
from m3bert.pretrain.data import TrainBatches, split_by_group, store_groups
from m3bert.pretrain.loop import Dist, PretrainModule, load_pretrain_config, pretrain, validate
from m3bert.train.checkpoint import load_checkpoint, save_checkpoint
from m3bert.train.schedule import ScheduleConfig, lr_at

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "m2bert-tiny.yaml"
N_SONGS, SECONDS = 6, 4.0


_song = make_song


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return make_song_store(tmp_path_factory.mktemp("pretrain_store"), n_songs=N_SONGS, seconds=SECONDS)


@pytest.fixture(scope="module")
def store(store_dir):
    from m3bert.features.store import FeatureStore

    return FeatureStore.open(store_dir)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny(*overrides: str):
    base = ["train.threads=1", "train.log_every=2", "data.max_frames=64", "data.val_fraction=0.2"]
    return load_pretrain_config(TINY, overrides=base + list(overrides))


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    d = run / "checkpoints" / name
    return {**load_file(str(d / "model.safetensors")), **{f"head.{k}": v for k, v in load_file(str(d / "head.safetensors")).items()}}


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


# ---------------------------------------------------------------------------------------------


def test_schedule_is_the_paper_formula():
    cfg, T, peak = ScheduleConfig(), 1000, 2e-4
    lrs = np.array([lr_at(s, peak=peak, total_steps=T, cfg=cfg) for s in range(T)])
    assert (lrs > 0).all() and lrs.max() == pytest.approx(peak)
    assert int(np.argmax(lrs)) == 69  # end of the 7 % warm-up
    for s in (0, 10, 300, 999):  # paper: min(lmax s/(wT), lmax (T-s)/(T(1-w))), warm-up term at s+1
        assert lrs[s] == pytest.approx(min(peak * (s + 1) / (0.07 * T), peak * (T - s) / (T * 0.93)))
    assert lr_at(500, peak=1.0, total_steps=T, cfg=ScheduleConfig(name="constant")) == 1.0
    with pytest.raises(ConfigError, match="registered"):
        ScheduleConfig(name="nope")


def test_presets_and_overrides():
    for name, layers, hidden in (("small", 4, 768), ("large", 8, 1024), ("tiny", 2, 64), ("mini", 4, 192)):
        cfg = load_pretrain_config(ROOT / "configs" / f"m2bert-{name}.yaml")
        assert (cfg.model.n_layers, cfg.model.hidden) == (layers, hidden)
        assert cfg.masking.policies == ["cfm", "ccm"] and cfg.objective["loss"] == "huber"
    small = load_pretrain_config(ROOT / "configs" / "m2bert-small.yaml", overrides=["optim.lr=1e-4"])
    assert small.optim.lr == 1e-4 and small.accumulation(1) == 16 and small.accumulation(2) == 8
    assert small.optim.eps == 1e-6 and small.schedule.warmup_fraction == 0.07
    with pytest.raises(ConfigError, match="unknown key"):
        load_pretrain_config(TINY, overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_pretrain_config(TINY, overrides=["objective.huber_deltaa=2"])
    with pytest.raises(ConfigError, match="not a multiple"):
        load_pretrain_config(TINY, overrides=["data.batch_size=3"]).accumulation(1)
    with pytest.raises(ConfigError, match="precision"):
        load_pretrain_config(TINY, overrides=["train.precision=fp16"])


def test_song_split_and_batches_do_not_depend_on_world_size(store):
    groups = store_groups(store)
    assert len(groups) == N_SONGS
    train, val = split_by_group(groups, val_fraction=0.34, seed=0)
    songs = lambda idx: {store.rows[i]["source"] for i in idx}  # noqa: E731
    assert len(songs(val)) == 2 and not songs(train) & songs(val)
    assert np.array_equal(split_by_group(groups, val_fraction=0.34, seed=0)[1], val)
    one = TrainBatches(store, train, seed=3, micro_batch=2, n_accum=2, world_size=1, max_frames=50)
    two = TrainBatches(store, train, seed=3, micro_batch=2, n_accum=1, world_size=2, max_frames=50)
    for step in (0, 5):
        a = torch.cat([one.micro_batch_at(step, m).frames for m in range(2)])
        b = torch.cat([two.micro_batch_at(step, 0, rank=r).frames for r in range(2)])
        assert torch.equal(a, b) and a.shape == (4, 50, 324)
    # one step of 4 is one epoch of the 4 training chunks: each chunk exactly once
    assert len(train) == 4
    assert sorted(i for m in range(2) for i in one.micro_batch_at(0, m).indices) == train.tolist()


def test_checkpoint_roundtrip_refusals_and_atomic_swap(tmp_path, monkeypatch):
    from m3bert.models import create_model
    from m3bert.models.heads import ReconstructionHead

    fs = {"name": "fake", "config": {}, "cmvn_stats": None}
    enc = create_model("m2bert-tiny", seed=0)
    enc.feature_config = fs
    head = ReconstructionHead(64, 324)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-3)
    (enc(torch.randn(2, 10, 324))[-1].sum() + head(torch.randn(2, 64)).sum()).backward()
    opt.step()
    torch.manual_seed(123)
    d = save_checkpoint(tmp_path / "ck", model=enc, modules={"head": head}, optimizer=opt, state={"step": 7})
    expected_draw = torch.rand(3)

    enc2, head2 = create_model("m2bert-tiny", seed=1), ReconstructionHead(64, 324)
    enc2.feature_config = fs
    opt2 = torch.optim.Adam([*enc2.parameters(), *head2.parameters()], lr=1e-3)
    state = load_checkpoint(d, model=enc2, modules={"head": head2}, optimizer=opt2)
    assert state == {"step": 7}
    assert torch.equal(torch.rand(3), expected_draw)  # torch RNG restored
    for a, b in zip([*enc.parameters(), *head.parameters()], [*enc2.parameters(), *head2.parameters()]):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"])
    assert not any(p.suffix == ".pkl" or p.suffix == ".pt" for p in d.iterdir())

    other = create_model("m2bert-mini")
    other.feature_config = fs
    with pytest.raises(CheckpointError, match="model differs"):
        load_checkpoint(d, model=other)
    enc2.feature_config = {**fs, "name": "other"}
    with pytest.raises(CheckpointError, match="feature_set differs"):
        load_checkpoint(d, model=enc2)
    with pytest.raises(CheckpointError, match="no weights for module"):
        load_checkpoint(d, modules={"tasks": head2})

    # a save that dies half-way leaves the previous checkpoint whole
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(head), "state_dict", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(d, model=enc, modules={"head": head}, optimizer=opt, state={"step": 8})
    assert json.loads((d / "state.json").read_text())["state"] == {"step": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_resume_is_exact_and_refuses_other_feature_sets(tmp_path, store):
    over = ["train.steps=8", "train.save_every=3", "train.eval_every=4"]
    straight = pretrain(tiny(*over), store=store, out=tmp_path / "a", progress=False)
    part = pretrain(tiny(*over), store=store, out=tmp_path / "b", progress=False, stop_after=5)
    assert not part["finished"]  # interrupted after step 5; last checkpoint at step 3 (+ 5 at the stop)
    assert json.loads((tmp_path / "b/checkpoints/last/state.json").read_text())["state"]["step"] == 5
    rest = pretrain(None, store=store, out=tmp_path / "b", resume=True, progress=False)
    assert rest["start_step"] == 5 and rest["finished"]
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert straight["weights_sha1"] == rest["weights_sha1"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == [2, 4, 5, 6, 8]  # step 5 was logged by the interrupted call (the end of it)
    run = json.loads((tmp_path / "a/run.json").read_text())
    assert run["kind"] == "pretrain" and run["feature_set"] == store.feature_set.to_dict() and "torch" in run["versions"]
    assert (tmp_path / "a/checkpoints/best/model.safetensors").is_file()

    with pytest.raises(CheckpointError, match="already holds a run"):
        pretrain(tiny(*over), store=store, out=tmp_path / "a", progress=False)

    class OtherFeatures:  # the same chunks, claimed to come from another feature configuration
        def __init__(self, inner):
            from m3bert.features import get_feature_set

            self.inner, self.feature_set = inner, get_feature_set("m3bert324", tuning=None)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(CheckpointError, match="feature set"):
        pretrain(None, store=OtherFeatures(store), out=tmp_path / "b", resume=True, progress=False)


def test_learning_check(tmp_path, store):
    """200 steps of the tiny config: held-out masked loss well below predicting the per-channel
    mean, and below the untrained model's."""
    from m3bert.pretrain.data import validation_batches

    cfg = tiny("train.eval_every=200", "train.save_every=200", "train.log_every=50", "data.batch_size=4",
               "data.effective_batch=4")
    summary = pretrain(cfg, store=store, out=tmp_path / "run", progress=False)
    key = "val/loss[cfm+ccm]"
    trained = summary["val"][key]

    # the untrained model, evaluated identically
    from m3bert.models import Encoder
    from m3bert.pretrain.objectives import create_objective

    cfg.model.n_input = 324
    torch.manual_seed(cfg.seed)
    enc = Encoder(cfg.model, feature_config=store.feature_set.to_dict())
    obj = create_objective(cfg.objective, encoder_cfg=cfg.model, spec=store.feature_set.spec, masking=cfg.masking)
    train_idx, val_idx = split_by_group(store_groups(store), val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    untrained = validate(PretrainModule(enc, obj), store, val_idx, cfg, dist=Dist(), autocast=contextlib.nullcontext)[key]

    # predicting the training set's per-channel mean on the same masked cells
    mean = torch.from_numpy(np.concatenate([store.get(int(i)) for i in train_idx]).mean(0))
    tot, n = 0.0, 0
    for batch in validation_batches(store, val_idx, seed=cfg.seed, batch_size=8, max_frames=cfg.data.max_frames):
        _, mask = obj.corrupt(batch, policies=["cfm", "ccm"], stream=zlib.crc32(b"cfm+ccm"))
        target = batch.frames[mask]
        pred = mean.expand_as(batch.frames)[mask]
        tot += float(torch.nn.functional.huber_loss(pred, target, reduction="sum"))
        n += target.numel()
    mean_baseline = tot / n
    assert trained < 0.8 * mean_baseline, (trained, mean_baseline)  # measured: ~0.65x
    assert trained < 0.8 * untrained, (trained, untrained)  # measured: ~0.64x


def _kill_processes_mentioning(token: str) -> None:
    """SIGKILL every process whose command line contains ``token`` (Linux /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_kill_and_resume_matches_straight_run(tmp_path, store_dir, store):
    from m3bert.app.cli import main

    over = ["train.steps=30", "train.save_every=2", "train.eval_every=100"]  # long enough to be killed mid-run
    args = ["--store", str(store_dir), "--config", str(TINY), "--no-progress"]
    for o in ["train.threads=1", "data.max_frames=64", "data.val_fraction=0.2", *over]:
        args += ["--set", o]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "m3bert", "pretrain", *args, "--out", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["state"]["step"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["state"]["step"]
    assert 4 <= killed_at < 30, proc.stderr.read().decode()[-2000:]

    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads(state.read_text())["state"]["step"] == 30
    assert main(["pretrain", *args, "--out", str(tmp_path / "straight")]) == 0
    _assert_same_weights(_weights(run), _weights(tmp_path / "straight"), atol=1e-6)
    # the resumed metrics log has each step once
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert main(["pretrain", "--resume", str(run), "--set", "optim.lr=1"]) == 1  # clear error, not a silent change


def test_ddp_two_cpu_processes_agree_with_one(tmp_path, store_dir, store):
    over = ["train.steps=4", "train.save_every=2", "train.eval_every=2", "data.batch_size=4", "model.dropout=0.0",
            "train.threads=1", "data.max_frames=64", "data.val_fraction=0.2"]
    # --standalone: torchrun picks a free port and a private rendezvous id itself, so parallel
    # test sessions on one machine never join each other's job
    logs = tmp_path / "torchrun-logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "2", "-m", "m3bert", "pretrain", "--store", str(store_dir), "--config", str(TINY), "--out", str(tmp_path / "ddp"),
           "--no-progress"]
    for o in over:
        cmd += ["--set", o]
    env = dict(_env(), M3BERT_DIST_TIMEOUT="90")  # a lost peer fails the job instead of hanging it
    # Two attempts: on a heavily loaded machine gloo's teardown has hung once in a while (one rank
    # waiting for a peer that already left). A second hang or any wrong result still fails.
    for attempt in (1, 2):
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=240)
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _kill_processes_mentioning(str(tmp_path / "ddp"))  # torchrun starts workers in their own sessions
            proc.communicate()
            if attempt == 2:
                ranks = {p.name: p.read_text()[-1500:] for p in logs.rglob("*.log")}
                pytest.fail(f"torchrun did not finish in 240 s, twice; worker logs: {ranks}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["n_accum"] == 1
    assert len(summary["weights_sha1"]) == 2 and len(set(summary["weights_sha1"])) == 1  # both ranks identical
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    # the same 8-chunk steps in one process (4 x 2 accumulation) give the same model
    single = pretrain(tiny(*over), store=store, out=tmp_path / "one", progress=False)
    assert single["n_accum"] == 2
    _assert_same_weights(_weights(tmp_path / "ddp"), _weights(tmp_path / "one"), atol=2e-5)
    val_ddp = [json.loads(x) for x in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines() if "val/" in x][-1]
    assert val_ddp["val/loss[cfm+ccm]"] == pytest.approx(single["val"]["val/loss[cfm+ccm]"], rel=1e-4)


# -- issue 12: wrong settings are one error line; a diverging run stops; NaN weights go nowhere ----------

BAD_OVERRIDES = [
    ("optim.lr=-1", "optim.lr"), ("optim.lr=nan", "finite"), ("optim.lr=.inf", "finite"), ("optim.lr=inf", "number"),
    ("train.steps=abc", "train.steps"), ("train.steps=2.7", "integer"), ("data.batch_size=abc", "data.batch_size"),
    ("optim.betas=[1.5, 0.9]", "optim.betas[0]"), ("optim.eps=-1e-8", "optim.eps"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("model.dropout=1.5", "model.dropout"),
    ("seed=abc", "seed"), ("seed=-1", "seed"), ("train.threads=-1", "train.threads"),
    ("model.attention_dropout=-0.1", "attention_dropout"), ("masking.cfm.ratio=0", "masking.cfm.ratio"),
    ("optim.lr=[1", "not valid YAML"), ("train.device=tpu", "train.device"),
]


@pytest.mark.parametrize("override,named", BAD_OVERRIDES)
def test_bad_setting_is_one_error_line_naming_the_field(tmp_path, store_dir, capsys, override, named):
    from m3bert.app.cli import main

    rc = main(["pretrain", "--store", str(store_dir), "--config", str(TINY), "--out", str(tmp_path / "r"),
               "--set", override, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("m3bert pretrain: error:") and named in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_config_file_errors_are_one_line(tmp_path, store_dir, capsys):
    from m3bert.app.cli import main

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lr: [1e-4\n")
    assert main(["pretrain", "--store", str(store_dir), "--config", str(bad_yaml), "--out", str(tmp_path / "r")]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("optim: 3\n")
    assert main(["pretrain", "--store", str(store_dir), "--config", str(not_a_mapping), "--out", str(tmp_path / "r")]) == 1
    assert "optim: expected a mapping" in capsys.readouterr().err


def test_resume_of_a_damaged_run_is_one_error_line(tmp_path, store_dir, capsys):
    from m3bert.app.cli import main

    run = tmp_path / "run"
    args = ["--set", "train.steps=4", "--set", "train.save_every=2", "--set", "train.threads=1",
            "--set", "data.max_frames=64", "--no-progress"]
    assert main(["pretrain", "--store", str(store_dir), "--config", str(TINY), "--out", str(run), *args]) == 0
    capsys.readouterr()
    # a torn last line in metrics.jsonl (killed mid-write) is dropped, not a crash
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "train/lo')
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    good = (run / "run.json").read_text()
    (run / "run.json").write_text(good[: len(good) // 2])
    assert main(["pretrain", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "run.json: not valid JSON" in err and "Traceback" not in err
    (run / "run.json").write_text(good)
    (run / "config.yaml").write_text("optim: {lr: [\n")
    assert main(["pretrain", "--resume", str(run)]) == 1
    assert "config.yaml: not valid YAML" in capsys.readouterr().err


def test_diverging_run_stops_and_nothing_non_finite_is_saved_or_loaded(tmp_path, store, capsys):
    """`--set optim.lr=...` that blows the weights up trained, exported and embedded NaN with exit 0."""
    cfg = tiny("train.steps=20", "train.save_every=1", "train.eval_every=100", "optim.lr=1e30",
               "optim.max_grad_norm=0", "schedule.warmup_fraction=0")
    with pytest.raises(TrainingError, match="diverged at step"):
        pretrain(cfg, store=store, out=tmp_path / "run", progress=False)
    last = tmp_path / "run" / "checkpoints" / "last"
    assert all(torch.isfinite(v).all() for v in load_file(str(last / "model.safetensors")).values())
    # weights that are NaN never reach a checkpoint, an export or an Embedder
    enc = create_model("m2bert-tiny", seed=0)
    enc.feature_config = store.feature_set.to_dict()
    with torch.no_grad():
        next(enc.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite weights"):
        save_checkpoint(tmp_path / "ck", model=enc, state={"step": 1})
    assert not (tmp_path / "ck").exists()
    enc.save_pretrained(tmp_path / "nan_model")  # a file someone hands us
    with pytest.raises(CheckpointError, match="non-finite weights"):
        export_model(tmp_path / "nan_model", tmp_path / "exported")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_model(tmp_path / "nan_model")


def test_resume_removes_what_a_killed_save_left(tmp_path, store):
    """A temp checkpoint folder survived kill -9 during save and stayed forever (issue 12, item 9)."""
    run = tmp_path / "run"
    pretrain(tiny("train.steps=4", "train.save_every=2", "train.eval_every=100"), store=store, out=run,
             progress=False, stop_after=2)
    ckpts = run / "checkpoints"
    dead = 2 ** 22 + 12345  # above Linux's default pid_max: never a live process
    (ckpts / f".last.tmp-{dead}").mkdir()
    (ckpts / f".last.tmp-{dead}" / "model.safetensors").write_bytes(b"half")
    shutil.copytree(ckpts / "last", ckpts / f".last.old-{dead}")  # redundant: last is in place
    (ckpts / f".best.old-{dead}").mkdir()  # kept: it is what recovers a missing 'best'
    mine = ckpts / f".last.tmp-{os.getppid()}"  # another live writer's temp folder is not touched
    mine.mkdir()
    pretrain(None, store=store, out=run, resume=True, progress=False)
    left = sorted(p.name for p in ckpts.iterdir())
    assert f".last.tmp-{dead}" not in left and f".last.old-{dead}" not in left
    assert mine.name in left and "last" in left
    assert "best" in left or f".best.old-{dead}" in left


# -- issue 14: objective switch by override; crops unchanged by the targets plumbing ---------------------


def test_objective_name_override_switches_to_that_objectives_settings():
    """``--set objective.name=mert --set objective.targets=T`` on a reconstruction preset: the name
    override is applied first, so the new objective's own keys can be set."""
    cfg = tiny("objective.name=mert", "objective.targets=/some/targets", "objective.mixup.prob=0.25")
    assert cfg.objective["name"] == "mert" and cfg.objective["targets"] == [str(Path("/some/targets").resolve())]
    assert cfg.objective["mixup"]["prob"] == 0.25 and cfg.objective["cqt_weight"] == 1.0
    assert tiny("objective.name=mert_acoustic").objective["cqt_weight"] == 0.0
    same = tiny("objective.name=reconstruction", "objective.huber_delta=2")  # same name: YAML settings kept
    assert same.objective["huber_delta"] == 2.0 and same.objective["loss"] == "huber"
    with pytest.raises(ConfigError, match="unknown key"):
        tiny("objective.name=mert", "objective.huber_delta=2")  # a reconstruction-only key
    with pytest.raises(ConfigError, match="registered"):
        tiny("objective.name=nope")
    assert load_pretrain_config(TINY, overrides={"objective.name": "mert", "objective.targets": ["a"]}).objective["name"] == "mert"


def test_crops_are_the_seeded_windows(store):
    """The crop of sample k is frames[start : start + max_frames] with start drawn from
    default_rng([seed, SAMPLE, k]) exactly as before targets were added (same numbers)."""
    from m3bert.pretrain.data import SAMPLE

    train, _ = split_by_group(store_groups(store), val_fraction=0.34, seed=0)
    data = TrainBatches(store, train, seed=5, micro_batch=2, n_accum=1, max_frames=40)
    batch = data.micro_batch_at(1, 0)
    assert batch.targets is None
    for row, (chunk, key) in enumerate(zip(batch.indices, batch.keys)):
        full = store.get(chunk)
        start = int(np.random.default_rng([5, SAMPLE, key[2]]).integers(0, full.shape[0] - 40 + 1))
        assert torch.equal(batch.frames[row], torch.from_numpy(full[start : start + 40]))
