"""Objectives. Importing this package registers every objective module listed here.

To add an objective: write ``pretrain/objectives/NAME.py`` with a class decorated by ``@register``
(see ``base.py``: it declares its ``card_note``, the ``streams`` it reads and its
``predicted_fraction``), add the module to ``_MODULES`` and its configs to ``configs/pretrain/``.
``multiview.py`` is not an objective: it is the toolkit of the two-view objectives (``amber``,
``hi_mvp``, ``al_mvp``).
"""

import importlib

from pretrain.objectives.base import (  # noqa: F401
    Objective, ObjectiveContext, VocabInfo, build_objective, get_objective, register, registered,
)

_MODULES = ["mlm", "ntp", "amber", "hi_mvp", "al_mvp", "clower", "ernie_gram", "meap"]

for _m in _MODULES:
    importlib.import_module(f"pretrain.objectives.{_m}")
