"""What every trainer shares: the optimiser config, LR schedules, atomic checkpoints, the run
directory and its metrics log, and multi-objective loss weighting. Pre-training (``pretrain``)
and multi-task enrichment (``enrich``) both build on this layer; it knows nothing of either.
"""

from m3bert.train.checkpoint import load_checkpoint, read_state, save_checkpoint  # noqa: F401
from m3bert.train.optim import OptimConfig, make_adam  # noqa: F401
from m3bert.train.run import MetricsLog, init_run_dir  # noqa: F401
from m3bert.train.schedule import ScheduleConfig, lr_at, register_schedule, set_lr  # noqa: F401
