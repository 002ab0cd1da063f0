"""Loaders for real MIR datasets; importing this package registers their tasks.

One module per dataset; each reads the user's local copy (``name:/path`` on the command line),
never downloads, and registers its task(s) in :mod:`m3bert.tasks.registry`. Shared rules (the
paper's 3/1/1 split by song, audio checks, 30 s chunking) live in
:mod:`m3bert.tasks.datasets._common`.

Loader options common to every task: ``skip_missing`` (record missing/empty audio in
``TaskData.skipped`` instead of raising). Loaders that read audio paths from a label file also
take ``allow_outside_root`` (default False: a path leaving the dataset root is an error). Tasks
whose split is random also take ``seed`` and list it in ``Task.options``, and mark their data
``TaskData.split_source = "random"`` when no predefined split exists (the Kim protocol then
draws its own random splits).

``folder:PATH`` and ``csv:FILE`` (:mod:`m3bert.tasks.datasets.user`) turn the user's own labelled
audio into a task without a loader.
"""

from m3bert.tasks.datasets import (
    ballroom,  # noqa: F401  ballroom-ext, ballroom-ext9
    deam,  # noqa: F401  deam-va
    emomusic,  # noqa: F401  emomusic-va
    fma,  # noqa: F401  fma-small-genre, fma-medium-genre
    giantsteps,  # noqa: F401  giantsteps-key
    gtzan,  # noqa: F401  gtzan-genre
    irmas,  # noqa: F401  irmas-instrument
    mtg_jamendo,  # noqa: F401  mtg-moodtheme, mtg-genre, mtg-instrument, mtg-top50
    mtt,  # noqa: F401  mtt-top50
    nsynth,  # noqa: F401  nsynth-family, nsynth-pitch
    openmic,  # noqa: F401  openmic-instrument
    rwc,  # noqa: F401  rwc-instrument
    taste_profile,  # noqa: F401  taste-profile (MSD listening data: cold-start recommendation)
    user,  # noqa: F401  the folder:PATH and csv:FILE schemes (the user's own labelled data)
    vocalset,  # noqa: F401  vocalset-technique, vocalset-singer
)
