"""The base of the stages' schema modules: one JSON file as one dataclass.

Every file one stage writes and another reads (docs/contracts.md "Schemas") is a dataclass that
derives from :class:`Record` in the producing stage's ``schema.py`` (``corpora/schema.py``,
``tokenization/schema.py``, ``finetune/schema.py``; the export meta is ``pretrain.exports.ExportMeta``).

Rules, the same for every schema:

* ``load(path)`` takes the file or the folder holding it (``FILE``) and checks every declared field
  against its annotation (``int`` refuses ``True``, ``float`` accepts ``int``, ``Optional[X]``
  accepts ``null``, ``dict``/``list`` only check the container). A missing required field (one
  without a default), a wrong type, invalid JSON or a non-object gives one
  :class:`~pipeline.errors.UserError` line naming the file.
* Unknown keys are **kept** in ``extra`` and written back by ``save()``: a newer producer's file
  still loads in an older consumer and round-trips unchanged; consumers never read ``extra`` for a
  key the schema declares. A schema with ``OMIT_NONE`` (vocabulary stats, whose optional fields
  are kind-specific) leaves optional fields that are ``None`` out of the written object; absent
  and ``null`` load the same.
* ``save(folder)`` validates the same way (a producer cannot write a file its consumers would
  refuse) and writes atomically (``pipeline.runs.atomic_write_json``), key order = field order.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from pipeline.errors import UserError

_SKIP = ("extra", "path")


def _check_type(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is not None:
        tp = origin
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


class Record:
    """Mixin for ``@dataclass`` schemas with the fields ``extra: dict`` and ``path: Optional[Path]``
    last. Subclasses set ``FILE`` and may override :meth:`check` for nested rules."""

    FILE: ClassVar[str] = ""
    OMIT_NONE: ClassVar[bool] = False  # leave optional fields that are None out of the written object

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in _SKIP]

    @classmethod
    def _hints(cls) -> dict:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None):
        source = source or cls.FILE
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, found {type(data).__name__}")
        hints = cls._hints()
        known: dict = {}
        for f in dataclasses.fields(cls):
            if f.name in _SKIP:
                continue
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise UserError(f"{source}: missing field '{f.name}' ({cls.__name__})")
                continue
            v = data[f.name]
            if not _check_type(v, hints[f.name]):
                raise UserError(f"{source}: field '{f.name}' has value {str(v)[:60]!r} of type "
                                f"{type(v).__name__}, expected {getattr(hints[f.name], '__name__', hints[f.name])}")
            known[f.name] = v
        extra = {k: v for k, v in data.items() if k not in known}
        obj = cls(**known, extra=extra)
        problem = obj.check()
        if problem:
            raise UserError(f"{source}: {problem}")
        return obj

    def check(self) -> str | None:
        """Nested rules beyond the field types; returns the problem (one line) or None."""
        return None

    def to_dict(self) -> dict:
        """The JSON object: declared fields in order, then ``extra``. With ``OMIT_NONE`` an optional
        field left at its default ``None`` is omitted (kind-specific keys of a vocabulary)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in _SKIP and not (self.OMIT_NONE and f.default is None and getattr(self, f.name) is None)}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def file_of(cls, where: str | Path) -> Path:
        p = Path(where)
        return p / cls.FILE if p.is_dir() else p

    @classmethod
    def load(cls, where: str | Path):
        """Read ``where`` (the file, or a folder holding ``FILE``); one UserError line on a bad file."""
        p = cls.file_of(where)
        if not p.is_file():
            raise UserError(f"{p}: not found ({cls.__name__})")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise UserError(f"{p}: not UTF-8 text") from None
        obj = cls.from_dict(data, str(p))
        obj.path = p
        return obj

    @classmethod
    def load_if_present(cls, where: str | Path | None):
        """:meth:`load`, or None where the file does not exist (a bad file still raises)."""
        if where is None or not cls.file_of(where).is_file():
            return None
        return cls.load(where)

    def save(self, folder: str | Path, name: Optional[str] = None) -> Path:
        """Validate and write ``folder/FILE`` (or ``folder/name``) atomically; returns the path."""
        from pipeline.runs import atomic_write_json

        p = Path(folder) / (name or self.FILE)
        type(self).from_dict(self.to_dict(), f"{p} (being written)")
        atomic_write_json(p, self.to_dict())
        return p

    def get(self, key: str, default: Any = None) -> Any:
        """A field or extra key by name (``None`` values count as missing)."""
        v = getattr(self, key) if key in self.fields() else self.extra.get(key)
        return default if v is None else v
