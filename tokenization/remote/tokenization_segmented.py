"""Tokenizer class saved with the ``sgt`` and ``word`` vocabulary folders.

Load with ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)``. This file is copied
into the folder and must not import the pipeline: it needs only ``transformers``, ``tokenizers``
and ``rjieba`` (or ``jieba``).

Encoding chain (identical to ``tokenization.vocab.load_token_encoder`` on the pipeline side):

1. jieba segmentation (``jieba.cut(text, HMM=hmm)`` semantics; rjieba fast path, jieba when a
   user dictionary is set), every character kept;
2. a single space U+0020 directly before a non-space word is attached to that word (like
   SentencePiece's ``▁``), so Latin text does not spend a token per space;
3. ``word`` kind only: a unit missing from the vocabulary is split into characters;
4. the serialised part of ``tokenizer.json``: ``Metaspace`` (space -> ``▁``, no split), then the
   sub-word model (BPE / Unigram / WordPiece / WordLevel) inside each unit.

Decoding concatenates the pieces and turns ``▁`` back into spaces, so ``decode(encode(text))``
gives the text back except for characters that became ``[UNK]``.

A Python pre-tokenizer cannot be serialised; ``save_pretrained`` writes the serialisable
``Metaspace`` pre-tokenizer and this class re-installs the segmentation on load. Objects holding
the custom pre-tokenizer cannot be pickled (e.g. into ``datasets.map(num_proc>1)`` workers):
re-load the tokenizer in each worker instead.
"""

from __future__ import annotations

import math
import os
from collections import deque

from tokenizers import NormalizedString, PreTokenizedString
from tokenizers import pre_tokenizers as pre_tokenizers_fast
from transformers import TokenizersBackend


def attach_spaces(words):
    """Merge a lone " " word into the following non-whitespace word (see step 2 above)."""
    out = []
    pending = False
    for w in words:
        if w == " ":
            if pending:
                out.append(" ")
            pending = True
            continue
        if pending:
            if w.isspace():
                out.append(" ")
                out.append(w)
            else:
                out.append(" " + w)
            pending = False
        else:
            out.append(w)
    if pending:
        out.append(" ")
    return out


def make_cut(backend="rjieba", hmm=False, user_dict=None):
    """``text -> list[str]`` with jieba semantics (a user dictionary selects jieba itself)."""
    if user_dict or backend == "jieba":
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        tk = jieba.Tokenizer()
        tk.initialize()
        if user_dict:
            tk.load_userdict(user_dict)
        return lambda s: tk.lcut(s, HMM=hmm)
    import rjieba

    return lambda s: rjieba.cut(s, hmm)


class _SegmentSplit:
    """Custom pre-tokenizer: jieba units (word kind: unknown units -> characters).

    Slicing a ``NormalizedString`` costs time proportional to the offset, so a long text is cut
    in two passes: first into chunks of about sqrt(n) units, then each chunk into its units. The
    units of every chunk are computed once, in the first pass, and kept in a queue local to the
    call (thread-safe under ``encode_batch``).
    """

    def __init__(self, cut, vocab=None):
        self.cut = cut
        self.vocab = vocab  # word kind: units not in the vocabulary fall back to characters

    def _units(self, text):
        units = attach_spaces(self.cut(text)) if text else []
        if self.vocab is None:
            return units
        out = []
        for u in units:
            if u.replace(" ", "\u2581") in self.vocab:
                out.append(u)
            else:
                out.extend(u)
        return out

    def pre_tokenize(self, pretok: PreTokenizedString):
        pending = deque()

        def chunks(i: int, ns: NormalizedString):
            units = self._units(str(ns))
            step = max(64, int(math.sqrt(len(units))) + 1)
            out, pos = [], 0
            for a in range(0, len(units), step):
                group = units[a:a + step]
                n = sum(map(len, group))
                out.append(ns[pos:pos + n])
                pending.append(group)
                pos += n
            return out

        def units(i: int, ns: NormalizedString):
            group = pending.popleft()
            out, pos = [], 0
            for u in group:
                out.append(ns[pos:pos + len(u)])
                pos += len(u)
            return out

        pretok.split(chunks)
        pretok.split(units)


class SegmentedTokenizer(TokenizersBackend):
    """``TokenizersBackend`` whose pre-tokenizer runs jieba segmentation first."""

    vocab_files_names = {"tokenizer_file": "tokenizer.json", "user_dict_file": "user_dict.txt"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        # load tokenizer.json as saved (a class with its own __init__ would otherwise be rebuilt
        # from vocab/merges, losing the model's exact settings)
        return super().convert_to_native_format(trust_remote_code=True, **kwargs)

    def __init__(self, *args, segmenter_backend="rjieba", segmenter_hmm=False, user_dict_file=None,
                 word_fallback=False, **kwargs):
        super().__init__(*args, segmenter_backend=segmenter_backend, segmenter_hmm=segmenter_hmm,
                         word_fallback=word_fallback, **kwargs)
        if user_dict_file is not None and not os.path.isfile(user_dict_file):
            user_dict_file = None
        self.segmenter_backend = segmenter_backend
        self.segmenter_hmm = bool(segmenter_hmm)
        self.word_fallback = bool(word_fallback)
        self._user_dict_file = user_dict_file
        self._serial_pre_tokenizer = self._tokenizer.pre_tokenizer
        vocab = self._tokenizer.get_vocab(with_added_tokens=False) if self.word_fallback else None
        split = _SegmentSplit(make_cut(segmenter_backend, self.segmenter_hmm, user_dict_file), vocab)
        self._tokenizer.pre_tokenizer = pre_tokenizers_fast.Sequence(
            [pre_tokenizers_fast.PreTokenizer.custom(split), self._serial_pre_tokenizer])

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        custom = self._tokenizer.pre_tokenizer
        self._tokenizer.pre_tokenizer = self._serial_pre_tokenizer
        try:
            out = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        finally:
            self._tokenizer.pre_tokenizer = custom
        if self._user_dict_file:
            import shutil

            dst = os.path.join(str(save_directory), "user_dict.txt")
            if os.path.abspath(dst) != os.path.abspath(self._user_dict_file):
                shutil.copyfile(self._user_dict_file, dst)
            out = out + (dst,)
        return out
