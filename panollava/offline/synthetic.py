"""A procedural panorama-captioning dataset whose captions can only be right if the image is used.

Metrics of a randomly initialised tiny model prove that the plumbing runs, not that it is right: ignored
image tokens, shifted labels, frozen LoRA weights, right-padded generation or the wrong checkpoint all still
produce numbers. This module draws panoramas in which one large coloured shape sits at a known direction and
writes captions that depend only on what is where, so a tiny model trained by the project must measurably use
the image to beat the text-only baseline.

Each panorama is an equirectangular image (2:1) with a plain grey background (a mild vertical gradient, a
slight tint and pixel noise) and ONE object:

* colour: one of :data:`COLORS` (red, green, blue, yellow, white);
* shape: one of :data:`SHAPES` (circle, ring, triangle, bar), defined on the sphere and rasterised per
  equirectangular pixel, so it is distorted exactly as a real object would be (wider in columns away from the
  horizon, wrapped at the seam);
* direction: one of :data:`DIRECTIONS` (front, right, behind, left) with a jitter of a few degrees in yaw and
  pitch; angular radius 25-35 degrees.

Angle convention (the same as ``py360convert.e2p(u_deg=yaw, v_deg=pitch)`` and the project's crop
strategies): yaw 0 looks at the panorama's centre column and positive yaw turns right, so a pixel column ``x``
of a ``W``-wide image looks at ``yaw = ((x + 0.5) / W - 0.5) * 360``: yaw +90 is at ``x = 3W/4``, yaw -90 at
``x = W/4`` and yaw +-180 at the left/right edges (the seam). Pitch is positive upwards: row ``y`` of an
``H``-high image looks at ``pitch = (0.5 - (y + 0.5) / H) * 180``.

The dataset is written in the QuIC-360 layout (``url,query,annotation``; ``url`` relative to the CSV's folder;
several reference rows per (url, query) pair, one paraphrase per row) by :func:`generate_synthetic_dataset`.
Everything is deterministic from the seed: the same arguments give byte-identical CSVs and PNG images.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from panollava.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "GENERATOR_VERSION",
    "SHAPES",
    "SYNTHETIC_QUERIES",
    "SyntheticObject",
    "describe_object",
    "direction_of",
    "generate_synthetic_dataset",
    "render_panorama",
    "vocabulary_corpus",
]

#: Bumped whenever rendering, sampling or captions change, so that a cached dataset is regenerated.
GENERATOR_VERSION = 1

#: Object colours (RGB), chosen far apart from each other and from the grey background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 185, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
}

#: Object shapes, chosen to stay distinguishable in ~32x32 px views.
#: (A square was dropped: at 32x32 px it was the shape most often confused with the circle.)
SHAPES: tuple[str, ...] = ("circle", "ring", "triangle", "bar")

#: Direction classes and their yaw centres in degrees (see the module docstring for the convention).
DIRECTIONS: dict[str, float] = {"front": 0.0, "right": 90.0, "behind": 180.0, "left": -90.0}

#: The queries asked about every panorama, in QuIC-360's short-subject style.
SYNTHETIC_QUERIES: tuple[str, ...] = ("color", "shape", "position", "the object")

# Per direction: (relative to the camera, relative to the viewer, short form). Captions stay within 8 words.
_DIRECTION_PHRASES: dict[str, tuple[str, str, str]] = {
    "front": ("in front of the camera", "in front of you", "ahead"),
    "right": ("to the right of the camera", "on your right", "to the right"),
    "behind": ("behind the camera", "behind you", "behind the camera"),
    "left": ("to the left of the camera", "on your left", "to the left"),
}

# Reference templates per query: every (panorama, query) pair gets one row per template.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("the object is {color}", "a {color} object", "it is {color}"),
    "shape": ("the object is a {shape}", "a {shape}", "it is a {shape}"),
    "position": ("it is {cam}", "the object is {you}", "the object is {short}"),
    "the object": (
        "a {color} {shape} {short}",
        "the {color} {shape} is {you}",
        "there is a {color} {shape} {short}",
    ),
}

# Sampling ranges of the dataset generator (degrees).
_YAW_JITTER_DEG = 12.0
_PITCH_JITTER_DEG = 8.0
_RADIUS_RANGE_DEG = (25.0, 35.0)

# Shape proportions relative to the angular radius r (areas ~2-3 r^2; the ring's hole stays visible in 32 px
# views of 90 degrees).
_TRIANGLE_CIRCUMRADIUS = 1.3
_BAR_HALF_WH = (1.25, 0.4)
_RING_INNER = 0.55

_SUPERSAMPLE = 2
_SPLITS: tuple[str, ...] = ("train", "val", "test")
_IMAGE_NAME = re.compile(r"^(train|val|test)_\d{4,}\.png$")
_OWN_ENTRIES = frozenset({"train.csv", "val.csv", "test.csv", "README.md", "synthetic.json", "images"})
_MARKER = "synthetic.json"


@dataclass(frozen=True)
class SyntheticObject:
    """The single object of a synthetic panorama.

    Attributes:
        color: A key of :data:`COLORS`.
        shape: One of :data:`SHAPES`.
        yaw_deg: Direction of the object's centre; 0 = panorama centre column, positive = to the right.
        pitch_deg: Elevation of the centre in [-90, 90]; positive = up.
        radius_deg: Angular radius (size) of the shape in (0, 90).

    Raises:
        InvalidInputError: If a field is outside its allowed values.
    """

    color: str
    shape: str
    yaw_deg: float
    pitch_deg: float
    radius_deg: float

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise InvalidInputError(f"unknown colour {self.color!r}: expected one of {sorted(COLORS)}")
        if self.shape not in SHAPES:
            raise InvalidInputError(f"unknown shape {self.shape!r}: expected one of {list(SHAPES)}")
        if not -90.0 <= self.pitch_deg <= 90.0:
            raise InvalidInputError(f"pitch_deg must be in [-90, 90], got {self.pitch_deg}")
        if not 0.0 < self.radius_deg < 90.0:
            raise InvalidInputError(f"radius_deg must be in (0, 90), got {self.radius_deg}")
        if not np.isfinite(self.yaw_deg):
            raise InvalidInputError(f"yaw_deg must be finite, got {self.yaw_deg}")


def direction_of(yaw_deg: float) -> str:
    """Name the direction class (a key of :data:`DIRECTIONS`) nearest to a yaw angle.

    Args:
        yaw_deg: Yaw in degrees, any range (wrapped to (-180, 180]).

    Returns:
        ``"front"``, ``"right"``, ``"behind"`` or ``"left"``.
    """
    yaw = _wrap_deg(yaw_deg)
    return min(DIRECTIONS, key=lambda name: abs(_wrap_deg(yaw - DIRECTIONS[name])))


def describe_object(obj: SyntheticObject) -> dict[str, tuple[str, ...]]:
    """Reference captions of a panorama, per query.

    Args:
        obj: The panorama's object.

    Returns:
        ``{query: (reference, ...)}`` for every query of :data:`SYNTHETIC_QUERIES`, in template order.
    """
    cam, you, short = _DIRECTION_PHRASES[direction_of(obj.yaw_deg)]
    fields = {"color": obj.color, "shape": obj.shape, "cam": cam, "you": you, "short": short}
    return {query: tuple(t.format(**fields) for t in _TEMPLATES[query]) for query in SYNTHETIC_QUERIES}


def vocabulary_corpus() -> list[str]:
    """Every query string and every caption the generator can write (deduplicated, in a fixed order).

    Meant for training the tiny test tokenizer; the prompt template is not included (add it yourself).

    Returns:
        The queries followed by all captions of all colour x shape x direction combinations.
    """
    corpus: dict[str, None] = dict.fromkeys(SYNTHETIC_QUERIES)
    for color in COLORS:
        for shape in SHAPES:
            for yaw in DIRECTIONS.values():
                obj = SyntheticObject(color, shape, yaw, 0.0, 30.0)
                for references in describe_object(obj).values():
                    corpus.update(dict.fromkeys(references))
    return list(corpus)


def render_panorama(
    obj: SyntheticObject, size_hw: tuple[int, int] = (128, 256), seed: int = 0
) -> np.ndarray:
    """Draw one object on a noisy grey equirectangular background.

    The shape is defined in azimuthal-equidistant coordinates around the object's centre (angular distance and
    bearing on the sphere) and tested for every equirectangular pixel, so it shows the distortion of a real
    panorama. Edges are antialiased by 2x2 supersampling.

    Args:
        obj: The object to draw.
        size_hw: Output size (H, W); W must be 2 * H.
        seed: Seed of the background's tint, gradient and noise.

    Returns:
        The panorama, ``uint8`` array of shape (H, W, 3).

    Raises:
        InvalidInputError: If ``size_hw`` is not a 2:1 size of at least (8, 16).
    """
    height, width = _check_size(size_hw)
    rng = np.random.default_rng(seed)

    # Background: grey, lighter towards the zenith, slightly tinted, noisy; independent of the object.
    level = rng.uniform(95.0, 125.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    gradient = rng.uniform(15.0, 30.0)
    rows = np.linspace(1.0, -1.0, height)[:, None, None]
    background = level + tint[None, None, :] + gradient * rows
    background = np.broadcast_to(background, (height, width, 3))

    coverage = _shape_coverage(obj, height, width)[..., None]
    color = np.asarray(COLORS[obj.color], dtype=np.float64)
    image = background * (1.0 - coverage) + color * coverage
    image = image + rng.normal(0.0, 3.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_synthetic_dataset(
    output_dir: str | Path,
    num_train: int = 200,
    num_val: int = 40,
    num_test: int = 40,
    size_hw: tuple[int, int] = (128, 256),
    seed: int = 0,
    overwrite: bool = False,
    queries: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Path]:
    """Write the synthetic dataset as QuIC-360-style CSVs plus PNG panoramas, or reuse a complete one.

    Layout::

        output_dir/
          train.csv  val.csv  test.csv   url,query,annotation; url = images/<split>_<NNNN>.png
          images/<split>_<NNNN>.png      the panoramas (each split has its own panoramas)
          README.md                      provenance, layout, angle convention
          synthetic.json                 parameters, generator version, CSV checksums, ground truth

    Every panorama gets one row per reference template for each query of :data:`SYNTHETIC_QUERIES` (3
    references per (url, query) pair). Colours, shapes and directions are balanced within each split (class
    counts differ by at most one) and drawn independently of each other. ``synthetic.json`` is written last,
    atomically: a folder without it (or whose files do not match it) is an interrupted run and is regenerated.

    Args:
        output_dir: Folder to write; created if missing.
        num_train: Panoramas in the training split.
        num_val: Panoramas in the validation split.
        num_test: Panoramas in the test split.
        size_hw: Panorama size (H, W), W = 2 * H.
        seed: Seed of everything random; the same arguments give byte-identical files.
        overwrite: Replace a dataset generated with other parameters, or write into a folder holding other
            files (those are left alone).
        queries: The queries to write (a subset of :data:`SYNTHETIC_QUERIES`, in that order); None writes all.

    Returns:
        ``{"train": Path, "val": Path, "test": Path}``: the CSV paths.

    Raises:
        InvalidInputError: If an argument is out of range, or ``output_dir`` holds a dataset with other
            parameters or files this generator did not write, and ``overwrite`` is False.
    """
    height, width = _check_size(size_hw)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInputError(f"num_{split} must be a non-negative integer, got {count!r}")
    if num_train < 1:
        raise InvalidInputError(f"num_train must be at least 1, got {num_train}")

    if queries is None:
        queries = SYNTHETIC_QUERIES
    unknown = sorted(set(queries) - set(SYNTHETIC_QUERIES))
    if unknown or not queries:
        raise InvalidInputError(f"queries must be a non-empty subset of {SYNTHETIC_QUERIES}, got {list(queries)}")
    queries = tuple(q for q in SYNTHETIC_QUERIES if q in queries)

    out = Path(output_dir).expanduser().absolute()
    csv_paths = {split: out / f"{split}.csv" for split in _SPLITS}
    params = {
        "generator": "panollava.offline.synthetic",
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "size_hw": [height, width],
        "seed": int(seed),
        **({"queries": list(queries)} if queries != SYNTHETIC_QUERIES else {}),
    }

    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output_dir '{out}' exists and is not a directory: pass a folder path")
    state = _existing_state(out, params)
    if state == "complete":
        logger.info("Reusing the synthetic dataset at '%s' (same parameters, complete).", out)
        return csv_paths
    if state == "other-params" and not overwrite:
        raise InvalidInputError(
            f"'{out / _MARKER}' describes a synthetic dataset generated with other parameters than "
            f"{params}: pass overwrite=True to replace it, or choose another output_dir."
        )
    if state == "foreign" and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        raise InvalidInputError(
            f"output_dir '{out}' is not empty and holds no synthetic dataset "
            f"(found: {', '.join(entries[:10])}{', ...' if len(entries) > 10 else ''}): choose an empty or "
            "new folder, or pass overwrite=True (files this generator does not write are left alone)."
        )
    if state == "incomplete":
        logger.warning("The synthetic dataset at '%s' is incomplete (interrupted run?): regenerating.", out)
    elif state in ("other-params", "foreign"):
        logger.info("overwrite=True: replacing the synthetic dataset files in '%s'.", out)

    _remove_own_files(out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    objects_json: list[dict[str, object]] = []
    csv_digests: dict[str, str] = {}
    for split_index, split in enumerate(_SPLITS):
        rows: list[tuple[str, str, str]] = []
        for number, (obj, render_seed) in enumerate(_sample_split(seed, split_index, counts[split]), start=1):
            url = f"images/{split}_{number:04d}.png"
            image = render_panorama(obj, (height, width), seed=render_seed)
            _write_png(image, out / url)
            for query, references in describe_object(obj).items():
                if query not in queries:
                    continue
                rows.extend((url, query, reference) for reference in references)
            objects_json.append(
                {"split": split, "url": url, "direction": direction_of(obj.yaw_deg), **asdict(obj)}
            )
        csv_digests[split] = _write_csv(rows, csv_paths[split])

    (out / "README.md").write_text(_readme(params), encoding="utf-8")
    marker = {
        **params, "csv_sha256": csv_digests, "queries": list(queries), "objects": objects_json
    }
    _atomic_write_bytes(out / _MARKER, (json.dumps(marker, indent=1) + "\n").encode("utf-8"))
    logger.info(
        "Wrote a synthetic panorama dataset to '%s': %s panoramas (train/val/test), %dx%d px, seed %d.",
        out, "/".join(str(counts[s]) for s in _SPLITS), height, width, seed,
    )
    return csv_paths


# --------------------------------------------------------------------------------------------- geometry


def _wrap_deg(angle_deg: float) -> float:
    """Wrap an angle to (-180, 180]."""
    wrapped = (angle_deg + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 else wrapped


def _check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise InvalidInputError(f"size_hw must be (H, W), got {size_hw!r}") from None
    if height < 8 or width != 2 * height:
        raise InvalidInputError(
            f"size_hw must be an equirectangular (H, 2H) size with H >= 8, got {tuple(size_hw)}"
        )
    return height, width


@functools.lru_cache(maxsize=4)
def _pixel_directions(height: int, width: int, supersample: int) -> np.ndarray:
    """Unit view directions of the supersampled pixel grid, (H*s, W*s, 3) in (right, up, forward) axes."""
    ys = (np.arange(height * supersample) + 0.5) / (height * supersample)
    xs = (np.arange(width * supersample) + 0.5) / (width * supersample)
    lat = np.deg2rad((0.5 - ys) * 180.0)[:, None]
    lon = np.deg2rad((xs - 0.5) * 360.0)[None, :]
    dirs = np.stack(
        np.broadcast_arrays(np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)), axis=-1
    )
    dirs.setflags(write=False)
    return dirs


def _shape_coverage(obj: SyntheticObject, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by the object's shape, (H, W) float64 in [0, 1]."""
    yaw, pitch = np.deg2rad(obj.yaw_deg), np.deg2rad(obj.pitch_deg)
    centre = np.array([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)])
    east = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])  # direction of increasing yaw at the centre
    north = np.array([-np.sin(pitch) * np.sin(yaw), np.cos(pitch), -np.sin(pitch) * np.cos(yaw)])

    dirs = _pixel_directions(height, width, _SUPERSAMPLE)
    d_east, d_north, d_centre = dirs @ east, dirs @ north, dirs @ centre
    # Azimuthal-equidistant coordinates around the centre: angular distance along the bearing, in degrees.
    sin_dist = np.hypot(d_east, d_north)
    dist_deg = np.rad2deg(np.arctan2(sin_dist, d_centre))
    scale = np.divide(dist_deg, sin_dist, out=np.zeros_like(dist_deg), where=sin_dist > 0)
    u, v = d_east * scale, d_north * scale  # u to the right, v up
    r = obj.radius_deg

    if obj.shape == "circle":
        inside = dist_deg <= r
    elif obj.shape == "bar":
        half_w, half_h = _BAR_HALF_WH
        inside = (np.abs(u) <= half_w * r) & (np.abs(v) <= half_h * r)
    elif obj.shape == "ring":
        inside = (dist_deg <= r) & (dist_deg >= _RING_INNER * r)
    elif obj.shape == "triangle":
        # Equilateral, apex up: inside the three edges, each at the inradius (half the circumradius).
        inradius = 0.5 * _TRIANGLE_CIRCUMRADIUS * r
        inside = np.ones_like(u, dtype=bool)
        for normal_deg in (-90.0, 30.0, 150.0):
            a = np.deg2rad(normal_deg)
            inside &= u * np.cos(a) + v * np.sin(a) <= inradius
    else:  # unreachable: SyntheticObject validates the shape
        raise AssertionError(obj.shape)

    s = _SUPERSAMPLE
    return inside.reshape(height, s, width, s).mean(axis=(1, 3))


