"""Feature sets: named, configured waveform -> frames transforms, and the feature store.

``get_feature_set("m3bert324", **config)`` builds a registered feature set; see ``base.FeatureSet``
for the interface, ``m3bert324.py`` for the paper's 324-d set, ``store.py`` for the on-disk store.
"""

from __future__ import annotations

from m3bert.features import descriptors as _descriptors  # noqa: F401  (registers "descriptors")
from m3bert.features import kim_mel as _kim_mel  # noqa: F401  (registers "kim_mel")
from m3bert.features import m3bert324 as _m3bert324  # noqa: F401  (registers "m3bert324")
from m3bert.features import waveform as _waveform  # noqa: F401  (registers "wave16k")
from m3bert.features import wu as _wu  # noqa: F401  (registers "wu_lps", "wu_mfcc", "wu_chroma", "wu_tempogram", "wu_prosody")
from m3bert.features.base import CMVN_MODES, FeatureSet, register_backend
from m3bert.features.m3bert324 import M3bert324, M3bert324Config
from m3bert.features.spec import (
    ChannelGroup,
    FeatureSpec,
    available_feature_sets,
    feature_set_from_dict,
    get_feature_set,
    register_feature_set,
)

__all__ = [
    "CMVN_MODES",
    "ChannelGroup",
    "FeatureSet",
    "FeatureSpec",
    "M3bert324",
    "M3bert324Config",
    "available_feature_sets",
    "feature_set_from_dict",
    "get_feature_set",
    "register_backend",
    "register_feature_set",
]
