"""Kim et al. (2020)'s representation network (``kim-cnn``), its input (``kim_mel``) and the
architecture registry that lets every tool load it: Table 3 shapes, Table 4 dimensionalities, the
branch point of each strategy, exact padding, the model folder, export, embed and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_test_signal
from m3bert.core.errors import CheckpointError, ConfigError
from m3bert.embed import load_model
from m3bert.evaluate.representations import ModelRepresentation
from m3bert.evaluate.runner import run_benchmark
from m3bert.features import get_feature_set
from m3bert.models import Encoder, create_model
from m3bert.models.base import ARCHITECTURES, ModelBase, load_model_dir
from m3bert.models.hub import export_model, load_encoder, model_id
from m3bert.models.kim import STRATEGIES, KimEncoder, get_strategy, strategy_overrides
from m3bert.tasks.registry import Clip, TaskData

SR = 22050


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- kim_mel


def test_kim_mel_is_the_papers_input_and_fast_matches_librosa():
    fs = get_feature_set("kim_mel")
    c = fs.config
    assert (c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.top_db) == (22050, 1024, 256, 128, 80.0)
    x = make_test_signal(2.5, sample_rate=SR, seed=1)
    assert fs.n_frames(x.size) == 216  # Table 3: 2.5 s -> 216 frames
    fast = fs.extract(x, sample_rate=SR, normalize=False, backend="fast")
    ref = fs.extract(x, sample_rate=SR, normalize=False, backend="reference")
    assert fast.shape == ref.shape == (216, 128)
    assert np.abs(fast - ref).max() < 1e-3  # dB
    assert ref.max() - ref.min() <= 80.0 + 1e-4  # top_db clipping below the clip's maximum
    with pytest.raises(ConfigError, match="kim_mel.hop_length"):
        get_feature_set("kim_mel", hop_length=4096)


# --------------------------------------------------------------------------- the network


def _stage_shapes(model: KimEncoder, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes, n, h = [], torch.full((x.shape[0],), x.shape[1]), x.unsqueeze(1)
    for stage in model.shared:
        h, n = stage(h, n)
        shapes.append(tuple(h.shape[1:]))
    return shapes


def test_table3_shapes_and_parameters():
    m = create_model("kim-cnn", seed=0).eval()
    with torch.no_grad():
        shapes = _stage_shapes(m, torch.randn(2, 216, 128))
    # Table 3 (input of the next layer): conv2 16x54x64, conv3 32x27x32, conv4 64x13x16 (ceil: 14),
    # conv5 64x6x8 (ceil: 7), conv61 128x3x4 (ceil: 4), gap 256, fc-feature 256
    assert shapes == [(16, 54, 64), (32, 27, 32), (64, 14, 16), (64, 7, 8), (128, 4, 4), (256,), (256,)]
    convs = [p for n, p in m.named_parameters() if n.endswith("conv.weight") or n.endswith("conv2.weight")]
    assert [tuple(p.shape) for p in convs] == [(16, 1, 5, 5), (32, 16, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3),
                                               (128, 64, 3, 3), (256, 128, 3, 3), (256, 256, 1, 1)]
    assert m.n_hidden_states == 2 and m.layer_dims == [256, 256]
    assert m.shared[0].conv.stride == (2, 1)


def test_strategies_are_one_branch_point_with_table4_dimensionality():
    sources = ["a", "b", "c"]
    base = create_model("kim-cnn-tiny", seed=0).num_parameters()
    d = 64
    dims, sizes = {}, {}
    for name, s in STRATEGIES.items():
        if name == "ss-r":
            m = create_model("kim-cnn-tiny", seed=0, **strategy_overrides(name, ["a"]))
        else:
            m = create_model("kim-cnn-tiny", seed=0, **strategy_overrides(name, sources))
        dims[name], sizes[name] = m.layer_dims[-1], m.num_parameters()
        assert len(m.shared) == s.shared_stages
    assert dims == {"ss-r": d, "ms-sr@fc": d, "ms-cr@6": 3 * d, "ms-cr@4": 3 * d, "ms-cr@2": 3 * d, "mss-cr": 3 * d}
    assert sizes["ss-r"] == sizes["ms-sr@fc"] == base  # heads (fc-output) are outside the exported model
    assert sizes["mss-cr"] == 3 * base  # independent networks
    assert sizes["mss-cr"] > sizes["ms-cr@2"] > sizes["ms-cr@4"] > sizes["ms-cr@6"] > sizes["ms-sr@fc"]
    # the released code's branch points: @2 shares conv1 only, @4 conv1-3, @6 conv1-5
    assert [STRATEGIES[k].shared_stages for k in ("mss-cr", "ms-cr@2", "ms-cr@4", "ms-cr@6", "ms-sr@fc")] == [0, 1, 3, 5, 7]
    with pytest.raises(ConfigError, match="one source"):
        strategy_overrides("ss-r", sources)
    with pytest.raises(ConfigError, match="at least two sources"):
        strategy_overrides("mss-cr", ["a"])
    with pytest.raises(ConfigError, match="expected one of"):
        get_strategy("ms-cr@3")


def test_branches_are_independent_and_concatenated():
    m = create_model("kim-cnn-tiny", seed=0, **strategy_overrides("ms-cr@4", ["a", "b", "c"])).eval()
    x = torch.randn(3, 200, 64)
    with torch.no_grad():
        gap, fc = m.pooled(x)
        _, only_b = m.pooled(x, branches=[1])
        states = m(x)
    a, b = m.branch_slice(1)
    assert torch.equal(fc[:, a:b], only_b)
    assert states[-1].shape == (3, 200, 192) and torch.equal(states[-1][:, 17], fc) and torch.equal(states[0][:, 0], gap)


def test_padded_windows_give_what_they_give_alone_in_eval_and_training():
    torch.manual_seed(0)
    x = torch.randn(3, 216, 64)
    lengths = torch.tensor([216, 97, 5])
    m = create_model("kim-cnn-tiny", seed=1, **strategy_overrides("ms-cr@2", ["a", "b"]))
    m.eval()
    with torch.no_grad():
        gap, fc = m.pooled(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            g1, f1 = m.pooled(x[i:i + 1, :n])
            assert torch.allclose(f1[0], fc[i], atol=1e-5) and torch.allclose(g1[0], gap[i], atol=1e-5)
    # training: batch-norm statistics over valid frames only = those of the unpadded frames
    a, b = create_model("kim-cnn-tiny", seed=1), create_model("kim-cnn-tiny", seed=1)
    a.train(), b.train()
    same = torch.randn(2, 120, 64)
    padded = torch.cat([same, torch.randn(2, 40, 64)], dim=1)
    out_a = a.pooled(padded, torch.tensor([120, 120]))[1]
    out_b = b.pooled(same)[1]
    assert torch.allclose(out_a, out_b, atol=5e-4)  # float32 reduction order of the batch statistics
    assert torch.allclose(a.shared[2].bn.running_var, b.shared[2].bn.running_var, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear():
    m = create_model("kim-cnn-tiny", seed=0)
    with pytest.raises(ConfigError, match="64"):
        m(torch.randn(1, 10, 128))
    with pytest.raises(ConfigError, match="max_frames"):
        m(torch.randn(1, 300, 64))
    with pytest.raises(ConfigError, match="lengths"):
        m(torch.randn(2, 10, 64), torch.tensor([10, 0]))
    with pytest.raises(ConfigError, match="fc_dim"):
        create_model("kim-cnn-tiny", fc_dim=32)
    with pytest.raises(ConfigError, match="shared_stages=6"):
        create_model("kim-cnn-tiny", shared_stages=6)


# --------------------------------------------------------------------------- registry and folder


def test_registry_and_m2bert_folders_without_architecture_load_identically(tmp_path):
    assert {"m2bert", "kim-cnn"} <= set(ARCHITECTURES)
    enc = create_model("m2bert-tiny", seed=5)
    enc.feature_config = get_feature_set("m3bert324").to_dict()
    enc.save_pretrained(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert cfg["architecture"] == "m2bert"
    old = tmp_path / "old"  # a folder written before architectures existed: no "architecture" key
    old.mkdir()
    (old / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    (old / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "architecture"}))
    a, b = Encoder.from_pretrained(old), load_model_dir(tmp_path / "new")
    assert isinstance(a, Encoder) and isinstance(b, Encoder)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    fs = enc.feature_config
    assert model_id(a, fs) == model_id(b, fs) == model_id(enc, fs)
    # the id of an m2bert model does not involve the architecture's name (ids of existing models are kept)
    kim = create_model("kim-cnn-tiny", seed=0)
    assert model_id(kim, fs) != model_id(create_model("kim-cnn-tiny", seed=1), fs)


def test_kim_folder_round_trip_and_refusals(tmp_path):
    m = create_model("kim-cnn-tiny", seed=2, **strategy_overrides("mss-cr", ["x", "y"]))
    m.feature_config = get_feature_set("kim_mel", n_mels=64).to_dict()
    m.save_pretrained(tmp_path / "kim")
    cfg = json.loads((tmp_path / "kim" / "config.json").read_text())
    assert cfg["architecture"] == "kim-cnn" and cfg["model"]["n_branches"] == 2 and cfg["model"]["sources"] == ["x", "y"]
    back = ModelBase.from_pretrained(tmp_path / "kim")
    assert isinstance(back, KimEncoder)
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), back.state_dict().values()))
    with pytest.raises(CheckpointError, match="not a 'm2bert' one"):
        Encoder.from_pretrained(tmp_path / "kim")
    cfg["architecture"] = "no-such-net"
    (tmp_path / "kim" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture='no-such-net' is not registered"):
        load_model_dir(tmp_path / "kim")


def test_random_kim_models_use_their_own_feature_sets():
    enc, source = load_encoder("random:kim-cnn:3")
    assert source == "random:kim-cnn:3" and enc.feature_config["name"] == "kim_mel"
    enc324, _ = load_encoder("random:kim-cnn-324")
    assert enc324.feature_config["name"] == "m3bert324" and enc324.cfg.n_input == 324
    emb = load_model("random:kim-cnn-324")
    v = emb.embed(make_test_signal(3.0, seed=2), sample_rate=44100)
    assert v.shape == (256,) and np.isfinite(v).all()


# --------------------------------------------------------------------------- export, embed, bench


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-source MS-CR@4 kim model in a run's checkpoint, exported to a model folder."""
    root = tmp_path_factory.mktemp("kim_export")
    m = create_model("kim-cnn-tiny", seed=4, **strategy_overrides("ms-cr@4", ["s1", "s2"])).eval()
    fs = get_feature_set("kim_mel", n_mels=64)
    m.feature_config = fs.to_dict()
    run = root / "run"
    m.save_pretrained(run / "checkpoints" / "best")
    (run / "run.json").write_text(json.dumps({"kind": "enrich", "config": {}}))
    info = export_model(run, root / "model")
    return root / "model", m, info


