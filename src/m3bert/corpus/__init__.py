"""The built-in labelled corpus: real compositions from music21's corpus, rendered to audio.

``build_corpus(preset, out)`` builds it; ``m3bert corpus build|info`` is the command line; the
tasks ``builtin-*`` (registered in :mod:`m3bert.corpus.tasks`) read it.
"""

from __future__ import annotations

from m3bert.corpus.builtin import PRESETS, CorpusPreset, build_corpus, corpus_info, plan_corpus, read_metadata

__all__ = ["PRESETS", "CorpusPreset", "build_corpus", "corpus_info", "plan_corpus", "read_metadata"]
