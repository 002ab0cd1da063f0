"""Benchmark: M3BERT 324-d features, librosa reference vs fast path, on the same 30 s 44.1 kHz WAV clips.

Measures, in one run:
  * decode + features real-time factor of the reference (librosa) and fast pipelines, in 1 and in
    2 worker processes (the fast path must reach >= 300x real time on 2 cores), and their ratio;
  * where the time goes in one process: decode, STFT groups, CQT, CMVN, writing;
  * parity of the fast path with the reference on one clip (per group, Frobenius relative error);
  * ``extract_to_store`` end to end (2 workers) on 200 distinct files, with peak RSS of the main
    process and of the largest worker, against the same for 25 files (memory must not grow with
    the number of files).
Writes perf/results/features.json and perf/results/features.md. Runs in well under 3 minutes.

    python perf/features.py [--n-clips 12] [--n-store-files 200] [--workdir /tmp/m3bert-bench]
"""

from __future__ import annotations

import os

# one BLAS/OpenMP thread per process, set before numpy loads: parallelism comes from worker processes,
# and the 1-worker timings then measure the same thing as each of the 2 workers
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 44100
CLIP_S = 30.0
ROOT = Path(__file__).resolve().parent


def make_clip(seed: int, seconds: float = CLIP_S) -> np.ndarray:
    """Tones (a chord that changes with the seed) + chirp + noise + transients, float32 in [-1, 1]."""
    r = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.zeros(n)
    for f in 110.0 * 2 ** (r.integers(0, 36, size=3) / 12):
        x += 0.15 * np.sin(2 * np.pi * f * t + r.uniform(0, 2 * np.pi))
    x += 0.05 * np.sin(2 * np.pi * (80 + 30 * t) * t)
    x += 0.03 * r.standard_normal(n)
    for onset in np.arange(r.uniform(0, 0.3), seconds, 0.41):
        i = int(onset * SR)
        k = min(n - i, 600)
        x[i: i + k] += 0.4 * np.exp(-np.arange(k) / 80.0) * r.standard_normal(k)
    return np.clip(x, -1, 1).astype(np.float32)


def write_clips(folder: Path, n: int) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    bases = [make_clip(i) for i in range(min(n, 8))]
    paths = []
    for i in range(n):
        p = folder / f"clip{i:04d}.wav"
        if not p.exists():
            # distinct files (the store dedups identical bytes) without synthesising each one: rotate a base
            # clip by a file-specific offset
            x = np.roll(bases[i % len(bases)], 7919 * i)
            sf.write(p, x, SR, subtype="PCM_16")
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------- pipelines

def _pipeline(args: tuple[str, str]) -> tuple[float, float]:
    """decode + features of one file in this process; returns (wall seconds, CPU seconds of this process)."""
    path, backend = args
    from m3bert.audio import load_audio
    from m3bert.features import get_feature_set

    fs = _FS.get("fs") or _FS.setdefault("fs", get_feature_set("m3bert324"))
    t0, c0 = time.perf_counter(), time.process_time()
    y = load_audio(path, sample_rate=SR)
    fs.extract(y, sample_rate=SR, backend=backend)
    return time.perf_counter() - t0, time.process_time() - c0


_FS: dict = {}


def _warm(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    from m3bert.features import get_feature_set

    fs = _FS.setdefault("fs", get_feature_set("m3bert324"))
    x = make_clip(999, 3.0)
    fs.extract(x, sample_rate=SR, backend="fast")
    fs.extract(x, sample_rate=SR, backend="reference")


def time_pipeline(paths: list[Path], backend: str, workers: int, pool) -> dict:
    """Wall time of decode + features over ``paths`` with ``workers`` processes (warm)."""
    t0 = time.perf_counter()
    if workers == 1:
        per = [_pipeline((str(p), backend)) for p in paths]
    else:
        per = pool.map(_pipeline, [(str(p), backend) for p in paths], chunksize=1)
    wall = time.perf_counter() - t0
    audio = len(paths) * CLIP_S
    cpu = float(sum(c for _, c in per))
    # CPU time is what a clip costs whatever else the machine runs: on an idle machine with
    # `workers` free cores the wall-clock rate approaches workers * audio / cpu
    return {"backend": backend, "workers": workers, "n_clips": len(paths), "wall_s": wall,
            "x_realtime": audio / wall, "median_clip_ms": 1000 * float(np.median([w for w, _ in per])),
            "median_clip_cpu_ms": 1000 * float(np.median([c for _, c in per])),
            "x_realtime_per_cpu_core": audio / cpu, "x_realtime_idle_estimate": workers * audio / cpu}


def breakdown(paths: list[Path]) -> dict:
    """Median per-clip milliseconds (wall and CPU) of each stage, one process, fast and reference."""
    import librosa

    from m3bert.audio import load_audio
    from m3bert.features import fast, get_feature_set, reference
    from m3bert.features.store import ShardWriter

    fs = get_feature_set("m3bert324")
    cfg = fs.config
    rows: dict[str, list[tuple[float, float]]] = {}

    def timed(key, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        rows.setdefault(key, []).append((time.perf_counter() - t, time.process_time() - c))
        return out

    def ref_stft_groups(y):
        kw = dict(sr=SR, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=cfg.window)
        librosa.feature.chroma_stft(y=y, tuning=0.0, **kw)
        mel = librosa.feature.melspectrogram(y=y, n_mels=cfg.n_mels, **kw)
        mf = librosa.feature.mfcc(y=y, n_mfcc=cfg.n_mfcc, n_mels=cfg.n_mels, **kw)
        reference.delta(mf, width=cfg.delta_width)
        return reference.log_compress(mel)

    def write(raw):
        writer.append_file({"chunks": [{}]}, [raw])
        writer.fh.flush()
        os.fsync(writer.fh.fileno())

    tmp = Path(tempfile.mkdtemp())
    writer = ShardWriter(tmp, "bench", fs.n_channels)
    for p in paths:
        y = timed("decode", lambda: load_audio(p, sample_rate=SR))
        with fast.single_thread():
            tun = fast.clip_tunings([y], cfg)
            g = timed("fast_stft_groups", lambda: fast.stft_groups_batch([y], cfg, tun)[0])
            g["cqt"] = timed("fast_cqt", lambda: fast.cqt_groups_batch([y], cfg, tun)[0])
        raw = timed("assemble", lambda: np.ascontiguousarray(np.concatenate(list(g.values())).T, dtype=np.float32))
        timed("cmvn", lambda: fs.normalize(raw))
        timed("write", lambda: write(raw))
        timed("ref_stft_groups", lambda: ref_stft_groups(y))
        timed("ref_cqt", lambda: reference.log_compress(reference.cqt_literal(y, cfg, 0.0)))
    writer.abort()
    shutil.rmtree(tmp, ignore_errors=True)
    return {k: {"wall_ms": 1000 * float(np.median([w for w, _ in v])),
                "cpu_ms": 1000 * float(np.median([c for _, c in v]))} for k, v in rows.items()}


def parity(path: Path) -> dict:
    from m3bert.audio import load_audio
    from m3bert.features import get_feature_set

    fs = get_feature_set("m3bert324")
    y = load_audio(path, sample_rate=SR)
    a = fs.extract(y, sample_rate=SR, normalize=False, backend="fast").astype(np.float64)
    b = fs.extract(y, sample_rate=SR, normalize=False, backend="reference").astype(np.float64)
    return {g.name: float(np.linalg.norm(a[:, g.slice] - b[:, g.slice]) / np.linalg.norm(b[:, g.slice]))
            for g in fs.spec.groups}


STORE_RUN = """
import json, resource, sys, time
from m3bert.features import get_feature_set
from m3bert.features.store import extract_to_store
files = json.loads(sys.argv[1])
t0 = time.perf_counter()
s = extract_to_store(files, sys.argv[2], feature_set=get_feature_set("m3bert324"), workers=int(sys.argv[3]),
                     progress=False)
wall = time.perf_counter() - t0
print(json.dumps({"files_done": s["files_done"], "chunks": s["chunks"], "audio_hours": s["audio_hours"],
                  "wall_s": wall, "x_realtime": s["speed_x_realtime"], "time_s": s["time_s"],
                  "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def store_run(files: list[Path], out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STORE_RUN, json.dumps([str(f) for f in files]), str(out),
                           str(workers)], capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0  # including Python start-up and imports
    res["n_files"] = len(files)
    res["workers"] = workers
    res["store_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return res


# --------------------------------------------------------------------------------------------- report

def to_markdown(res: dict) -> str:
    L = ["# Feature extraction benchmark (`perf/features.py`)", "",
         f"{res['machine']['cpu_count']} CPU cores, {res['machine']['platform']}; 30 s 44.1 kHz 16-bit WAV clips, "
         f"m3bert324 (literal CQT, clip CMVN); decode + features. {res['note']}", "",
         "| pipeline | workers | clips | wall s | x real time (measured) | median ms/clip | median CPU ms/clip "
         "| x real time per CPU core | x real time, idle estimate |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["pipelines"]:
        L.append(f"| {r['backend']} | {r['workers']} | {r['n_clips']} | {r['wall_s']:.2f} | {r['x_realtime']:.0f} | "
                 f"{r['median_clip_ms']:.0f} | {r['median_clip_cpu_ms']:.0f} | {r['x_realtime_per_cpu_core']:.0f} | "
                 f"{r['x_realtime_idle_estimate']:.0f} |")
    L += ["", "*Measured* is wall clock on the machine as it was (see the load above). *Idle estimate* = "
              "workers x 30 s / CPU seconds per clip: what the same work gives when `workers` cores are free."]
    L += ["", f"Fast / reference speed-up: {res['speedup_1_worker']:.1f}x (1 worker), "
              f"{res['speedup_2_workers']:.1f}x (2 workers).", "",
          "Where the time goes (one process, median per 30 s clip, CPU ms with wall ms in brackets):", "",
          "| stage | fast | reference |", "|---|---:|---:|"]
    b = res["breakdown_ms"]

    def cell(key):
        return f"{b[key]['cpu_ms']:.1f} ({b[key]['wall_ms']:.1f})"

    L += [f"| decode (WAV) | {cell('decode')} | {cell('decode')} |",
          f"| STFT groups (chroma, MFCC, delta, mel) | {cell('fast_stft_groups')} | {cell('ref_stft_groups')} |",
          f"| CQT (144 bins) | {cell('fast_cqt')} | {cell('ref_cqt')} |",
          f"| assemble frames | {cell('assemble')} | |",
          f"| CMVN (per clip) | {cell('cmvn')} | |",
          f"| write to shard (+fsync) | {cell('write')} | |", "",
          "Parity of the fast path with the librosa reference on one clip (relative Frobenius error): "
          + ", ".join(f"{k} {v:.1e}" for k, v in res["parity"].items()) + ".", "",
          "`extract_to_store` end to end (hash + decode + chunk + features + write + manifest; wall includes "
          "spawning the workers; the process column adds Python start-up and imports):", "",
          "| files | workers | wall s | process wall s | x real time | peak RSS main MB | peak RSS worker MB | store MB |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["store_runs"]:
        L.append(f"| {r['n_files']} | {r['workers']} | {r['wall_s']:.1f} | {r['process_wall_s']:.1f} | {r['x_realtime']:.0f} | "
                 f"{r['peak_rss_main_mb']:.0f} | {r['peak_rss_worker_mb']:.0f} | {r['store_mb']:.0f} |")
    L += ["", f"Total benchmark time {res['total_s']:.0f} s."]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-clips", type=int, default=12, help="clips for the pipeline timings")
    ap.add_argument("--n-store-files", type=int, default=200, help="files for the end-to-end store run")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "m3bert-bench-features"))
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    work = Path(args.workdir)
    print(f"writing {args.n_store_files} clips of {CLIP_S:.0f} s to {work} ...", flush=True)
    files = write_clips(work / "clips", max(args.n_store_files, args.n_clips))
    clips = files[: args.n_clips]

    load_before = os.getloadavg()
    _warm(0)
    ctx = mp.get_context("spawn")
    pipelines = []
    with ctx.Pool(2) as pool:
        pool.map(_warm, range(2))
        for backend in ("reference", "fast"):
            for workers in (1, 2):
                r = time_pipeline(clips, backend, workers, pool)
                pipelines.append(r)
                print(f"{backend:9s} workers={workers}: {r['x_realtime']:6.0f}x real time "
                      f"({r['median_clip_ms']:.0f} ms/clip median, {r['median_clip_cpu_ms']:.0f} CPU ms; "
                      f"idle estimate {r['x_realtime_idle_estimate']:.0f}x)", flush=True)
    by = {(r["backend"], r["workers"]): r for r in pipelines}
    bd = breakdown(clips[: min(6, len(clips))])
    print("breakdown CPU ms/clip:", json.dumps({k: round(v["cpu_ms"], 1) for k, v in bd.items()}), flush=True)
    par = parity(clips[0])
    print("parity:", json.dumps({k: f"{v:.1e}" for k, v in par.items()}), flush=True)
    runs = []
    for n in sorted({min(25, len(files)), args.n_store_files}):
        r = store_run(files[:n], work / f"store{n}", workers=2)
        runs.append(r)
        print(f"store {n} files, 2 workers: {r['x_realtime']:.0f}x real time, peak RSS main "
              f"{r['peak_rss_main_mb']:.0f} MB, worker {r['peak_rss_worker_mb']:.0f} MB", flush=True)
    load_after = os.getloadavg()
    note = args.note or (f"Load average before/after: {load_before[0]:.1f}/{load_after[0]:.1f} on "
                         f"{os.cpu_count()} cores (machine shared with other jobs: numbers are noisy).")
    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": note,
        "pipelines": pipelines,
        "speedup_1_worker": by[("fast", 1)]["x_realtime"] / by[("reference", 1)]["x_realtime"],
        "speedup_2_workers": by[("fast", 2)]["x_realtime"] / by[("reference", 2)]["x_realtime"],
        "breakdown_ms": bd, "parity": par, "store_runs": runs,
        "total_s": time.perf_counter() - t_all,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from m3bert.core.io import atomic_write_json, atomic_write_text, versions

    res["versions"] = versions()
    atomic_write_json(out / "features.json", res)
    atomic_write_text(out / "features.md", to_markdown(res))
    print(to_markdown(res))
    for r in runs:
        shutil.rmtree(work / f"store{r['n_files']}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
