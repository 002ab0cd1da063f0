"""``m3bert features``: arguments, summary, skipped files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import make_test_signal
from m3bert.app.cli import main
from m3bert.features.store import FeatureStore


def test_features_command(tmp_path, capsys):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    sf.write(music / "one.wav", make_test_signal(1.5, 44100, seed=1), 44100)
    sf.write(music / "sub" / "two.FLAC", make_test_signal(2.5, 22050, seed=2), 22050, format="FLAC")
    (music / "broken.mp3").write_bytes(b"not an mp3" * 20)
    (music / "readme.txt").write_text("ignored")
    out = tmp_path / "store"
    rc = main(["features", str(music), "--out", str(out), "--max-seconds", "2", "--set", "cmvn=none",
               "--quiet", "--workers", "2"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "2 file(s) extracted" in text and "1 skipped" in text and "x real time" in text
    assert "skipped broken.mp3: " in text and "corrupt" in text
    store = FeatureStore.open(out)
    assert sorted(store.groups()) == ["one.wav", "sub/two.FLAC"]
    assert store.feature_set.config.cmvn == "none"
    assert [r["n_frames"] for r in store.rows] == [1 + int(1.5 * 44100) // 1024] + [1 + 55125 // 1024] * 2
    x = store.get(0)
    np.testing.assert_array_equal(x, store.get(0, normalize=False))  # cmvn=none

    rc = main(["features", str(music), "--out", str(out), "--max-seconds", "2", "--set", "cmvn=none", "--quiet"])
    assert rc == 0 and "0 file(s) extracted, 2 already in the store" in capsys.readouterr().out

    rc = main(["features", str(music), "--out", str(out), "--max-seconds", "2", "--quiet"])
    assert rc == 1 and "refusing to add" in capsys.readouterr().err

    rc = main(["features", str(music), "--out", str(tmp_path / "s2"), "--set", "n_mel=64"])
    assert rc == 1 and "unknown key 'n_mel'" in capsys.readouterr().err

    rc = main(["features", str(music), "--out", str(tmp_path / "s3"), "--strict", "--quiet", "--max-seconds", "2"])
    assert rc == 1 and "broken.mp3" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--workers", "-3"], "--workers must be an integer >= 1, got -3"),
    (["--files-per-shard", "0"], "--files-per-shard must be an integer >= 1, got 0"),
    (["--max-seconds", "0"], "--max-seconds must be a finite number of seconds > 0, got 0.0"),
    (["--max-seconds", "nan"], "--max-seconds must be a finite number of seconds > 0, got nan"),
    (["--max-seconds", "-5"], "--max-seconds must be a finite number of seconds > 0, got -5.0"),
    (["--max-seconds", "inf"], "--max-seconds must be a finite number of seconds > 0, got inf"),
    (["--max-seconds", "0.05"], "--max-seconds 0.05 cuts long files into examples as short as 0.025 s"),
    (["--shard-index", "2", "--num-shards", "2"], "--shard-index must be in [0, 2)"),
    (["--shard-index", "-1", "--num-shards", "2"], "--shard-index must be in [0, 2)"),
    (["--num-shards", "0"], "--num-shards >= 1"),
    (["--set", "sample_rate=1"], "m3bert324.sample_rate must be an integer number of Hz in 4000..384000, got 1"),
])
def test_invalid_arguments_are_one_error_line_and_write_nothing(tmp_path, capsys, args, message):
    sf.write(tmp_path / "a.wav", make_test_signal(1.0, 44100), 44100)
    out = tmp_path / "store"
    rc = main(["features", str(tmp_path / "a.wav"), "--out", str(out), "--quiet", *args])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ""
    assert captured.err.startswith("m3bert features: error: ") and captured.err.count("\n") == 1
    assert message in captured.err and "Traceback" not in captured.err
    assert not out.exists()  # refused before anything was written
