"""Embeddings for any audio: the :class:`Embedder` (``embedder``) and the embeddings folder format.

``load_model(spec)`` turns a model directory, a run directory, a checkpoint directory or
``random:CONFIG[:SEED]`` into an :class:`Embedder`; see :mod:`m3bert.embed.embedder`.
"""

from m3bert.embed.embedder import (  # noqa: F401
    DTYPES,
    LEVELS,
    Embedder,
    EmbedResult,
    Failed,
    Prepared,
    load_model,
    parse_layers,
)
from m3bert.windows import POOLS, pool_frames, window_owners, window_starts  # noqa: F401
