"""The demo's report: its extra sections (what the demo shows, pre-training data and loss, the
answers with paired CIs, learning curve, trivial predictors (:mod:`m3bert.app.demo_evidence`),
M2BERT vs M3BERT, interpretability, masking ablation) and the one-screen terminal summary. ``cfg``
is the demo's :class:`~m3bert.app.demo.DemoConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from m3bert.app.demo_evidence import answer_counts, curve_points, evidence_sections, score_in
from m3bert.core.io import read_json
from m3bert.evaluate.analysis import PAPER_RHO, demo_rho_rows
from m3bert.evaluate.report import Figure, Section, Table, figure_png

MASKING_POLICIES = ("cfm", "ccm", "pm", "cfm+ccm")  # the paper's Table 5 rows
# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def score_of(results: dict[str, Any], rep: str, task: str, setting: str | None = None) -> dict[str, Any] | None:
    """The task-score summary of ``rep`` on ``task`` (in ``setting``; None = the first row found)."""
    return score_in(results, rep, task, setting)


def _within_noise(results: dict[str, Any], task: str, a: str, b: str, setting: str | None = None) -> bool | None:
    """Whether reps ``a`` and ``b`` are within noise on ``task``: overlapping 95 % CIs."""
    sa, sb = score_of(results, a, task, setting), score_of(results, b, task, setting)
    if not sa or not sb or sa.get("half_width") is None or sb.get("half_width") is None:
        return None
    return bool(sa["ci_high"] >= sb["ci_low"] and sb["ci_high"] >= sa["ci_low"])


def _fmt(s: dict[str, Any] | None) -> str:
    if not s:
        return "n/a"
    hw = s.get("half_width")
    return f"{s['mean']:.3f}" + (f" ± {hw:.3f}" if hw is not None else "")


def m2_vs_m3_rows(cfg: Any, results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    setting = cfg.headline_setting
    for t in cfg.bench_tasks:
        task = f"builtin-{t}"
        m2, m3 = score_of(results, "M2BERT", task, setting), score_of(results, "M3BERT", task, setting)
        if not m2 or not m3:
            continue
        noise = _within_noise(results, task, "M2BERT", "M3BERT", setting)
        verdict = "within noise" if noise else ("M3BERT better" if m3["mean"] > m2["mean"] else "M2BERT better")
        if noise is None:
            verdict = "n/a (one seed)"
        rows.append([task, "enrichment" if t in cfg.enrich_tasks else "held out", _fmt(m2), _fmt(m3),
                     round(m3["mean"] - m2["mean"], 4), verdict])
    return rows


def _loss_curve_png(run: Path) -> bytes | None:

    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    train, val = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("step")
        for key, value in row.items():
            if step is None or not isinstance(value, (int, float)):
                continue
            if key in ("loss", "train/loss"):
                train.append((step, value))
            elif key.startswith("val/") and key.endswith("loss"):
                val.append((step, key, value))
    if not train:
        return None
    import matplotlib  # heavy import (~1 s), only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy import (~1 s), only when a figure is drawn

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot([s for s, _ in train], [v for _, v in train], label="train (masked cells)", lw=1.2)
    for key in sorted({k for _, k, _ in val}):
        pts = [(s, v) for s, k, v in val if k == key]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("Huber loss")
    ax.set_title("M2BERT pre-training")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def report_sections(cfg: Any, out: Path, results: dict[str, Any], stages: dict[str, dict[str, Any]],
                    *, ablation: dict[str, Any] | None = None, curve: dict[str, Any] | None = None,
                    diagnostics: dict[str, Any] | None = None) -> list[Any]:

    corpus = stages.get("corpus", {}).get("summary", {})
    renderer = corpus.get("renderer") or corpus.get("renderer_name") or cfg.renderer
    pre = stages.get("pretrain", {}).get("summary", {})
    data = {"real": "real recorded music (game soundtracks from Debian packages)",
            "real+builtin": "real recorded music and the built-in corpus",
            "builtin": "the built-in corpus"}[pre.get("data", "builtin")]
    split = ("grouped k-fold cross-validation by piece ({} folds, every clip tested once per seed)".format(cfg.n_folds)
             if cfg.split == "kfold" else
             "grouped k-fold cross-validation by piece ({} folds) on the held-out tasks and the corpus's train / "
             "valid / test split on the enrichment tasks".format(cfg.n_folds)
             if cfg.split == "heldout-kfold" else "the corpus's train / valid / test split")
    sections = [Section(
        title="What this demo shows",
        text=(
            "Every number here was produced by `m3bert demo` on this machine; none is typed by hand.\n\n"
            f"Probing audio is the built-in corpus (preset `{cfg.corpus_preset}`): real compositions from music21's "
            "corpus (O'Neill's and Ryan's dance tunes, Essen folksongs, Bach chorales) and single notes, rendered "
            f"as synthetic performances (renderer: {renderer}). Labels come from the scores and the render "
            "settings, never from a person's judgement, and the sound is far cleaner and more uniform than "
            "recorded music, so these numbers say whether the pipeline learns, not how M3BERT fares on real "
            "music (the README has the recipes for that).\n\n"
            f"Compute is tiny: a `{cfg.model}` encoder pre-trained on {data} for {cfg.pretrain_steps} steps on "
            f"{cfg.pretrain_frames}-frame crops, against the paper's 200k steps of M3BERT-Small on 4,283 hours. "
            f"Multi-task enrichment used the tasks {', '.join(cfg.enrich_tasks)}; the tasks "
            f"{', '.join(cfg.held_out) or '(none)'} were held out of enrichment. Probes: protocol "
            f"`{cfg.protocol}`, every representation (encoders and baselines alike) in the settings "
            f"{', '.join(f'`{s}`' for s in cfg.settings)} (headline: `{cfg.headline_setting}`), "
            + (f"{cfg.bench_seeds} seeds, {split}; mean ± 95 % CI over seeds. The seed CIs see the probe's noise "
               "only; the test set's is in the minimum detectable differences and the paired bootstrap CIs."
               if cfg.bench_seeds > 1 else
               f"one probe seed, {split}. With one seed there is no CI over seeds: the test set's noise is in the "
               "minimum detectable differences and the paired bootstrap CIs, which decide the answers.")
        ), lead=True)]
    stage_rows = [[name, round(rec.get("seconds", 0.0), 1),
                   round(rec["cpu_seconds"], 1) if rec.get("cpu_seconds") is not None else "–"] for name, rec in stages.items()]
    sections.append(Section(title="Pipeline stages",
                            text="Wall time and CPU time (this process and its worker processes) of each stage in the "
                                 "run that produced it. On a shared machine the wall time includes the neighbours' "
                                 "load; the CPU time does not.",
                            table=Table(headers=["stage", "wall s", "CPU s"], rows=stage_rows)))
    evidence = evidence_sections(cfg, out, results, stages, curve=curve, diagnostics=diagnostics)
    sections.append(evidence[0])  # the pre-training data
    figs = []
    png = _loss_curve_png(out / "runs" / "m2bert")
    if png:
        figs.append(Figure(caption="Masked-reconstruction loss of the demo's M2BERT pre-training run.", png=png))
    pre_text = ""
    if pre:
        pre_text = (f"Pre-training ran {pre.get('end_step')} steps at {pre.get('frames_per_s', 0):.0f} frames/s; "
                    f"final validation: " + ", ".join(f"{k} {v:.4f}" for k, v in (pre.get('val') or {}).items()))
    sections.append(Section(title="M2BERT pre-training", text=pre_text, figures=figs))
    sections += evidence[1:]
    rows = m2_vs_m3_rows(cfg, results)
    if rows:
        sections.append(Section(
            title="M2BERT vs M3BERT (enrichment tasks and held-out tasks)",
            text=f"Task score (setting `{cfg.headline_setting}`) of the probe on each representation. 'within noise' "
                 "= the 95 % CIs over seeds overlap. Held-out tasks show whether multi-task enrichment generalises "
                 "beyond its own tasks.",
            table=Table(headers=["task", "role", "M2BERT", "M3BERT", "M3 - M2", "verdict"], rows=rows)))
    analyses = load_analyses(out)
    if analyses:
        sections.append(interpretability_section(cfg, out, analyses))
    if ablation is not None:
        sections.append(ablation_section(cfg, ablation))
    return sections


ANALYSED = (("M2BERT", "m2bert"), ("M3BERT", "m3bert"))  # report name, folder under OUT/analysis


def load_analyses(out: Path) -> dict[str, dict[str, Any]]:
    """``OUT/analysis/<model>/analysis.json`` of the analysis stage, by report name (empty if none ran)."""
    found = {}
    for name, folder in ANALYSED:
        path = out / "analysis" / folder / "analysis.json"
        if path.is_file():
            found[name] = read_json(path)
    return found


def interpretability_section(cfg: Any, out: Path, analyses: dict[str, dict[str, Any]]) -> Any:
    """The paper's correlational analysis on the demo models: the rho table and the figures."""
    headers, rows = demo_rho_rows(analyses)
    first = next(iter(analyses.values()))
    task, inp = first["inputs"]["task"], first["inputs"]
    figs = []
    for name, folder in ANALYSED:
        if name not in analyses:
            continue
        for fname, what in (("heatmap_abs_r.png", "best |r| per layer and descriptor (model, random twin, difference)"),
                            ("scatter_best_units.png", "best unit vs spectral centroid and harmonicity (paper Figs. 5-6)")):
            path = out / "analysis" / folder / fname
            if path.is_file():
                figs.append(Figure(caption=f"{name}: {what}.", png=path.read_bytes()))
    path = out / "analysis" / "m3bert" / "heatmap_probe_r2.png"
    if path.is_file():
        figs.append(Figure(caption="M3BERT: linear-probe R^2 per layer and descriptor (held-out clips).", png=path.read_bytes()))
    path = out / "analysis" / "m3bert" / "tsne.png"
    if path.is_file():
        figs.append(Figure(caption=f"M3BERT and its random twin: t-SNE of clip embeddings, coloured by {task['task']}.",
                           png=path.read_bytes()))
    text = (f"`m3bert analyze` of each model over {inp['n_done']} clips of the test split of `{task['task']}` "
            f"({sum(inp['n_frames'].values())} frames; f0 {'included' if cfg.analysis_f0 else 'skipped (pYIN is slow)'}). "
            f"Cells: the best unit's |r| over all layers with its Bonferroni-corrected 95 % lower bound in brackets "
            f"(* = bound > {first['config']['threshold']}: encoded), the best |r| of a random-init twin of the same "
            "architecture (so 'encoded' can be read as 'more than a random network'), and the best linear-probe R^2 "
            f"on held-out clips. The paper reports single units at Pearson's rho = {PAPER_RHO['centroid']} (spectral "
            f"centroid) and {PAPER_RHO['harmonicity']} (harmonicity) for M3BERT-Small after 200k steps on 4,283 hours; "
            f"these models are a `{cfg.model}` trained for minutes on synthetic audio, and M3BERT's encoder layers are "
            "M2BERT's (frozen enrichment), so the two differ only in the enrichment layer. Full reports: "
            "`analysis/m2bert/report.html`, `analysis/m3bert/report.html`.")
    return Section(title="Interpretability: units vs audio descriptors (paper Figs. 5-6)", text=text,
                   table=Table(headers=headers, rows=rows), figures=figs)


