"""Generated referring-segmentation datasets ``shapes`` and ``shapes+`` in the exact RefCOCO layout.

``generate(params, out_dir)`` writes, deterministically from ``params["seed"]``:

* ``out_dir/refs(unc).p``: the refer toolkit's pickled list of refs (``ref_id, ann_id,
  image_id, split, category_id, file_name, sent_ids, sentences [{sent_id, raw, sent, tokens}]``);
* ``out_dir/instances.json``: COCO ``images``, ``annotations`` (every object of every image),
  ``categories``. As in COCO, every object (``iscrowd: 0``) is a list of polygons: a ring is two
  half-annuli, an occluded object the polygons of its visible part (holes are cut into hole-free
  pieces). Some images also hold a crowd of small dots behind the objects, stored as compressed RLE
  with ``iscrowd: 1``, which no ref points to (as in RefCOCO). Each annotation also carries
  ``attributes: {"colour": <name>}`` (not a COCO key; the refer toolkit ignores it), which the demo's
  trunk pretraining reads;
* ``out_dir/images/COCO_train2014_<id:012d>.jpg``: varied sizes and aspect ratios, textured
  backgrounds, a ``grayscale_fraction`` of single-channel JPEGs.

The image is painted from the DECODED annotations (``pycocotools`` ``frPyObjects`` + ``decode``, as
the toolkit's ``REFER.getMask`` reads them), so an object's mask is exactly the region that shows
it. Each image holds 2-6 (``objects``) shapes of 7 categories, 8 colours and varied sizes; later
shapes occlude earlier ones, and every object keeps at least ``MIN_VISIBLE`` of its area and
``MIN_AREA`` pixels. Shapes that overlap or touch differ in colour, and on grayscale images in
brightness by at least ``MIN_LUMA_STEP``, so the border between two objects is always visible (as
the border of a mask must be, for a model or a reader to find it). Referred objects get 1-4
expressions that identify them uniquely among the objects of their image (category, colour, size
relative to the same category, location relative to the other candidates), from one word ("star") to
long ones with true but redundant attributes ("the big red star on the left side of the image next
to the blue square"), so that the length buckets of the paper's Tables 2-5 are all populated. With
``same_category`` (the demo: 1), images are drawn as RefCOCO's were chosen: each holds two or more
shapes of one category, and only shapes with such a twin are referred to, so that no expression
can name its shape by the category alone.
``location_words: false`` (``shapes+``, like UNC+) never uses a word of ``LOCATION_WORDS``. On
grayscale images colour words are never used (the colour cannot be seen). As in RefCOCO, ``testA``
refers only to objects of the group ``GROUP_A`` (round shapes) and ``testB`` only to the others;
train and val refer to both.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import pickle
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation
from shapely.geometry import LineString, Polygon
from shapely.ops import split as split_geometry
from shapely.ops import unary_union

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
#: the version of what ``generate`` writes for given params: bump it whenever a change of this module
#: changes the files, so that generate_shapes (which reads it as a param) draws every set again
SHAPES_VERSION = 2  # 2: touching shapes apart in colour
MIN_LUMA_STEP = 25  # grey level apart (0-255) of two touching shapes on a grayscale image
TOUCH_PX = 2  # outlines this close count as touching
ROUND_VERTICES = 48  # vertices of a circle/ellipse polygon (chord error < 0.25 px at radius 95)
RING_HOLE = 0.55  # inner radius of a ring / outer radius
CROWD_FRACTION = 0.2  # share of images with a crowd of grey dots (iscrowd: 1, never referred)
CROWD_CATEGORY, CROWD_COLOUR, CROWD_RGB = "circle", "grey", (128, 128, 128)
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
    """One drawn object: category, colour, its full outline (simple polygons, flat ``[x1, y1, ...]``)
    and, once placed, its visible part as COCO polygons and their decoded mask ``(h, w) bool``."""

    category: str
    colour: str
    outline: list[list[float]]
    polygons: list[list[float]] = field(default_factory=list)
    visible: np.ndarray | None = None

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.visible))

    @property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.visible)
        return float(xs.mean()), float(ys.mean())


@dataclass
class Scene:
    """One image's content: its size, the shapes (back to front) and an optional crowd mask."""

    height: int
    width: int
    shapes: list[Shape]
    crowd: np.ndarray | None = None


