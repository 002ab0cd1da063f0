"""Benchmarking frozen representations: clips -> features -> probes -> metrics -> report.

``representations`` (models, embeddings folders, HEAR modules) and ``baselines`` turn a task's
clips into vectors, ``cache`` keeps them on disk, ``probe_grid`` trains a protocol's probes at once
and ``probes`` holds the protocols and one probe run, ``runner.run_benchmark`` ties them together
over tasks and seeds, and ``report`` writes results.json, report.md and report.html.
"""
from m3bert.evaluate import rhythm as _rhythm  # noqa: F401  (registers the "tempogram-stats" baseline)
from m3bert.evaluate import wu_protocol as _wu_protocol  # noqa: F401  (registers the "wu" and "wu-linear" probe protocols)
