"""Exception hierarchy. Every error says what was received and what was expected."""


class M3bertError(Exception):
    """Base class of every error raised on purpose by m3bert."""


class AudioError(M3bertError):
    """An audio file or waveform cannot be used (unreadable, empty, non-finite, too short)."""


class ConfigError(M3bertError):
    """A configuration value or key is invalid."""


class DataError(M3bertError):
    """A dataset, metadata row, label or feature store is malformed or inconsistent."""


class JSONFileError(DataError, ValueError):
    """A JSON file the package wrote (or expects) is malformed: torn, truncated or hand-edited."""


class CheckpointError(M3bertError):
    """A checkpoint or model directory is missing, corrupt or does not match what is expected."""


class TrainingError(M3bertError):
    """Training cannot go on: the loss or the gradients became non-finite (the run diverged)."""
