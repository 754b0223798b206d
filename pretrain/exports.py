"""Reading exports: the one loader of export folders and the typed ``pretrain_meta.json``.

``pretrain.export.save_export`` writes an export; everything that *reads* one goes through here:

* :class:`ExportMeta` -- ``pretrain_meta.json`` as a dataclass (``load()`` / ``save()``); the
  fields of ``docs/contracts.md`` are typed attributes, objective-specific keys live in ``extra``.
* :func:`load_export` -- model + tokenizer + special ids + metadata of one folder, for a ``task``
  (``"base"``: ``AutoModel``, ``"masked_lm"``, ``"causal_lm"``), optionally randomly initialised.
* :func:`load_tokenizer` -- a tokenizer folder alone (e.g. one view of a multi-vocabulary export).

Safety (docs/reliability.md "Security"): before anything is loaded, :func:`check_folder` refuses

* pickle-based files (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``, ``*.pickle``): weights
  are read from safetensors only (``use_safetensors=True``), never unpickled;
* code that would run on loading -- ``*.py`` files in the folder and ``auto_map`` entries of
  ``config.json`` / ``tokenizer_config.json`` -- unless the caller passes
  ``trust_remote_code=True`` (the CLIs' ``--trust-remote-code``).

The project's own code files (``modeling_multivocab.py``, ``tokenization_segmented.py``), which
the pipeline copies into its exports and vocabulary folders so that they load anywhere with
``trust_remote_code=True``, are not run from the folder: when a folder's copy is byte-identical to
the installed package's, the class its ``auto_map`` names is taken from the installed package
(``pretrain.remote`` / ``tokenization.remote``) and instantiated directly, so the pipeline's own
models load without the flag and without executing anything from the folder. A copy that differs
(an export from another version of the project, or an edited one) counts as foreign code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from pipeline.errors import UserError
from pipeline.schema import Record

META_FILE = "pretrain_meta.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# code files the pipeline ships with its folders -> the installed module holding the same code
PROJECT_CODE = {
    "modeling_multivocab.py": "pretrain.remote.modeling_multivocab",
    "tokenization_multivocab.py": "pretrain.remote.tokenization_multivocab",  # published two-view folders
    "tokenization_segmented.py": "tokenization.remote.tokenization_segmented",
}
TASKS = {"base": "AutoModel", "masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM"}
SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")


# ---- the metadata ------------------------------------------------------------------------------


@dataclass
class ExportMeta(Record):
    """``pretrain_meta.json`` (docs/contracts.md "Pre-training"). ``trust_remote_code`` records
    whether the folder ships code (its config or tokenizer has an ``auto_map``); it is information
    for the model card and the publisher, never consent to run that code.

    A :class:`pipeline.schema.Record`: fields are type-checked on load and save, unknown keys
    are kept in ``extra``. Unlike the other schemas, :meth:`load` takes the folder only and a
    folder without the file gives the defaults."""

    FILE: ClassVar[str] = META_FILE

    objective: Optional[str] = None
    model_type: Optional[str] = None          # "encoder" | "decoder"
    vocab_kind: Optional[str] = None
    vocab_path: Optional[str] = None
    steps: int = 0
    tokens_seen: int = 0                      # real tokens (padding excluded), summed over processes
    chars_seen: int = 0                       # characters those tokens cover (pretrain/seen.py)
    tokens_nominal: int = 0                   # batch x sequence length x steps
    trust_remote_code: bool = False
    finetune_adapter: Optional[str] = None    # how finetune.encoders loads it; None/"hf": stock AutoModel
    train_seconds: float = 0.0
    hardware: str = ""
    final_eval: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # objective-specific keys (fine_kind, view_tokenizers, ...)
    path: Optional[Path] = field(default=None, compare=False)  # the file read (None: none or not yet saved)

    @property
    def adapter(self) -> str:
        return self.finetune_adapter or "hf"

    @classmethod
    def load(cls, folder: str | Path, missing_ok: bool = True) -> "ExportMeta":
        """Read ``folder/pretrain_meta.json``; a folder without one (a plain Hugging Face folder)
        gives the defaults (``path`` None) unless ``missing_ok=False``."""
        p = Path(folder) / META_FILE
        if not p.is_file():
            if missing_ok:
                return cls()
            raise UserError(f"{folder}: not an export of this pipeline (no {META_FILE})")
        return super().load(p)


# ---- what a folder would run ---------------------------------------------------------------------


@dataclass
class FolderCode:
    """The result of :func:`check_folder`: which ``auto_map`` classes come from the package."""

    folder: Path
    project: dict[str, type] = field(default_factory=dict)  # "module.Class" -> installed class
    foreign: list[str] = field(default_factory=list)         # files that would run from the folder


def _package_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:  # pragma: no cover - the package is installed with the project
        raise RuntimeError(f"module {module} not found")
    return Path(spec.origin)


def _auto_map_refs(folder: Path) -> list[tuple[str, str]]:
    """``(file, "module.Class")`` for every ``auto_map`` entry of the folder's JSON configs."""
    refs = []
    for name in ("config.json", "tokenizer_config.json"):
        p = folder / name
        if not p.is_file():
            continue
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{p}: not valid JSON") from None
        amap = cfg.get("auto_map") if isinstance(cfg, dict) else None
        if not amap:
            continue
        if not isinstance(amap, dict):
            raise UserError(f"{p}: 'auto_map' is not a mapping")
        for v in amap.values():
            for ref in (v if isinstance(v, (list, tuple)) else [v]):
                if ref is not None:
                    refs.append((name, str(ref)))
    return refs


