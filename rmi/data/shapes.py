"""Generated referring-segmentation datasets ``shapes`` and ``shapes+`` in the exact RefCOCO layout.

``generate(params, out_dir)`` writes, deterministically from ``params["seed"]``:

* ``out_dir/refs(unc).p``: the refer toolkit's pickled list of refs (``ref_id, ann_id,
  image_id, split, category_id, file_name, sent_ids, sentences [{sent_id, raw, sent, tokens}]``);
* ``out_dir/instances.json``: COCO ``images``, ``annotations`` (every object of every image;
  polygons for fully visible straight-edged shapes, compressed RLE for round shapes, rings and
  occluded objects), ``categories``;
* ``out_dir/images/COCO_train2014_<id:012d>.jpg``: varied sizes and aspect ratios, textured
  backgrounds, a ``grayscale_fraction`` of single-channel JPEGs.

Each image holds 2-6 (``objects``) shapes of 7 categories, 8 colours and varied sizes; later shapes occlude
earlier ones, and an object's mask is its visible region (at least ``MIN_VISIBLE`` of it and
``MIN_AREA`` pixels). Referred objects get 1-4 expressions that identify them uniquely among the
objects of their image (category, colour, size relative to the same category, location relative
to the other candidates), from one word ("star") to long ones with true but redundant attributes
("the big red star on the left side of the image next to the blue square"), so that the length
buckets of the paper's Tables 2-5 are all populated. ``location_words: false`` (``shapes+``, like
UNC+) never uses a word of ``LOCATION_WORDS``. On grayscale images colour words are never used
(the colour cannot be seen). As in RefCOCO, ``testA`` refers only to objects of the group
``GROUP_A`` (round shapes) and ``testB`` only to the others; train and val refer to both.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from rmi.data.refer import coco_file_name
from rmi.text import tokenize

log = logging.getLogger(__name__)

CATEGORIES = ("circle", "ellipse", "ring", "square", "triangle", "star", "diamond")
GROUP_A = frozenset({"circle", "ellipse", "ring"})  # testA targets; testB: the rest
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 210, 45),
    "purple": (135, 55, 170),
    "orange": (245, 135, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
LOCATION_WORDS = frozenset(
    "left right top bottom middle center centre above below upper lower leftmost rightmost "
    "topmost bottommost corner side next near beside behind front".split()
)
SPLITS = ("train", "val", "testA", "testB")
DEFAULT_OBJECTS = (2, 6)
DEFAULT_SCALE = (0.12, 0.28)
MIN_VISIBLE = 0.6
MIN_AREA = 40
#: (adjective, short phrase, long phrase) per relative location
LOCATIONS = {
    "left": ("left", "on the left", "on the left side of the image"),
    "right": ("right", "on the right", "on the right side of the picture"),
    "top": ("top", "at the top", "at the top of the image"),
    "bottom": ("bottom", "at the bottom", "at the bottom of the picture"),
}
LONG_NOUNS = {
    "circle": "round circle",
    "ellipse": "oval shaped ellipse",
    "ring": "hollow ring",
    "square": "square block",
    "triangle": "pointy triangle",
    "star": "five pointed star",
    "diamond": "diamond shape",
}


@dataclass
class Shape:
    """One drawn object: its category, colour, full and visible masks ``(h, w) bool``."""

    category: str
    colour: str
    mask: np.ndarray
    polygon: list[float] | None
    visible: np.ndarray | None = None

    @property
    def area(self) -> int:
        return int(self.visible.sum())

    @property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.visible)
        return float(xs.mean()), float(ys.mean())


# ------------------------------------------------------------------------------------- drawing


def _regular_polygon(cx, cy, r, n, rotation, inner=None) -> list[float]:
    """Flat ``[x1, y1, ...]`` polygon: a regular n-gon, or a star when ``inner`` is a radius ratio."""
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        rad = r * (inner if inner and i % 2 else 1.0)
        a = rotation + 2 * np.pi * i / k
        pts += [cx + rad * np.cos(a), cy + rad * np.sin(a)]
    return [round(float(v), 2) for v in pts]


def _polygon_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    """Rasterise a polygon exactly as pycocotools decodes it (so image and annotation agree)."""
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    return mask_utils.decode(rle).astype(bool)


def _ellipse_mask(cx, cy, rx, ry, h, w, hole: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    d = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2
    return (d <= 1.0) & (d >= hole**2)


def _draw_shape(
    rng: np.random.Generator, category: str, h: int, w: int, scale: tuple[float, float]
) -> tuple[np.ndarray, list[float] | None]:
    """Full mask ``(h, w) bool`` (and polygon, for straight-edged shapes) of one shape whose
    radius is ``U(scale) * min(h, w)``."""
    side = min(h, w)
    r = side * rng.uniform(*scale)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    rot = rng.uniform(0, 2 * np.pi)
    if category == "circle":
        return _ellipse_mask(cx, cy, r, r, h, w), None
    if category == "ellipse":
        ratio = rng.uniform(0.45, 0.65)
        return (
            _ellipse_mask(cx, cy, r, r * ratio, h, w)
            if rng.random() < 0.5
            else _ellipse_mask(cx, cy, r * ratio, r, h, w)
        ), None
    if category == "ring":
        return _ellipse_mask(cx, cy, r, r, h, w, hole=0.55), None
    if category == "square":
        poly = _regular_polygon(cx, cy, r * 1.1, 4, rot)
    elif category == "triangle":
        poly = _regular_polygon(cx, cy, r * 1.15, 3, rot)
    elif category == "star":
        poly = _regular_polygon(cx, cy, r * 1.2, 5, rot, inner=0.45)
    else:  # diamond: a rhombus with a vertical long axis
        poly = [cx, cy - r * 1.2, cx + r * 0.7, cy, cx, cy + r * 1.2, cx - r * 0.7, cy]
        poly = [round(float(v), 2) for v in poly]
    return _polygon_mask(poly, h, w), poly


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, low-saturation colour field with pixel noise ``(h, w, 3) float``."""
    base = rng.uniform(70, 185, size=3)
    tint = rng.normal(0, 20, size=(3, 3, 3))
    small = np.clip(base + tint, 0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float64)
    return field + rng.normal(0, 8, size=(h, w, 3))


