"""The demo report's evidence sections (issue 17): which data pre-training used, the answers to
"does pre-training beat no pre-training / does enrichment beat pre-training alone" with paired
confidence intervals, the learning curve, and the masked-reconstruction loss against trivial
predictors. Every number is read from this run's files; none is typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3bert.evaluate.report import Figure, Section, Table, figure_png, fmt_number

TWIN = "M2BERT, no pre-training"
QUESTIONS = (("M2BERT", TWIN, "pre-training vs none"), ("M3BERT", "M2BERT", "enrichment vs pre-training alone"))


def _plt() -> Any:
    import matplotlib  # heavy import (~1 s), only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy import (~1 s), only when a figure is drawn

    return plt


def score_in(results: dict[str, Any], rep: str, task: str, setting: str | None) -> dict[str, Any] | None:
    """The task-score summary of ``rep`` on ``task`` in ``setting`` (None: the row of any setting)."""
    for r in results["results"]:
        if r["representation"] == rep and r["task"] == task and r["runs"] and (
                setting is None or r.get("setting") in (None, setting)):
            return r["summary"]["score"]
    return None


def pair_of(results: dict[str, Any], a: str, b: str, task: str, setting: str | None) -> dict[str, Any] | None:
    for p in results.get("pairs", []):
        if p["a"] == a and p["b"] == b and p["task"] == task and (setting is None or p.get("setting") in (None, setting)):
            return p
    return None


def power_of(results: dict[str, Any], task: str, setting: str | None) -> dict[str, Any] | None:
    for p in results.get("power", []):
        if p["task"] == task and (setting is None or p.get("setting") in (None, setting)):
            return p
    return None


def verdict(p: dict[str, Any] | None) -> str:
    """"better" / "worse" (the paired 95 % CI excludes 0) or "not decided"."""
    if p is None or p.get("decided") is None:
        return "n/a"
    if not p["decided"]:
        return "not decided"
    return "better" if p["difference"] > 0 else "worse"


def _diff(p: dict[str, Any] | None) -> str:
    if p is None:
        return "–"
    return f"{p['difference']:+.3f} [{fmt_number(p['ci_low'])}, {fmt_number(p['ci_high'])}]"


def learnable(results: dict[str, Any], task: str, setting: str | None) -> bool | None:
    """A task is learned when its best representation beats chance by more than the test set's MDD."""
    pw = power_of(results, task, setting)
    chance = score_in(results, "chance", task, setting)
    if pw is None or chance is None or pw.get("mdd") is None:
        return None
    return bool(pw["score"] - chance["mean"] > pw["mdd"])


def answer_rows(cfg: Any, results: dict[str, Any], setting: str) -> list[list[Any]]:
    rows = []
    for t in cfg.bench_tasks:
        task = f"builtin-{t}"
        row: list[Any] = [task, "enrichment" if t in cfg.enrich_tasks else "held out"]
        ok = learnable(results, task, setting)
        row.append("–" if ok is None else ("yes" if ok else "no"))
        for a, b, _ in QUESTIONS:
            p = pair_of(results, a, b, task, setting)
            row += [_diff(p), verdict(p)]
        rows.append(row)
    return rows


def answer_counts(cfg: Any, results: dict[str, Any], setting: str) -> dict[str, dict[str, int]]:
    """Per question, over the held-out tasks that are learned: how many better / worse / not decided."""
    out: dict[str, dict[str, int]] = {}
    for a, b, what in QUESTIONS:
        counts = {"better": 0, "worse": 0, "not decided": 0, "n/a": 0, "tasks": 0}
        for t in cfg.held_out:
            task = f"builtin-{t}"
            if learnable(results, task, setting) is False:
                continue
            counts["tasks"] += 1
            counts[verdict(pair_of(results, a, b, task, setting))] += 1
        out[what] = counts
    return out


def answers_section(cfg: Any, results: dict[str, Any]) -> Section:
    """The two questions per task, in every probing setting of the run (the headline setting first)."""
    order = [cfg.headline_setting] + [s for s in cfg.settings if s != cfg.headline_setting]
    lines = [f"Every probing setting of this run (headline `{cfg.headline_setting}` first). Each cell is the paired "
             "difference of task scores on the same test clips, with its 95 % CI from a bootstrap over test pieces "
             "(seeds averaged); 'better'/'worse' = the CI excludes 0, else 'not decided'. 'learned' = the best "
             "representation beats chance by more than the task's minimum detectable difference. The counts are "
             "over the held-out tasks that are learned."]
    rows: list[list[Any]] = []
    for setting in order:
        for what, c in answer_counts(cfg, results, setting).items():
            lines.append(f"- `{setting}`: **{what}** on the {c['tasks']} learned held-out task(s): better on "
                         f"{c['better']}, worse on {c['worse']}, not decided on {c['not decided']}.")
        rows += [[setting] + row for row in answer_rows(cfg, results, setting)]
    heads = ["setting", "task", "role", "learned", "M2BERT - untrained", "verdict", "M3BERT - M2BERT", "verdict"]
    return Section(title="Answers: does pre-training help, does enrichment help (at this compute)",
                   text="\n\n".join(lines), table=Table(heads, rows), lead=True)


# ---------------------------------------------------------------------------------------------
# Pre-training data
# ---------------------------------------------------------------------------------------------


def data_section(cfg: Any, stages: dict[str, dict[str, Any]]) -> Section:
    pre = stages.get("pretrain", {}).get("summary", {})
    music = stages.get("music", {}).get("summary")
    used = pre.get("data", "builtin")
    rows = []
    for p in (music or {}).get("packages", []):
        rows.append([p["package"], p["version"], p["n_files"], round(p["seconds"] / 60, 1), ", ".join(p["licences"]),
                     round(p["deb_bytes"] / 2 ** 20, 1), p["download_s"], p["unpack_s"]])
    feats = stages.get("music-features", {})
    if used == "builtin":
        why = ("pre-training data was not requested as real music" if cfg.pretrain_data == "builtin" else
               "the real-music packages could not be fetched here "
               f"({(music or {}).get('error') or 'no usable files'}); the demo fell back to the built-in corpus")
        text = f"Pre-training used the **built-in corpus** (synthetic renderings): {why}."
    else:
        text = (f"Pre-training used **real recorded music** ({music['n_files']} files, {music['seconds'] / 3600:.1f} h: "
                "the soundtracks of free games in Debian's data packages, fetched with `apt-get download`)"
                + (" together with the built-in corpus" if used == "real+builtin" else "")
                + ". Enrichment and probing use the built-in corpus. Every file's package, path, licence and SHA-256 "
                  f"is in `music/manifest.json` ({music.get('n_rejects', 0)} files skipped: too short, duplicate or "
                  f"no licence; {len(music.get('failed', []))} package(s) failed). Timings: gathering "
                  f"{stages['music']['seconds']:.0f} s (of which one batched `apt-get download`: "
                  f"{music.get('batch_download_s', 0):.0f} s; the table's download column is a package's own "
                  f"download when it was not in the batch), features {feats.get('seconds', 0):.0f} s.")
    return Section(title="Pre-training data", text=text,
                   table=Table(["package", "version", "files", "minutes", "licences", "MiB (.deb)", "download s",
                                "unpack s"], rows) if rows else None)


# ---------------------------------------------------------------------------------------------
# Learning curve
# ---------------------------------------------------------------------------------------------


def curve_points(curve: dict[str, Any], task: str) -> list[tuple[int, dict[str, Any]]]:
    pts = []
    for r in curve["results"]:
        if r["task"] == task and r["runs"] and r["representation"].startswith("step "):
            pts.append((int(r["representation"].split()[1]), r["summary"]["score"]))
    return sorted(pts, key=lambda x: x[0])


def curve_rows(cfg: Any, curve: dict[str, Any]) -> list[list[Any]]:
    tasks = [t["name"] for t in curve["tasks"]]
    steps = sorted({s for t in tasks for s, _ in curve_points(curve, t)})
    rows = []
    for s in steps:
        row: list[Any] = [s]
        for t in tasks:
            score = dict(curve_points(curve, t)).get(s)
            p = pair_of(curve, f"step {s}", "step 0", t, None) if s else None
            cell = "–" if score is None else fmt_number(score["mean"]) + (
                f" ± {fmt_number(score['half_width'])}" if score.get("half_width") is not None else "")
            if p is not None:
                cell += f"; {_diff(p)} {verdict(p)}"
            row.append(cell)
        rows.append(row)
    return rows


def curve_png(curve: dict[str, Any], results: dict[str, Any] | None, setting: str) -> bytes:
    """Per held-out task: the paired difference of each checkpoint's score to step 0 (the untrained
    twin) with its 95 % bootstrap CI over test pieces; the seed CIs of the absolute scores are in the
    table (with two seeds they are too wide to read anything from)."""
    plt = _plt()
    tasks = [t["name"] for t in curve["tasks"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 2.9), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        xs, ys, lo, hi = [0], [0.0], [0.0], [0.0]
        for s, _score in curve_points(curve, task):
            p = pair_of(curve, f"step {s}", "step 0", task, None) if s else None
            if p is not None:
                xs.append(s)
                ys.append(p["difference"])
                lo.append(p["difference"] - p["ci_low"])
                hi.append(p["ci_high"] - p["difference"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", ms=3, capsize=3, label="M2BERT - step 0")
        ax.axhline(0.0, color="black", lw=0.8)
        step0 = dict(curve_points(curve, task)).get(0)
        raw = score_in(results, "raw", task, setting) if results else None
        if raw is not None and step0 is not None:
            ax.axhline(raw["mean"] - step0["mean"], ls=":", color="grey", lw=1, label="raw statistics - step 0")
        ax.set_title(task.replace("builtin-", ""), fontsize=9)
        ax.set_xlabel("pre-training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score difference to step 0")
    axes[0][0].legend(fontsize=7)
    return figure_png(fig)


def curve_section(cfg: Any, curve: dict[str, Any], results: dict[str, Any]) -> Section:
    text = (f"The held-out tasks probed at step 0 (the untrained twin: same architecture and seed) and at every "
            f"checkpoint kept during pre-training (every {cfg.keep_every} steps), setting `{cfg.headline_setting}`. "
            "Cells: task score ± 95 % CI over probe seeds; then the paired difference to step 0 with its bootstrap CI "
            "over test pieces. If pre-training moves the representation the right way, the curve rises above step 0 "
            "as steps grow; a flat curve at this budget says compute, not the method, is the limit only if the "
            "reconstruction loss below still falls. The curve's last point is the run's last step; the benchmark's "
            "M2BERT is the exported model, the run's best checkpoint on validation loss, so the two can differ.")
    figs = [Figure(caption="Gain of each checkpoint over the untrained twin (step 0) on the same test clips, with "
                           "its 95 % bootstrap CI over test pieces; one panel per held-out task; above 0 = pre-training "
                           "helped. Dotted: the raw-feature statistics' score minus step 0's (same setting).",
                   png=curve_png(curve, results, cfg.headline_setting))]
    heads = ["step"] + [t["name"] for t in curve["tasks"]]
    return Section(title="Learning curve: probe score against pre-training steps", text=text,
                   table=Table(heads, curve_rows(cfg, curve)), figures=figs, lead=True)


# ---------------------------------------------------------------------------------------------
# Masked reconstruction against trivial predictors
# ---------------------------------------------------------------------------------------------


def diagnostics_png(diag: dict[str, Any]) -> bytes:
    plt = _plt()
    combos = diag["combos"]
    fig, axes = plt.subplots(1, len(combos), figsize=(3.4 * len(combos), 2.9), squeeze=False, layout="constrained")
    steps = [c["step"] for c in diag["checkpoints"]]
    for ax, combo in zip(axes[0], combos):
        ax.plot(steps, [c["loss"][combo] for c in diag["checkpoints"]], "o-", ms=3, label="M2BERT")
        for name, style in zip(diag["predictors"], ("--", "-.", ":")):
            ax.axhline(diag["predictors"][name][combo], ls=style, color="grey", lw=1, label=name)
        ax.set_title(f"masked cells: {combo}", fontsize=9)
        ax.set_xlabel("pre-training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Huber loss")
    axes[0][0].legend(fontsize=7)
    return figure_png(fig)


def diagnostics_section(diag: dict[str, Any]) -> Section:
    combos = diag["combos"]
    rows = [[f"M2BERT step {c['step']}"] + [round(c["loss"][k], 4) for k in combos] for c in diag["checkpoints"]]
    rows += [[f"trivial: {name}"] + [round(v[k], 4) for k in combos] for name, v in diag["predictors"].items()]
    last = diag["checkpoints"][-1]
    beaten = [k for k in combos if all(last["loss"][k] < v[k] for v in diag["predictors"].values())]
    not_beaten = [k for k in combos if k not in beaten]
    text = (f"Masked-cell Huber loss on the run's own validation ({diag['n_chunks']} held-out chunks, the same crops "
            "and masks as the run's validation), for every kept checkpoint and for three predictors that learn "
            "nothing: zeros (the CMVN mean), each channel's mean over the visible cells of the row, and a copy of the "
            "nearest visible frame. Columns: the training masking and each of its policies alone. "
            f"At step {last['step']} the model beats every trivial predictor on: {', '.join(beaten) or 'none'}"
            + (f"; not on: {', '.join(not_beaten)}" if not_beaten else "") + ".")
    return Section(title="Masked reconstruction against trivial predictors", text=text,
                   table=Table(["predictor"] + combos, rows),
                   figures=[Figure(caption="Masked-cell loss against pre-training steps; grey lines: trivial predictors.",
                                   png=diagnostics_png(diag))], lead=True)


# ---------------------------------------------------------------------------------------------
# Diagnosis: why do the learned representations trail their input statistics?
# ---------------------------------------------------------------------------------------------


def _mean_over(results: dict[str, Any], rep: str, tasks: list[str], setting: str) -> float | None:
    vals = [score_in(results, rep, t, setting) for t in tasks]
    if not vals or any(v is None for v in vals):
        return None
    return sum(v["mean"] for v in vals) / len(vals)


def _won_layer(results: dict[str, Any], rep: str, task: str, setting: str) -> str:
    for w in results.get("layer_selection", []):
        if w["representation"] == rep and w["task"] == task and w.get("setting") in (None, setting):
            return f"{w['layer']} ({w['count']}/{w['n']})"
    return "–"


def diagnosis_section(cfg: Any, results: dict[str, Any], diag: dict[str, Any] | None) -> Section:
    """The evidence this run holds on why M2BERT trails the raw-feature statistics: the settings
    (pooling, layers) side by side on the held-out tasks, the layer that won, and how the masked
    reconstruction compares with the trivial predictors."""
    tasks = [f"builtin-{t}" for t in cfg.held_out]
    reps = ("M2BERT", TWIN, "raw")
    rows = []
    for setting in cfg.settings:
        row: list[Any] = [setting]
        for rep in reps:
            m = _mean_over(results, rep, tasks, setting)
            row.append("–" if m is None else round(m, 4))
        row.append(", ".join(f"{t.replace('builtin-', '')}: {_won_layer(results, 'M2BERT', t, setting)}" for t in tasks))
        rows.append(row)
    lines = [f"Mean task score over the held-out tasks ({', '.join(cfg.held_out)}) per probing setting: does the "
             "gap to the raw statistics close with the pooling (mean vs mean + std over time) or with the layer "
             "read (output vs every layer + weighted sum)? Last column: the layer M2BERT's probe selected on "
             "validation (times chosen / seeds).",
             f"Input normalisation: the encoders read `cmvn={cfg.cmvn}` frames"
             + (" (one mean and std over the pre-training store), so a clip's average spectrum reaches them as it "
                "reaches the raw statistics. " if cfg.cmvn == "corpus" else
                " (every clip normalised on its own), which removes a clip's average spectrum before the encoder "
                "sees it: what the raw statistics mostly use on pitch and key. ")
             + "The README's diagnosis measures both (`m3bert demo --cmvn clip|corpus`).",
             "Masked reconstruction against the trivial predictors (last checkpoint):"]
    if diag is not None:
        last = diag["checkpoints"][-1]
        for combo in diag["combos"]:
            best_name = min(diag["predictors"], key=lambda p: diag["predictors"][p][combo])
            best = diag["predictors"][best_name][combo]
            lines.append(f"- masked cells `{combo}`: model {last['loss'][combo]:.3f} at step {last['step']} vs the best "
                         f"trivial predictor ({best_name}) {best:.3f}: ratio {last['loss'][combo] / best:.2f}"
                         + (" (the model does worse than copying or averaging what it sees)" if last['loss'][combo] > best
                            else ""))
    return Section(title="Diagnosis: why the learned representations trail their input statistics",
                   text="\n\n".join(lines),
                   table=Table(["setting", "M2BERT", "untrained twin", "raw statistics", "layer won (M2BERT)"], rows),
                   lead=True)


def evidence_sections(cfg: Any, out: Path, results: dict[str, Any], stages: dict[str, dict[str, Any]], *,
                      curve: dict[str, Any] | None, diagnostics: dict[str, Any] | None) -> list[Section]:
    sections = [data_section(cfg, stages)]
    if results.get("pairs"):
        sections.append(answers_section(cfg, results))
    if curve is not None:
        sections.append(curve_section(cfg, curve, results))
    if diagnostics is not None:
        sections.append(diagnostics_section(diagnostics))
    if cfg.held_out:
        sections.append(diagnosis_section(cfg, results, diagnostics))
    return sections
