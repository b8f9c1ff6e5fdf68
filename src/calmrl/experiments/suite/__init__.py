"""``calmrl bench --suite``: every suite dataset x missingness setting x method x seed.

Settings (simulated on the training split, on top of each dataset's natural gaps; validation
and test keep their natural gaps):

- ``mcar 0.3`` / ``mcar 0.5`` / ``mcar 0.7``: each observed training cell hidden with that
  probability, at least 2 modalities kept per instance;
- ``paired``: each instance keeps one pair ``{hub, m}`` (the dataset's hub modality and one
  other), 10% keep everything (the paper's V-T + A-T setting);
- ``never-complete``: the same pairs with no complete instance at all;
- ``absorb``: the paper's recipe. Pretrain with ``oracle`` on half of the training split with
  no simulated gaps; fit the calibrator on its embeddings by EM (``calibrate_checkpoint``);
  continue on the other half at MCAR 0.5 from that checkpoint, at a quarter of the learning
  rate, with no warm-up.

Variants: ``calmrl`` (the default, ``method.gate=auto``: imputed columns weighted by the
informativeness gate, or at weight 1 when continuing from a complete-data fit, as in ``absorb``;
``method.guard=validation``: where imputed columns took part, the observed-only path is trained
too and the run with the higher validation R@1 is kept),
``calmrl-ungated`` (``method.gate=none``, ``method.guard=none``: imputed columns at weight 1, as published),
``calmrl-gated`` (``method.gate=identification``: the gate in every setting, absorb included),
``calmrl-mlp`` / ``calmrl-mvae`` / ``calmrl-mopoe`` (``calibrator.backend=...``: the
nonlinear completion backends, gated),
``pmrl-drop`` (observed columns only), ``pmrl-truefill`` (hidden cells filled with the true
embeddings of their inputs, detached: the upper bound of any imputation) and ``oracle``
(no simulated gaps; once per dataset and seed).

The one hyperparameter rule, the same for every objective: per dataset and objective family
(PMRL: calmrl, pmrl-drop and the extra variants; pairwise-infonce; anchor-infonce), the
learning rate is chosen from ``lrs`` by the mean validation R@1 of the family's main variants
at MCAR 0.5, seed 0; the InfoNCE temperatures are learned (pairwise) or the bundled tau2
(anchor); everything else is the bundled default with ``epochs`` epochs. In ``absorb`` each
family pretrains with its own objective (PMRL as ``oracle``, then calibrated). ``auto`` (the
default method) is composed per seed from its candidates' records: the candidate with the
highest validation R@1. The test split is never looked at for a choice.

Every run's record is written atomically to ``records/<dataset>/<setting>/<variant>/seed<k>.json``
before the next starts; a rerun skips the runs already recorded, so an interrupted suite
resumes. A run's checkpoints are deleted once its record is written (the absorb pretraining's
are kept for the variants that continue from it). Runs go to ``jobs`` worker processes of one intra-op thread each.
"""

from .plan import (AUTO_CANDIDATES, AUTO_PLAIN, SETTINGS, SUITE_FULL, SUITE_QUICK, VARIANTS, family)
from .report import cell_stats, derive_auto, write_suite_report
from .run import run_suite

__all__ = ["SUITE_FULL", "SUITE_QUICK", "run_suite", "write_suite_report", "SETTINGS", "VARIANTS", "AUTO_CANDIDATES",
           "AUTO_PLAIN", "family", "cell_stats", "derive_auto"]
