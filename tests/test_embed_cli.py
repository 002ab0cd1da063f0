"""``m3bert embed``: output layout, parity with the Python API, resume, bad files, HDF5."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.app.cli import main
from m3bert.embed import load_model
from m3bert.features import get_feature_set
from m3bert.models import create_model

SR = 44100


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """A small mixed-format tree: wav + flac + ogg at other sample rates, a subfolder, a
    stereo file, and one corrupt file."""
    root = tmp_path_factory.mktemp("music")
    (root / "sub").mkdir()
    sf.write(root / "a.wav", make_test_signal(2.0, seed=1), SR)
    sf.write(root / "sub" / "b.flac", make_test_signal(1.5, seed=2, sample_rate=22050), 22050)
    stereo = np.stack([make_test_signal(1.2, seed=3), make_test_signal(1.2, seed=4)], axis=1)
    sf.write(root / "sub" / "c.ogg", stereo, 48000)
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    enc = create_model("m2bert-tiny", seed=4)
    enc.feature_config = get_feature_set("m3bert324").to_dict()
    enc.save_pretrained(path)
    return path


def read_index(out):
    return {r["key"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}


def test_cli_npy_matches_python_api(music, model_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    rc = main(["embed", str(music), "--model", str(model_dir), "--out", str(out), "--level", "frame",
               "--layers", "0,2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "embedded 3 file(s)" in printed and "broken.wav" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "a.wav.npy", "sub/b.flac.npy", "sub/c.ogg.npy"]
    index = read_index(out)
    model = load_model(model_dir)
    files = [music / "a.wav", music / "sub" / "b.flac", music / "sub" / "c.ogg"]
    api = model.embed_many(files, level="frame", layers=[0, 2], progress=False)
    for f, (frames, times) in zip(files, api):
        key = f.relative_to(music).as_posix()
        got = np.load(out / f"{key}.npy")
        np.testing.assert_array_equal(got, frames)  # identical numbers, CLI vs Python
        np.testing.assert_array_equal(got, model.embed(f, level="frame", layers=[0, 2])[0])
        row = index[key]
        assert row["shape"] == list(frames.shape) and row["layers"] == [0, 2] and row["pool"] is None
        assert row["model_id"] == model.model_id and row["path"] == str(f)
        t = row["first_frame_ms"] + np.arange(row["n_frames"]) * row["frame_hop_ms"]
        np.testing.assert_allclose(t, times, rtol=0, atol=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done"] == 3 and summary["n_failed"] == 1
    assert summary["failures"][0]["path"].endswith("broken.wav")
    settings = json.loads((out / "embed.json").read_text())
    assert settings["model_id"] == model.model_id and settings["level"] == "frame"


def test_cli_resumes_and_refuses_mixed_settings(music, model_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    args = ["embed", str(music), "--model", str(model_dir), "--out", str(out), "--pool", "meanstd", "--no-progress"]
    assert main(args) == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    a = np.load(out / "a.wav.npy")
    assert a.shape == (128,)
    np.testing.assert_array_equal(a, load_model(model_dir).embed(music / "a.wav", pool="meanstd"))
    # simulate a crash after a.wav: drop its output; a rerun redoes only that file
    (out / "a.wav.npy").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "embedded 1 file(s)" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "a.wav.npy"), a)
    for p, mtime in first.items():
        if p.name != "a.wav.npy":
            assert p.stat().st_mtime_ns == mtime  # untouched
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no temp debris
    # a changed source file is redone
    os.utime(music / "sub" / "b.flac", ns=(1, 1))
    capsys.readouterr()
    assert main(args) == 0
    assert "embedded 1 file(s)" in capsys.readouterr().out
    # other settings into the same folder: refused, naming what differs
    assert main([a if a != "meanstd" else "mean" for a in args]) == 1
    assert "pool: existing 'meanstd', now 'mean'" in capsys.readouterr().err


def test_cli_h5_and_explicit_files(music, model_dir, tmp_path):
    out = tmp_path / "emb.h5"
    files = [str(music / "a.wav"), str(music / "sub" / "c.ogg")]
    assert main(["embed", *files, "--model", str(model_dir), "--out", str(out), "--format", "h5",
                 "--layers", "all", "--no-progress"]) == 0
    model = load_model(model_dir)
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a.wav", "c.ogg"]
        settings = json.loads(h5.attrs["settings"])
        assert settings["model_id"] == model.model_id and settings["layers"] == [0, 1, 2]
        for f in files:
            grp = h5[os.path.basename(f)]
            np.testing.assert_array_equal(grp["embedding"][()], model.embed(f, layers="all"))
            assert grp.attrs["complete"]
    assert not out.with_name("emb.h5.partial").exists()
    # rerun with one more input: the finished file is reopened and only the new one is added
    assert main(["embed", *files, str(music / "sub" / "b.flac"), "--model", str(model_dir), "--out", str(out),
                 "--format", "h5", "--layers", "all", "--no-progress"]) == 0
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a.wav", "b.flac", "c.ogg"]


def test_cli_errors(music, model_dir, tmp_path, capsys):
    assert main(["embed", str(tmp_path / "nothing"), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["embed", str(music), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "neither a model directory" in capsys.readouterr().err
    assert main(["embed", str(music / "sub" / "broken.wav"), "--model", str(model_dir), "--out",
                 str(tmp_path / "o2"), "--strict", "--no-progress"]) == 1
    assert "broken.wav" in capsys.readouterr().err