# --------------------------------------------------------------------------------------------- sampling


def _balanced(values: list, count: int, rng: np.random.Generator) -> list:
    """``count`` values with equal counts (+-1) in a random order; which classes get one more is random."""
    order = rng.permutation(len(values))
    tiled = [values[order[i % len(values)]] for i in range(count)]
    return [tiled[i] for i in rng.permutation(count)]


def _sample_split(seed: int, split_index: int, count: int) -> Iterator[tuple[SyntheticObject, int]]:
    """The objects of one split and the seed of each panorama's background."""
    rng = np.random.default_rng([int(seed), split_index])
    colors = _balanced(list(COLORS), count, rng)
    shapes = _balanced(list(SHAPES), count, rng)
    directions = _balanced(list(DIRECTIONS), count, rng)
    for color, shape, direction in zip(colors, shapes, directions):
        yaw = _wrap_deg(DIRECTIONS[direction] + rng.uniform(-_YAW_JITTER_DEG, _YAW_JITTER_DEG))
        pitch = rng.uniform(-_PITCH_JITTER_DEG, _PITCH_JITTER_DEG)
        radius = rng.uniform(*_RADIUS_RANGE_DEG)
        obj = SyntheticObject(color, shape, round(yaw, 3), round(pitch, 3), round(radius, 3))
        yield obj, int(rng.integers(0, 2**31 - 1))


