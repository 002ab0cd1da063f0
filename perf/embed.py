"""Embedding speed (issue 18): ``m3bert embed`` at the encoder's speed, the benchmark at ``embed``'s.

Measures, in ONE run, on the same clips (30 s OGG/Vorbis, music-like), M2BERT-Small in bf16 autocast:

1. the in-run **bf16 matmul rate** (GFLOP/s, 4096^3 ``torch.matmul``): the hardware yardstick;
2. **encoder-only** throughput (frames/s) on exactly the windows ``embed`` encodes, in the same
   batches, and its share of the matmul rate through the model's FLOPs per frame
   (``Encoder.flops_per_frame``: linear layers + attention matmuls);
3. **end-to-end** ``m3bert embed`` (``embed.folder.embed_files``, what the command runs: decode +
   resample + features in the producer thread, encoder, pooling, writing) as a share of
   encoder-only; the sequential path (``prefetch=0``, the pre-issue-18 loop) beside it;
4. the **benchmark's embedding phase** (``FeatureCache.get_many`` of the model over the same
   clips) as a share of ``embed``; and the one-pass extraction of model + raw + MFCC baselines
   (each clip decoded once) against the three extracted one after the other;
5. **peak RSS** of ``m3bert embed`` against the number of files (fresh processes);
6. ``torch.compile`` after warm-up against eager (encoder only), and ``--dtype int8`` speed and
   its clip-level cosine to fp32;
7. on CUDA (when present): the encoder's **MFU** in bf16 against the in-run matmul rate and the
   GPU's nominal dense bf16 peak.

The machine is shared and noisy: the measurements run in interleaved rounds, every ratio is
computed within a round, and the tables give medians over rounds (all rounds are in the JSON).
CPU-seconds ratios (process time, all threads) are given beside the wall-clock ones: they say how
much work each path does, independent of what the other tenants take.

Writes ``perf/results/embed.json`` and ``perf/results/embed.md``.

    .venv/bin/python perf/embed.py [--clips 8] [--rounds 3] [--quick] [--render]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"
SR = 44100
CLIP_S = 30.0
MODEL = "random:m2bert-small"
BATCH = 8  # the default of `m3bert embed` and of the benchmark's model representations
TARGETS = {"embed_vs_encoder": 0.90, "encoder_vs_matmul": 0.60, "bench_vs_embed": 0.90}


def make_clip(seed: int, seconds: float = CLIP_S) -> np.ndarray:
    """Music-like audio: harmonic notes changing every 0.5 s, noise and clicks, float32 in [-1, 1]."""
    r = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = 0.02 * r.standard_normal(n)
    note = SR // 2
    for start in range(0, n, note):
        stop = min(n, start + note)
        f0 = 110.0 * 2 ** (r.integers(0, 36) / 12)
        env = np.exp(-np.arange(stop - start) / (0.3 * SR))
        for h in (1, 2, 3):
            x[start:stop] += (0.2 / h) * env * np.sin(2 * np.pi * f0 * h * t[start:stop])
        x[start:start + 200] += 0.3 * r.standard_normal(min(200, stop - start))
    return np.clip(x, -1, 1).astype(np.float32)


def write_clips(folder: Path, n: int) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"clip_{i:03d}.ogg"
        sf.write(p, make_clip(100 + i), SR, format="OGG", subtype="VORBIS")
        paths.append(p)
    return paths


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def matmul_rate(device: str = "cpu", n: int = 4096, repeats: int = 3) -> float:
    """bf16 ``n x n @ n x n`` GFLOP/s, the median of ``repeats`` (after one warm-up)."""
    import torch

    a = torch.randn(n, n, device=device).bfloat16()
    b = torch.randn(n, n, device=device).bfloat16()
    a @ b
    ts = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def med(values: list[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def rounds(files: list[Path], tmp: Path, n_rounds: int) -> dict[str, Any]:
    """Interleaved rounds: matmul, encoder-only, embed (pipelined and sequential), bench phase."""

    from m3bert.embed import load_model
    from m3bert.embed.folder import embed_files
    from m3bert.evaluate.baselines import get_baseline
    from m3bert.evaluate.cache import FeatureCache
    from m3bert.evaluate.representations import ModelRepresentation
    from m3bert.tasks.registry import Clip

    emb = load_model(MODEL, dtype="bf16")
    seq = load_model(MODEL, dtype="bf16", prefetch=0)
    # the benchmark's model representation (all hidden states), same encoder object
    rep = ModelRepresentation(MODEL, name="model", embedder=load_model(MODEL, dtype="bf16"), batch_size=BATCH)
    raw, mfcc = get_baseline("raw"), get_baseline("mfcc")
    clips = [Clip(f"c{i}", f, 0, "train", f"g{i}") for i, f in enumerate(files)]
    jobs = [emb.open_job(f) for f in files]
    windows = [w for j in jobs for w in j.windows]
    n_frames = sum(w.shape[0] for w in windows)
    last = [emb.n_hidden_states - 1]
    flops = emb.encoder.flops_per_frame(windows[0].shape[0])
    audio_s = sum(j.n_samples for j in jobs) / emb.sample_rate

    def encoder_only() -> None:  # exactly embed's encoder calls: batches of BATCH windows in file order
        for b0 in range(0, len(windows), BATCH):
            emb._encode_windows(windows[b0:b0 + BATCH], last, BATCH)

    counter = iter(range(10 ** 6))

    def embed(m: Any) -> Callable[[], None]:
        return lambda: embed_files(files, tmp / f"out{next(counter)}", embedder=m, batch_size=BATCH, progress=False)

    def bench(reps: list[Any]) -> Callable[[], None]:
        return lambda: FeatureCache(None).get_many(reps, "perf", clips)

    encoder_only()  # warm-up (kernels, filter banks)
    embed(emb)()
    stages = {"encoder": encoder_only, "embed": embed(emb), "embed_sequential": embed(seq),
              "bench": bench([rep]), "bench_model_raw_mfcc": bench([rep, raw, mfcc])}
    out: dict[str, Any] = {"rounds": [], "frames": n_frames, "audio_s": audio_s, "flops_per_frame": flops,
                           "files": len(files), "windows": len(windows)}
    for r in range(n_rounds):
        row: dict[str, Any] = {"load_avg": load_avg(), "matmul_gflops": matmul_rate()}
        for name, fn in stages.items():
            row[name] = dict(zip(("wall_s", "cpu_s"), timed(fn)))
        row["matmul_gflops_after"] = matmul_rate()
        out["rounds"].append(row)
        e = row["encoder"]["wall_s"]
        print(f"  round {r + 1}: matmul {row['matmul_gflops']:.0f} GFLOP/s, encoder {n_frames / e:.0f} frames/s, "
              + ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in row.items() if isinstance(v, dict))
              + f" (load {row['load_avg']})", flush=True)
    # once: the baselines alone, to compare one pass over the clips with one pass per representation
    once = {}
    for name, reps in (("raw", [raw]), ("mfcc", [mfcc])):
        once[name] = dict(zip(("wall_s", "cpu_s"), timed(bench(reps))))
    out["baselines_alone"] = once
    return out


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios and rates, then medians."""
    frames, audio_s, flops = res["frames"], res["audio_s"], res["flops_per_frame"]
    per = []
    for row in res["rounds"]:
        w = {k: v["wall_s"] for k, v in row.items() if isinstance(v, dict)}
        c = {k: v["cpu_s"] for k, v in row.items() if isinstance(v, dict)}
        mm = 0.5 * (row["matmul_gflops"] + row["matmul_gflops_after"])
        enc_fps = frames / w["encoder"]
        per.append({
            "matmul_gflops": mm,
            "encoder_frames_per_s": enc_fps,
            "encoder_gflops": enc_fps * flops / 1e9,
            "encoder_vs_matmul": enc_fps * flops / 1e9 / mm,
            "embed_vs_encoder": w["encoder"] / w["embed"],
            "embed_sequential_vs_encoder": w["encoder"] / w["embed_sequential"],
            "bench_vs_embed": w["embed"] / w["bench"],
            "bench3_vs_embed": w["embed"] / w["bench_model_raw_mfcc"],
            "cpu_embed_vs_encoder": c["encoder"] / c["embed"],
            "cpu_bench_vs_embed": c["embed"] / c["bench"],
            "rtf_encoder": audio_s / w["encoder"], "rtf_embed": audio_s / w["embed"],
            "rtf_embed_sequential": audio_s / w["embed_sequential"], "rtf_bench": audio_s / w["bench"],
            "rtf_bench_model_raw_mfcc": audio_s / w["bench_model_raw_mfcc"],
        })
    summary = {k: round(med([p[k] for p in per]), 4) for k in per[0]}
    summary["per_round"] = [{k: round(v, 4) for k, v in p.items()} for p in per]
    alone = res["baselines_alone"]
    sep = med([r["bench"]["wall_s"] for r in res["rounds"]]) + alone["raw"]["wall_s"] + alone["mfcc"]["wall_s"]
    summary["one_pass_vs_separate"] = round(sep / med([r["bench_model_raw_mfcc"]["wall_s"] for r in res["rounds"]]), 3)
    summary["targets"] = {k: {"target": t, "measured": summary[k], "met": bool(summary[k] >= t)}
                          for k, t in TARGETS.items()}
    return summary