def check_folder(folder: str | Path, trust_remote_code: bool = False, what: str = "model folder") -> FolderCode:
    """Refuse pickles, and code the user did not opt into (see the module docstring).

    Returns which ``auto_map`` classes are the project's own (loaded from the installed package)
    and which files would run from the folder (only non-empty with ``trust_remote_code=True``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} not found: {folder}")
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = sorted(str(p.relative_to(folder)) for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{folder}: refusing pickle-based file(s) {', '.join(pickles)} (unpickling can run code); "
                        "only safetensors weights are loaded: convert them or remove them")
    package = {_package_file(module).read_bytes() for module in PROJECT_CODE.values()}
    # a .py file byte-identical to one of the project's code files never needs to run (a multi-
    # vocabulary export also carries a view's copy as ``coarse.tokenization_segmented.py``)
    py = {str(p.relative_to(folder)): p for p in files if p.suffix == ".py"}
    identical = {rel for rel, p in py.items() if p.stat().st_size < (1 << 22) and p.read_bytes() in package}
    out = FolderCode(folder)
    foreign = set(py) - identical
    for cfg_file, ref in _auto_map_refs(folder):
        module, _, cls_name = ref.rpartition(".")
        fname = module + ".py"
        if ("--" in ref or fname not in PROJECT_CODE or fname not in identical
                or py[fname].read_bytes() != _package_file(PROJECT_CODE[fname]).read_bytes()):
            foreign.add(fname if "--" not in ref else ref)
            continue
        mod = importlib.import_module(PROJECT_CODE[fname])
        cls = getattr(mod, cls_name, None)
        if cls is None:
            raise UserError(f"{folder / cfg_file}: auto_map names {ref}, which {fname} does not define")
        out.project[ref] = cls
    out.foreign = sorted(foreign)
    if out.foreign and not trust_remote_code:
        raise UserError(f"{folder}: ships code that would run on loading ({', '.join(out.foreign)}); "
                        "read it, then pass --trust-remote-code to run it")
    return out


# ---- loading -------------------------------------------------------------------------------------


def _auto_map(folder: Path, name: str) -> dict:
    p = folder / name
    if not p.is_file():
        return {}
    cfg = json.loads(p.read_text(encoding="utf-8"))
    return (cfg.get("auto_map") or {}) if isinstance(cfg, dict) else {}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # load reports list unused MLM heads / poolers: expected here
    hf_logging.disable_progress_bar()


def load_tokenizer(folder: str | Path, *, trust_remote_code: bool = False, label: str | Path | None = None,
                   code: FolderCode | None = None):
    """The tokenizer of ``folder`` (``label`` names it in errors, e.g. the export it was copied from)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    label = label or folder
    if code is None:
        try:
            code = check_folder(folder, trust_remote_code, "tokenizer folder")
        except UserError as e:
            raise UserError(str(e).replace(str(folder), str(label), 1)) from None
    _quiet_transformers()
    ref = _auto_map(folder, "tokenizer_config.json").get("AutoTokenizer")
    refs = [r for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if r]
    try:
        if refs and all(r in code.project for r in refs):
            return code.project[refs[-1]].from_pretrained(str(folder))  # [slow, fast]: the fast one
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{label}: cannot load the tokenizer: {e}") from None