# --------------------------------------------------------------------------------------------- files


def _existing_state(out: Path, params: dict[str, object]) -> str:
    """Classify ``out``: missing/empty, complete, other-params, incomplete (our files only) or foreign."""
    if not out.is_dir() or not any(out.iterdir()):
        return "empty"
    marker_path = out / _MARKER
    if marker_path.is_file():
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            marker = None
        if isinstance(marker, dict) and marker.get("generator") == params["generator"]:
            if any(marker.get(key) != value for key, value in params.items()):
                return "other-params"
            if _is_complete(out, marker):
                return "complete"
            return "incomplete"
    if _only_own_entries(out):
        return "incomplete"
    return "foreign"


def _is_complete(out: Path, marker: dict) -> bool:
    digests = marker.get("csv_sha256") or {}
    for split in _SPLITS:
        path = out / f"{split}.csv"
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digests.get(split):
            return False
    objects = marker.get("objects") or []
    expected = sum(int(marker[f"num_{split}"]) for split in _SPLITS)
    return len(objects) == expected and all((out / str(o.get("url"))).is_file() for o in objects)


def _only_own_entries(out: Path) -> bool:
    for entry in out.iterdir():
        if entry.name.endswith(".tmp"):
            continue
        if entry.name not in _OWN_ENTRIES:
            return False
        if entry.name == "images":
            if not entry.is_dir():
                return False
            if any(not (_IMAGE_NAME.match(p.name) or p.name.endswith(".tmp")) for p in entry.iterdir()):
                return False
    return True


