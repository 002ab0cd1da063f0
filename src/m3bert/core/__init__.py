"""The bottom layer: errors, atomic file IO, config dataclasses with dotted overrides, registries.

Nothing here knows about audio, models or tasks; every other package may import it.
"""
