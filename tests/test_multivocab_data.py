"""Hand-built two-stream batches for the multi-vocabulary tests (no shards, no tokenizers needed).

A window holds documents of random "words" of 1-3 characters. The char stream has one token per
character; the SGT stream one token per word, or two pieces for some 3-character words (then
``word_start`` is set on the first piece only). Both streams start with ``[CLS]``, separate
documents with ``[SEP]`` and are right-padded, as in the batch contract.
"""

from __future__ import annotations

import numpy as np

from pretrain.models import ModelConfig
from pretrain.objectives.base import ObjectiveContext, VocabInfo

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def vocab(kind: str, size: int, path: str = "") -> VocabInfo:
    return VocabInfo(kind=kind, path=path, size=size, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK,
                     special_ids=(PAD, UNK, CLS, SEP, MASK))


def context(primary: str = "char", char_size: int = 100, sgt_size: int = 150, seq_len: int = 32,
            paths: dict | None = None, layers: int = 2) -> ObjectiveContext:
    paths = paths or {}
    m = ModelConfig(size="tiny", num_layers=layers, hidden_size=32, num_heads=2, intermediate_size=64,
                    max_position_embeddings=64, dropout=0.0)
    vocabs = {"char": vocab("char", char_size, paths.get("char", "")),
              "sgt": vocab("sgt", sgt_size, paths.get("sgt", ""))}
    return ObjectiveContext(model=m, vocabs=vocabs, primary=primary, seq_len=seq_len)


def make_batch(seed: int = 0, B: int = 4, T: int = 32, char_size: int = 100, sgt_size: int = 150,
               primary: str = "char"):
    """Returns (batch dict in the contract's layout, per-row list of (char_token_index_range, sgt_index))."""
    rng = np.random.default_rng(seed)
    rows_c, rows_s, truth = [], [], []
    for _ in range(B):
        c = {"ids": [CLS], "len": [0], "ws": [1], "sp": [1]}
        s = {"ids": [CLS], "len": [0], "ws": [1], "sp": [1]}
        owner = []  # for each char token: index of its SGT token
        while len(c["ids"]) < T - 4:
            for _w in range(rng.integers(2, 6)):
                n = int(rng.integers(1, 4))
                if len(c["ids"]) + n >= T - 1:
                    break
                pieces = [n] if n < 3 or rng.random() < 0.5 else [1, 2]
                for k, pl in enumerate(pieces):
                    s["ids"].append(int(rng.integers(5, sgt_size)))
                    s["len"].append(pl)
                    s["ws"].append(1 if k == 0 else 0)
                    s["sp"].append(0)
                    for j in range(pl):
                        c["ids"].append(int(rng.integers(5, char_size)))
                        c["len"].append(1)
                        c["ws"].append(1 if (k == 0 and j == 0) else 0)
                        c["sp"].append(0)
                        owner.append((len(c["ids"]) - 1, len(s["ids"]) - 1))
            if len(c["ids"]) < T - 2:
                for d in (c, s):
                    d["ids"].append(SEP); d["len"].append(0); d["ws"].append(1); d["sp"].append(1)
        rows_c.append(c)
        rows_s.append(s)
        truth.append(owner)
    S = max(len(r["ids"]) for r in rows_s)
    Tm = max(len(r["ids"]) for r in rows_c)

    def pack(rows, L):
        out = {k: np.zeros((B, L), dtype=dt) for k, dt in
               (("input_ids", np.int64), ("word_start", bool), ("char_len", np.int16), ("special_mask", bool),
                ("attention_mask", np.int64))}
        out["special_mask"][:] = True
        for i, r in enumerate(rows):
            n = len(r["ids"])
            out["input_ids"][i, :n] = r["ids"]
            out["char_len"][i, :n] = r["len"]
            out["word_start"][i, :n] = r["ws"]
            out["special_mask"][i, :n] = r["sp"]
            out["attention_mask"][i, :n] = 1
        return out

    c, s = pack(rows_c, Tm), pack(rows_s, S)
    if primary == "char":
        batch = dict(c)
        batch.update({f"sgt.{k}": v for k, v in s.items()})
    else:
        batch = dict(s)
        batch.update({f"char.{k}": v for k, v in c.items()})
    return batch, truth
