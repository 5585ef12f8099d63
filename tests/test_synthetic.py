"""The procedural panorama-captioning dataset: determinism, layout, and captions that depend on the image."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panollava.offline.synthetic import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    SYNTHETIC_QUERIES,
    SyntheticObject,
    describe_object,
    direction_of,
    generate_synthetic_dataset,
    render_panorama,
    vocabulary_corpus,
)
from panollava.errors import InvalidInputError

SMALL = {"num_train": 20, "num_val": 8, "num_test": 8, "size_hw": (64, 128), "seed": 3}
H, W = 128, 256


def _is_color(pixel: np.ndarray, name: str, tol: float = 40.0) -> bool:
    return float(np.abs(pixel.astype(float) - np.asarray(COLORS[name], dtype=float)).max()) < tol


def _color_mask(image: np.ndarray, name: str, tol: float = 40.0) -> np.ndarray:
    return np.abs(image.astype(float) - np.asarray(COLORS[name], dtype=float)).max(axis=-1) < tol


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_synthetic_dataset(root, **SMALL)


# ------------------------------------------------------------------------------------------- geometry


def test_yaw_90_is_at_three_quarters_of_the_width() -> None:
    image = render_panorama(SyntheticObject("red", "circle", 90.0, 0.0, 30.0), (H, W))
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert _is_color(image[H // 2, 3 * W // 4], "red")
    assert not _is_color(image[H // 2, W // 4], "red")
    assert not _is_color(image[H // 2, W // 2], "red")


def test_yaw_180_straddles_the_seam() -> None:
    image = render_panorama(SyntheticObject("red", "circle", 180.0, 0.0, 30.0), (H, W))
    assert _is_color(image[H // 2, 0], "red") and _is_color(image[H // 2, W - 1], "red")
    assert not _is_color(image[H // 2, W // 2], "red")
    # Symmetric about the seam: the columns covered on the left edge mirror those on the right edge.
    row = _color_mask(image, "red")[H // 2]
    assert row[: W // 2].sum() == pytest.approx(row[W // 2 :].sum(), abs=1)


def test_yaw_minus_90_and_pitch_up() -> None:
    image = render_panorama(SyntheticObject("blue", "bar", -90.0, 40.0, 15.0), (H, W))
    y_centre = round((0.5 - 40.0 / 180.0) * H)
    assert _is_color(image[y_centre, W // 4], "blue")
    assert not _is_color(image[H - y_centre, W // 4], "blue")


def test_high_pitch_is_stretched_in_columns() -> None:
    def widest_row(pitch_deg: float) -> int:
        image = render_panorama(SyntheticObject("red", "circle", 0.0, pitch_deg, 20.0), (H, W))
        return int(_color_mask(image, "red").sum(axis=1).max())

    at_horizon, at_60 = widest_row(0.0), widest_row(60.0)
    # A 20-degree disc at the horizon spans ~40 degrees of longitude; at pitch 60 about 1/cos(60) = 2x more.
    assert at_horizon == pytest.approx(40 / 360 * W, abs=2)
    assert at_60 > 1.6 * at_horizon


def test_matches_py360convert_perspective_views() -> None:
    py360convert = pytest.importorskip("py360convert")
    image = render_panorama(SyntheticObject("yellow", "circle", 90.0, 0.0, 30.0), (H, W))
    right = py360convert.e2p(image, 90.0, 90.0, 0.0, (32, 32))
    left = py360convert.e2p(image, 90.0, -90.0, 0.0, (32, 32))
    assert _is_color(right[16, 16], "yellow")
    assert not _color_mask(left, "yellow").any()


def test_shapes_differ_and_render_deterministically() -> None:
    masks = {
        shape: _color_mask(render_panorama(SyntheticObject("green", shape, 0.0, 0.0, 30.0), (H, W)), "green")
        for shape in SHAPES
    }
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).sum() > 100, (a, b)
    assert masks["circle"][H // 2, W // 2] and not masks["ring"][H // 2, W // 2]  # the ring has a hole
    bar = masks["bar"]
    assert np.ptp(np.nonzero(bar.any(axis=0))[0]) > 2 * np.ptp(np.nonzero(bar.any(axis=1))[0])
    obj = SyntheticObject("white", "triangle", 12.5, -3.0, 27.0)
    assert np.array_equal(render_panorama(obj, (H, W), seed=5), render_panorama(obj, (H, W), seed=5))
    assert not np.array_equal(render_panorama(obj, (H, W), seed=5), render_panorama(obj, (H, W), seed=6))


def test_direction_classes() -> None:
    assert [direction_of(y) for y in (0, 10, 80, 100, 179, -179, 540, -95, -30)] == [
        "front", "front", "right", "right", "behind", "behind", "behind", "left", "front"
    ]


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="unknown colour 'purple'"):
        SyntheticObject("purple", "circle", 0.0, 0.0, 30.0)
    with pytest.raises(InvalidInputError, match="unknown shape"):
        SyntheticObject("red", "hexagon", 0.0, 0.0, 30.0)
    with pytest.raises(InvalidInputError, match="pitch_deg"):
        SyntheticObject("red", "circle", 0.0, 95.0, 30.0)
    with pytest.raises(InvalidInputError, match=r"\(H, 2H\)"):
        render_panorama(SyntheticObject("red", "circle", 0.0, 0.0, 30.0), (100, 100))


# ------------------------------------------------------------------------------------------- dataset


def test_layout_and_columns(dataset: tuple[Path, dict[str, Path]]) -> None:
    root, csvs = dataset
    assert set(csvs) == {"train", "val", "test"}
    assert (root / "README.md").is_file() and (root / "synthetic.json").is_file()
    for split, path in csvs.items():
        assert path == root / f"{split}.csv"
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["url", "query", "annotation"]
        assert set(frame["query"]) == set(SYNTHETIC_QUERIES)
        assert frame["url"].str.fullmatch(rf"images/{split}_\d{{4}}\.png").all()
        assert frame["url"].nunique() == SMALL[f"num_{split}"]
        for url in frame["url"].unique():
            with Image.open(root / url) as image:
                assert image.format == "PNG" and image.mode == "RGB" and image.size == (128, 64)


def test_every_pair_has_several_short_references(dataset: tuple[Path, dict[str, Path]]) -> None:
    _, csvs = dataset
    frame = pd.read_csv(csvs["train"])
    sizes = frame.groupby(["url", "query"]).size()
    assert len(sizes) == SMALL["num_train"] * len(SYNTHETIC_QUERIES)
    assert (sizes >= 2).all()
    assert frame.groupby(["url", "query"])["annotation"].nunique().min() >= 2  # paraphrases, not copies
    assert frame["annotation"].str.split().str.len().max() <= 8


def test_captions_describe_what_is_in_the_image(dataset: tuple[Path, dict[str, Path]]) -> None:
    root, csvs = dataset
    for split, path in csvs.items():
        frame = pd.read_csv(path)
        for url, group in frame.groupby("url"):
            refs = dict(zip(group["query"], group["annotation"]))  # last reference of each query
            color = next(c for c in COLORS if f" {c}" in f" {refs['color']}")
            with Image.open(root / url) as handle:
                image = np.asarray(handle.convert("RGB"))
            mask = _color_mask(image, color)
            assert mask.mean() > 0.01, (split, url, color)
            for other in COLORS:
                if other != color:
                    assert _color_mask(image, other).mean() < 0.002, (split, url, color, other)
            # Circular mean of the object's yaw, from its pixel columns.
            _, xs = np.nonzero(mask)
            yaw = np.deg2rad(((xs + 0.5) / image.shape[1] - 0.5) * 360.0)
            mean_yaw = float(np.rad2deg(np.arctan2(np.sin(yaw).mean(), np.cos(yaw).mean())))
            direction = direction_of(mean_yaw)
            obj = SyntheticObject(color, "circle", DIRECTIONS[direction], 0.0, 30.0)
            assert group.loc[group["query"] == "position", "annotation"].tolist() == list(
                describe_object(obj)["position"]
            ), (split, url, mean_yaw)


def test_ground_truth_matches_captions_and_images(dataset: tuple[Path, dict[str, Path]]) -> None:
    root, csvs = dataset
    marker = json.loads((root / "synthetic.json").read_text())
    objects = marker["objects"]
    assert len(objects) == SMALL["num_train"] + SMALL["num_val"] + SMALL["num_test"]
    frames = {split: pd.read_csv(path) for split, path in csvs.items()}
    for record in objects:
        obj = SyntheticObject(*(record[k] for k in ("color", "shape", "yaw_deg", "pitch_deg", "radius_deg")))
        rows = frames[record["split"]]
        rows = rows[rows["url"] == record["url"]]
        for query, references in describe_object(obj).items():
            assert rows.loc[rows["query"] == query, "annotation"].tolist() == list(references)
        assert record["shape"] in rows.loc[rows["query"] == "shape", "annotation"].iloc[0]


def test_classes_are_balanced_in_every_split(dataset: tuple[Path, dict[str, Path]]) -> None:
    root, _ = dataset
    objects = json.loads((root / "synthetic.json").read_text())["objects"]
    for split in ("train", "val", "test"):
        in_split = [o for o in objects if o["split"] == split]
        for key, classes in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            counts = Counter(o[key] for o in in_split)
            per_class = [counts.get(c, 0) for c in classes]
            assert max(per_class) - min(per_class) <= 1, (split, key, counts)


def test_test_split_is_disjoint_from_train(dataset: tuple[Path, dict[str, Path]]) -> None:
    root, csvs = dataset
    urls = {split: set(pd.read_csv(path)["url"]) for split, path in csvs.items()}
    assert not urls["train"] & urls["test"] and not urls["train"] & urls["val"]
    assert not urls["val"] & urls["test"]
    digests = {
        split: {hashlib.sha256((root / u).read_bytes()).hexdigest() for u in split_urls}
        for split, split_urls in urls.items()
    }
    assert len(digests["train"]) == len(urls["train"])
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["val"]


def test_vocabulary_covers_every_caption_and_query(dataset: tuple[Path, dict[str, Path]]) -> None:
    _, csvs = dataset
    corpus = set(vocabulary_corpus())
    assert set(SYNTHETIC_QUERIES) <= corpus
    for path in csvs.values():
        assert set(pd.read_csv(path)["annotation"]) <= corpus
    assert max(len(text.split()) for text in corpus) <= 8


def test_same_seed_gives_identical_files_and_reuse_does_not_rewrite(tmp_path: Path) -> None:
    params = {"num_train": 6, "num_val": 2, "num_test": 2, "size_hw": (32, 64), "seed": 11}
    generate_synthetic_dataset(tmp_path / "a", **params)
    generate_synthetic_dataset(tmp_path / "b", **params)
    first = _digest_tree(tmp_path / "a")
    assert first == _digest_tree(tmp_path / "b")
    assert len([name for name in first if name.startswith("images/")]) == 10

    generate_synthetic_dataset(tmp_path / "c", **{**params, "seed": 12})
    other = _digest_tree(tmp_path / "c")
    assert all(first[name] != other[name] for name in first if name.startswith("images/"))

    marker = tmp_path / "a" / "synthetic.json"
    mtime = marker.stat().st_mtime_ns
    generate_synthetic_dataset(tmp_path / "a", **params)
    assert marker.stat().st_mtime_ns == mtime


def test_interrupted_and_conflicting_runs(tmp_path: Path) -> None:
    params = {"num_train": 4, "num_val": 1, "num_test": 1, "size_hw": (32, 64), "seed": 0}
    root = tmp_path / "ds"
    generate_synthetic_dataset(root, **params)
    reference = _digest_tree(root)

    # Interrupted run: no marker (written last) -> regenerated, identical.
    (root / "synthetic.json").unlink()
    (root / "images" / "train_0002.png").unlink()
    generate_synthetic_dataset(root, **params)
    assert _digest_tree(root) == reference

    # A missing image under an existing marker is also incomplete.
    (root / "images" / "val_0001.png").unlink()
    generate_synthetic_dataset(root, **params)
    assert _digest_tree(root) == reference

    with pytest.raises(InvalidInputError, match="other parameters.*overwrite=True"):
        generate_synthetic_dataset(root, **{**params, "num_train": 8})
    paths = generate_synthetic_dataset(root, **{**params, "num_train": 8}, overwrite=True)
    assert pd.read_csv(paths["train"])["url"].nunique() == 8
    assert len(list((root / "images").glob("*.png"))) == 10

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty.*notes.txt"):
        generate_synthetic_dataset(foreign, **params)
    generate_synthetic_dataset(foreign, **params, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"

    with pytest.raises(InvalidInputError, match="num_val"):
        generate_synthetic_dataset(tmp_path / "bad", num_val=-1)


def test_queries_subset_writes_only_those_queries(tmp_path):
    import csv as _csv

    from panollava.offline.synthetic import generate_synthetic_dataset

    paths = generate_synthetic_dataset(tmp_path, num_train=4, num_val=1, num_test=1, queries=["position", "color"])
    with open(paths["train"], newline="") as fh:
        queries = {row["query"] for row in _csv.DictReader(fh)}
    assert queries == {"color", "position"}
    with pytest.raises(InvalidInputError, match="subset"):
        generate_synthetic_dataset(tmp_path / "bad", num_train=1, queries=["weather"])