def compile_and_int8(files: list[Path], repeats: int) -> dict[str, Any]:
    """torch.compile (after warm-up) vs eager, and int8 vs fp32/bf16: encoder only, same windows."""
    import torch

    from m3bert.embed import load_model

    out: dict[str, Any] = {}
    fp32 = load_model(MODEL)
    bf16 = load_model(MODEL, dtype="bf16")
    int8 = load_model(MODEL, dtype="int8")
    windows = [w for f in files for w in fp32.open_job(f).windows][:BATCH]
    frames = sum(w.shape[0] for w in windows)
    last = [fp32.n_hidden_states - 1]
    x = torch.from_numpy(np.stack(windows))
    lens = torch.full((x.shape[0],), x.shape[1])

    def eager_fwd() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            bf16.encoder(x, lens)

    try:
        compiled = torch.compile(bf16.encoder, dynamic=False)

        def compiled_fwd() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                compiled(x, lens)

        t0 = time.perf_counter()
        compiled_fwd()
        out["compile_warmup_s"] = round(time.perf_counter() - t0, 1)
        eager_fwd()
        ratios = []
        for _ in range(repeats):
            e, c = timed(eager_fwd)[0], timed(compiled_fwd)[0]
            ratios.append(e / c)
        out["compile_speedup"] = round(med(ratios), 3)
        out["compile_speedups_all"] = [round(r, 3) for r in ratios]
    except Exception as exc:  # no compiler, unsupported op: recorded, not fatal
        out["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
    for _ in range(repeats):
        for name, m in (("fp32", fp32), ("bf16", bf16), ("int8", int8)):
            speeds[name].append(frames / timed(lambda: m._encode_windows(windows, last, BATCH))[0])
    out["encoder_frames_per_s"] = {k: round(med(v)) for k, v in speeds.items()}
    out["int8_vs_fp32"] = round(med([a / b for a, b in zip(speeds["int8"], speeds["fp32"])]), 3)
    out["int8_vs_bf16"] = round(med([a / b for a, b in zip(speeds["int8"], speeds["bf16"])]), 3)
    # parity: clip vectors of every layer, raw and centred over the clips (the centred cosine is the
    # sensitive one: random-weight clip vectors share a large position-driven component)
    a = np.stack(fp32.embed_many(files, layers="all", progress=False))
    b = np.stack(int8.embed_many(files, layers="all", progress=False))
    c = np.stack(bf16.embed_many(files, layers="all", progress=False))

    def cos(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)

    for name, y in (("int8", b), ("bf16", c)):
        out[f"{name}_min_clip_cosine"] = round(float(cos(a, y).min()), 6)
        out[f"{name}_min_centred_cosine"] = round(float(cos(a - a.mean(0), y - y.mean(0))[:, 1:].min()), 4)
    return out


def cuda_mfu(files: list[Path]) -> dict[str, Any] | None:
    """Encoder MFU on CUDA in bf16 (None without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from m3bert.embed import load_model
    from m3bert.models.encoder import nominal_peak_flops

    m = load_model(MODEL, device="cuda", dtype="bf16")
    windows = [w for f in files for w in m.open_job(f).windows]
    windows = (windows * (64 // max(1, len(windows)) + 1))[:64]
    last = [m.n_hidden_states - 1]
    m._encode_windows(windows, last, 32)
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        m._encode_windows(windows, last, 32)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    fps = sum(w.shape[0] for w in windows) / med(ts)
    achieved = fps * m.encoder.flops_per_frame(windows[0].shape[0])
    name = torch.cuda.get_device_name()
    peak = nominal_peak_flops("cuda")
    mm = matmul_rate("cuda", n=8192) * 1e9
    out = {"device": name, "frames_per_s": round(fps), "achieved_tflops": round(achieved / 1e12, 2),
           "matmul_tflops": round(mm / 1e12, 1), "mfu_vs_matmul": round(achieved / mm, 3),
           "mfu_vs_nominal": round(achieved / peak, 3) if peak else None}
    print(f"  CUDA {name}: {fps:.0f} frames/s, {achieved / 1e12:.1f} TFLOP/s, MFU {out['mfu_vs_nominal']} of "
          f"nominal, {out['mfu_vs_matmul']} of the in-run matmul rate", flush=True)
    return out


# A small process runs the command and reports its child's peak RSS: started straight from this (large)
# process, a child's ru_maxrss would report this process's size, inherited across fork and exec.
WRAPPER = ("import resource, subprocess, sys\n"
           "rc = subprocess.run(sys.argv[1:]).returncode\n"
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
           "sys.exit(rc)\n")


def memory(folder: Path, files: list[Path], counts: list[int]) -> list[dict[str, Any]]:
    """Peak RSS of `m3bert embed` on the first N files, each in a fresh grandchild process."""
    rows = []
    for n in counts:
        sub = folder / f"in_{n}"
        sub.mkdir(exist_ok=True)
        for k in range(n):
            link = sub / f"{k:04d}_{files[k % len(files)].name}"
            if not link.exists():
                os.symlink(files[k % len(files)], link)
        out = folder / f"mem_out_{n}"
        code = ("import sys; from m3bert.app.cli import main; "
                f"sys.exit(main(['embed', {str(sub)!r}, '--model', {MODEL!r}, '--out', {str(out)!r}, "
                "'--dtype', 'bf16', '--no-progress']))")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-c", code], capture_output=True,
                              text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"m3bert embed failed on {n} files:\n{proc.stderr[-2000:]}")
        kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))
        rows.append({"files": n, "peak_rss_mb": round(kb / 1024, 1), "seconds": round(seconds, 1),
                     "load_avg": load_avg()})
        print(f"  {n:4d} files: peak RSS {kb / 1024:7.1f} MB, {seconds:6.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def write_markdown(res: dict[str, Any]) -> str:
    s = res["summary"]
    t = s["targets"]
    lines = ["# Embedding speed (`perf/embed.py`, issue 18)", "",
             f"Machine: {res['machine']}; torch threads {res['threads']}. Clips: {res['rounds']['files']} x 30 s "
             f"OGG/Vorbis 44.1 kHz ({res['rounds']['audio_s'] / 60:.1f} min), M2BERT-Small (random weights) in bf16 "
             f"autocast, batches of {BATCH} windows of 1294 frames. {len(s['per_round'])} interleaved rounds; load "
             f"average {res['load_avg_start']} at start, {res['load_avg_end']} at end (the machine is shared with "
             "other jobs: ratios are per round, then medians).", "",
             "## Targets (ratios within one run)", "",
             "| ratio | target | measured (median) | per round | met |", "|---|---:|---:|---|---|"]
    names = {"embed_vs_encoder": "`m3bert embed` end to end / encoder only",
             "encoder_vs_matmul": "encoder only (model FLOPs) / in-run bf16 matmul rate",
             "bench_vs_embed": "benchmark embedding phase / `m3bert embed`"}
    for k, label in names.items():
        lines.append(f"| {label} | {pct(t[k]['target'])} | {pct(t[k]['measured'], 2)} | "
                     f"{', '.join(pct(p[k]) for p in s['per_round'])} | {'yes' if t[k]['met'] else 'no'} |")
    lines += ["", "## Absolute figures (medians over rounds)", "",
              "| what | real-time factor | frames/s | note |", "|---|---:|---:|---|",
              f"| in-run bf16 matmul (4096^3) | | | {s['matmul_gflops']:.0f} GFLOP/s |",
              f"| encoder only | {s['rtf_encoder']:.1f}x | {s['encoder_frames_per_s']:.0f} | "
              f"{s['encoder_gflops']:.0f} GFLOP/s of model FLOPs ({res['rounds']['flops_per_frame'] / 1e6:.1f} MFLOP/frame) |",
              f"| `m3bert embed` (pipelined) | {s['rtf_embed']:.1f}x | | decode + features in the producer thread |",
              f"| `m3bert embed`, sequential (`--prefetch 0`) | {s['rtf_embed_sequential']:.1f}x | | "
              f"{pct(s['embed_sequential_vs_encoder'])} of encoder only |",
              f"| benchmark phase, the model | {s['rtf_bench']:.1f}x | | `FeatureCache.get_many`, all layers |",
              f"| benchmark phase, model + raw + MFCC, one pass | {s['rtf_bench_model_raw_mfcc']:.1f}x | | "
              f"{pct(s['bench3_vs_embed'])} of embed; {s['one_pass_vs_separate']:.2f}x faster than one pass each |",
              "", "CPU-time ratios (work done, all threads; independent of the other tenants): embed / encoder "
              f"{pct(s['cpu_embed_vs_encoder'])}, bench / embed {pct(s['cpu_bench_vs_embed'])}.", ""]
    ci = res.get("encoder_options", {})
    if ci:
        fps = ci.get("encoder_frames_per_s", {})
        lines += ["## Encoder options (encoder only, one batch of 8 windows)", "",
                  "| option | frames/s | vs fp32 | clip-level cosine to fp32 (min) | centred cosine (min) |",
                  "|---|---:|---:|---:|---:|",
                  f"| fp32 | {fps.get('fp32')} | 1.00 | 1 | 1 |",
                  f"| bf16 autocast | {fps.get('bf16')} | {fps.get('bf16', 0) / max(fps.get('fp32', 1), 1):.2f} | "
                  f"{ci.get('bf16_min_clip_cosine')} | {ci.get('bf16_min_centred_cosine')} |",
                  f"| int8 (`--dtype int8`) | {fps.get('int8')} | {ci.get('int8_vs_fp32')} | "
                  f"{ci.get('int8_min_clip_cosine')} | {ci.get('int8_min_centred_cosine')} |", ""]
        if "compile_speedup" in ci:
            lines.append(f"`torch.compile` (bf16, after a {ci['compile_warmup_s']} s warm-up): "
                         f"{ci['compile_speedup']:.2f}x eager (rounds: {ci['compile_speedups_all']}).")
        elif "compile_error" in ci:
            lines.append(f"`torch.compile`: failed here ({ci['compile_error']}).")
        lines.append("")
    lines += ["## Memory: `m3bert embed` on N files (fresh process each)", "",
              "| files | peak RSS (MB) | wall s |", "|---:|---:|---:|"]
    for r in res["memory"]:
        lines.append(f"| {r['files']} | {r['peak_rss_mb']} | {r['seconds']} |")
    g = res.get("cuda")
    lines += ["", "## GPU", "",
              (f"{g['device']}: {g['frames_per_s']} frames/s, {g['achieved_tflops']} TFLOP/s, MFU "
               f"{g['mfu_vs_nominal']} of the nominal bf16 peak, {g['mfu_vs_matmul']} of the in-run matmul rate."
               if g else "No CUDA device on this machine (none was lent to this session): the CUDA paths are tested "
                         "where one exists (`tests/test_speed_encoder.py`) and this script prints MFU there."),
              "", "## Verdict", "", res["verdict"], "", "## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def verdict(res: dict[str, Any]) -> str:
    s = res["summary"]
    met = [k for k, v in s["targets"].items() if v["met"]]
    missed = [k for k, v in s["targets"].items() if not v["met"]]
    mem = res["memory"]
    growth = mem[-1]["peak_rss_mb"] - mem[0]["peak_rss_mb"]
    return (f"Met: {', '.join(met) or 'none'}; missed: {', '.join(missed) or 'none'}. "
            f"Real time: encoder {s['rtf_encoder']:.1f}x, embed {s['rtf_embed']:.1f}x (sequential "
            f"{s['rtf_embed_sequential']:.1f}x), benchmark phase {s['rtf_bench']:.1f}x, at an in-run bf16 matmul "
            f"rate of {s['matmul_gflops']:.0f} GFLOP/s. Peak RSS {mem[0]['peak_rss_mb']} MB for {mem[0]['files']} files, "
            f"{mem[-1]['peak_rss_mb']} MB for {mem[-1]['files']} ({growth:+.1f} MB): memory is "
            f"{'flat' if abs(growth) < 0.1 * mem[0]['peak_rss_mb'] + 20 else 'NOT flat'} in the number of files.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8, help="30 s clips (default 8: one encoder batch)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (medians)")
    ap.add_argument("--quick", action="store_true", help="2 clips, 1 round, no compile (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--render", action="store_true", help="only rebuild embed.md from embed.json")
    ap.add_argument("--memory-only", action="store_true", help="only redo the memory measurement in embed.json")
    ap.add_argument("--notes", default="", help="a note to record with the results")
    args = ap.parse_args()
    from m3bert.core.io import atomic_write_json, atomic_write_text, read_json

    if args.render:
        atomic_write_text(RESULTS / "embed.md", write_markdown(read_json(RESULTS / "embed.json")))
        return 0
    if args.memory_only:
        res = read_json(RESULTS / "embed.json")
        with tempfile.TemporaryDirectory(prefix="m3bert-perf-embed-") as tmp:
            files = write_clips(Path(tmp) / "clips", args.clips)
            res["memory"] = memory(Path(tmp), files, [2 * args.clips, 8 * args.clips])
        res["verdict"] = verdict(res)
        atomic_write_json(RESULTS / "embed.json", res)
        atomic_write_text(RESULTS / "embed.md", write_markdown(res))
        return 0
    import torch

    n_clips, n_rounds = (2, 1) if args.quick else (args.clips, args.rounds)
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                                      f"torch {torch.__version__}", "threads": torch.get_num_threads(),
                           "load_avg_start": load_avg(), "created": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="m3bert-perf-embed-") as tmp:
        folder = Path(tmp)
        print(f"writing {n_clips} clips of 30 s (OGG) ...", flush=True)
        files = write_clips(folder / "clips", n_clips)
        print("rounds (matmul, encoder only, embed, embed sequential, bench, bench model+raw+mfcc):", flush=True)
        res["rounds"] = rounds(files, folder, n_rounds)
        res["summary"] = summarise(res["rounds"])
        if not args.quick:
            print("encoder options (torch.compile, int8):", flush=True)
            res["encoder_options"] = compile_and_int8(files, repeats=3)
            print(f"  {res['encoder_options']}", flush=True)
        print("memory (m3bert embed, Small bf16):", flush=True)
        # the batch (8 windows) and the producer's queue (8 inputs) fill up within 16 files; beyond
        # that memory must not grow: 2x and 8x the clips
        res["memory"] = memory(folder, files, [2, 8] if args.quick else [2 * n_clips, 8 * n_clips])
        res["cuda"] = cuda_mfu(files)
    res["load_avg_end"] = load_avg()
    res["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["verdict"] = verdict(res)
    res["notes"] = [n for n in [args.notes] if n] + [
        "Encoder only = `Embedder._encode_windows` on the very windows `m3bert embed` encodes, in its batches "
        "(features precomputed); embed = `embed.folder.embed_files` (what the command runs) on the files; bench = "
        "`FeatureCache(None).get_many` (all hidden states, as the benchmark asks) on the same files as clips.",
        "On 2 cores the encoder's two threads keep both cores busy, so the producer thread's decoding and "
        "features (~0.1 s of one core per 30 s clip) compete with it instead of filling idle time: the "
        "best a pipeline can do is encoder / (encoder + features / 2) of the encoder's speed; the sequential "
        "path pays encoder + features. The CPU-time ratios show the work each path adds.",
    ]
    print(res["verdict"])
    print(f"total {res['total_seconds']} s")
    if not args.no_write:
        atomic_write_json(RESULTS / "embed.json", res)
        atomic_write_text(RESULTS / "embed.md", write_markdown(res))
        print(f"wrote {RESULTS / 'embed.json'} and {RESULTS / 'embed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