def ablation_section(cfg: Any, ablation: dict[str, Any]) -> Any:
    """Paper Table 5 on the built-in corpus: mean task score per masking policy over seeds."""


    tasks = [t["name"] for t in ablation["tasks"]]
    rows = []
    for policy in MASKING_POLICIES:
        row: list[Any] = [policy]
        all_runs = []
        for task in tasks:
            runs = [x["score"] for r in ablation["results"] if r["task"] == task
                    and r["representation"].startswith(f"{policy} (") for x in r["runs"]]
            all_runs.append(runs)
            row.append(f"{np.mean(runs):.3f} ± {np.std(runs):.3f}" if runs else "n/a")
        flat = [v for runs in all_runs for v in runs]
        row.append(round(float(np.mean(flat)), 4) if flat else None)
        rows.append(row)
    return Section(
        title="Masking ablation (paper Table 5, built-in corpus)",
        text=(f"One pre-training run per masking policy and seed ({cfg.ablation_seeds} seeds x {cfg.ablation_steps} "
              f"steps each, same budget), probed on {', '.join(tasks)} with {cfg.bench_seeds} probe seeds. Cells: "
              "mean ± std over pre-training seeds and probe seeds. The paper (MTG-Jamendo, ROC-AUC) found "
              "CFM+CCM > PM > CFM > CCM; with this little compute, differences smaller than the std are noise."),
        table=Table(headers=["masking"] + tasks + ["mean"], rows=rows))


