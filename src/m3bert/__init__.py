"""m3bert: music representations from masked reconstruction and multi-task enrichment.

Public API::

    import m3bert
    model = m3bert.load_model("RUN_OR_MODEL_DIR")      # or "random:m2bert-small"
    emb = model.embed("song.mp3")                      # clip-level vector
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "hear"]


def load_model(path_or_name, **kwargs):
    """Load an embedding model from a model directory, a run directory or ``random:CONFIG``."""
    from m3bert.embed import load_model as _load

    return _load(path_or_name, **kwargs)


def __getattr__(name):
    if name == "hear":
        import importlib

        return importlib.import_module("m3bert.hear")
    raise AttributeError(f"module 'm3bert' has no attribute {name!r}")
