"""Property tests of the masking policies (CFM, CCM, PM and combinations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3bert.core.errors import ConfigError
from m3bert.features.spec import FeatureSpec
from m3bert.pretrain.masking import (
    CCMConfig,
    CFMConfig,
    MaskingConfig,
    PMConfig,
    apply_masking,
    cfm_spans,
    mask_ccm,
    mask_cfm,
    mask_pm,
    sample_span_lengths,
    span_length_probs,
)

# The M3BERT channel layout (chroma, MFCC, delta-MFCC, mel, CQT); mel+cqt = channels 52..323.
SPEC = FeatureSpec.from_sizes("m3bert324", [("chroma", 12), ("mfcc", 20), ("dmfcc", 20), ("mel", 128), ("cqt", 144)])


def _batch(lengths, n_frames=None, n_channels=324, seed=0):
    lengths = torch.tensor(lengths)
    t = int(n_frames or lengths.max())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), t, n_channels, generator=g) + 3.0  # never zero, so zeroing is visible
    pad = torch.arange(t)[None, :] >= lengths[:, None]
    x[pad] = 7.0  # recognisable padding
    return x, lengths, pad


def test_span_length_law_mean_and_support():
    probs = span_length_probs(p=0.2, min_span=2, max_span=7)
    assert probs.sum() == pytest.approx(1.0)
    assert float((np.arange(2, 8) * probs).sum()) == pytest.approx(3.868, abs=1e-3)  # the paper's 3.87
    draws = sample_span_lengths(np.random.default_rng(0), 200_000, p=0.2, min_span=2, max_span=7)
    assert draws.min() == 2 and draws.max() == 7
    assert draws.mean() == pytest.approx(3.868, abs=0.02)
    emp = np.bincount(draws, minlength=8)[2:] / len(draws)
    np.testing.assert_allclose(emp, probs, atol=0.004)


def test_cfm_budget_exact_and_spans_in_range():
    rng = np.random.default_rng(1)
    cfg = CFMConfig()
    lengths_seen = []
    for length in (1, 5, 40, 646, 1294):
        spans = cfm_spans(length, rng=rng, cfg=cfg)
        covered = np.zeros(length, bool)
        for start, stop, mode, source in spans:
            assert 0 <= start < stop <= length and 0 <= source < length
            assert mode in ("zero", "random", "keep")
            covered[start:stop] = True
        assert covered.sum() == min(length, max(1, round(0.15 * length)))
        # every span but the last (which may be shortened) has a length from the law
        lengths_seen += [stop - start for start, stop, *_ in spans[:-1]]
        assert all(2 <= stop - start <= 7 for start, stop, *_ in spans[:-1] if length >= 7)


def test_cfm_span_lengths_and_mode_frequencies():
    rng = np.random.default_rng(2)
    spans = [s for _ in range(200) for s in cfm_spans(1294, rng=rng, cfg=CFMConfig())[:-1]]
    lengths = np.array([stop - start for start, stop, *_ in spans])
    assert lengths.mean() == pytest.approx(3.868, abs=0.08)
    modes = np.array([m for *_, m, _ in spans])
    assert (modes == "zero").mean() == pytest.approx(0.7, abs=0.02)
    assert (modes == "random").mean() == pytest.approx(0.2, abs=0.02)
    assert (modes == "keep").mean() == pytest.approx(0.1, abs=0.02)


def test_cfm_mask_fraction_padding_and_corruption():
    x, lengths, pad = _batch([1294, 700, 300, 1])
    out, mask = mask_cfm(x, lengths, rng=7, cfg=CFMConfig())
    assert mask.dtype == torch.bool and mask.shape == x.shape
    frame_mask = mask.any(-1)
    assert bool((mask.all(-1) == frame_mask).all())  # whole frames
    for i, n in enumerate(lengths.tolist()):
        assert int(frame_mask[i].sum()) == max(1, round(0.15 * n))
    assert not bool(mask[pad].any())
    assert bool((out[pad] == 7.0).all())  # padding untouched
    # outside the mask nothing changes
    assert bool((out[~mask] == x[~mask]).all())
    # inside: zero spans, random-frame spans (copies of a real frame of the row), kept spans
    masked_frames = out[frame_mask]
    zero = (masked_frames == 0).all(-1)
    assert 0.5 < zero.float().mean() < 0.9
    assert bool((x == 7.0).all(-1)[pad].all())
    # frames neither zeroed nor unchanged must equal some real frame of the same row
    for i, n in enumerate(lengths.tolist()):
        for f in torch.nonzero(frame_mask[i]).flatten().tolist():
            row = out[i, f]
            if bool((row == 0).all()) or bool((row == x[i, f]).all()):
                continue
            assert bool((x[i, :n] == row).all(-1).any())
    assert not torch.equal(out, x)
    assert x[0, 0, 0] != 0  # input not modified in place


def test_ccm_confined_to_groups_contiguous_and_covering_real_frames():
    channels = SPEC.channels("mel+cqt")
    assert len(channels) == 272 and channels[0] == 52
    x, lengths, pad = _batch([50, 30, 10], n_channels=324)
    rng = np.random.default_rng(3)
    widths = []
    for it in range(300):
        out, mask = mask_ccm(x[:, :12], lengths.clamp(max=12), rng=rng, channels=channels)
        for i in range(3):
            ch = torch.nonzero(mask[i, 0]).flatten().numpy()
            assert len(ch) >= 1 and np.all(np.diff(ch) == 1)  # one contiguous block
            widths.append(len(ch))
        assert not bool(mask[..., :52].any())  # never outside mel+cqt
        if it < 10:  # the full-size checks on a few draws
            out, mask = mask_ccm(x, lengths, rng=rng, channels=channels)
            assert not bool(mask[pad].any()) and bool((out[pad] == 7.0).all())
            for i, n in enumerate(lengths.tolist()):
                assert bool((mask[i, :n] == mask[i, :1]).all())  # same channels on every real frame
            assert bool((out[mask] == 0).all()) and bool((out[~mask] == x[~mask]).all())
    widths = np.array(widths)
    assert widths.max() > 200 and widths.min() < 30
    assert widths.mean() == pytest.approx(136.5, rel=0.1)  # U{1..272}


def test_ccm_named_groups_and_max_width():
    x, lengths, _ = _batch([20, 20])
    cfg = MaskingConfig(policies=["ccm"], ccm=CCMConfig(groups="mel", max_width=10))
    for seed in range(20):
        _, mask = apply_masking(x, lengths, rng=seed, cfg=cfg, spec=SPEC)
        ch = torch.nonzero(mask[0, 0]).flatten()
        assert 1 <= len(ch) <= 10 and ch.min() >= 52 and ch.max() < 180
    with pytest.raises(ConfigError, match="no channel group"):
        apply_masking(x, lengths, rng=0, cfg=MaskingConfig(policies=["ccm"], ccm=CCMConfig(groups="bogus")), spec=SPEC)


def test_pm_fraction_squares_and_padding():
    x, lengths, pad = _batch([1294, 500, 17])
    out, mask = mask_pm(x, lengths, rng=5, cfg=PMConfig(patch_size=16))
    assert not bool(mask[pad].any()) and bool((out[pad] == 7.0).all())
    for i, n in enumerate(lengths.tolist()):
        frac = float(mask[i, :n].float().mean())
        assert 0.15 <= frac < 0.15 + 256 / (n * 324) + 1e-9
    # grid-aligned squares: the mask is constant on every 16x16 tile of the real region
    m = mask[0, :1280].reshape(80, 16, 324)[:, :, :320].reshape(80, 16, 20, 16)
    assert bool((m == m[:, :1, :, :1]).all())
    assert bool((out[mask] == 0).all())


@pytest.mark.parametrize("policies", [["cfm"], ["ccm"], ["pm"], ["cfm", "ccm"], ["cfm", "ccm", "pm"]])
def test_determinism_and_padding_for_every_combination(policies):
    x, lengths, pad = _batch([200, 120, 64])
    cfg = MaskingConfig(policies=policies)
    a = apply_masking(x, lengths, rng=11, cfg=cfg, spec=SPEC)
    b = apply_masking(x, lengths, rng=np.random.default_rng(11), cfg=cfg, spec=SPEC)
    c = apply_masking(x, lengths, rng=12, cfg=cfg, spec=SPEC)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert not bool(a[1][pad].any()) and bool((a[0][pad] == 7.0).all())
    if policies == ["cfm", "ccm"]:
        cfm_only = apply_masking(x, lengths, rng=11, cfg=MaskingConfig(policies=["cfm"]), spec=SPEC)[1]
        assert bool((a[1] >= cfm_only).all())  # the union contains the CFM frames
        assert float(a[1].float().mean()) > float(cfm_only.float().mean())


def test_bad_inputs_are_clear_errors():
    x, lengths, _ = _batch([10, 10])
    with pytest.raises(ConfigError, match="unknown policy"):
        MaskingConfig(policies=["cfm", "nope"])
    with pytest.raises(ConfigError, match=r"\(batch, frames, channels\)"):
        mask_cfm(x[0], lengths, rng=0, cfg=CFMConfig())
    with pytest.raises(ConfigError, match="lengths"):
        mask_cfm(x, torch.tensor([10, 11]), rng=0, cfg=CFMConfig())
    with pytest.raises(ConfigError, match="ratio"):
        CFMConfig(ratio=0.0)
    with pytest.raises(ConfigError, match="seed"):
        mask_cfm(x, lengths, rng=None, cfg=CFMConfig())
    with pytest.raises(ConfigError, match="spec"):
        apply_masking(x, lengths, rng=0, cfg=MaskingConfig(policies=["ccm"]), spec=None)
