"""RefCOCO / RefCOCO+ / RefCOCOg (and the generated shapes sets) in the ``refer`` toolkit layout.

``refer_dir/refs(<split_by>).p`` is a pickled list of refs::

    {ref_id, ann_id, image_id, split, category_id, sent_ids, file_name,
     sentences: [{sent_id, sent, raw, tokens}, ...]}

and ``refer_dir/instances.json`` is COCO-style (``images`` with ``id, file_name, height,
width``; ``annotations`` with ``id, image_id, category_id, bbox, area, segmentation``). As in
the official code, the mask of a ref is its single annotation ``ann_id`` (the union of that
annotation's polygons, or its RLE), and the image is COCO train2014 ``COCO_train2014_%012d.jpg``
from ``image_id`` (a ref's ``file_name`` names an annotation crop, not a real file).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from rmi.data.masks import CocoSegments
from rmi.data.records import Expression
from rmi.errors import InputError

REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
IMAGE_KEYS = ("id", "height", "width")
ANN_KEYS = ("id", "image_id", "segmentation")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain data (lists, dicts, strings, numbers): no globals, so no code runs."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refuses global {module}.{name} (refs must be plain lists and dicts)")


def coco_file_name(image_id: int, ann_id: int | None = None) -> str:
    """COCO train2014 image file name ``COCO_train2014_<image_id:012d>.jpg`` (with ``ann_id``: the
    ``..._<ann_id>.jpg`` crop name a ref's ``file_name`` holds)."""
    suffix = "" if ann_id is None else f"_{int(ann_id)}"
    return f"COCO_train2014_{int(image_id):012d}{suffix}.jpg"


def coco_image_path(image_dir: Path, image_id: int) -> Path:
    """``image_dir / coco_file_name(image_id)``."""
    return Path(image_dir) / coco_file_name(image_id)


def read_json(path: Path):
    """Parse a JSON file; a missing or malformed file is a one-line ``InputError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file is missing")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from err


def read_refs(path: Path) -> list[dict]:
    """The list of ref dicts in a ``refs(<split_by>).p`` pickle (validated: ``REF_KEYS`` present)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file is missing")
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as err:
        raise InputError(path, f"truncated or corrupt pickle ({type(err).__name__}: {err})") from err
    if not isinstance(refs, list):
        raise InputError(path, f"expected a pickled list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise InputError(path, f"ref #{i} is a {type(ref).__name__}, not a dict")
        missing = [k for k in REF_KEYS if k not in ref]
        if missing:
            raise InputError(path, f"ref {ref.get('ref_id', f'#{i}')} lacks key {missing[0]!r}")
        if not isinstance(ref["sentences"], list):
            raise InputError(
                path, f"ref {ref['ref_id']}: 'sentences' is a {type(ref['sentences']).__name__}, not a list"
            )
    return refs


def _index(path: Path, data, section: str, keys: tuple[str, ...]) -> dict[int, dict]:
    """``data[section]`` (a list of dicts holding ``keys``) indexed by ``id``."""
    entries = data.get(section)
    if not isinstance(entries, list):
        raise InputError(path, f"no {section!r} list")
    index = {}
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            name = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
            raise InputError(path, f"{section} entry {name} lacks key {missing[0]!r}")
        index[int(entry["id"])] = entry
    return index


def read_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """``(images, annotations)`` of a COCO ``instances.json``, each indexed by ``id``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got {type(data).__name__}")
    return _index(path, data, "images", IMAGE_KEYS), _index(path, data, "annotations", ANN_KEYS)


def _sentence(refs_path: Path, ref: dict, sent, field: str) -> tuple[int, str]:
    if not isinstance(sent, dict) or "sent_id" not in sent or field not in sent:
        key = "sent_id" if isinstance(sent, dict) and field in sent else field
        raise InputError(refs_path, f"ref {ref['ref_id']}: a sentence lacks key {key!r}")
    if not isinstance(sent[field], str):
        raise InputError(refs_path, f"ref {ref['ref_id']} sentence {sent['sent_id']}: {field!r} is not a string")
    return int(sent["sent_id"]), sent[field]


def load_refer(
    refer_dir: Path, split_by: str, image_dir: Path, split: str, sentence_field: str = "sent"
) -> list[Expression]:
    """One ``Expression`` per sentence of every ref whose ``split`` is ``split``.

    Order: refs as in the pickle, then their sentences in order. ``sentence_field`` picks the
    text: ``"sent"`` (the toolkit's cleaned sentence, what the official code uses) or ``"raw"``.
    The mask source is ``CocoSegments`` of the ref's annotation (``key = "ann<ann_id>"``), at the
    image's ``height x width``. Raises a one-line ``InputError`` for a missing or corrupt file, a
    ref or entry lacking a key, a ref pointing to an unknown annotation or image, a duplicate
    ``sent_id``, or a split without expressions (the message lists the splits that exist).
    """
    refer_dir, image_dir = Path(refer_dir), Path(image_dir)
    refs_path = refer_dir / f"refs({split_by}).p"
    inst_path = refer_dir / "instances.json"
    refs = read_refs(refs_path)
    images, anns = read_instances(inst_path)

    records: list[Expression] = []
    seen: set[int] = set()
    for ref in refs:
        if ref["split"] != split:
            continue
        ref_id, ann_id, image_id = int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"])
        ann = anns.get(ann_id)
        if ann is None:
            raise InputError(refs_path, f"ref {ref_id}: ann_id {ann_id} is not in {inst_path}")
        if int(ann["image_id"]) != image_id:
            raise InputError(
                refs_path, f"ref {ref_id}: image_id {image_id} but ann {ann_id} is on image {ann['image_id']}"
            )
        image = images.get(image_id)
        if image is None:
            raise InputError(refs_path, f"ref {ref_id}: image_id {image_id} is not in {inst_path}")
        mask = CocoSegments(
            segmentations=[ann["segmentation"]],
            height=int(image["height"]),
            width=int(image["width"]),
            where=f"{inst_path} ann {ann_id}",
            key=f"ann{ann_id}",
        )
        path = coco_image_path(image_dir, image_id)
        for sent in ref["sentences"]:
            sent_id, text = _sentence(refs_path, ref, sent, sentence_field)
            if sent_id in seen:
                raise InputError(refs_path, f"ref {ref_id}: duplicate sent_id {sent_id}")
            seen.add(sent_id)
            records.append(Expression(sent_id, ref_id, image_id, path, text, mask, split))
    if not records:
        splits = sorted({str(r["split"]) for r in refs})
        raise InputError(
            refs_path, f"split {split!r} has no expressions (splits present: {', '.join(splits) or 'none'})"
        )
    return records


@dataclass
class ImageObjects:
    """One image and every object annotated on it (all annotations of ``instances.json``, not only
    the referred ones): ``objects`` holds ``(category_id, attributes, mask source, iscrowd)``."""

    image_id: int
    image_path: Path
    objects: list[tuple[int, dict, CocoSegments, bool]]


def split_images(refer_dir: Path, split_by: str, image_dir: Path, split: str) -> list[ImageObjects]:
    """The images of ``split`` (those a ref of that split points to), each with ALL its annotations.

    Reads no expression: only the refs' ``split`` and ``image_id``. Images in ``image_id`` order,
    objects in annotation order. Raises a one-line ``InputError`` for missing or malformed files or a
    split without images.
    """
    refer_dir, image_dir = Path(refer_dir), Path(image_dir)
    refs_path, inst_path = refer_dir / f"refs({split_by}).p", refer_dir / "instances.json"
    image_ids = sorted({int(r["image_id"]) for r in read_refs(refs_path) if r["split"] == split})
    if not image_ids:
        raise InputError(refs_path, f"split {split!r} has no images")
    images, anns = read_instances(inst_path)
    by_image: dict[int, list] = {i: [] for i in image_ids}
    for ann_id, ann in anns.items():
        objects = by_image.get(int(ann["image_id"]))
        if objects is None:
            continue
        image = images.get(int(ann["image_id"]))
        if image is None:
            raise InputError(inst_path, f"ann {ann_id}: image_id {ann['image_id']} is not in the images list")
        mask = CocoSegments(
            [ann["segmentation"]], int(image["height"]), int(image["width"]), f"{inst_path} ann {ann_id}"
        )
        objects.append((int(ann.get("category_id", 0)), ann.get("attributes") or {}, mask, bool(ann.get("iscrowd", 0))))
    return [ImageObjects(i, coco_image_path(image_dir, i), by_image[i]) for i in image_ids]
