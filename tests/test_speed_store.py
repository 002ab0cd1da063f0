"""Issue 18.4: a float16 feature store (half the bytes a GPU run reads), read back as float32."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import make_test_signal

from m3bert.app.cli import main
from m3bert.core.errors import ConfigError, DataError
from m3bert.features import get_feature_set
from m3bert.features.store import FeatureStore, extract_to_store

SR = 44100


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("music16")
    for i, seconds in enumerate([1.5, 4.5, 2.5]):
        sf.write(root / f"{i}.wav", make_test_signal(seconds, SR, seed=20 + i), SR, subtype="PCM_16")
    return root


def _extract(music, out, **kw):
    return extract_to_store(music, out, feature_set=get_feature_set("m3bert324"), max_seconds=2.0, progress=False, **kw)


def test_float16_store_is_the_float32_store_rounded(music, tmp_path):
    _extract(music, tmp_path / "f32")
    summary = _extract(music, tmp_path / "f16", dtype="float16")
    assert summary["files_done"] == 3
    a, b = FeatureStore.open(tmp_path / "f32"), FeatureStore.open(tmp_path / "f16")
    assert a.dtype == np.float32 and b.dtype == np.float16 and len(a) == len(b) == 6  # 1 + 3 + 2 chunks of the rule
    assert np.load(b.shard_paths[0], mmap_mode="r").dtype == np.float16
    for i in range(len(a)):
        raw32, raw16 = a.get(i, normalize=False), b.get(i, normalize=False)
        assert raw16.dtype == np.float32  # readers return float32
        np.testing.assert_array_equal(raw16, raw32.astype(np.float16).astype(np.float32))
        assert np.max(np.abs(raw16 - raw32) / np.maximum(np.abs(raw32), 6.2e-5)) <= 2 ** -11 + 1e-9
        # per-clip CMVN of the rounded values: close to the float32 store's, in units of each channel's
        # std (channels with a small std relative to their level amplify the rounding: up to ~0.06 here)
        diff = np.abs(b.get(i) - a.get(i))
        assert diff.max() < 0.1 and np.median(diff) < 1e-3, (diff.max(), np.median(diff))
    # the corpus statistics describe what is stored (the rounded values)
    rounded = np.concatenate([b.get(i, normalize=False) for i in range(len(b))]).astype(np.float64)
    np.testing.assert_allclose(b.cmvn_accumulator.total, rounded.sum(0), rtol=1e-9, atol=1e-6)


def test_a_store_keeps_one_dtype(music, tmp_path):
    _extract(music, tmp_path / "s", dtype="float16")
    with pytest.raises(DataError, match="float16.*float32"):
        _extract(music, tmp_path / "s")  # the default float32 into a float16 store
    _extract(music, tmp_path / "t")
    with pytest.raises(DataError, match="different feature configs"):
        FeatureStore.open([tmp_path / "s", tmp_path / "t"])
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        _extract(music, tmp_path / "u", dtype="int8")


def test_cli_features_dtype(music, tmp_path, capsys):
    assert main(["features", str(music), "--out", str(tmp_path / "cli"), "--dtype", "float16", "--quiet",
                 "--max-seconds", "2"]) == 0
    store = FeatureStore.open(tmp_path / "cli")
    assert store.dtype == np.float16 and store.get(0).dtype == np.float32
