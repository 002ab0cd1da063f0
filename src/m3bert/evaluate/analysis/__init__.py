"""Interpretability: which interpretable audio descriptors a model's units encode (``m3bert analyze``).

The paper's correlational analysis (Greer et al. 2023, Figs. 5-6), made measurable: for every
layer x unit x descriptor (``m3bert.features.descriptors``) Pearson's r over frames from streaming
float64 sums, a Fisher-z bound corrected for the number of units tested, Spearman's rho on a seeded
reservoir sample, a linear-probe R^2 per layer and descriptor, the same for a random-init twin
of the model ("encoded" = more than a random network), a t-SNE map of clip embeddings, and a
report. Modules: ``stats`` (pure numbers), ``source`` (items and hidden states), ``run`` (the
resumable pass and ``analysis.json``), ``plots``, ``report``.

    from m3bert.evaluate.analysis import analyze
    res = analyze("runs/m3bert", ["builtin-dance:CORPUS"], "out/analysis")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from m3bert.embed import load_model
from m3bert.evaluate.analysis.report import PAPER, PAPER_RHO, analysis_sections, demo_rho_rows, sentence, verdict
from m3bert.evaluate.analysis.run import AnalysisConfig, run_analysis
from m3bert.evaluate.analysis.source import EmbedderSource, Item, random_twin, resolve_items, subset
from m3bert.features.memo import FeatureMemo

__all__ = [
    "PAPER",
    "PAPER_RHO",
    "AnalysisConfig",
    "EmbedderSource",
    "Item",
    "analysis_sections",
    "analyze",
    "demo_rho_rows",
    "random_twin",
    "resolve_items",
    "run_analysis",
    "sentence",
    "verdict",
]


def analyze(model: str, inputs: Sequence[str], out: str | Path, *, config: AnalysisConfig | None = None,
            device: str = "cpu", progress: bool = True, say: Callable[[str], None] | None = None,
            descriptor_cache: dict[Any, Any] | None = None, restart: bool = False) -> dict[str, Any]:
    """``m3bert analyze MODEL AUDIO_OR_TASK --out DIR``: load the model (any spec ``load_model``
    takes), resolve the inputs (audio files/folders, or one task spec and ``config.split``), build the
    random twin unless ``config.baseline == "none"`` and run the analysis into ``out``."""
    cfg = config or AnalysisConfig()
    items, task_info = resolve_items(list(inputs), split=cfg.split)
    items = subset(items, cfg.max_items, seed=cfg.seed)
    memo = FeatureMemo(max_bytes=128 << 20)  # the twin reads the same input features: computed once
    embedder = load_model(model, device=device, feature_memo=memo)
    sources = [EmbedderSource(embedder, name="model", spec=str(model), batch_size=cfg.batch_size)]
    if cfg.baseline == "random":
        twin = random_twin(embedder, seed=cfg.baseline_seed, memo=memo)
        sources.append(EmbedderSource(twin, name="random", spec=f"random init of {model} (seed {cfg.baseline_seed})",
                                      batch_size=cfg.batch_size))
    return run_analysis(sources, items, out, config=cfg, task_info=task_info, progress=progress, say=say,
                        descriptor_cache=descriptor_cache, restart=restart)
