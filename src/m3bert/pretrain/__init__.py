"""Self-supervised pre-training of an encoder on a feature store.

``masking`` (CFM, CCM, patch masking as pure seeded functions), ``objectives`` (the registry of
pre-training objectives: masked reconstruction with a Huber loss; MERT's masked prediction of
k-means targets + CQT reconstruction), ``targets`` (k-means targets per store frame: fit, assign,
read), ``worker_targets`` (Wu et al.'s float worker features beside a wave16k store), ``workers`` (the
workers objective, the two-phase re-weighted run, Figure 4), ``mixup`` (in-batch noise mixup), ``data`` (deterministic batches of store chunks and their
targets) and ``loop`` (the training loop with exact resume and DDP). Builds on
``train`` (optimiser, schedule, checkpoints, run directory); never imports ``enrich``.
"""

from m3bert.pretrain import workers as _workers  # noqa: F401  (registers the "workers" objective and targets kind)
