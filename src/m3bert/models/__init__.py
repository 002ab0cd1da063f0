"""Models: the M2BERT encoder (+ optional M3BERT enrichment layer) and its registry of named
configs (``encoder``), small output heads (``heads``), and ``hub``: resolving, loading,
identifying and exporting model folders.
"""

from m3bert.models.encoder import (  # noqa: F401
    Encoder,
    EncoderConfig,
    EnrichmentConfig,
    available_models,
    create_model,
    get_model_config,
    register_model_config,
)
