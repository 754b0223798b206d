"""The one Chinese word segmenter of the pipeline.

Reference semantics: ``jieba.cut(text, HMM=False)`` with jieba's default dictionary. The fast path
is ``rjieba`` (jieba-rs), which gives identical output with HMM off (parity tests in
``tests/test_segment.py``) at 10-18x the speed.

Settings:

* ``hmm`` -- jieba's HMM for unknown words. With HMM on, rjieba differs from jieba on
  ASCII-heavy text (it keeps ``2008-6-1`` / ``auth-username`` whole where jieba splits on ``-``)
  and on ties between rare Traditional characters; choose ``backend="jieba"`` when exact jieba
  output with HMM matters. Documented in ``docs/tokenization.md``.
* ``user_dict`` -- a jieba user-dictionary file (``word [freq] [tag]`` per line). jieba loads it
  natively; for rjieba the lines are added one by one with ``add_word`` (rjieba has no file
  loader). ``user_dict_parity`` records whether that gave jieba's output on a probe (see
  :func:`check_user_dict_parity`); the default policy ``user_dict_backend="jieba"`` switches to
  the reference backend whenever a user dictionary is set, because jieba's ``load_userdict``
  and jieba-rs ``add_word`` differ in how a missing frequency is filled in.

Every segmentation concatenates back to its input exactly (whitespace is kept as words), which
:meth:`Segmenter.cut` guarantees (checked; a mismatch raises ``RuntimeError``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.errors import UserError

BACKENDS = ("rjieba", "jieba")

_JIEBA_LOCK = threading.Lock()


def _jieba_version() -> str:
    try:
        import importlib.metadata as md

        return md.version("jieba")
    except Exception:  # pragma: no cover - jieba always installed with the project
        return "unknown"


def _rjieba_version() -> str:
    try:
        import importlib.metadata as md

        return md.version("rjieba")
    except Exception:  # pragma: no cover
        return "unknown"


def read_user_dict(path: str | Path) -> list[tuple[str, int | None, str | None]]:
    """Parse a jieba user dictionary: ``word [freq] [tag]`` per line (UTF-8).

    Raises :class:`UserError` naming the file and line for a malformed line.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"segmenter.user_dict: file not found: {p}")
    out: list[tuple[str, int | None, str | None]] = []
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        parts = line.split()
        word, freq, tag = parts[0], None, None
        if len(parts) > 3:
            raise UserError(f"{p}:{lineno}: expected 'word [freq] [tag]', got {raw!r}")
        if len(parts) >= 2:
            if parts[1].isdigit():
                freq = int(parts[1])
                if len(parts) == 3:
                    tag = parts[2]
            elif len(parts) == 2:
                tag = parts[1]
            else:
                raise UserError(f"{p}:{lineno}: frequency must be an integer, got {parts[1]!r}")
        out.append((word, freq, tag))
    return out


@dataclass
class SegmenterSettings:
    """What decides a segmentation; hashed into the cache fingerprint."""

    backend: str = "rjieba"
    hmm: bool = False
    user_dict: str | None = None

    def fingerprint(self) -> str:
        ud = None
        if self.user_dict:
            ud = hashlib.sha1(Path(self.user_dict).read_bytes()).hexdigest()
        blob = json.dumps({"backend": self.effective_backend(), "hmm": self.hmm, "user_dict_sha1": ud,
                           "jieba": _jieba_version(), "rjieba": _rjieba_version()}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def effective_backend(self) -> str:
        # rjieba's add_word does not reproduce jieba's load_userdict (see module docstring)
        return "jieba" if self.user_dict else self.backend


class Segmenter:
    """``Segmenter(hmm=False, user_dict=None, backend="rjieba"|"jieba").cut(text) -> list[str]``.

    A user dictionary makes the segmenter use the jieba backend (reference path), because the
    rjieba path does not give jieba's output for user words without a frequency; pass
    ``force_backend=True`` to keep rjieba anyway (its words are added with ``add_word``).
    """

    def __init__(self, hmm: bool = False, user_dict: str | Path | None = None, backend: str = "rjieba",
                 force_backend: bool = False):
        if backend not in BACKENDS:
            raise UserError(f"segmenter.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.hmm = bool(hmm)
        self.user_dict = str(user_dict) if user_dict else None
        self.requested_backend = backend
        self.backend = backend if (force_backend or not self.user_dict) else "jieba"
        self._entries = read_user_dict(self.user_dict) if self.user_dict else []
        self._impl = None

    # -- lazy so that a Segmenter pickles cheaply into worker processes -----------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_impl"] = None
        return d

    def _init(self):
        if self.backend == "rjieba":
            import rjieba

            if self._entries:
                j = rjieba.Jieba()
                for w, f, t in self._entries:
                    j.add_word(w, f, t)
            else:
                j = rjieba._DEFAULT_JIEBA
            hmm = self.hmm
            self._impl = lambda s: j.cut(s, hmm)
        else:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            with _JIEBA_LOCK:
                tk = jieba.Tokenizer()
                tk.initialize()
                if self.user_dict:
                    tk.load_userdict(self.user_dict)  # jieba's own file loader
            hmm = self.hmm
            self._impl = lambda s: tk.lcut(s, HMM=hmm)
        return self._impl

    @property
    def settings(self) -> SegmenterSettings:
        return SegmenterSettings(backend=self.requested_backend, hmm=self.hmm, user_dict=self.user_dict)

    def fingerprint(self) -> str:
        return self.settings.fingerprint()

    def cut(self, text: str) -> list[str]:
        if not text:
            return []
        impl = self._impl or self._init()
        words = impl(text)
        if sum(map(len, words)) != len(text):  # pragma: no cover - a segmenter bug, never user input
            raise RuntimeError(f"segmenter ({self.backend}) lost characters: {text[:80]!r}")
        return words

    def cut_many(self, texts: Iterable[str]) -> list[list[str]]:
        impl = self._impl or self._init()
        return [impl(t) if t else [] for t in texts]

    def __repr__(self) -> str:
        return f"Segmenter(backend={self.backend!r}, hmm={self.hmm}, user_dict={self.user_dict!r})"


def from_config(seg_cfg) -> Segmenter:
    """Build from the ``segmenter`` section of :class:`tokenization.config.TokenizationConfig`."""
    return Segmenter(hmm=seg_cfg.hmm, user_dict=seg_cfg.user_dict or None, backend=seg_cfg.backend)


def check_user_dict_parity(user_dict: str | Path, texts: Iterable[str], hmm: bool = False) -> float:
    """Share of ``texts`` where rjieba + ``add_word`` gives jieba + ``load_userdict``'s output."""
    ref = Segmenter(hmm=hmm, user_dict=user_dict, backend="jieba")
    fast = Segmenter(hmm=hmm, user_dict=user_dict, backend="rjieba", force_backend=True)
    texts = list(texts)
    same = sum(ref.cut(t) == fast.cut(t) for t in texts)
    return same / max(1, len(texts))
