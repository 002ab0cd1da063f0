"""The built-in labelled corpus: real compositions from music21's corpus, rendered to audio.

``layout`` owns the on-disk format and label vocabulary, ``plan`` decides what is rendered and how
(seeded), ``render``/``synth`` turn notes into samples, ``build`` runs the resumable parallel build.
``m3bert corpus build|info`` is the command line; the tasks ``builtin-*`` (registered in
:mod:`m3bert.tasks.builtin`) read a built corpus. Needs only ``core`` and ``audio``-level libraries.
"""

from __future__ import annotations

from m3bert.corpus.build import build_corpus
from m3bert.corpus.layout import corpus_info, read_metadata
from m3bert.corpus.plan import PRESETS, CorpusPreset, plan_corpus

__all__ = ["PRESETS", "CorpusPreset", "build_corpus", "corpus_info", "plan_corpus", "read_metadata"]