def _place_shapes(rng: np.random.Generator, h: int, w: int, n: int, scale: tuple[float, float]) -> list[Shape]:
    """Draw ``n`` shapes in order (later ones in front); every shape keeps enough visible area."""
    shapes: list[Shape] = []
    for _ in range(n):
        for _attempt in range(30):
            category = CATEGORIES[rng.integers(len(CATEGORIES))]
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            mask, poly = _draw_shape(rng, category, h, w, scale)
            if mask.sum() < MIN_AREA / MIN_VISIBLE:
                continue
            trial = shapes + [Shape(category, colour, mask, poly)]
            if _assign_visibility(trial):
                shapes = trial
                break
    _assign_visibility(shapes)
    return shapes


def _assign_visibility(shapes: list[Shape]) -> bool:
    """Set each shape's visible mask; False if any would be hidden too much."""
    front = np.zeros_like(shapes[0].mask) if shapes else None
    for s in reversed(shapes):
        s.visible = s.mask & ~front
        front |= s.mask
        if s.visible.sum() < max(MIN_AREA, MIN_VISIBLE * s.mask.sum()):
            return False
    return True


def _render(rng: np.random.Generator, h: int, w: int, shapes: list[Shape]) -> np.ndarray:
    img = _background(rng, h, w)
    for s in shapes:
        colour = np.asarray(COLOURS[s.colour], np.float64) * rng.uniform(0.9, 1.05)
        img[s.mask] = colour + rng.normal(0, 6, size=(int(s.mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ expressions


def _relative_location(target: int, candidates: list[int], shapes: list[Shape], h: int, w: int) -> list[str]:
    """Directions in which ``target`` is the clear extreme of ``candidates`` (margin 12% of the side)."""
    cx, cy = shapes[target].centre
    others = [shapes[i].centre for i in candidates if i != target]
    if not others:
        return []
    ox, oy = np.array([o[0] for o in others]), np.array([o[1] for o in others])
    out = []
    if cx < ox.min() - 0.12 * w:
        out.append("left")
    if cx > ox.max() + 0.12 * w:
        out.append("right")
    if cy < oy.min() - 0.12 * h:
        out.append("top")
    if cy > oy.max() + 0.12 * h:
        out.append("bottom")
    return out


def _relative_size(target: int, candidates: list[int], shapes: list[Shape]) -> str | None:
    """``big``/``small`` when ``target`` is 1.6x larger/smaller than every other candidate."""
    others = [shapes[i].area for i in candidates if i != target]
    if not others:
        return None
    a = shapes[target].area
    if a > 1.6 * max(others):
        return "big"
    if a * 1.6 < min(others):
        return "small"
    return None


def _descriptions(
    target: int, shapes: list[Shape], h: int, w: int, colour_ok: bool, location_ok: bool, rng
) -> dict | None:
    """A minimal set of attributes that singles ``target`` out, or None if there is none.

    Returns ``{"colour": bool, "size": str|None, "loc": str|None}``; among several minimal sets
    one is drawn at random (variety).
    """
    t = shapes[target]
    same_cat = [i for i, s in enumerate(shapes) if s.category == t.category]
    options = []
    for use_colour in [False, True] if colour_ok else [False]:
        cands = [i for i in same_cat if not use_colour or shapes[i].colour == t.colour]
        if cands == [target]:
            options.append((int(use_colour), {"colour": use_colour, "size": None, "loc": None}))
            continue
        size = _relative_size(target, cands, shapes)
        if size:
            options.append((1 + use_colour, {"colour": use_colour, "size": size, "loc": None}))
        if location_ok:
            for loc in _relative_location(target, cands, shapes, h, w):
                options.append((1 + use_colour, {"colour": use_colour, "size": None, "loc": loc}))
    if not options:
        return None
    best = min(cost for cost, _ in options)
    minimal = [d for cost, d in options if cost == best]
    return minimal[rng.integers(len(minimal))]


def _nearest(target: int, shapes: list[Shape]) -> int:
    cx, cy = shapes[target].centre
    dist = [np.hypot(s.centre[0] - cx, s.centre[1] - cy) if i != target else np.inf for i, s in enumerate(shapes)]
    return int(np.argmin(dist))


def _absolute_location(shape: Shape, h: int, w: int) -> str | None:
    cx, cy = shape.centre
    if cx < w / 3:
        return "left"
    if cx > 2 * w / 3:
        return "right"
    if cy < h / 3:
        return "top"
    if cy > 2 * h / 3:
        return "bottom"
    return None


def _variants(
    target: int, d: dict, shapes: list[Shape], h: int, w: int, colour_ok: bool, location_ok: bool
) -> list[str]:
    """Expressions of increasing length for one minimal description ``d`` (all true and unique)."""
    t = shapes[target]
    colour = t.colour if d["colour"] else ""
    size = d["size"] or ""
    core = " ".join(x for x in (size, colour, t.category) if x)
    noun = "one" if t.category == "diamond" else "shape"
    out = [
        core,
        f"the {core}",
        f"{core} {noun}",
        f"the {core} {noun}",
        f"{'an' if core[0] in 'aeiou' else 'a'} {core} in the picture",
    ]
    if d["loc"]:
        adj, short, _ = LOCATIONS[d["loc"]]
        out = [
            f"{adj} {core}",
            f"the {adj} {core}",
            f"the {core} {short}",
            f"{core} {short}",
            f"the {adj} {core} {noun}",
        ]
    # long: every true attribute, with long phrasing
    words = ["the"]
    if size:
        words.append({"big": "big", "small": "small"}[size])
    if colour_ok:
        words.append(t.colour)
    words.append(LONG_NOUNS[t.category])
    loc = d["loc"] or (_absolute_location(t, h, w) if location_ok else None)
    if loc:
        words.append(LOCATIONS[loc][2])
    if location_ok:
        other = shapes[_nearest(target, shapes)]
        words.append(f"next to the {other.colour + ' ' if colour_ok else ''}{other.category}")
    elif size:
        words.append(f"that is {'bigger' if size == 'big' else 'smaller'} than the other {t.category}s")
    elif colour_ok:
        words.append(f"painted in {t.colour}")
    out.append(" ".join(words))
    return out


def _bucket(n_tokens: int) -> int:
    return 0 if n_tokens <= 2 else 1 if n_tokens == 3 else 2 if n_tokens <= 5 else 3


def _pick(rng, variants: list[str], k: int) -> list[str]:
    """Up to ``k`` distinct variants, spread over the length buckets (1-2 / 3 / 4-5 / 6-20)."""
    by_bucket = collections.defaultdict(list)
    for v in dict.fromkeys(variants):
        by_bucket[_bucket(len(tokenize(v)))].append(v)
    buckets = list(by_bucket)
    rng.shuffle(buckets)
    chosen = []
    for b in buckets[:k]:
        chosen.append(by_bucket[b][rng.integers(len(by_bucket[b]))])
    return chosen


def _raw(rng, sentence: str) -> str:
    """What an annotator typed: sometimes capitalised, sometimes with a final period."""
    if rng.random() < 0.3:
        sentence = sentence[0].upper() + sentence[1:]
    if rng.random() < 0.2:
        sentence += "."
    return sentence


# -------------------------------------------------------------------------------- dataset


def _segmentation(s: Shape, h: int, w: int) -> list | dict:
    """A polygon for a fully visible straight-edged shape, else the visible region as RLE."""
    if s.polygon is not None and np.array_equal(s.visible, s.mask):
        return [s.polygon]
    rle = mask_utils.encode(np.asfortranarray(s.visible.astype(np.uint8)))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def generate(params: dict, out_dir: str | Path) -> dict:
    """Write the dataset described by ``params`` (config ``generator:``) to ``out_dir``, atomically.

    ``params``: ``seed, location_words, images {split: n}, min_side, max_side,
    grayscale_fraction`` and optionally ``objects [min, max]`` per image (default ``[2, 6]``) and
    ``object_scale [min, max]``, the shape radius as a share of the image's short side (default
    ``[0.12, 0.28]``). The dataset is built in a temporary sibling directory that replaces
    ``out_dir`` at the end. Returns counts: ``{split: {"images", "refs", "expressions"}}`` and
    ``buckets`` (share of expressions per length bucket 1-2/3/4-5/6-20).
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(int(params["seed"]))
    location_ok = bool(params["location_words"])
    n_min, n_max = (int(v) for v in params.get("objects", DEFAULT_OBJECTS))
    scale = tuple(float(v) for v in params.get("object_scale", DEFAULT_SCALE))
    if not 2 <= n_min <= n_max or not 0 < scale[0] <= scale[1] < 0.5:
        raise ValueError(
            f"need 2 <= objects[0] <= objects[1] and 0 < object_scale[0] <= object_scale[1] < 0.5, got {params}"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        images, annotations, refs = [], [], []
        summary: dict = {}
        lengths = []
        image_id, ann_id, ref_id, sent_id = 1, 1, 1, 1
        for split in SPLITS:
            n_images = int(params["images"].get(split, 0))
            counts = {"images": n_images, "refs": 0, "expressions": 0}
            for _ in range(n_images):
                while True:  # redraw until the image has a referable object of the split's group
                    h, w = (int(v) for v in rng.integers(params["min_side"], params["max_side"] + 1, size=2))
                    shapes = _place_shapes(rng, h, w, int(rng.integers(n_min, n_max + 1)), scale)
                    gray = bool(rng.random() < params["grayscale_fraction"])
                    targets = []
                    for i, s in enumerate(shapes):
                        if split == "testA" and s.category not in GROUP_A:
                            continue
                        if split == "testB" and s.category in GROUP_A:
                            continue
                        d = _descriptions(i, shapes, h, w, not gray, location_ok, rng)
                        if d is not None:
                            targets.append((i, d))
                    if len(shapes) >= 2 and targets:
                        break
                pixels = _render(rng, h, w, shapes)
                pil = Image.fromarray(pixels)
                (pil.convert("L") if gray else pil).save(tmp / "images" / coco_file_name(image_id), quality=90)
                images.append({"id": image_id, "file_name": coco_file_name(image_id), "height": h, "width": w})
                ann_ids = []
                for s in shapes:
                    annotations.append(
                        {
                            "id": ann_id,
                            "image_id": image_id,
                            "category_id": CATEGORIES.index(s.category) + 1,
                            "segmentation": _segmentation(s, h, w),
                            "area": float(s.area),
                            "bbox": _bbox(s.visible),
                            "iscrowd": 0,
                        }
                    )
                    ann_ids.append(ann_id)
                    ann_id += 1
                keep = [t for t in targets if rng.random() < 0.75] or [targets[rng.integers(len(targets))]]
                used: set[str] = set()
                for i, d in keep:
                    variants = _variants(i, d, shapes, h, w, not gray, location_ok)
                    texts = [v for v in _pick(rng, variants, int(rng.integers(1, 5))) if v not in used]
                    if not texts:
                        continue
                    used.update(texts)
                    sentences = []
                    for text in texts:
                        raw = _raw(rng, text)
                        tokens = tokenize(raw)
                        sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)})
                        lengths.append(len(tokens))
                        sent_id += 1
                    refs.append(
                        {
                            "ref_id": ref_id,
                            "ann_id": ann_ids[i],
                            "image_id": image_id,
                            "split": split,
                            "category_id": CATEGORIES.index(shapes[i].category) + 1,
                            "file_name": coco_file_name(image_id, ann_ids[i]),
                            "sent_ids": [s["sent_id"] for s in sentences],
                            "sentences": sentences,
                        }
                    )
                    counts["refs"] += 1
                    counts["expressions"] += len(sentences)
                    ref_id += 1
                image_id += 1
            summary[split] = counts
        with open(tmp / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f, protocol=2)
        instances = {
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": c, "supercategory": "round" if c in GROUP_A else "angular"}
                for k, c in enumerate(CATEGORIES)
            ],
        }
        (tmp / "instances.json").write_text(json.dumps(instances, separators=(",", ":")))
        hist = np.bincount([_bucket(n) for n in lengths], minlength=4) / max(1, len(lengths))
        summary["buckets"] = {b: round(float(v), 4) for b, v in zip(("1-2", "3", "4-5", "6-20"), hist, strict=True)}
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary
