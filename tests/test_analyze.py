"""``m3bert analyze``: streaming statistics equal their batch definitions, a planted unit is found
and a noise unit is not, a resumed run writes the same analysis.json, and the CLI works end to end."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_test_signal
from scipy import stats as sstats

from m3bert.app.cli import main
from m3bert.core.errors import ConfigError, DataError
from m3bert.evaluate.analysis import AnalysisConfig, run_analysis
from m3bert.evaluate.analysis.run import validity
from m3bert.embed import load_model
from m3bert.evaluate.analysis.source import items_from_audio, items_from_task, random_twin
from m3bert.evaluate.analysis.stats import Reservoir, Sums, fisher_bound, frame_keys, pearson, ridge_probe, spearman
from m3bert.features import get_feature_set

SR = 44100


# ---------------------------------------------------------------------------------------------
# statistics


def _chunks(rng, n_items=5):
    """Items of (states per layer, y, valid) with large offsets (precision) and a masked channel."""
    out = []
    for i in range(n_items):
        t = int(rng.integers(20, 60))
        h0 = rng.standard_normal((t, 5)) * 3 + 10
        h1 = rng.standard_normal((t, 3))
        y = np.stack([5000 + 300 * rng.standard_normal(t) + 40 * h0[:, 0],  # centroid-like, large offset
                      rng.standard_normal(t) - h1[:, 2],
                      220 + 50 * rng.standard_normal(t)], axis=1)
        valid = np.ones((t, 3), dtype=bool)
        valid[:, 2] = rng.random(t) > 0.4  # an f0-like channel valid on some frames only
        out.append(([h0, h1], y, valid))
    return out


def test_streaming_pearson_equals_corrcoef_on_stacked_frames():
    rng = np.random.default_rng(0)
    chunks = _chunks(rng)
    sums = Sums([5, 3], ["all", "all", "voiced"])
    for i, (states, y, valid) in enumerate(chunks):
        sums.add(states, y, valid, split=i % 2)
    for li in range(2):
        r, n = pearson(sums, li)
        H = np.concatenate([c[0][li] for c in chunks])
        Y = np.concatenate([c[1] for c in chunks])
        V = np.concatenate([c[2] for c in chunks])
        for k in range(3):
            rows = V[:, k]
            assert n[k] == rows.sum()
            for u in range(H.shape[1]):
                expected = np.corrcoef(H[rows, u], Y[rows, k])[0, 1]
                assert abs(r[k, u] - expected) < 1e-9, (li, k, u)


def test_ridge_probe_from_sums_equals_the_batch_fit():
    rng = np.random.default_rng(1)
    chunks = _chunks(rng, n_items=8)
    sums = Sums([5, 3], ["all", "all", "voiced"])
    splits = [i % 3 == 0 for i in range(len(chunks))]  # every third item is test
    for (states, y, valid), te in zip(chunks, splits):
        sums.add(states, y, valid, split=int(te))
    alpha = 0.1
    (res,) = [ridge_probe(sums, 0, alphas=(alpha,))[0]]
    X = np.concatenate([c[0][0] for c, te in zip(chunks, splits) if not te])
    y = np.concatenate([c[1][:, 0] for c, te in zip(chunks, splits) if not te])
    Xt = np.concatenate([c[0][0] for c, te in zip(chunks, splits) if te])
    yt = np.concatenate([c[1][:, 0] for c, te in zip(chunks, splits) if te])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    Xs = (X - mu) / sd
    gram = Xs.T @ Xs
    lam = alpha * np.linalg.eigvalsh(gram).mean()
    beta = np.linalg.solve(gram + lam * np.eye(5), Xs.T @ (y - y.mean()))
    pred = y.mean() + ((Xt - mu) / sd) @ beta
    r2 = 1 - ((yt - pred) ** 2).sum() / ((yt - yt.mean()) ** 2).sum()
    assert res.r2_test == pytest.approx(r2, abs=1e-8)
    assert res.n_train == len(y) and res.n_test == len(yt)


def test_spearman_fisher_and_reservoir():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((200, 4))
    y = np.stack([np.exp(h[:, 1]) + 0.1 * rng.standard_normal(200), rng.standard_normal(200)], axis=1)
    valid = np.ones_like(y, dtype=bool)
    valid[::3, 1] = False
    sp = spearman(h, y, valid)
    assert sp[0, 1] == pytest.approx(sstats.spearmanr(h[:, 1], y[:, 0]).statistic, abs=1e-12)
    assert sp[1, 2] == pytest.approx(sstats.spearmanr(h[valid[:, 1], 2], y[valid[:, 1], 1]).statistic, abs=1e-12)
    # Fisher z: r = 0.5, n = 103 -> se 0.1; one test -> z +- 1.96 se; Bonferroni widens it
    lo, _hi, lower = fisher_bound(np.array([0.5, -0.5, 0.05]), np.array([103.0] * 3), m=1)
    assert lo[0] == pytest.approx(np.tanh(np.arctanh(0.5) - 1.959964 * 0.1), abs=1e-6)
    assert lower[0] == pytest.approx(lo[0]) and lower[1] == pytest.approx(lo[0]) and lower[2] == 0.0
    assert fisher_bound(np.array([0.5]), np.array([103.0]), m=1000)[2][0] < lower[0]
    # the reservoir is a pure function of the keys: any order of items gives the same sample
    items = [(f"item{i}", rng.standard_normal((30, 2))) for i in range(6)]
    samples = []
    for order in (range(6), reversed(range(6))):
        res = Reservoir(40, 2, {"m": [3]})
        for i in order:
            name, yy = items[i]
            res.add(frame_keys(7, name, 30), yy, np.ones_like(yy, bool), {"m": [np.tile(yy[:, :1], (1, 3))]})
        samples.append(res)
    np.testing.assert_array_equal(samples[0].keys, samples[1].keys)
    np.testing.assert_array_equal(samples[0].states["m"][0], samples[1].states["m"][0])
    assert samples[0].keys.size == 40 and np.all(np.diff(samples[0].keys) > 0)


def test_f0_on_voiced_frames_and_spectral_shape_on_sounding_frames_only():
    groups = ["centroid", "rms", "f0", "voiced_prob", "voiced"]
    y = np.array([[1000.0, 0.1, 0.0, 0.1, 0.0], [1200.0, 0.2, 220.0, 0.9, 1.0], [900.0, 0.3, 230.0, 0.8, 1.0],
                  [0.0, 0.0, 0.0, 0.0, 0.0]])  # the last frame is digital silence
    valid = validity(y, groups, silence_dbfs=-60.0)
    np.testing.assert_array_equal(valid[:, 2], [False, True, True, False])  # f0: voiced frames
    np.testing.assert_array_equal(valid[:, 0], [True, True, True, False])  # centroid: not in silence
    assert valid[:, [1, 3, 4]].all()
    assert validity(y, groups)[:, 0].all()  # silence kept when asked
    sums = Sums([2], ["sounding", "all", "voiced", "all", "all"])
    sums.add([np.arange(8.0).reshape(4, 2)], y, valid, split=0)
    assert sums.ny[0].tolist() == [3, 4, 2, 4, 4] and sums.sy[0, 2] == 450.0
    assert sums.group_names == ["all", "sounding", "voiced"] and sums.n[0].tolist() == [4, 3, 2]


# ---------------------------------------------------------------------------------------------
# the planted unit


class FakeSource:
    """Two layers of seeded noise; with ``plant``, unit 3 of layer 1 *is* the spectral centroid."""

    layer_names = ["input", "layer1"]
    sample_rate = SR

    def __init__(self, name: str, *, plant: bool, seed: int = 0, interrupt_at: int | None = None,
                 drop_frame: bool = False) -> None:
        self.name, self.spec, self.plant, self.seed = name, f"fake:{name}", plant, seed
        self.layer_dims = [6, 8]
        self.model_id = f"fake-{name}-{plant}-{seed}"
        self.feature_set = get_feature_set("m3bert324")  # the frame geometry of the model's input
        self.calls, self.interrupt_at, self.drop_frame = 0, interrupt_at, drop_frame

    def describe(self):
        return {"name": self.name, "spec": self.spec, "model_id": self.model_id, "layers": self.layer_names,
                "layer_dims": self.layer_dims}

    def frames(self, x):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        t = 1 + x.size // 1024 - (1 if self.drop_frame else 0)
        rng = np.random.default_rng([self.seed, x.size, int(abs(x[:1000]).sum() * 1e3)])
        layers = [rng.standard_normal((t, d)).astype(np.float32) for d in self.layer_dims]
        if self.plant:
            layers[1][:, 3] = librosa.feature.spectral_centroid(y=x, sr=SR, n_fft=2048, hop_length=1024)[0, :t]
        return layers


def _write_wavs(folder: Path, n: int, seconds: float = 1.2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = make_test_signal(seconds + 0.1 * i, seed=i)
        if i % 2:  # darker files, so the centroid varies between files too
            x = np.convolve(x, np.ones(8) / 8, mode="same").astype(np.float32)
        sf.write(folder / f"clip{i}.wav", x, SR)
    return folder


CFG = dict(f0=False, checkpoint_s=0.0, reservoir=500)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tmp_path_factory.mktemp("planted")
    items = items_from_audio([_write_wavs(base / "wavs", 4)])
    res = run_analysis([FakeSource("model", plant=True), FakeSource("random", plant=False, seed=9)], items, base / "out",
                       config=AnalysisConfig(**CFG), progress=False)
    return base, items, res


def test_planted_unit_is_found_and_flagged(planted):
    _base, _items, res = planted
    best = res["models"]["model"]["best"]["centroid"]
    assert (best["layer"], best["unit"]) == ("layer1", 3)
    assert best["r"] > 0.99 and best["abs_lower"] > 0.9 and best["encoded"]
    assert best["spearman"] > 0.99
    assert res["models"]["model"]["probe_r2"][1][0] > 0.99  # layer1 -> centroid, held-out files
    assert res["models"]["model"]["probe_r2"][0][0] < 0.3  # noise layer: nothing to decode
    cmp = res["comparison"]["centroid"]
    assert cmp["beyond_random"] and cmp["abs_r_difference"] > 0.5
    assert not res["models"]["random"]["best"]["centroid"]["encoded"]


def test_a_noise_unit_is_not_flagged(planted):
    base, _items, res = planted
    units = np.load(base / "out" / "units.npz")
    k = res["descriptors"]["channels"].index("centroid")
    lower = units["model_abs_lower_1"][k]
    assert lower[3] > 0.9
    assert (lower[[0, 1, 2, 4, 5, 6, 7]] < 0.5).all()
    assert (units["model_abs_lower_0"][k] < 0.5).all()
    # noise units flag no descriptor at all, in either model (the planted unit may flag descriptors
    # that co-vary with the centroid, such as brightness)
    for name in ("model", "random"):
        for ch, b in res["models"][name]["best"].items():
            if b["encoded"]:
                assert (name, b["layer"], b["unit"]) == ("model", "layer1", 3), (name, ch, b)


def test_outputs_and_report(planted):
    base, _items, _res = planted
    out = base / "out"
    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk["format"] == "m3bert-analysis" and on_disk["inputs"]["n_done"] == 4
    for name in ("heatmap_abs_r.png", "heatmap_probe_r2.png", "scatter_best_units.png", "report.md", "report.html"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "**spectral centroid**: encoded" in md and "Pearson's rho = .831" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert on_disk["tsne"] is None  # 4 clips: too few for a map


def test_resume_writes_the_same_analysis(planted, tmp_path):
    base, items, _res = planted
    sources = [FakeSource("model", plant=True, interrupt_at=3), FakeSource("random", plant=False, seed=9)]
    with pytest.raises(KeyboardInterrupt):
        run_analysis(sources, items, tmp_path, config=AnalysisConfig(**CFG), progress=False)
    state = np.load(tmp_path / "state.npz")
    assert len(json.loads(str(state["meta"]))["done"]) == 2
    lines: list[str] = []
    run_analysis(sources, items, tmp_path, config=AnalysisConfig(**CFG), progress=False, say=lines.append)
    assert any("2 of 4 item(s) already done" in line for line in lines)
    assert sources[0].calls == 3 + 2  # items 1, 2, (3 interrupted), then 3, 4
    assert (tmp_path / "analysis.json").read_text() == (base / "out" / "analysis.json").read_text()
    a, b = np.load(tmp_path / "units.npz"), np.load(base / "out" / "units.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    # other settings in the same folder are refused, not mixed
    with pytest.raises(ConfigError, match="other settings"):
        run_analysis(sources, items, tmp_path, config=AnalysisConfig(**{**CFG, "seed": 1}), progress=False)


def test_frame_mismatch_and_bad_items(tmp_path):
    wavs = _write_wavs(tmp_path / "wavs", 2)
    (wavs / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    items = items_from_audio([wavs])
    with pytest.raises(DataError, match="frames"):
        run_analysis([FakeSource("model", plant=True, drop_frame=True)], items, tmp_path / "a",
                     config=AnalysisConfig(**CFG, baseline="none"), progress=False)
    res = run_analysis([FakeSource("model", plant=True)], items, tmp_path / "b", config=AnalysisConfig(**CFG, baseline="none"),
                       progress=False)
    assert res["inputs"]["n_done"] == 2 and [f["item_id"] for f in res["inputs"]["failures"]] == ["broken.wav"]
    assert list(res["models"]) == ["model"] and "beyond_random" not in res["comparison"]["centroid"]


def test_task_input_colours_the_tsne_map(tmp_path):
    root = tmp_path / "labelled"
    for split in ("train", "test"):
        for cls in ("bright", "dark"):
            _write_wavs(root / split / cls, 3, seconds=1.0)
    items, info = items_from_task(f"folder:{root}", split="test")
    assert len(items) == 6 and info["split"] == "test" and sorted({it.label for it in items}) == ["bright", "dark"]
    res = run_analysis([FakeSource("model", plant=True)], items, tmp_path / "out", task_info=info,
                       config=AnalysisConfig(**CFG, baseline="none"), progress=False)
    assert res["tsne"] is not None and len(res["tsne"]["coordinates"]["model"]) == 6
    assert (tmp_path / "out" / "tsne.png").is_file()
    assert {d["label"] for d in res["inputs"]["items"]} == {"bright", "dark"}
    assert f"folder:{root}" in (tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_on_a_random_model(tmp_path, capsys):
    wavs = _write_wavs(tmp_path / "wavs", 2, seconds=1.5)
    out = tmp_path / "out"
    rc = main(["analyze", "random:m2bert-tiny", str(wavs), "--out", str(out), "--no-f0", "--quiet", "--reservoir", "300"])
    assert rc == 0
    res = json.loads((out / "analysis.json").read_text())
    assert list(res["models"]) == ["model", "random"]
    assert res["models"]["model"]["layers"] == ["input", "layer1", "layer2"]
    assert res["models"]["random"]["architecture"] == res["models"]["model"]["architecture"]
    assert res["models"]["random"]["model_id"] != res["models"]["model"]["model_id"]
    assert res["inputs"]["n_done"] == 2 and len(res["descriptors"]["channels"]) == 18
    assert "spectral centroid" in capsys.readouterr().out
    assert "data:image/png;base64," in (out / "report.html").read_text()
    rc = main(["analyze", "random:m2bert-tiny", str(tmp_path / "missing"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("m3bert analyze: error:") and "missing" in err[0]


@pytest.mark.parametrize("name", ["pase+-tiny", "kim-cnn-tiny"])
def test_random_twin_keeps_the_architecture(name):
    """The random twin of a non-M2BERT model is built by its own architecture (it once was always an M2BERT)."""
    from_embed = load_model(f"random:{name}")
    twin = random_twin(from_embed, seed=3)
    assert type(twin.encoder) is type(from_embed.encoder)
    assert twin.encoder.layer_dims == from_embed.encoder.layer_dims
    first = [p.detach().clone() for p in twin.encoder.parameters()]
    again = random_twin(from_embed, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again.encoder.parameters()))