def _remove_own_files(out: Path) -> None:
    """Delete what this generator writes (marker first, so an interrupted rewrite is detected)."""
    if not out.is_dir():
        return
    for name in (_MARKER, "README.md", "train.csv", "val.csv", "test.csv"):
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    images = out / "images"
    if images.is_dir():
        for path in images.iterdir():
            if path.is_file() and (_IMAGE_NAME.match(path.name) or path.name.endswith(".tmp")):
                path.unlink()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image  # pillow is a core dependency; imported here to keep the module import light

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    path.write_bytes(buffer.getvalue())


def _write_csv(rows: list[tuple[str, str, str]], path: Path) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("url", "query", "annotation"))
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    _atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _readme(params: dict[str, object]) -> str:
    height, width = params["size_hw"]  # type: ignore[misc]
    return f"""# Synthetic panorama captions (generated)

Generated by `panollava.offline.synthetic.generate_synthetic_dataset` (generator version
{params["generator_version"]}) with seed {params["seed"]}: {params["num_train"]} train,
{params["num_val"]} val and {params["num_test"]} test panoramas of {width}x{height} px. No real data: every
image is drawn procedurally, so the folder can be deleted and regenerated byte-identically from
`synthetic.json`'s parameters.

Each equirectangular panorama shows one large shape (colour: {", ".join(COLORS)}; shape: {", ".join(SHAPES)})
at one of four directions (front = yaw 0, right = yaw +90, behind = yaw 180, left = yaw -90, a few degrees of
jitter; pitch near 0), drawn on the sphere so it is distorted like a real object. Yaw 0 is the image's centre
column, positive yaw turns right (yaw +90 is at x = 3W/4), yaw 180 is at the left/right edges; pitch is
positive upwards (the convention of py360convert's `e2p`).

Layout (QuIC-360's): `train.csv`, `val.csv`, `test.csv` with columns `url,query,annotation`; `url` is relative
to this folder (`images/<split>_<NNNN>.png`); queries are {", ".join(repr(q) for q in SYNTHETIC_QUERIES)};
each (url, query) pair has 3 rows, one reference caption each (paraphrases). The splits use different
panoramas. `synthetic.json` (written last; its absence marks an interrupted run) holds the parameters, the
CSVs' SHA-256 and every panorama's ground truth (colour, shape, yaw, pitch, radius).
"""
