"""Typed YAML configs with dotted command-line overrides, shared by every stage.

A stage declares its config as (nested) dataclasses. ``load_config`` reads a YAML file, applies
``key.sub=value`` overrides, checks every key and type, and returns the dataclass. An unknown or
mistyped key raises :class:`ConfigError` naming the key, the file and the valid keys, so a typo
never silently falls back to a default. ``save_config`` writes the resolved config (what the run
really used) next to the run's outputs.

YAML files may ``include: other.yaml`` (path relative to the including file) to start from a base
config; keys in the including file win.

Keys named ``run`` or ``name`` (at any level: ``run``, ``name``, ``tasks[i].name``,
``sources[i].name``) become folder or file names, so they must be one path component
(``pipeline.runs.check_name``: ``[A-Za-z0-9._-]+``, not ``.``/``..``); ``name`` may be empty or
null (its default). Anything else is refused at load with one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from pipeline.errors import UserError
from pipeline.runs import check_name

T = TypeVar("T")
NAME_KEYS = ("run", "name")  # keys that become one path component (see the module docstring)


class ConfigError(UserError):
    """A config file or override that does not match the stage's dataclass."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return _coerce(value, arm, key, source)
            except ConfigError as e:  # try the next arm of the union
                errors.append(str(e))
        raise ConfigError(f"{source}: key '{key}' has value {value!r}, expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: key '{key}' must be null, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in get_args(tp)):
            # YAML 1.1 reads a bare no/yes/off/on as a boolean; map it back to the option's word
            for word in (("no", "false", "off") if not value else ("yes", "true", "on")):
                if word in get_args(tp):
                    return word
        if value in get_args(tp):
            return value
        raise ConfigError(
            f"{source}: key '{key}' has value {value!r}; valid values: {', '.join(map(repr, get_args(tp)))}"
        )
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, source, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: key '{key}' must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        arm = args[0] if args else Any
        items = [_coerce(v, arm, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        kt, vt = (get_args(tp) or (Any, Any))
        return {_coerce(k, kt, f"{key}", source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{source}: key '{key}' has value {value!r}, expected {_type_name(tp)}")


def _build(cls: type[T], data: dict, source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields))
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'. Valid keys{' under ' + prefix[:-1] if prefix else ''}: {valid}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    for k in NAME_KEYS:
        if k in kwargs and (kwargs[k] not in ("", None) or k == "run"):
            try:
                check_name(kwargs[k], f"key '{prefix}{k}':")
            except UserError as e:
                raise ConfigError(f"{source}: {e}") from None
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ConfigError(f"{source}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return obj


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    inc = data.pop("include", None)
    if inc:
        base = _read_yaml((path.parent / inc), seen + (path.resolve(),))
        data = deep_merge(base, data)
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``model.hidden_size=256`` -> (["model", "hidden_size"], 256). Values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value")
    key, _, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``path`` (optional) into ``cls``, apply dotted overrides, validate everything."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        data = _read_yaml(Path(path))
        source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (+ command-line overrides)"
    return _build(cls, data, source)


def config_to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config atomically (tmp file + rename)."""
    from pipeline.runs import atomic_write_text

    atomic_write_text(path, dump_config(cfg))
