"""A synthetic stand-in for ``tokenization.loader.PackedLoader`` (same interface) and a tiny vocabulary
folder, used by the pre-training tests; plus checks that the stand-in keeps the loader contract.

The data is a Markov chain over a small lexicon of 1-3-token "words", so a tiny model can learn it
(losses fall) and whole-word masking has multi-token words to work on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB_SIZE = 100  # entries in the synthetic tokenizer (padded to 128 by the models)


def make_vocab(root: Path, kind: str = "char") -> Path:
    """``root/kind/`` with ``stats.json`` and a tokenizer that ``AutoTokenizer`` loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = Path(root) / kind
    d.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": PAD, "[UNK]": UNK, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK}
    for i in range(5, VOCAB_SIZE):
        vocab[f"t{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(d)
    from tokenization.schema import VocabStats

    VocabStats(kind=kind, size=VOCAB_SIZE, tokens_per_char=1.0,
               special_tokens={"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}).save(d)
    return d


def _stream(seed: int, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)  # the lexicon and chain are fixed; ``seed`` picks the documents
    n_words = 40
    lens = rng.integers(1, 4, n_words)
    words = [rng.integers(5, VOCAB_SIZE, n) for n in lens]
    trans = rng.dirichlet(np.full(n_words, 0.1), n_words)  # peaked transitions: learnable
    drng = np.random.default_rng(seed)
    ids, ws = [], []
    for d in range(n_docs):
        w = int(drng.integers(n_words))
        for _ in range(int(drng.integers(8, 30))):
            ids.extend(words[w].tolist())
            ws.extend([1] + [0] * (len(words[w]) - 1))
            w = int(drng.choice(n_words, p=trans[w]))
        ids.append(SEP)
        ws.append(1)
    return np.asarray(ids, np.int64), np.asarray(ws, np.uint8)


class SyntheticLoader:
    """Same constructor and methods as ``PackedLoader``. Window ``w`` = ``[CLS]`` + stream tokens
    ``w*(T-1) .. (w+1)*(T-1)``; the windows are shuffled per epoch; rank ``r`` reads batch ``index``
    with the real loader's rank split (``tokenization.loader.rank_slice``: rows ``r, r + world_size,
    ...`` of the step's ``batch_size * world_size`` windows), so one process with ``accum = world``
    sees the same windows per optimizer step as ``world`` processes, split across ranks as in a
    real multi-process run."""

    def __init__(self, shards_root, kind, split, seq_len, batch_size, seed=0, rank=0, world_size=1,
                 extra_kinds=(), shuffle=True, mixing=None, n_docs=None):
        n_docs = n_docs or (400 if split == "train" else 60)
        self.ids, self.ws = _stream(11 if split == "train" else 99, n_docs)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world_size, shuffle
        self.n_windows = len(self.ids) // (seq_len - 1)
        self.vocab_meta = {"kind": kind, "size": VOCAB_SIZE}

    def __len__(self) -> int:
        return self.n_windows // (self.batch_size * self.world)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_windows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        from tokenization.loader import rank_slice

        win = self._order(epoch)[rank_slice(index, self.batch_size, self.rank, self.world)]
        L = self.seq_len - 1
        starts = win[:, None] * L + np.arange(L)[None, :]
        B = len(win)
        ids = np.concatenate([np.full((B, 1), CLS), self.ids[starts]], 1)
        ws = np.concatenate([np.ones((B, 1), np.uint8), self.ws[starts]], 1).astype(bool)
        special = np.isin(ids, [PAD, CLS, SEP])
        return {"input_ids": ids.astype(np.int64), "word_start": ws, "char_len": (~special).astype(np.int16),
                "special_mask": special, "attention_mask": np.ones_like(ids, dtype=np.int64)}

    def iter_from(self, epoch: int, index: int):
        while True:
            while index < len(self):
                yield epoch, index, self.batch(epoch, index)
                index += 1
            epoch, index = epoch + 1, 0


def test_synthetic_loader_contract():
    a = SyntheticLoader(None, "char", "train", 32, 4)
    b = a.batch(0, 1)
    assert b["input_ids"].shape == (4, 32) and (b["input_ids"][:, 0] == CLS).all()
    assert b["special_mask"][:, 0].all() and b["word_start"][:, 0].all()
    # two ranks: disjoint, and together the same windows as one rank reading two batches, interleaved
    # as the real loader splits a step's windows over ranks (rank r: rows r, r + 2, ...)
    r0 = SyntheticLoader(None, "char", "train", 32, 4, rank=0, world_size=2).batch(0, 3)["input_ids"]
    r1 = SyntheticLoader(None, "char", "train", 32, 4, rank=1, world_size=2).batch(0, 3)["input_ids"]
    one = np.concatenate([a.batch(0, 6)["input_ids"], a.batch(0, 7)["input_ids"]])
    assert (r0 == one[0::2]).all() and (r1 == one[1::2]).all()
    assert not (r0[:, None, :] == r1[None, :, :]).all(-1).any()
    assert len(SyntheticLoader(None, "char", "train", 32, 4, rank=1, world_size=3)) == len(a) // 3
    # the real loader's rule (tests/test_loader.py::test_ranks_are_disjoint_and_cover_the_epoch): batch
    # row j of rank r, batch i is window r + W * (4 * i + j) of the epoch's global order
    W = 3
    order = a._order(2)
    for r in range(W):
        ld = SyntheticLoader(None, "char", "train", 32, 4, rank=r, world_size=W)
        for i in (0, len(ld) - 1):
            got = ld.batch(2, i)["input_ids"]
            for j in range(4):
                w = order[r + W * (4 * i + j)]
                assert (got[j, 1:] == a.ids[w * 31:(w + 1) * 31]).all()
    e, i, _ = next(a.iter_from(0, len(a)))
    assert (e, i) == (1, 0)
