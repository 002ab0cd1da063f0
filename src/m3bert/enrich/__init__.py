"""M3BERT enrichment (Greer et al. 2023): one pre-trained encoder, several labelled tasks at once.

The stage behind ``m3bert enrich`` (alias ``m3bert finetune``). The pre-trained M2BERT encoder
gets a shared, time-distributed dense *enrichment* layer whose output is the M3BERT
representation, and one head per task on its time average; every sample carries the labels of
only some tasks, batches mix datasets, and the per-task losses are balanced by a loss weighting.
The representation trained on is, by construction, what the exported model gives at inference.

Modules, bottom to top:

* :mod:`~m3bert.enrich.sampling` — task sampling (``proportional`` / ``uniform`` / ``temperature:T``), pure;
* :mod:`~m3bert.enrich.heads` — task descriptions, heads, per-task losses with partial labels, ``heads.json``;
* :mod:`~m3bert.enrich.config` — :class:`EnrichConfig` and :func:`load_config`;
* :mod:`~m3bert.enrich.samples` — task data -> partial-label samples -> cached inputs -> batches;
* :mod:`~m3bert.enrich.factors` — label factors of learning sources: one-hot, pLSA (KL-NMF), GMM (Kim et al. 2020);
* :mod:`~m3bert.enrich.multisource` — Kim et al.'s multi-source CNN training: data, strategies, Algorithm 1 preset;
* :mod:`~m3bert.enrich.model` — encoder + enrichment + heads, optimiser groups, losses of a batch;
* :mod:`~m3bert.enrich.scores` — evaluation of a split: per-task losses and metrics, the aggregate;
* :mod:`~m3bert.enrich.loop` — checkpoints, the run directory, :func:`train_enrich`;
* :mod:`~m3bert.enrich.grid` — the paper's Table 4 grid and :func:`run_enrich` (one run or a grid).

The loss weighting family (``equal`` / ``reweight`` / ``uncertainty``) is shared with other
trainers in :mod:`m3bert.train.weighting`.
"""

from m3bert.enrich.config import SCENARIOS, EnrichConfig, MultiSourceConfig, load_config  # noqa: F401
from m3bert.enrich.factors import Factorizer, fit_factorizer, nmf_to_plsa  # noqa: F401
from m3bert.enrich.grid import GRIDS, grid_points, run_enrich  # noqa: F401
from m3bert.enrich.heads import (  # noqa: F401
    HeadConfig,
    MultiTaskHeads,
    TaskInfo,
    load_heads,
    save_heads,
)
from m3bert.enrich.loop import (  # noqa: F401
    TrainerState,
    aggregate_score,
    evaluate,
    train_enrich,
)
from m3bert.enrich.model import batch_losses, build_modules, make_optimizer, represent  # noqa: F401
from m3bert.enrich.multisource import KIM_PRESET, load_multisource_config, prepare_multisource_data  # noqa: F401
from m3bert.enrich.samples import Batch, PreparedData, Sample, collate, prepare_data  # noqa: F401
from m3bert.enrich.sampling import epoch_batches, epoch_draws, label_shares, parse_sampling, sampling_probs  # noqa: F401
