"""ReferItGame (``referit``) as released with text_objseg (Hu et al.), used by the RMI code.

``referit_query_<split>.json`` maps a crop name ``"<image>_<k>"`` (the k-th annotated region of
image ``<image>``) to its list of expressions; the image is ``image_dir/<image>.jpg`` and the mask
``mask_dir/<image>_<k>.mat``, foreground where ``segimg_t == 0``.

Ids (the files have none): ``image_id = int(<image>)``; ``ref_id = image_id * 1000 + k``
(unique since ``k < 1000``; the real files have ``k <= 34``); ``sent_id = ref_id * 100 + j`` for
the j-th expression of the crop (unique since ``j < 100``; at most 14 in the real files). Both
bounds are checked, so ids can never collide silently.
"""

from __future__ import annotations

from pathlib import Path

from rmi.data.masks import MatFileMask
from rmi.data.records import Expression
from rmi.data.refer import read_json
from rmi.errors import InputError

MAX_CROPS_PER_IMAGE = 1000
MAX_EXPRESSIONS_PER_CROP = 100


def parse_crop(query_file: Path, name: str) -> tuple[int, int]:
    """``"<image>_<k>"`` -> ``(image_id, k)`` as ints; anything else is an ``InputError``."""
    image, _, k = str(name).partition("_")
    if not (image.isdigit() and k.isdigit()):
        raise InputError(query_file, f"crop name {name!r} is not '<image>_<k>' with numeric parts")
    if int(k) >= MAX_CROPS_PER_IMAGE:
        raise InputError(query_file, f"crop {name!r}: k >= {MAX_CROPS_PER_IMAGE} would make ref_id collide")
    return int(image), int(k)


def _splits_present(query_file: Path) -> str:
    names = sorted(
        p.name[len("referit_query_") : -len(".json")] for p in query_file.parent.glob("referit_query_*.json")
    )
    return ", ".join(names) or "none"


def load_referit(query_file: Path, image_dir: Path, mask_dir: Path, split: str) -> list[Expression]:
    """One ``Expression`` per expression of every crop in ``query_file``.

    Crops are sorted by ``(image_id, k)`` and expressions keep their order in the file, so the
    record order does not depend on the JSON's key order. The mask source is
    ``MatFileMask(mask_dir/<crop>.mat, key=<crop>)``; images and masks are only read later (by
    the cache builder). Raises a one-line ``InputError`` for a missing or malformed file, a bad
    crop name or expression, or a file without expressions (the message lists the split files
    that exist beside it).
    """
    query_file, image_dir, mask_dir = Path(query_file), Path(image_dir), Path(mask_dir)
    if not query_file.is_file():
        raise InputError(query_file, f"file is missing (split files present: {_splits_present(query_file)})")
    queries = read_json(query_file)
    if not isinstance(queries, dict):
        raise InputError(
            query_file, f"expected a JSON object mapping crop names to expressions, got {type(queries).__name__}"
        )

    crops = sorted((*parse_crop(query_file, name), name) for name in queries)
    records: list[Expression] = []
    previous = None
    for image_id, k, name in crops:
        if (image_id, k) == previous:
            raise InputError(query_file, f"crop {name!r} gives the same ids as another crop name")
        previous = (image_id, k)
        texts = queries[name]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(query_file, f"crop {name!r}: expected a list of strings")
        if len(texts) > MAX_EXPRESSIONS_PER_CROP:
            raise InputError(
                query_file,
                f"crop {name!r}: more than {MAX_EXPRESSIONS_PER_CROP} expressions would make sent_id collide",
            )
        ref_id = image_id * MAX_CROPS_PER_IMAGE + k
        image_path = image_dir / f"{name.partition('_')[0]}.jpg"
        mask = MatFileMask(mask_dir / f"{name}.mat", key=name)
        for j, text in enumerate(texts):
            records.append(
                Expression(ref_id * MAX_EXPRESSIONS_PER_CROP + j, ref_id, image_id, image_path, text, mask, split)
            )
    if not records:
        raise InputError(
            query_file, f"split {split!r} has no expressions (split files present: {_splits_present(query_file)})"
        )
    return records