def score_lines(cfg: Any, results: dict[str, Any]) -> list[str]:
    """One row per representation, one column per task: the task score (mean over seeds) in the
    headline setting, so the table fits a terminal (the report has every metric with its CI)."""
    tasks = [t["name"] for t in results["tasks"]]
    head = ["representation"] + [t.replace("builtin-", "") for t in tasks]
    rows = [head]
    for rep in (r["name"] for r in results["representations"]):
        cells = [score_in(results, rep, t, cfg.headline_setting) for t in tasks]
        rows.append([rep] + ["–" if c is None else f"{c['mean']:.3f}" for c in cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = [f"task scores (primary metric, mean over {cfg.bench_seeds} seed(s)), setting {cfg.headline_setting}; "
           "every metric with its CI is in the report:"]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    out.insert(2, "  ".join("-" * w for w in widths))
    return out


def terminal_summary(cfg: Any, results: dict[str, Any], stages: dict[str, dict[str, Any]], total_s: float,
                     out: Path, *, ablation: dict[str, Any] | None = None, curve: dict[str, Any] | None = None,
                     diagnostics: dict[str, Any] | None = None) -> list[str]:

    lines = ["=" * 78, "m3bert demo: summary", "=" * 78]
    lines += score_lines(cfg, results)
    lines.append("")
    pre = stages.get("pretrain", {}).get("summary", {})
    lines.append(f"pre-training data: {pre.get('data', 'builtin')}")
    if results.get("pairs"):
        for setting in [cfg.headline_setting] + [x for x in cfg.settings if x != cfg.headline_setting]:
            lines.append(f"Answers (setting {setting}, held-out tasks that are learned; paired bootstrap CIs):")
            for what, c in answer_counts(cfg, results, setting).items():
                lines.append(f"  {what:<34s} better {c['better']}, worse {c['worse']}, not decided {c['not decided']} "
                             f"(of {c['tasks']})")
    if diagnostics is not None:
        last = diagnostics["checkpoints"][-1]
        cells = [f"{k}: model {last['loss'][k]:.3f} vs nearest frame {diagnostics['predictors']['nearest_frame'][k]:.3f}"
                 for k in diagnostics["combos"] if "nearest_frame" in diagnostics["predictors"]]
        lines.append(f"Masked-cell loss at step {last['step']}: " + "; ".join(cells))
    if curve is not None:
        lines.append("Learning curve (held-out task score by pre-training step):")
        for t in curve["tasks"]:
            pts = curve_points(curve, t["name"])
            lines.append(f"  {t['name']:<20s} " + "  ".join(f"{s}: {v['mean']:.3f}" for s, v in pts))
    lines.append("")
    rows = m2_vs_m3_rows(cfg, results)
    if rows:
        lines.append("M2BERT -> M3BERT per task (role, delta, verdict):")
        for task, role, _m2, _m3, delta, verdict in rows:
            lines.append(f"  {task:<20s} {role:<11s} {delta:+.4f}  {verdict}")
    if ablation is not None:
        sec = ablation_section(cfg, ablation)
        lines.append("")
        lines.append("Masking ablation (mean score over tasks and seeds):")
        for row in sec.table.rows:
            lines.append(f"  {row[0]:<8s} {row[-1]}")
    analyses = load_analyses(out)
    if analyses:
        lines.append("")
        lines.append(f"Interpretability: best |r| of any unit (random twin) vs the paper's rho "
                     f"(centroid {PAPER_RHO['centroid']}, harmonicity {PAPER_RHO['harmonicity']}):")
        for name, res in analyses.items():
            best, twin = res["models"]["model"]["best"], res["models"].get("random", {}).get("best", {})
            cells = []
            for g in ("centroid", "harmonicity"):
                if g in best:
                    r, t = best[g]["abs_r"], (twin.get(g) or {}).get("abs_r")
                    cells.append(f"{g} {r if r is None else round(r, 3)} ({t if t is None else round(t, 3)})")
            lines.append(f"  {name:<7s} " + ", ".join(cells))
    lines.append("")
    timing = ", ".join(f"{k} {v.get('seconds', 0):.0f}s" + (f" ({v['cpu_seconds']:.0f} s CPU)" if v.get("cpu_seconds")
                                                           is not None else "") for k, v in stages.items())
    lines.append(f"total wall time of this invocation: {total_s / 60:.1f} min (stages when run: {timing})")
    lines.append(f"report: {out / 'report.html'}  (+ report.md, report.json)")
    return lines
