"""One rule for the name registries of objectives, task kinds and evaluations: a class registers
under its ``name``; a missing name or a second class under the same name is an error."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)


def register_in(registry: dict[str, T], cls: T, what: str) -> T:
    """Add ``cls`` to ``registry`` under ``cls.name`` (``what`` names the kind in errors)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in registry and registry[cls.name] is not cls:
        raise ValueError(f"{what} '{cls.name}' registered twice")
    registry[cls.name] = cls
    return cls
