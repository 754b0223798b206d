"""Sentence splitting for Chinese and Western punctuation; spans are kept with the document.

A sentence ends after 。！？!? (any run of them), an ellipsis (…… or ...), or a full stop
followed by whitespace, together with any closing quotes or brackets that follow (”’"'）)」』】》);
a newline always ends a sentence. Spans are ``[start, end)`` character offsets into the
normalised text, with surrounding whitespace excluded, stored as ``meta["sentences"]``.
Known limit: an abbreviation followed by a space ("e.g. x") ends a sentence.
"""

from __future__ import annotations

import re

_BOUNDARY_RE = re.compile(
    r"(?:[。！？!?]+|…+|\.{3,}|(?<=[^\s.])\.(?=\s))[”’\"'）)」』】》]*|\n"
)


def sentence_spans(text: str) -> list[list[int]]:
    spans: list[list[int]] = []
    start = 0

    def emit(a: int, b: int) -> None:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append([a, b])

    for m in _BOUNDARY_RE.finditer(text):
        emit(start, m.end())
        start = m.end()
    emit(start, len(text))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]
