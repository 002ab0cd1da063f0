"""Training: pre-training loop, LR schedules, checkpoints, batching of feature-store chunks."""

from m3bert.train.checkpoint import load_checkpoint, read_state, save_checkpoint  # noqa: F401
from m3bert.train.schedule import ScheduleConfig, lr_at, register_schedule, set_lr  # noqa: F401
