"""The per-split HDF5 cache (``results/cache/{dataset}/{split}.h5``) and its reader.

Layout (``FORMAT_VERSION`` 2), S = image size, T = max tokens:

=====================  ===========================  =========================================
dataset                shape / dtype                meaning
=====================  ===========================  =========================================
``images``             (N_img, S, S, 3) uint8       padded RGB, one chunk per image
``image_id``           (N_img,) int64               dataset image id
``image_file``         (N_img,) str                 source file (for figures and messages)
``image_hw``           (N_img, 2) int32             original (height, width)
``ref_id``             (N_ref,) int64               referred object id
``ref_image``          (N_ref,) int32               row in ``images``
``ref_masks``          (N_ref, S, S) bool           padded mask (lzf, one chunk per mask)
``ref_targets``        (N_ref, S/8, S/8) bool       training target: ``ref_masks[:, ::8, ::8]``
``ref_rle``            (N_ref,) bytes               original-resolution mask, COCO RLE counts
``sent_id``            (N_expr,) int64              expression id
``sent_ref``           (N_expr,) int32              row in ``ref_*``
``image_index``        (N_expr,) int32              row in ``images`` (= ref_image[sent_ref])
``tokens``             (N_expr, T) int64            left-padded token ids (``<pad>`` = 0)
``n_tokens``           (N_expr,) int16              tokens the model sees (<= T; 0: all ``<pad>``)
``sentence``           (N_expr,) str                the expression text
=====================  ===========================  =========================================

Masks are stored once per referred object (several expressions share one), which keeps a
RefCOCO train cache small; a per-expression mask is ``ref_masks[sent_ref[i]]``. The training
target (the padded mask at the cell grid) is stored as well: decompressing a full mask per
sample would dominate the read time.
Attributes: ``format_version, dataset, split, role`` (``train`` | ``eval``), ``image_size,
max_tokens, vocab_size, vocab_sha1, n_expressions, n_skipped, skipped`` (JSON: reason -> count).

A split is built by ``build_cache`` in three steps: ``tokenize_expressions``, ``decode_masks``,
``write_cache``. Only the training split skips expressions (no word, bad or empty mask); an
evaluated split (``role`` eval) holds every expression of the split file, as the official test
loop scores every one. Version 2 (was 1) added ``role`` and this rule: version-1 eval caches may
lack expressions, so readers refuse them.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rmi.data.h5 import LazyH5
from rmi.data.masks import rle_decode, rle_encode
from rmi.data.records import Expression
from rmi.data.transforms import OUTPUT_STRIDE, PadGeometry, cell_grid, resize_and_pad_image, resize_and_pad_mask
from rmi.errors import InputError
from rmi.fileio import atomic_path
from rmi.text import Vocab, has_word, tokenize

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_STR = h5py.string_dtype("utf-8")
_BYTES = h5py.vlen_dtype(np.dtype("uint8"))


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``(h, w, 3) uint8`` RGB; a one-line ``InputError`` if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(path, f"corrupt or truncated image ({err})") from err


def _progress(iterable, **kw):
    return tqdm(iterable, mininterval=2.0, disable=None, **kw)


@dataclass
class SplitObjects:
    """The referred objects of a split (one per mask key, first-seen order) and the expressions kept."""

    records: list[Expression]  # the first expression of each object: its ids, image and mask source
    masks: list[np.ndarray]  # (h, w) bool per object, at the original resolution
    expressions: list[tuple[Expression, list[str], int]]  # (record, tokens, row in ``records``)


def tokenize_expressions(records: Sequence[Expression], train: bool) -> tuple[list, collections.Counter]:
    """Step 1, filter and tokenize: ``records`` -> ``([(record, tokens)], skipped counts)``.

    In the training split an expression without a word (empty, punctuation only) is skipped and
    counted as ``"empty expression"``. An evaluated split keeps every expression, as the official
    test loop scores every one: punctuation stays a token (as the official tokenizer keeps it),
    and an expression without any token (empty, blank, a lone ``.``) is fed as all ``<pad>``
    (``n_tokens`` 0), which the models answer from their zero state, as the official graph does.
    """
    kept, skipped = [], collections.Counter()
    for rec in records:
        tokens = tokenize(rec.sentence)
        if train and not has_word(tokens):
            skipped["empty expression"] += 1
            log.warning(
                "skipping sent_id %s (ref %s): expression %r has no word", rec.sent_id, rec.ref_id, rec.sentence
            )
            continue
        kept.append((rec, tokens))
    return kept, skipped


def decode_masks(expressions: list, train: bool, where: str) -> tuple[SplitObjects, collections.Counter]:
    """Step 2, decode each object's mask once (original resolution): ``-> (objects, skipped counts)``.

    In the training split an object whose mask is missing, unreadable or without segmentation
    (``"bad mask"``) or empty (``"empty mask"``) is skipped with its expressions, counted per
    expression. In an evaluated split a bad mask is a one-line ``InputError`` naming its file, and
    an empty one is kept and scored (as the official code scores it).
    """
    objects, skipped = SplitObjects([], [], []), collections.Counter()
    rows: dict[tuple[int, str], int] = {}
    bad: dict[tuple[int, str], str] = {}
    for rec, tokens in _progress(expressions, desc=f"masks {where}", unit="expr"):
        key = (rec.image_id, rec.mask.key or f"ref{rec.ref_id}")
        if key not in rows and key not in bad:
            mask, problem = _decode_mask(rec, train)
            if problem:
                bad[key] = problem
            else:
                rows[key] = len(objects.records)
                objects.records.append(rec)
                objects.masks.append(mask)
        if key in bad:
            skipped[bad[key]] += 1
        else:
            objects.expressions.append((rec, tokens, rows[key]))
    return objects, skipped


def _decode_mask(rec: Expression, train: bool) -> tuple[np.ndarray | None, str]:
    """``(mask, "")`` or, in the training split only, ``(None, reason to skip the object)``."""
    try:
        mask = rec.mask.decode()
    except InputError as err:
        if not train:
            raise
        log.warning("skipping ref %s: %s", rec.ref_id, err)
        return None, "bad mask"
    if not mask.any():
        log.warning("%s ref %s: %s: mask is empty", "skipping" if train else "keeping", rec.ref_id, rec.mask.where)
        if train:
            return None, "empty mask"
    return mask, ""


def write_cache(out: Path, objects: SplitObjects, vocab: Vocab, attrs: dict, where: str) -> int:
    """Step 3, write: decode and pad each image once, check each mask against its image's size,
    pad the masks, encode the tokens (``attrs["max_tokens"]``), write every dataset of the layout
    and ``attrs`` atomically to ``out``; return the number of images.

    A missing or corrupt image is a one-line ``InputError`` (in every split: it would lose all
    the expressions of its image silently otherwise).
    """
    image_rows: dict[int, int] = {}
    image_recs: list[Expression] = []
    for rec in objects.records:
        if rec.image_id not in image_rows:
            image_rows[rec.image_id] = len(image_recs)
            image_recs.append(rec)
    n_img, n_ref, size, max_tokens = len(image_recs), len(objects.records), attrs["image_size"], attrs["max_tokens"]
    expr_rows = objects.expressions
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            images = f.create_dataset("images", (n_img, size, size, 3), np.uint8, chunks=(1, size, size, 3))
            image_hw = np.zeros((n_img, 2), np.int32)
            for i, rec in enumerate(_progress(image_recs, desc=f"images {where}", unit="img")):
                img = load_image(rec.image_path)
                image_hw[i] = img.shape[:2]
                images[i] = resize_and_pad_image(img, size)
            f["image_id"] = np.array([r.image_id for r in image_recs], np.int64)
            f.create_dataset("image_file", data=[str(r.image_path) for r in image_recs], dtype=_STR)
            f["image_hw"] = image_hw

            ref_image = np.array([image_rows[r.image_id] for r in objects.records], np.int32)
            for r, (rec, m) in enumerate(zip(objects.records, objects.masks, strict=True)):
                if tuple(m.shape) != tuple(image_hw[ref_image[r]]):
                    raise InputError(
                        rec.mask.where,
                        f"mask size {m.shape} differs from image {rec.image_path} size {tuple(image_hw[ref_image[r]])}",
                    )
            f["ref_id"] = np.array([r.ref_id for r in objects.records], np.int64)
            f["ref_image"] = ref_image
            masks = f.create_dataset("ref_masks", (n_ref, size, size), bool, chunks=(1, size, size), compression="lzf")
            grid = size // OUTPUT_STRIDE
            targets = f.create_dataset("ref_targets", (n_ref, grid, grid), bool)
            rles = f.create_dataset("ref_rle", (n_ref,), _BYTES)
            for r, m in enumerate(_progress(objects.masks, desc=f"pad masks {where}", unit="mask")):
                padded = resize_and_pad_mask(m, size)
                masks[r] = padded
                targets[r] = cell_grid(padded)
                rles[r] = np.frombuffer(rle_encode(m), np.uint8)

            f["sent_id"] = np.array([rec.sent_id for rec, _, _ in expr_rows], np.int64)
            f["sent_ref"] = np.array([row for _, _, row in expr_rows], np.int32)
            f["image_index"] = ref_image[f["sent_ref"][()]]
            f["tokens"] = np.stack([vocab.encode_tokens(t, max_tokens) for _, t, _ in expr_rows])
            f["n_tokens"] = np.array([min(len(t), max_tokens) for _, t, _ in expr_rows], np.int16)
            f.create_dataset("sentence", data=[rec.sentence for rec, _, _ in expr_rows], dtype=_STR)
            if len(np.unique(f["sent_id"][()])) != len(expr_rows):
                raise InputError(where, "duplicate sent_id values")
            f.attrs.update(attrs)
    return n_img


def build_cache(
    records: Sequence[Expression],
    vocab: Vocab,
    out: str | Path,
    image_size: int,
    max_tokens: int = 20,
    dataset: str = "",
    split: str = "",
    *,
    train: bool,
) -> dict:
    """Write the cache of ``records`` (one split) atomically to ``out``; return its attributes.

    ``train``: whether this is the training split. Only there are expressions skipped (counted
    per reason in the ``skipped`` attribute); an evaluated split holds every expression of
    ``records`` or fails with a one-line ``InputError`` naming the bad file. Steps:
    ``tokenize_expressions``, ``decode_masks``, ``write_cache``. An empty split is an error.
    """
    out = Path(out)
    where = f"{dataset or out.parent.name} split {split or out.stem}"
    if not records:
        raise InputError(where, "split has no expressions")
    kept, skipped = tokenize_expressions(records, train)
    objects, bad = decode_masks(kept, train, where)
    skipped.update(bad)
    if not objects.expressions:
        raise InputError(where, f"no usable expression left (skipped: {dict(skipped)})")
    attrs = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "split": split,
        "role": "train" if train else "eval",
        "image_size": image_size,
        "max_tokens": max_tokens,
        "vocab_size": len(vocab),
        "vocab_sha1": vocab.digest(),
        "n_expressions": len(objects.expressions),
        "n_skipped": int(sum(skipped.values())),
        "skipped": json.dumps(dict(skipped), sort_keys=True),
    }
    n_img = write_cache(out, objects, vocab, attrs, where)
    if skipped:
        log.warning("%s: skipped %d expression(s): %s", where, attrs["n_skipped"], dict(skipped))
    no_tokens = sum(not tokens for _, tokens, _ in objects.expressions)
    if no_tokens:
        log.warning("%s: %d expression(s) without tokens kept as all <pad>", where, no_tokens)
    n_ref, n_expr = len(objects.records), attrs["n_expressions"]
    log.info(
        "%s (%s): cached %d images, %d objects, %d expressions -> %s", where, attrs["role"], n_img, n_ref, n_expr, out
    )
    return attrs


class CacheReader(LazyH5):
    """Random access to a cache file; its h5py handle is opened lazily, once per process
    (``LazyH5``), so a reader can be handed to DataLoader workers."""

    def __init__(self, path: str | Path):
        super().__init__(path, "cache")
        f = self.file
        if f.attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(self.path, f"cache format {f.attrs.get('format_version')} != {FORMAT_VERSION}; rebuild it")
        self.attrs = dict(f.attrs)
        self.image_size = int(self.attrs["image_size"])
        self.max_tokens = int(self.attrs["max_tokens"])
        # Small per-expression tables are read once into memory.
        self.sent_id = f["sent_id"][()]
        self.sent_ref = f["sent_ref"][()]
        self.image_index = f["image_index"][()]
        self.tokens = f["tokens"][()]
        self.n_tokens = f["n_tokens"][()]
        self.ref_id = f["ref_id"][()]
        self.image_hw = f["image_hw"][()]

    def __len__(self) -> int:
        return len(self.sent_id)

    def check_compatible(self, vocab: Vocab, image_size: int, reader: str) -> None:
        """``reader`` (a model or a training config) can only use a cache tokenized with its
        vocabulary at its image size; otherwise a one-line ``InputError`` naming this cache."""
        if self.attrs.get("vocab_sha1") != vocab.digest():
            raise InputError(self.path, f"was tokenized with another vocabulary than {reader}; rebuild the cache")
        if self.image_size != int(image_size):
            raise InputError(self.path, f"image size {self.image_size} differs from {reader} ({image_size})")

    @property
    def n_images(self) -> int:
        return len(self.image_hw)

    def image(self, image_index: int) -> np.ndarray:
        """Padded RGB image ``(S, S, 3) uint8``."""
        return self.file["images"][image_index]

    def images(self, image_indices: Sequence[int]) -> np.ndarray:
        """Several padded images ``(K, S, S, 3) uint8``, read in sorted order."""
        idx = np.asarray(image_indices)
        order = np.argsort(idx)
        out = np.empty((len(idx), self.image_size, self.image_size, 3), np.uint8)
        ds = self.file["images"]
        for o in order:
            out[o] = ds[idx[o]]
        return out

    def padded_mask(self, expr: int) -> np.ndarray:
        """Padded ground truth ``(S, S) bool`` of expression row ``expr``."""
        return self.file["ref_masks"][self.sent_ref[expr]]

    def targets(self) -> np.ndarray:
        """All training targets ``(N_ref, S/8, S/8) bool`` (small: read once)."""
        return self.file["ref_targets"][()]

    def original_mask(self, expr: int) -> np.ndarray:
        """Ground truth at the original image resolution, ``(h, w) bool``."""
        h, w = self.image_hw[self.image_index[expr]]
        return rle_decode(self.file["ref_rle"][self.sent_ref[expr]].tobytes(), h, w)

    def original_size(self, expr: int) -> tuple[int, int]:
        h, w = self.image_hw[self.image_index[expr]]
        return int(h), int(w)

    def geometry(self, expr: int) -> PadGeometry:
        h, w = self.original_size(expr)
        return PadGeometry.of(h, w, self.image_size)

    def sentence(self, expr: int) -> str:
        return self.file["sentence"][expr].decode("utf-8")

    def image_file(self, image_index: int) -> str:
        return self.file["image_file"][image_index].decode("utf-8")
