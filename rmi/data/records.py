"""The one record type every loader yields: one referring expression with its image and mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class MaskSource(Protocol):
    """Where a ground-truth mask comes from; ``decode()`` reads it at original resolution."""

    #: a human-readable location for error messages, e.g. ``"instances.json ann 123"``
    where: str
    #: a key shared by expressions of the same referred object (decode once per key)
    key: str

    def decode(self) -> np.ndarray:
        """Return the mask, ``(h, w) bool``; raise ``rmi.errors.InputError`` if malformed."""
        ...


@dataclass
class Expression:
    """One referring expression (the unit of training and evaluation)."""

    sent_id: int
    ref_id: int
    image_id: int
    image_path: Path
    sentence: str
    mask: MaskSource
    split: str
