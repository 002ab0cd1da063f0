"""Training throughput of the waveform encoders PASE and PASE+ (Wu et al. 2021 sec. 3.1), fp32 and bf16.

Measures, in one run, on this machine (2 torch threads by default):

1. The rate of a large matrix multiply (bf16 4096^3 and fp32 2048^3), before, between and after the
   training configurations (the machine is shared: each configuration is compared with the median
   of the matmul measurements around it, as ``perf/pretrain.py`` does for M2BERT).
2. For each (architecture, precision): the time of one micro-batch of the real pre-training step
   (the ``workers`` objective with all six workers W, L, P, M, C, T on the encoder's output:
   forward, losses, equal-weighted sum, backward) and of one Adam update, at the paper's sizes
   (``pase`` 5.8 M, ``pase+`` 7.8 M parameters). From these: training throughput in chunks/s,
   frames/s (10 ms frames) and audio seconds per second, and the achieved GFLOP/s as a fraction of
   the in-run matmul rate (bf16 and same precision).
3. FLOPs per frame *counted from the layer shapes* seen in a forward pass (forward hooks): every
   convolution (SincNet's band-pass filters, the conv blocks, the workers' 1x1 convs, the
   decoder's transposed convs) and every linear layer (skip projections, QRNN gates, output
   projection) contributes ``2 x in x out x kernel`` per output step; training = 3 x forward (the
   usual forward + two backward matmuls; SincNet's input gradient is not needed, so this slightly
   over-counts that layer). Element-wise work (batch norm, PReLU, the QRNN's scan) is not counted.
4. Where the time goes in a bf16 and an fp32 micro-batch of PASE+ (torch.profiler, self time
   grouped: convolutions, GEMMs, batch norm, element-wise, dtype casts, other).

Writes ``perf/results/waveform.json`` and ``perf/results/waveform.md``.

    .venv/bin/python perf/waveform.py [--threads 2] [--quick] [--batch 8] [--frames 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import autocast_for, profile_micro_batch  # noqa: E402  (perf/pretrain.py: the same timing tools)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"
WORKERS = "W,L,P,M,C,T"


def matmul_rate(dtype: torch.dtype, *, n: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of an n x n x n matmul (median of ``reps`` after one warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def worker_targets_header(tmp: Path) -> Path:
    """A real worker-targets folder (all five feature workers) of 2 s of synthetic music: the
    objective reads the feature widths from it; the timed batches carry random targets of those widths."""
    import soundfile as sf

    from m3bert.features import get_feature_set
    from m3bert.features.store import extract_to_store
    from m3bert.pretrain.worker_targets import build_worker_targets

    t = np.arange(32000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.01 * np.random.default_rng(0).normal(size=t.size)
    (tmp / "audio").mkdir()
    sf.write(tmp / "audio" / "a.wav", x.astype(np.float32), 16000)
    extract_to_store(tmp / "audio", tmp / "store", feature_set=get_feature_set("wave16k"), progress=False)
    build_worker_targets(tmp / "store", tmp / "targets", workers="L,P,M,C,T", progress=False)
    return tmp / "targets"


def build(arch: str, targets: Path, *, seed: int = 0):
    """The PASE / PASE+ encoder at the paper's sizes, all six workers, and Adam, as pre-training builds them."""
    from m3bert.features import get_feature_set
    from m3bert.models.base import create_model
    from m3bert.pretrain.loop import PretrainModule
    from m3bert.pretrain.masking import MaskingConfig
    from m3bert.pretrain.objectives import create_objective
    from m3bert.train.optim import OptimConfig, make_adam

    fs = get_feature_set("wave16k")
    enc = create_model(arch, seed=seed)
    enc.feature_config = fs.to_dict()
    obj = create_objective({"name": "workers", "workers": WORKERS, "targets": str(targets), "plot": False},
                           encoder_cfg=enc.cfg, spec=fs.spec, masking=MaskingConfig(), encoder=enc)
    module = PretrainModule(enc, obj)
    return module, make_adam(module.parameters(), OptimConfig())