def test_export_embed_gives_the_windows_fc_feature(exported, tmp_path):
    folder, m, info = exported
    assert info["n_hidden_states"] == 2 and sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    emb = load_model(folder)
    assert emb.model_id == info["model_id"] and emb.layer_dims == [128, 128] and emb.window_frames == 216
    x = make_test_signal(2.5, sample_rate=SR, seed=3)  # one window: the paper's excerpt
    v = emb.embed(x, sample_rate=SR)
    feats = emb.feature_set.extract(x, sample_rate=SR)
    with torch.no_grad():
        _, fc = m.pooled(torch.from_numpy(feats)[None])
    assert v.shape == (128,) and np.allclose(v, fc[0].numpy(), atol=1e-5)
    long = make_test_signal(9.0, sample_rate=SR, seed=4)  # several windows: a frame-weighted mean of their vectors
    both = emb.embed(long, sample_rate=SR, layers="all", pool="meanstd")
    frames, times = emb.embed(long, sample_rate=SR, level="frame")
    assert both.shape == (2, 256) and frames.shape == (times.shape[0], 128)
    assert np.allclose(frames.mean(0), both[1, :128], atol=1e-5)


def test_bench_probes_a_kim_model_with_the_kim_protocol(exported, tmp_path):
    folder, _, _ = exported
    clips = []
    for i in range(16):
        f = 110.0 * (1 + i % 2)
        t = np.arange(int(3.0 * SR)) / SR
        x = (0.4 * np.sin(2 * np.pi * f * t) + 0.02 * np.random.default_rng(i).standard_normal(t.size)).astype(np.float32)
        path = tmp_path / f"c{i}.wav"
        sf.write(path, x, SR)
        clips.append(Clip(f"c{i}", path, i % 2, "test" if i >= 12 else "train", f"g{i}"))
    data = TaskData("toy-pitch", "multiclass", ["low", "high"], clips, root=str(tmp_path))
    res = run_benchmark([ModelRepresentation(str(folder), name="kim")], [data], protocol="kim", seeds=1,
                        progress=False, probe_overrides={"max_epochs": 20}, cache_dir=tmp_path / "cache")
    row = res["results"][0]
    assert row["representation"] == "kim" and np.isfinite(row["summary"]["score"]["mean"])
