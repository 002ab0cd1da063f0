"""Models: the architecture registry and the model folder (``base``), the M2BERT encoder
(+ optional M3BERT enrichment layer, ``encoder``), Kim et al.'s multi-source CNN (``kim``), small
output heads (``heads``), and ``hub``: resolving, loading, identifying and exporting model folders.
Importing the package registers every architecture and named config.
"""

from m3bert.models import kim as _kim  # noqa: F401  (registers "kim-cnn" and its named configs)
from m3bert.models import pase as _pase  # noqa: F401  (registers "pase", "pase+" and their named configs)
from m3bert.models.base import ARCHITECTURES, ModelBase, load_model_dir  # noqa: F401
from m3bert.models.encoder import (  # noqa: F401
    Encoder,
    EncoderConfig,
    EnrichmentConfig,
    available_models,
    create_model,
    get_model_config,
    register_model_config,
)
from m3bert.models.kim import STRATEGIES, KimConfig, KimEncoder  # noqa: F401
