"""Tokenizer and vocabulary of the official code (docs/faithfulness.md section 2; differences: 8.5, 8.6).

``tokenize("The man, on the LEFT.") -> ["the", "man", ",", "on", "the", "left"]``.
Token ids are LEFT-padded to ``max_tokens`` (20) with ``<pad>`` = 0, so the last real word is
always the last step; padded steps are skipped by the models.
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rmi.errors import InputError
from rmi.fileio import write_text

_SPLIT = re.compile(r"(\W+)")

PAD, GO, EOS, UNK = "<pad>", "<go>", "<eos>", "<unk>"
SPECIALS = (PAD, GO, EOS, UNK)
MAX_TOKENS = 20


def tokenize(sentence: str) -> list[str]:
    """Split ``sentence`` with the official regex: ``re.split(r'(\\W+)', s.strip())``.

    Keeps every piece whose ``strip()`` is non-empty (so punctuation groups such as ``,`` or
    ``/`` are tokens), lowercases, and drops one final ``.``. Unlike the official code, pieces
    are stripped (``", "`` -> ``","``): one vocabulary entry per punctuation mark, and no token
    can hold a newline, which keeps ``vocab.txt`` one token per line. Returns ``[]`` for an empty or
    whitespace-only sentence; a sentence of only ``.`` also gives ``[]``.
    """
    words = [w.strip().lower() for w in _SPLIT.split(sentence.strip()) if w.strip()]
    if words and words[-1] == ".":
        words = words[:-1]
    return words


def has_word(tokens: Sequence[str]) -> bool:
    """True when at least one token contains a letter or digit (not punctuation only)."""
    return any(any(ch.isalnum() for ch in t) for t in tokens)


class Vocab:
    """Word <-> id map: ``<pad>, <go>, <eos>, <unk>`` (ids 0-3), then words by frequency."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            dup = [w for w, c in collections.Counter(words).items() if c > 1][:3]
            raise ValueError(f"duplicate words in vocabulary: {dup}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocab:
        """Vocabulary of the tokens of ``sentences`` seen at least ``min_count`` times.

        Order: specials, then by decreasing count, ties alphabetical (deterministic).
        """
        counts = collections.Counter(t for s in sentences for t in tokenize(s))
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read one word per line (the ``vocab.txt`` the cache rule writes)."""
        path = Path(path)
        try:
            words = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(path, f"cannot read vocabulary ({err})") from err
        if words and words[-1] == "":
            words = words[:-1]
        try:
            return cls(words)
        except ValueError as err:
            raise InputError(path, str(err)) from err

    def save(self, path: str | Path) -> None:
        """Atomically write one word per line."""
        write_text(path, "\n".join(self.words) + "\n")

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    def digest(self) -> str:
        """SHA-1 of the word list: identifies the vocabulary a cache or model was built with."""
        return hashlib.sha1("\n".join(self.words).encode("utf-8")).hexdigest()

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Token strings -> ids, unknown words -> ``<unk>`` (3)."""
        unk = self.index[UNK]
        return [self.index.get(t, unk) for t in tokens]

    def n_unknown(self, tokens: Sequence[str]) -> int:
        """How many of ``tokens`` are not in the vocabulary."""
        return sum(t not in self.index for t in tokens)

    def encode(self, sentence: str, max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Sentence -> ``(max_tokens,) int64`` ids: first ``max_tokens`` tokens, left-padded with 0."""
        return self.encode_tokens(tokenize(sentence), max_tokens)

    def encode_tokens(self, tokens: Sequence[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Tokens -> ``(max_tokens,) int64`` ids, cut to ``max_tokens`` and left-padded with 0."""
        ids = self.ids(tokens)[:max_tokens]
        out = np.zeros(max_tokens, dtype=np.int64)
        if ids:
            out[max_tokens - len(ids) :] = ids
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, padding removed."""
        return [self.words[i] for i in ids if i != 0]
