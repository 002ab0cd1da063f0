"""Loaders for real MIR datasets; importing this package registers their tasks.

One module per dataset; each reads the user's local copy (``name:/path`` on the command line),
never downloads, and registers its task(s) in :mod:`m3bert.bench.tasks`. Shared rules (split by
song, audio checks, chunking) live in :mod:`m3bert.bench.datasets._common`.
"""

from m3bert.bench.datasets import ballroom, deam, emomusic, fma, giantsteps, gtzan, irmas, mtg_jamendo, mtt, nsynth, openmic, rwc, vocalset  # noqa: F401