def make_batch(module, batch: int, frames: int, seed: int = 0):
    from m3bert.pretrain.data import Batch

    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(batch, frames, 160, generator=g)
    feats = {}
    for w, key in module.objective.keys.items():
        width = module.objective.heads[w].net[-1].out_channels
        feats[key] = torch.randn(batch, frames, width, generator=g)
    return Batch(x, torch.full((batch,), frames, dtype=torch.int64), [(seed, 1, i) for i in range(batch)],
                 list(range(batch)), features=feats)


def count_flops(module, batch) -> dict:
    """Forward FLOPs of one micro-batch counted from layer shapes (forward hooks), by part."""
    from torch import nn

    counts: dict[str, float] = {}

    def part_of(name: str) -> str:
        if name.startswith("encoder.sinc"):
            return "sincnet"
        if name.startswith("encoder.blocks"):
            return "conv blocks"
        if name.startswith("encoder."):
            return "skips + recurrent + projection"
        if name.startswith("objective.decoder"):
            return "W decoder"
        return "feature workers"

    def hook(name):
        def fn(mod, inputs, output):
            x = inputs[0]
            if isinstance(mod, nn.Linear):
                macs = x.numel() // mod.in_features * mod.in_features * mod.out_features
            elif isinstance(mod, nn.ConvTranspose1d):
                macs = x.shape[0] * x.shape[-1] * mod.in_channels * mod.out_channels // mod.groups * mod.kernel_size[0]
            elif isinstance(mod, nn.Conv1d):
                macs = output.shape[0] * output.shape[-1] * mod.out_channels * mod.in_channels // mod.groups * mod.kernel_size[0]
            elif type(mod).__name__ == "SincConv":  # F.conv1d with its computed (n_filters, 1, kernel) filters
                n_filters, _, kernel = mod.filters().shape
                macs = output.shape[0] * output.shape[-1] * n_filters * kernel
            else:
                return
            counts[part_of(name)] = counts.get(part_of(name), 0.0) + 2.0 * macs
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)) or type(m).__name__ == "SincConv"]
    try:
        with torch.no_grad():
            module(batch)
    finally:
        for h in handles:
            h.remove()
    return counts


def threads_check(arch: str = "pase+", batch: int = 2, frames: int = 100) -> dict:
    """Median fp32 forward+backward seconds of the bare encoder with 1 and with 2 torch threads: on a
    shared machine 2 threads can be far slower than 1 (contention), which decides --threads."""
    from m3bert.models.base import create_model

    model = create_model(arch, seed=0)
    x = 0.1 * torch.randn(batch, frames, 160)
    out = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model(x)[-1].pow(2).mean().backward()
            times.append(time.perf_counter() - t)
        out[str(n)] = statistics.median(times[1:])
    print(f"threads check ({arch}, {batch} x {frames} frames): 1 thread {out['1']:.3f} s, 2 threads {out['2']:.3f} s",
          flush=True)
    return {"arch": arch, "batch": batch, "frames": frames, "seconds": out}


def time_micro_batches(module, optimizer, batch, precision: str, *, reps: int, budget_s: float) -> dict:
    """Median time of forward+backward micro-batches and of the optimizer update."""
    ac = autocast_for(precision)

    def fb():
        with ac():
            out = module(batch)
        out.loss.backward()

    module.train()
    fb()  # warm-up
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    fb_times, opt_times, start = [], [], time.perf_counter()
    for i in range(reps):
        t = time.perf_counter()
        fb()
        fb_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        optimizer.step()
        opt_times.append(time.perf_counter() - t)
        optimizer.zero_grad(set_to_none=True)
        if time.perf_counter() - start > budget_s and i >= 1:
            break
    return {"micro_batch_s": statistics.median(fb_times), "micro_batch_all_s": fb_times,
            "optimizer_step_s": statistics.median(opt_times)}


