"""Objectives. Importing this package registers every objective module listed here."""

import importlib

from pretrain.objectives.base import (  # noqa: F401
    Objective, ObjectiveContext, VocabInfo, build_objective, get_objective, register, registered,
)

# One module per objective; a module that is missing its optional parts fails loudly on import.
_MODULES = ["mlm", "ntp", "amber", "mvp", "clower", "ernie_gram", "meap"]

for _m in _MODULES:
    try:
        importlib.import_module(f"pretrain.objectives.{_m}")
    except ModuleNotFoundError as e:  # an objective file not written yet
        if e.name != f"pretrain.objectives.{_m}":
            raise
