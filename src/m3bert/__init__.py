"""m3bert: music representations from masked reconstruction and multi-task enrichment.

Public API::

    import m3bert
    model = m3bert.load_model("RUN_OR_MODEL_DIR")      # or "random:m2bert-small"
    emb = model.embed("song.mp3")                      # clip-level vector

The root package is a facade, not a layer: ``import m3bert`` stays light (no torch, no librosa)
and resolves ``load_model`` / ``hear`` on first use (PEP 562), so ``m3bert --version`` and
tools that only read the version do not pay for the whole stack.
"""

import importlib

from m3bert.core.version import __version__

__all__ = ["__version__", "load_model", "hear"]


def __getattr__(name):
    if name == "load_model":
        return importlib.import_module("m3bert.embed").load_model
    if name == "hear":
        return importlib.import_module("m3bert.hear")
    raise AttributeError(f"module 'm3bert' has no attribute {name!r}")
