"""From a run's vocabularies and token shards to an :class:`ObjectiveContext` and packed loaders.

The loader is ``tokenization.loader.PackedLoader`` (contract in ``docs/contracts.md``, "Token
shards"). Each process builds its own loader with its ``rank`` and ``world_size``, so every rank
reads a disjoint slice of windows; the trainer asks for batch ``index = step * grad_accum + micro``
so the loader position follows from the optimizer step alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError
from pretrain.config import PretrainConfig
from pretrain.objectives.base import ObjectiveContext, VocabInfo, get_objective, objective_config

SPECIAL_KEYS = ("pad", "unk", "cls", "sep", "mask")


def shards_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.shards_root or Path(cfg.runs_root, cfg.run, "shards"))


def vocab_root(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.vocab_root or Path(cfg.runs_root, cfg.run, "vocab"))


def stream_kinds(cfg: PretrainConfig) -> list[str]:
    """Extra aligned streams: the config's ``data.extra_kinds`` plus the streams the objective declares
    for its options (``Objective.streams``), without the primary ``data.kind``."""
    cls = get_objective(cfg.objective)
    declared = cls.streams(objective_config(cfg.objective, cfg.objective_options))
    kinds: list[str] = []
    for k in list(cfg.data.extra_kinds) + list(declared):
        if k != cfg.data.kind and k not in kinds:
            kinds.append(k)
    return kinds


def _read_vocab_meta(path: Path) -> dict:
    from tokenization.schema import VocabStats

    return VocabStats.load(path).to_dict()


def vocab_info(kind: str, path: Path, meta: dict | None = None) -> VocabInfo:
    if meta is None:
        if not (path / "stats.json").is_file():
            raise UserError(f"vocabulary '{kind}' not found: {path / 'stats.json'} (build it first: make vocab)")
        meta = _read_vocab_meta(path)
    sp = meta.get("special_tokens") or {}
    missing = [k for k in SPECIAL_KEYS if k not in sp]
    if missing or "size" not in meta:
        raise UserError(f"{path / 'stats.json'}: needs 'size' and special_tokens {list(SPECIAL_KEYS)}; missing {missing or ['size']}")
    return VocabInfo(
        kind=kind, path=str(path), size=int(meta["size"]), pad_id=int(sp["pad"]), unk_id=int(sp["unk"]),
        cls_id=int(sp["cls"]), sep_id=int(sp["sep"]), mask_id=int(sp["mask"]),
        special_ids=tuple(sorted({int(v) for v in sp.values()})),
    )


def build_context(cfg: PretrainConfig) -> ObjectiveContext:
    root = vocab_root(cfg)
    kinds = [cfg.data.kind] + stream_kinds(cfg)
    vocabs = {k: vocab_info(k, root / k) for k in kinds}
    return ObjectiveContext(model=cfg.model, vocabs=vocabs, primary=cfg.data.kind, seq_len=cfg.data.seq_len)


LoaderFactory = Callable[..., Any]


def default_loader_factory() -> LoaderFactory:
    try:
        from tokenization.loader import PackedLoader
    except ImportError as e:
        raise UserError(f"the token-shard loader is not available (tokenization.loader): {e}") from None
    return PackedLoader


def build_loader(cfg: PretrainConfig, split: str, batch_size: int, rank: int, world_size: int,
                 factory: LoaderFactory | None = None):
    """A ``PackedLoader`` for ``split``; ``None`` for a missing valid split (evaluation is skipped)."""
    root = shards_root(cfg)
    split_dir = root / cfg.data.kind / split
    opts: dict[str, Any] = {}
    if factory is None:
        factory = default_loader_factory()
        opts = {"max_open_shards": cfg.data.max_open_shards, "index_dir": cfg.data.index_dir}
        if not split_dir.is_dir():
            if split == "train":
                raise UserError(f"token shards not found: {split_dir} (build them first: make shards)")
            return None
    try:
        loader = factory(
            str(root), cfg.data.kind, split, cfg.data.seq_len, batch_size, seed=cfg.train.seed, rank=rank,
            world_size=world_size, extra_kinds=tuple(stream_kinds(cfg)), shuffle=cfg.data.shuffle,
            mixing=cfg.data.mixing, **opts,
        )
    except FileNotFoundError as e:
        if split == "train":
            raise UserError(f"token shards not found for split '{split}' under {root}: {e}") from None
        return None
    if len(loader) < 1:
        if split == "train":
            raise UserError(
                f"{split_dir}: too little data for one batch of {batch_size} windows x {cfg.data.seq_len} tokens "
                f"per process ({world_size} processes)"
            )
        return None
    return loader