# ------------------------------------------------------------------------------------- drawing


def _flat(points) -> list[float]:
    """``[(x, y), ...]`` -> COCO's flat ``[x1, y1, x2, y2, ...]``, rounded to 1/100 px."""
    return np.round(np.asarray(list(points), np.float64), 2).ravel().tolist()


def _ellipse_points(cx, cy, rx, ry, start: float, stop: float, n: int) -> list[tuple[float, float]]:
    angles = np.linspace(start, stop, n)
    return list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles), strict=True))


def _regular_polygon(cx, cy, r, n, rotation, inner=None) -> list[float]:
    """Flat ``[x1, y1, ...]`` polygon: a regular n-gon, or a star when ``inner`` is a radius ratio."""
    k = 2 * n if inner else n
    radii = [r * (inner if inner and i % 2 else 1.0) for i in range(k)]
    angles = rotation + 2 * np.pi * np.arange(k) / k
    return _flat(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles), strict=True))


def _outline(rng: np.random.Generator, category: str, h: int, w: int, scale: tuple[float, float]) -> list[list[float]]:
    """Simple polygons whose union is one shape of radius ``U(scale) * min(h, w)`` (a ring: two half-annuli)."""
    r = min(h, w) * rng.uniform(*scale)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    rot = rng.uniform(0, 2 * np.pi)
    n = ROUND_VERTICES
    if category == "circle":
        return [_flat(_ellipse_points(cx, cy, r, r, 0, 2 * np.pi, n + 1)[:-1])]
    if category == "ellipse":
        ratio = rng.uniform(0.45, 0.65)
        rx, ry = (r, r * ratio) if rng.random() < 0.5 else (r * ratio, r)
        return [_flat(_ellipse_points(cx, cy, rx, ry, 0, 2 * np.pi, n + 1)[:-1])]
    if category == "ring":
        halves = []
        for start in (-np.pi / 2, np.pi / 2):
            outer = _ellipse_points(cx, cy, r, r, start, start + np.pi, n // 2 + 1)
            inner = _ellipse_points(cx, cy, r * RING_HOLE, r * RING_HOLE, start + np.pi, start, n // 2 + 1)
            halves.append(_flat(outer + inner))
        return halves
    if category == "square":
        return [_regular_polygon(cx, cy, r * 1.1, 4, rot)]
    if category == "triangle":
        return [_regular_polygon(cx, cy, r * 1.15, 3, rot)]
    if category == "star":
        return [_regular_polygon(cx, cy, r * 1.2, 5, rot, inner=0.45)]
    # diamond: a rhombus with a vertical long axis
    return [_flat([(cx, cy - r * 1.2), (cx + r * 0.7, cy), (cx, cy + r * 1.2), (cx - r * 0.7, cy)])]


def decode_polygons(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """``(h, w) bool`` union of COCO polygons, decoded as the refer toolkit's ``getMask`` does."""
    if not polygons:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.frPyObjects(polygons, h, w)).any(axis=2)


def _geometry(polygons: list[list[float]]):
    return unary_union([Polygon(np.reshape(p, (-1, 2))) for p in polygons])


def _hole_free(geometry) -> list[Polygon]:
    """Polygons without holes whose union is ``geometry``: a polygon with a hole is split by the
    vertical line through that hole's centroid (a ring becomes two half-annuli), recursively."""
    out = []
    for poly in getattr(geometry, "geoms", [geometry]):
        if not isinstance(poly, Polygon) or poly.is_empty:
            continue
        if not poly.interiors:
            out.append(poly)
            continue
        x = Polygon(poly.interiors[0]).centroid.x
        _, y0, _, y1 = poly.bounds
        out += _hole_free(split_geometry(poly, LineString([(x, y0 - 1), (x, y1 + 1)])))
    return out


def _visible_polygons(shape: Shape, front) -> list[list[float]]:
    """COCO polygons of the part of ``shape`` that ``front`` (the union of the shapes before it) leaves
    visible; pieces under 1 px^2 are dropped."""
    visible = _geometry(shape.outline)
    if front is not None:
        visible = visible.difference(front)
    return [_flat(list(p.exterior.coords)[:-1]) for p in _hole_free(visible) if p.area >= 1.0]


def _assign_visibility(shapes: list[Shape], h: int, w: int) -> bool:
    """Set each shape's visible polygons and decoded mask, front to back; False if a shape keeps too
    little of itself or two decoded masks overlap (then the image would not show what they say)."""
    front, taken = None, np.zeros((h, w), bool)
    for s in reversed(shapes):
        s.polygons = _visible_polygons(s, front)
        s.visible = decode_polygons(s.polygons, h, w)
        full = np.count_nonzero(decode_polygons(s.outline, h, w))
        if np.count_nonzero(s.visible) < max(MIN_AREA, MIN_VISIBLE * full) or (s.visible & taken).any():
            return False
        taken |= s.visible
        front = _geometry(s.outline) if front is None else front.union(_geometry(s.outline))
    return True


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, low-saturation colour field with pixel noise ``(h, w, 3) float``."""
    base = rng.uniform(70, 185, size=3)
    tint = rng.normal(0, 20, size=(3, 3, 3))
    small = np.clip(base + tint, 0, 255).astype(np.uint8)
    field_ = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float64)
    return field_ + 8 * rng.standard_normal((h, w, 3), dtype=np.float32)


def _roughly_visible(fulls: list[np.ndarray]) -> bool:
    """The visibility rule of ``_assign_visibility`` on the decoded full outlines ``(h, w) bool`` (back to
    front): a cheap test that turns most crowded placements down before the exact polygon geometry."""
    covered = np.zeros_like(fulls[0])
    for full in reversed(fulls):
        area = np.count_nonzero(full)
        if np.count_nonzero(full & ~covered) < max(MIN_AREA, MIN_VISIBLE * area):
            return False
        covered |= full
    return True


def _luma(colour: str) -> float:
    """The grey level (ITU-R 601, as PIL's ``convert("L")``) of a colour of ``COLOURS``."""
    r, g, b = COLOURS[colour]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _colours_apart_from(neighbours: list[str], gray: bool) -> list[str]:
    """The colours a shape may take next to shapes of colours ``neighbours``: any other colour, and
    on a grayscale image one at least ``MIN_LUMA_STEP`` grey levels from each."""
    if gray:
        return [c for c in COLOURS if all(abs(_luma(c) - _luma(n)) >= MIN_LUMA_STEP for n in neighbours)]
    return [c for c in COLOURS if c not in neighbours]


def _place_shapes(
    rng: np.random.Generator,
    h: int,
    w: int,
    n: int,
    scale: tuple[float, float],
    gray: bool,
    forced: dict[int, str] | None = None,
) -> list[Shape]:
    """Draw ``n`` shapes in order (later ones in front); every shape keeps enough visible area, and its
    colour sets it apart from the shapes its outline touches (``_colours_apart_from``). ``forced``:
    the category of the shapes at those positions of the order (the others: drawn at random)."""
    shapes: list[Shape] = []
    fulls: list[np.ndarray] = []
    nears: list[np.ndarray] = []
    for k in range(n):
        for _attempt in range(30):
            category = (forced or {}).get(k) or CATEGORIES[rng.integers(len(CATEGORIES))]
            outline = _outline(rng, category, h, w, scale)
            full = decode_polygons(outline, h, w)
            # within TOUCH_PX of a placed shape = meeting its dilation (the structuring element is symmetric)
            allowed = _colours_apart_from(
                [s.colour for s, near in zip(shapes, nears, strict=True) if (full & near).any()], gray
            )
            if not allowed:
                continue
            shape = Shape(category, allowed[rng.integers(len(allowed))], outline)
            if _roughly_visible([*fulls, full]) and _assign_visibility([*shapes, shape], h, w):
                shapes.append(shape)
                fulls.append(full)
                nears.append(binary_dilation(full, iterations=TOUCH_PX))
                break
    _assign_visibility(shapes, h, w)
    return shapes


def _crowd(rng: np.random.Generator, h: int, w: int, shapes: list[Shape]) -> np.ndarray | None:
    """A cluster of small dots behind the shapes (visible part, ``(h, w) bool``) in ``CROWD_FRACTION``
    of the images, else None."""
    if rng.random() >= CROWD_FRACTION:
        return None
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx, spread = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, 0.12 * min(h, w)
    dots = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(8, 16))):
        y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
        dots |= (yy - y) ** 2 + (xx - x) ** 2 <= (0.015 * min(h, w) + 1) ** 2
    for s in shapes:
        dots &= ~s.visible
    return dots if np.count_nonzero(dots) >= MIN_AREA else None


def _render(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """``(h, w, 3) uint8``: background, the crowd, then each shape's decoded visible mask in its colour."""
    img = _background(rng, scene.height, scene.width)
    regions = [(s.visible, COLOURS[s.colour]) for s in scene.shapes]
    if scene.crowd is not None:
        regions.insert(0, (scene.crowd, CROWD_RGB))
    for mask, rgb in regions:
        tone = np.asarray(rgb, np.float64) * rng.uniform(0.9, 1.05)
        img[mask] = tone + 6 * rng.standard_normal((np.count_nonzero(mask), 3), dtype=np.float32)
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
    one is drawn at random (variety): first the kind of attribute that does the singling out (colour,
    size, location), each kind as likely as the others, then one set of that kind (e.g. "left" or
    "top"), so that a target with two telling directions is not described by its location twice as
    often as by its colour.
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
    by_kind = collections.defaultdict(list)
    for cost, d in options:
        if cost == best:
            by_kind["loc" if d["loc"] else "size" if d["size"] else "colour"].append(d)
    kinds = sorted(by_kind)
    minimal = by_kind[kinds[rng.integers(len(kinds))]]
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


class _Ids:
    """Running ids of images, annotations, refs and sentences (1-based, as in COCO)."""

    def __init__(self):
        self.counters = collections.Counter()

    def next(self, kind: str) -> int:
        self.counters[kind] += 1
        return self.counters[kind]


def _check_params(params: dict) -> tuple[tuple[int, int], tuple[float, float]]:
    """``(objects [min, max], object_scale [min, max])`` of the generator params, with their defaults."""
    n_min, n_max = (int(v) for v in params.get("objects", DEFAULT_OBJECTS))
    scale = tuple(float(v) for v in params.get("object_scale", DEFAULT_SCALE))
    if not 2 <= n_min <= n_max or not 0 < scale[0] <= scale[1] < 0.5:
        raise ValueError(
            f"need 2 <= objects[0] <= objects[1] and 0 < object_scale[0] <= object_scale[1] < 0.5, got {params}"
        )
    return (n_min, n_max), scale


def _referable(split: str, category: str) -> bool:
    """testA refers only to ``GROUP_A`` objects, testB only to the others (as RefCOCO's people/objects)."""
    return {"testA": category in GROUP_A, "testB": category not in GROUP_A}.get(split, True)


def _same_category(rng, split: str, n: int) -> dict[int, str]:
    """Positions (in drawing order) of 2 to ``n`` shapes of one category referable in ``split``."""
    referable = [c for c in CATEGORIES if _referable(split, c)]
    category = referable[rng.integers(len(referable))]
    slots = rng.permutation(n)[: int(rng.integers(2, n + 1))]
    return {int(k): category for k in slots}


def _draw_scene(rng, split: str, params: dict, objects, scale, location_ok: bool):
    """``(scene, gray, targets)``: an image with at least two shapes and one referable target of the
    split's group; ``targets`` = ``[(shape index, minimal description)]``.

    A ``same_category`` share of the images (as every RefCOCO image) holds 2 or more shapes of one
    category, and only shapes that share their category with another are referred to there, so their
    expressions must tell them apart by colour, size or location."""
    same_share = float(params.get("same_category", 0.0))
    while True:
        h, w = (int(v) for v in rng.integers(params["min_side"], params["max_side"] + 1, size=2))
        gray = bool(rng.random() < params["grayscale_fraction"])
        n = int(rng.integers(objects[0], objects[1] + 1))
        same = bool(same_share and rng.random() < same_share)
        shapes = _place_shapes(rng, h, w, n, scale, gray, _same_category(rng, split, n) if same else None)
        counts = collections.Counter(s.category for s in shapes)
        targets = []
        for i, s in enumerate(shapes):
            if not _referable(split, s.category) or (same and counts[s.category] < 2):
                continue
            d = _descriptions(i, shapes, h, w, not gray, location_ok, rng)
            if d is not None:
                targets.append((i, d))
        if len(shapes) >= 2 and targets:
            return Scene(h, w, shapes, _crowd(rng, h, w, shapes)), gray, targets


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _annotation(ann_id: int, image_id: int, category: str, colour: str, segmentation, mask, crowd: bool) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORIES.index(category) + 1,
        "segmentation": segmentation,
        "area": float(mask.sum()),
        "bbox": _bbox(mask),
        "iscrowd": int(crowd),
        "attributes": {"colour": colour},
    }


def _annotations(scene: Scene, image_id: int, ids: _Ids) -> list[dict]:
    """COCO annotations of a scene: one polygon annotation per shape (in shape order), then the crowd as RLE."""
    out = [
        _annotation(ids.next("ann"), image_id, s.category, s.colour, s.polygons, s.visible, False) for s in scene.shapes
    ]
    if scene.crowd is not None:
        rle = mask_utils.encode(np.asfortranarray(scene.crowd.astype(np.uint8)))
        seg = {"size": [scene.height, scene.width], "counts": rle["counts"].decode("ascii")}
        out.append(_annotation(ids.next("ann"), image_id, CROWD_CATEGORY, CROWD_COLOUR, seg, scene.crowd, True))
    return out


def _expressions(rng, scene: Scene, targets, gray: bool, location_ok: bool) -> list[tuple[int, list[str]]]:
    """``[(shape index, raw expressions)]`` for about 3/4 of the targets (at least one), each with 1-4
    distinct expressions of spread lengths, as an annotator typed them (``_raw``)."""
    keep = [t for t in targets if rng.random() < 0.75] or [targets[rng.integers(len(targets))]]
    used: set[str] = set()
    out = []
    for i, d in keep:
        variants = _variants(i, d, scene.shapes, scene.height, scene.width, not gray, location_ok)
        texts = [v for v in _pick(rng, variants, int(rng.integers(1, 5))) if v not in used]
        if texts:
            used.update(texts)
            out.append((i, [_raw(rng, text) for text in texts]))
    return out


def _refs(expressions, scene: Scene, split: str, image_id: int, ann_ids: list[int], ids: _Ids) -> list[dict]:
    """The refer toolkit's refs of one image's ``_expressions`` (ids from ``ids``)."""
    refs = []
    for i, raws in expressions:
        sentences = []
        for raw in raws:
            tokens = tokenize(raw)
            sentences.append({"tokens": tokens, "raw": raw, "sent_id": ids.next("sent"), "sent": " ".join(tokens)})
        refs.append(
            {
                "ref_id": ids.next("ref"),
                "ann_id": ann_ids[i],
                "image_id": image_id,
                "split": split,
                "category_id": CATEGORIES.index(scene.shapes[i].category) + 1,
                "file_name": coco_file_name(image_id, ann_ids[i]),
                "sent_ids": [s["sent_id"] for s in sentences],
                "sentences": sentences,
            }
        )
    return refs


@dataclass
class _ImageJob:
    """What ``_draw_image`` needs to draw one image on its own (in a worker process)."""

    params: dict
    split: str
    index: int  # within the split
    file: Path


def _draw_image(job: _ImageJob) -> tuple[Scene, list[tuple[int, list[str]]]]:
    """Draw, render and save one image from its own RNG, seeded by ``(seed, split, index)``: the dataset
    does not depend on how many processes draw it. Returns the scene and its ``_expressions``."""
    params = job.params
    rng = np.random.default_rng([int(params["seed"]), SPLITS.index(job.split), job.index])
    location_ok = bool(params["location_words"])
    objects, scale = _check_params(params)
    scene, gray, targets = _draw_scene(rng, job.split, params, objects, scale, location_ok)
    pil = Image.fromarray(_render(rng, scene))
    (pil.convert("L") if gray else pil).save(job.file, quality=90)
    return scene, _expressions(rng, scene, targets, gray, location_ok)


def _write_dataset(tmp: Path, images: list[dict], annotations: list[dict], refs: list[dict]) -> None:
    with open(tmp / "refs(unc).p", "wb") as f:
        # through JSON first: fresh objects, so that the pickle's bytes (its memo of shared objects)
        # depend on the content only, not on which process made which string
        pickle.dump(json.loads(json.dumps(refs)), f, protocol=2)
    categories = [
        {"id": k + 1, "name": c, "supercategory": "round" if c in GROUP_A else "angular"}
        for k, c in enumerate(CATEGORIES)
    ]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (tmp / "instances.json").write_text(json.dumps(instances, separators=(",", ":")))


def generate(params: dict, out_dir: str | Path, workers: int = 1) -> dict:
    """Write the dataset described by ``params`` (config ``generator:``) to ``out_dir``, atomically.

    ``params``: ``seed, location_words, images {split: n}, min_side, max_side,
    grayscale_fraction`` and optionally ``objects [min, max]`` per image (default ``[2, 6]``),
    ``object_scale [min, max]``, the shape radius as a share of the image's short side (default
    ``[0.12, 0.28]``) and ``same_category``, the share of images whose referred shapes each share
    their category with another shape (default 0; see ``_draw_scene``). Images are drawn by
    ``workers`` processes, each from its own seed, so the files are the same for any ``workers``. The
    dataset is built in a temporary sibling directory that replaces ``out_dir`` at the end. Returns
    counts: ``{split: {"images", "refs", "expressions"}}`` and ``buckets`` (share of expressions per
    length bucket 1-2/3/4-5/6-20).
    """
    out_dir = Path(out_dir)
    _check_params(params)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        order = [(split, k) for split in SPLITS for k in range(int(params["images"].get(split, 0)))]
        jobs = [
            _ImageJob(params, split, k, tmp / "images" / coco_file_name(image_id))
            for image_id, (split, k) in enumerate(order, start=1)
        ]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                drawn = list(pool.map(_draw_image, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
        else:
            drawn = [_draw_image(job) for job in jobs]
        images, annotations, refs, ids, summary = [], [], [], _Ids(), {}
        for job, (scene, expressions) in zip(jobs, drawn, strict=True):
            image_id = ids.next("image")
            images.append({"id": image_id, "file_name": job.file.name, "height": scene.height, "width": scene.width})
            anns = _annotations(scene, image_id, ids)
            annotations += anns
            refs += _refs(expressions, scene, job.split, image_id, [a["id"] for a in anns], ids)
        for split in SPLITS:
            split_refs = [r for r in refs if r["split"] == split]
            summary[split] = {
                "images": int(params["images"].get(split, 0)),
                "refs": len(split_refs),
                "expressions": sum(len(r["sentences"]) for r in split_refs),
            }
        _write_dataset(tmp, images, annotations, refs)
        lengths = [len(s["tokens"]) for r in refs for s in r["sentences"]]
        hist = np.bincount([_bucket(n) for n in lengths], minlength=4) / max(1, len(lengths))
        summary["buckets"] = {b: round(float(v), 4) for b, v in zip(("1-2", "3", "4-5", "6-20"), hist, strict=True)}
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary
