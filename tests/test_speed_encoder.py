"""Issue 18.2 / 18.4: the opt-in int8 encoder (parity bound vs fp32) and the CUDA paths.

The CUDA tests run where ``torch.cuda.is_available()`` and are skipped elsewhere (the CPU-only
machines this project is developed on): embedding on CUDA in bf16 autocast from pinned memory,
fused Adam on CUDA parameters, and a float16 store read straight into GPU batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_test_signal

from m3bert.app.cli import main
from m3bert.core.errors import ConfigError
from m3bert.embed import load_model
from m3bert.models.encoder import create_model, quantize_int8
from m3bert.train.optim import OptimConfig, make_adam

SR = 44100
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

#: The stated parity bound of ``--dtype int8``: clip-level cosine to fp32, every layer, every clip
#: (measured on music-like signals: >= 0.9999 for Tiny, Mini and Small with random weights).
INT8_MIN_COSINE = 0.999


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


@pytest.fixture(scope="module")
def waves():
    return [make_test_signal(4.0, SR, seed=s) for s in range(3)]


@pytest.mark.parametrize("spec", ["random:m2bert-tiny:4", "random:m2bert-mini:1"])
def test_int8_is_within_its_stated_parity_bound_and_leaves_the_model_alone(spec, waves):
    fp32, int8 = load_model(spec), load_model(spec, dtype="int8")
    before = {k: v.clone() for k, v in int8.encoder.state_dict().items()}
    a = np.stack(fp32.embed_many(waves, sample_rate=SR, layers="all", progress=False))  # (clips, L, D)
    b = np.stack(int8.embed_many(waves, sample_rate=SR, layers="all", progress=False))
    cos = _cos(a, b)
    assert cos.min() >= INT8_MIN_COSINE, cos
    assert not np.array_equal(a[:, 1:], b[:, 1:])  # it really ran in int8 (layer 0 is the input projection)
    # the fp32 weights and the model id are untouched: the quantised copy is separate
    assert all(torch.equal(before[k], v) for k, v in int8.encoder.state_dict().items())
    assert int8.model_id == fp32.model_id and int8.dtype == "int8"
    q = quantize_int8(fp32.encoder)
    assert any("quantized" in type(m).__module__ for m in q.modules())
    assert all(not type(m).__module__.startswith("torch.ao") for m in fp32.encoder.modules())


def test_embed_cli_int8(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "x.wav", make_test_signal(2.0, SR, seed=1), SR)
    assert main(["embed", str(d), "--model", "random:m2bert-tiny", "--out", str(tmp_path / "o"), "--dtype", "int8",
                 "--no-progress", "--prefetch", "0"]) == 0
    ref = load_model("random:m2bert-tiny").embed(d / "x.wav")
    got = np.load(tmp_path / "o" / "x.wav.npy")
    assert _cos(got, ref) >= INT8_MIN_COSINE
    assert '"dtype": "int8"' in (tmp_path / "o" / "embed.json").read_text()


@cuda
def test_cuda_embedding_bf16_matches_cpu_fp32(waves):
    cpu = load_model("random:m2bert-small")
    gpu = load_model("random:m2bert-small", device="cuda", dtype="bf16")
    a = np.stack(cpu.embed_many(waves, sample_rate=SR, layers="all", progress=False))
    b = np.stack(gpu.embed_many(waves, sample_rate=SR, layers="all", progress=False))
    assert gpu.device.type == "cuda" and _cos(a, b).min() >= 0.999
    with pytest.raises(ConfigError, match="int8"):
        load_model("random:m2bert-tiny", device="cuda", dtype="int8")


@cuda
def test_cuda_adam_is_fused():
    model = create_model("m2bert-tiny").cuda()
    opt = make_adam(model.parameters(), OptimConfig())
    assert opt.defaults.get("fused") is True
    loss = sum(p.float().square().sum() for p in model.parameters())
    loss.backward()
    opt.step()  # the fused kernel runs


@cuda
def test_cuda_float16_store_batch(tmp_path):
    from m3bert.features import get_feature_set
    from m3bert.features.store import FeatureStore, extract_to_store

    sf.write(tmp_path / "a.wav", make_test_signal(3.0, SR, seed=2), SR)
    extract_to_store(tmp_path / "a.wav", tmp_path / "s", feature_set=get_feature_set("m3bert324"), dtype="float16",
                     progress=False)
    store = FeatureStore.open(tmp_path / "s")
    x = torch.from_numpy(store.get(0)).pin_memory().to("cuda", non_blocking=True)
    assert x.dtype == torch.float32 and torch.equal(x.cpu(), torch.from_numpy(store.get(0)))


def test_flops_per_frame_counts_every_matmul():
    """The MFU yardstick equals torch's FLOP counter on a forward pass (attention by its matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    for cfg in ("m2bert-tiny", "m2bert-small"):
        model = create_model(cfg).eval()
        x = torch.randn(2, 50, 324)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
        assert counter.get_total_flops() == pytest.approx(model.flops_per_frame(50) * 2 * 50, rel=1e-9)
