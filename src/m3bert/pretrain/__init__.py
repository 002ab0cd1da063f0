"""Self-supervised pre-training of an encoder on a feature store.

``masking`` (CFM, CCM, patch masking as pure seeded functions), ``objectives`` (the registry of
pre-training objectives: masked reconstruction with a Huber loss; MERT's masked prediction of
k-means targets + CQT reconstruction), ``targets`` (k-means targets per store frame: fit, assign,
read), ``mixup`` (in-batch noise mixup), ``data`` (deterministic batches of store chunks and their
targets) and ``loop`` (the training loop with exact resume and DDP). Builds on
``train`` (optimiser, schedule, checkpoints, run directory); never imports ``enrich``.
"""