CATEGORIES = [
    ("convolution", ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                     "aten::convolution", "aten::slow_conv_transpose2d", "aten::slow_conv_transpose2d_backward")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("batch_norm", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm_update_stats")),
    ("dtype_casts_copies", ("aten::copy_", "aten::to", "aten::_to_copy")),
    ("elementwise", ("aten::mul", "aten::add", "aten::add_", "aten::sub", "aten::div", "aten::_prelu_kernel",
                     "aten::_prelu_kernel_backward", "aten::sigmoid", "aten::tanh", "aten::abs", "aten::pow",
                     "aten::sigmoid_backward", "aten::tanh_backward", "aten::where", "aten::fill_", "aten::mean",
                     "aten::sum", "aten::constant_pad_nd")),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one timed repeat per configuration")
    p.add_argument("--batch", type=int, default=8, help="chunks per micro-batch")
    p.add_argument("--frames", type=int, default=200, help="10 ms frames per chunk (200 = 2 s)")
    p.add_argument("--archs", default="pase,pase+", help="registered model configs to measure")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--render-only", action="store_true", help="rewrite waveform.md from an existing waveform.json")
    args = p.parse_args(argv)
    from m3bert.core.io import atomic_write_json, atomic_write_text

    if args.render_only:
        result = json.loads((Path(args.out) / "waveform.json").read_text())
        atomic_write_text(Path(args.out) / "waveform.md", render_md(result))
        return 0
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    reps = 1 if args.quick else 3
    mm: list[dict] = []

    def measure_mm(label: str) -> None:
        mm.append({"at": label, "bf16": matmul_rate(torch.bfloat16), "fp32": matmul_rate(torch.float32, n=2048)})
        print(f"matmul {label}: bf16 {mm[-1]['bf16']:.0f} GFLOP/s, fp32 {mm[-1]['fp32']:.0f} GFLOP/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="perf-waveform-") as tmp:
        targets = worker_targets_header(Path(tmp))
        thread_check = threads_check()
        torch.set_num_threads(args.threads)
        measure_mm("start")
        runs, profiles, models = [], {}, {}
        for arch in args.archs.split(","):
            module, optimizer = build(arch, targets)
            batch = make_batch(module, args.batch, args.frames)
            flops = count_flops(module, batch)
            fwd = sum(flops.values())
            n_frames = args.batch * args.frames
            models[arch] = {"n_parameters_encoder": module.encoder.num_parameters(),
                            "n_parameters_workers": sum(p.numel() for p in module.objective.parameters()),
                            "forward_flops_per_frame": {k: v / n_frames for k, v in flops.items()},
                            "forward_gflop_per_frame_total": fwd / n_frames / 1e9}
            print(f"{arch}: encoder {models[arch]['n_parameters_encoder']:,} parameters, "
                  f"{fwd / n_frames / 1e6:.1f} MFLOP/frame forward (encoder + workers)", flush=True)
            for precision in ("bf16", "fp32"):
                res = time_micro_batches(module, optimizer, batch, precision, reps=reps, budget_s=25.0)
                measure_mm(f"after {arch}/{precision}")
                around = mm[-2:]
                peak_bf16 = statistics.median([m["bf16"] for m in around])
                peak_same = statistics.median([m[precision] for m in around])
                step_s = res["micro_batch_s"] + res["optimizer_step_s"]
                train_flops = 3 * fwd
                gflops = train_flops / step_s / 1e9
                run = {"arch": arch, "precision": precision, "micro_batch": args.batch, "frames": args.frames, **res,
                       "step_s": step_s, "chunks_per_s": args.batch / step_s, "frames_per_s": n_frames / step_s,
                       "audio_s_per_s": n_frames / 100 / step_s, "audio_samples_per_s": n_frames * 160 / step_s,
                       "gflops": gflops, "micro_batch_gflops": train_flops / res["micro_batch_s"] / 1e9,
                       "matmul_bf16_gflops_around": peak_bf16, "matmul_same_precision_gflops_around": peak_same,
                       "fraction_of_bf16_matmul": gflops / peak_bf16, "fraction_of_same_precision_matmul": gflops / peak_same}
                runs.append(run)
                print(f"{arch:>6s} {precision}: {run['frames_per_s']:7.0f} frames/s ({run['audio_s_per_s']:.1f} s audio/s), "
                      f"{gflops:6.1f} GFLOP/s = {100 * run['fraction_of_bf16_matmul']:.1f}% of bf16 matmul, "
                      f"{100 * run['fraction_of_same_precision_matmul']:.1f}% of {precision} matmul", flush=True)
            if arch == args.archs.split(",")[-1]:
                for precision in ("bf16", "fp32"):
                    profiles[f"{arch}/{precision}"] = profile_micro_batch(module, batch, precision, CATEGORIES)
                    print(f"profile {arch}/{precision}: " + ", ".join(
                        f"{k} {100 * v:.0f}%" for k, v in profiles[f"{arch}/{precision}"]["share"].items()), flush=True)
            del module, optimizer
        measure_mm("end")

    result = {
        "benchmark": "waveform", "workers": WORKERS, "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "cpu": _cpu_name(), "gpu": _gpu(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "matmul": mm, "models": models, "runs": runs, "profiles": profiles, "threads_check": thread_check,
        "wall_s": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "waveform.json", result)
    atomic_write_text(out / "waveform.md", render_md(result))
    print(f"wrote {out / 'waveform.json'} and waveform.md in {result['wall_s']:.0f} s")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _gpu() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def render_md(r: dict) -> str:
    lines = [
        "# Pre-training throughput: PASE and PASE+ (waveform encoders, Wu et al. 2021)",
        "",
        f"Machine: {r['cpu']}, torch threads: {r['threads']}, torch {r['torch']}; GPU: {r['gpu'] or 'none available'}. "
        f"Load average {r['load_average_before'][0]:.1f} before, {r['load_average_after'][0]:.1f} after (the machine is "
        "shared with other jobs; every number is a median, and each configuration is compared with the matmul rate "
        "measured right before and after it).",
        "",
        f"Thread check (bare {r['threads_check']['arch']} encoder, {r['threads_check']['batch']} x "
        f"{r['threads_check']['frames']} frames, fp32 forward + backward): 1 thread "
        f"{r['threads_check']['seconds']['1']:.2f} s, 2 threads {r['threads_check']['seconds']['2']:.2f} s; this run used "
        f"{r['threads']} (on a loaded machine a second thread mostly waits for a core and slows every op down).",
        "",
        f"A step = one micro-batch of chunks of 16 kHz waveform (`wave16k` frames of 160 samples) through the encoder "
        f"and all six workers ({r['workers']}: waveform decoder MAE + five feature MLPs MSE, equal-weighted sum), "
        "backward, then one Adam update. FLOPs are counted from the layer shapes of a forward pass (every convolution "
        "and linear layer, 2 x in x out x kernel per output step), x3 for forward + backward; batch norm, PReLU and "
        "the QRNN's scan are element-wise and not counted.",
        "",
        "| model | encoder params | workers params | forward MFLOP / frame | of which SincNet + conv blocks |",
        "|---|---:|---:|---:|---:|",
    ]
    for arch, m in r["models"].items():
        f = m["forward_flops_per_frame"]
        enc = f.get("sincnet", 0) + f.get("conv blocks", 0)
        lines.append(f"| {arch} | {m['n_parameters_encoder']:,} | {m['n_parameters_workers']:,} | "
                     f"{m['forward_gflop_per_frame_total'] * 1e3:.1f} | {enc / 1e6:.1f} |")
    lines += ["", "Forward FLOPs per frame by part (MFLOP):", "",
              "| model | " + " | ".join(next(iter(r["models"].values()))["forward_flops_per_frame"]) + " |",
              "|---|" + "---:|" * len(next(iter(r["models"].values()))["forward_flops_per_frame"])]
    for arch, m in r["models"].items():
        lines.append(f"| {arch} | " + " | ".join(f"{v / 1e6:.2f}" for v in m["forward_flops_per_frame"].values()) + " |")
    lines += ["", "| model | precision | micro-batch | chunks/s | frames/s | audio s / s | GFLOP/s | % of bf16 matmul | "
              "% of same-precision matmul |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        lines.append(f"| {run['arch']} | {run['precision']} | {run['micro_batch']} x {run['frames']} | "
                     f"{run['chunks_per_s']:.2f} | {run['frames_per_s']:,.0f} | {run['audio_s_per_s']:.1f} | "
                     f"{run['gflops']:.1f} | {100 * run['fraction_of_bf16_matmul']:.1f} % | "
                     f"{100 * run['fraction_of_same_precision_matmul']:.1f} % |")
    lines += ["", "Matmul rates measured during the run (GFLOP/s):", "", "| when | bf16 4096^3 | fp32 2048^3 |", "|---|---:|---:|"]
    lines += [f"| {m['at']} | {m['bf16']:,.0f} | {m['fp32']:,.0f} |" for m in r["matmul"]]
    if r["profiles"]:
        lines += ["", "## Where the time goes (one micro-batch, self CPU time by kind of op)", "",
                  "| kind | " + " | ".join(r["profiles"]) + " |", "|---|" + "---:|" * len(r["profiles"])]
        for k in next(iter(r["profiles"].values()))["share"]:
            lines.append(f"| {k} | " + " | ".join(f"{100 * p['share'][k]:.0f} %" for p in r["profiles"].values()) + " |")
        lines += ["", "Top ops (" + next(iter(r["profiles"])) + "): " + ", ".join(
            f"{o['op']} {o['self_s'] * 1e3:.0f} ms" for o in next(iter(r["profiles"].values()))["top_ops"][:8]) + "."]
    runs = {(x["arch"], x["precision"]): x for x in r["runs"]}
    lines += ["", "## Reading it", ""]
    for arch in r["models"]:
        if (arch, "fp32") in runs and (arch, "bf16") in runs:
            a, b = runs[(arch, "fp32")], runs[(arch, "bf16")]
            lines.append(f"* {arch}: bf16 runs at {b['frames_per_s'] / a['frames_per_s']:.2f}x the fp32 frame rate; the "
                         f"achieved rate is {100 * a['fraction_of_same_precision_matmul']:.0f} % (fp32) and "
                         f"{100 * b['fraction_of_same_precision_matmul']:.0f} % (bf16) of the same-precision matmul.")
    m2 = ROOT / "perf" / "results" / "pretrain.json"
    if m2.is_file():
        ref = [x for x in json.loads(m2.read_text())["runs"] if x["precision"] == "bf16"]
        if ref:
            fractions = ", ".join(f"{100 * x['fraction_of_bf16_matmul']:.0f} % at {x['frames']} frames" for x in ref)
            lines.append(f"* For comparison, M2BERT Small's bf16 step reached {fractions} of the bf16 matmul rate "
                         "(perf/pretrain.md, another run with its own threads and load).")
    prof = r.get("profiles") or {}
    for name, p in prof.items():
        sh = p["share"]
        lines.append(f"* {name}: convolutions (forward + backward, mkldnn) take {100 * sh['convolution']:.0f} % of the "
                     f"micro-batch, GEMMs {100 * sh['gemm']:.0f} %, element-wise work (PReLU, the QRNN gates and scan, "
                     f"padding, losses) {100 * sh['elementwise']:.0f} %, batch norm {100 * sh['batch_norm']:.0f} %, dtype "
                     f"casts and copies {100 * sh['dtype_casts_copies']:.0f} %.")
    for a, m in r["models"].items():
        f = m["forward_flops_per_frame"]
        total = sum(f.values())
        lines.append(f"* {a}: of the counted forward FLOPs, the encoder's convolutions (SincNet + conv blocks, the "
                     f"layers that run at 160 to 1 steps per frame) are {100 * (f['sincnet'] + f['conv blocks']) / total:.0f} %, "
                     f"the W decoder (their mirror) {100 * f['W decoder'] / total:.0f} %, the five feature workers "
                     f"{100 * f['feature workers'] / total:.0f} % and the frame-rate layers (skips, QRNN, projection) "
                     f"{100 * f['skips + recurrent + projection'] / total:.0f} %.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