def special_id(tokenizer, meta: ExportMeta | dict | None, name: str) -> int | None:
    """Id of a special token: the tokenizer's attribute, else ``pretrain_meta.json``'s
    ``special_tokens``, else the project's literal (``[CLS]``, ...) if the vocabulary has it."""
    v = getattr(tokenizer, f"{name}_token_id", None)
    if v is None and meta is not None:
        v = (meta.get("special_tokens") or {}).get(name)
    if v is None:
        try:
            v = tokenizer.get_vocab().get(f"[{name.upper()}]")
        except (AttributeError, NotImplementedError):
            v = None
    return int(v) if v is not None else None


@dataclass
class LoadedExport:
    folder: Path
    model: Any
    tokenizer: Any
    meta: ExportMeta
    special_ids: dict[str, Optional[int]]
    code: FolderCode


def load_model(folder: str | Path, *, task: str = "base", trust_remote_code: bool = False,
               random_init: bool = False, code: FolderCode | None = None, **model_kwargs):
    """The model of ``folder`` for ``task`` (weights from safetensors only)."""
    import transformers

    folder = Path(folder)
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if code is None:
        code = check_folder(folder, trust_remote_code)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    _quiet_transformers()
    auto_name = TASKS[task]
    amap = _auto_map(folder, "config.json")
    try:
        if amap and all(str(r) in code.project for r in amap.values() if r):
            if auto_name not in amap:
                raise UserError(f"{folder / 'config.json'}: auto_map has no {auto_name} class "
                                f"(it has {', '.join(sorted(amap))})")
            cls = code.project[amap[auto_name]]
            if random_init:
                return cls._from_config(cls.config_class.from_pretrained(str(folder)), **model_kwargs)
            return cls.from_pretrained(str(folder), use_safetensors=True, **model_kwargs)
        auto = getattr(transformers, auto_name)
        trc = bool(trust_remote_code and amap)
        if random_init:
            config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=trc)
            return auto.from_config(config, trust_remote_code=trc, **model_kwargs)
        return auto.from_pretrained(str(folder), trust_remote_code=trc, use_safetensors=True, **model_kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot load the model: {e}") from None


def load_export(folder: str | Path, *, task: str = "base", trust_remote_code: bool = False,
                random_init: bool = False, tokenizer: bool = True, model_type: str | None = None,
                **model_kwargs) -> LoadedExport:
    """Model, tokenizer, special ids and metadata of an export (or any Hugging Face model folder).

    ``task``: ``"base"`` (``AutoModel``), ``"masked_lm"`` or ``"causal_lm"``. ``random_init``: same
    config, fresh weights (from torch's current RNG state). ``model_type``: refuse an export whose
    ``pretrain_meta.json`` names another type (folders without the file are not checked).
    ``trust_remote_code``: the user's consent to run code shipped in the folder (see the module
    docstring); the folder's own metadata never grants it. Extra keyword arguments go to
    ``from_pretrained`` (e.g. ``attn_implementation="eager"``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    code = check_folder(folder, trust_remote_code)  # first: nothing of a refused folder is read further
    meta = ExportMeta.load(folder)
    if model_type is not None and meta.model_type is not None and meta.model_type != model_type:
        raise UserError(f"{meta.path}: model_type is {meta.model_type!r}; this needs an {model_type} export"
                        if model_type == "encoder" else
                        f"{meta.path}: model_type is {meta.model_type!r}; this needs a {model_type} export")
    tok = load_tokenizer(folder, trust_remote_code=trust_remote_code, code=code) if tokenizer else None
    model = load_model(folder, task=task, trust_remote_code=trust_remote_code, random_init=random_init, code=code,
                       **model_kwargs)
    ids = {n: special_id(tok, meta, n) for n in SPECIAL_NAMES} if tok is not None else {}
    return LoadedExport(folder, model, tok, meta, ids, code)
