"""Downstream tasks: the registry (with the MARBLE taxonomy), metrics, real-dataset loaders and the
built-in corpus tasks.

Importing this package registers every task: ``get_task("gtzan-genre")``,
``load_task("gtzan-genre:/data/gtzan")``, and the schemes for the user's own labelled data:
``load_task("folder:/data/mysongs")`` (one sub-folder per class), ``load_task("csv:/data/labels.csv")``
(also ``.jsonl``). Training (``enrich``) and evaluation (``evaluate``) both
read tasks from here; nothing here trains or embeds.
"""

from m3bert.tasks import builtin as _builtin  # noqa: F401  (registers the builtin-* tasks)
from m3bert.tasks import datasets as _datasets  # noqa: F401  (registers the real-dataset tasks and schemes)
from m3bert.tasks.registry import (  # noqa: F401  (each loader module imports the registry it fills)
    DEFAULT_METRICS,
    LABEL_TYPES,
    SPLIT_SOURCES,
    SPLITS,
    TAXONOMY,
    USER_TAXONOMY,
    Clip,
    Task,
    TaskData,
    available_task_schemes,
    available_tasks,
    get_task,
    load_task,
    parse_task_spec,
    register_task,
    register_task_scheme,
    task_for_data,
)
