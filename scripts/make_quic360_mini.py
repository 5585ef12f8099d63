"""Regenerate ``panollava/assets/quic360-mini/`` (bundled demo data) from ``../shared/data/quic360-sample``.

The five real QuIC-360 test panoramas are downscaled to 512x256 JPEG (quality 85, no EXIF/ICC/XMP metadata)
under the same file names, ``test.csv`` is copied byte for byte (all 87 rows, ``url`` relative to the CSV's
folder), and ``train.csv`` / ``val.csv`` split those rows by image: the first three images (sorted by file
name) for training, the fourth for validation; the fifth appears only in ``test.csv``. ``test.csv`` keeps all
rows, so it overlaps train and val: the folder exists to exercise the pipeline on real images, not to measure
generalisation.

Usage (from the project root)::

    python scripts/make_quic360_mini.py [--source ../shared/data/quic360-sample]
                                        [--output panollava/assets/quic360-mini]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

from PIL import Image

logger = logging.getLogger("make_quic360_mini")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "data" / "quic360-sample"
DEFAULT_OUTPUT = PROJECT_ROOT / "panollava" / "assets" / "quic360-mini"
SIZE_WH = (512, 256)
JPEG_QUALITY = 85
NUM_TRAIN_IMAGES = 3
NUM_VAL_IMAGES = 1
MAX_TOTAL_BYTES = 400 * 1024
HEADER = ["url", "query", "annotation"]

README = """# quic360-mini: five real QuIC-360 panoramas for tests and demos

Source: the test split of QuIC-360 (query-based captioning of 360-degree panoramas). The images come from
Flickr and remain under their owners' licences; the captions are QuIC-360's human annotations, unchanged. The
images here are downscaled copies ({width}x{height} JPEG, quality {quality}, metadata stripped) of the five
panoramas in the project's `../shared/data/quic360-sample/`. For testing and demos only.

Regenerate with `python scripts/make_quic360_mini.py` (from the project root, with `../shared/data` present).

Files (QuIC-360 layout, columns `url,query,annotation`, one reference caption per row, `url` relative to this
folder, e.g. `images/<id>.jpg`; the same (url, query) pair has several rows, its references):

| file | rows | images | (url, query) pairs |
|---|---|---|---|
{table}

`test.csv` is the source's `test.csv` byte for byte: ALL rows of the five images. `train.csv` and `val.csv`
split those rows by image (sorted by file name: the first {n_train} images train, the next {n_val} val; the
last image is only in `test.csv`). Test therefore overlaps train and val on purpose: the folder checks that
training, evaluation and the demo run on real panoramas, it does not measure generalisation.
"""


def read_rows(csv_path: Path) -> list[list[str]]:
    """Read a QuIC-360 CSV's data rows (without the header).

    Args:
        csv_path: The CSV file.

    Returns:
        ``[url, query, annotation]`` rows in file order.

    Raises:
        ValueError: If the header is not ``url,query,annotation`` or a row has another number of fields.
    """
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != HEADER:
        raise ValueError(f"'{csv_path}': expected the header {','.join(HEADER)}, found {rows[:1]}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            raise ValueError(f"'{csv_path}' line {number}: expected 3 fields, found {len(row)}: {row}")
    return rows[1:]


def write_rows(rows: list[list[str]], csv_path: Path) -> None:
    """Write rows with the source's dialect (minimal quoting, CRLF), so each row is a verbatim copy."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    csv_path.write_bytes(buffer.getvalue().encode("utf-8"))


def downscale(source: Path, target: Path) -> None:
    """Save a 2:1 panorama as a metadata-free {SIZE_WH} JPEG.

    Raises:
        ValueError: If the source is not a 2:1 equirectangular image.
    """
    with Image.open(source) as image:
        width, height = image.size
        if width != 2 * height:
            raise ValueError(f"'{source}' is {width}x{height}, not a 2:1 equirectangular panorama")
        # The sources carry either no colour profile or sRGB, so dropping the profile keeps their colours.
        small = image.convert("RGB").resize(SIZE_WH, Image.Resampling.LANCZOS)
    # A fresh image has no EXIF/ICC/XMP; nothing is passed to save() but the encoding settings.
    small.save(target, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=False)


def make_mini(source_dir: Path, output_dir: Path) -> dict[str, int]:
    """Write the mini dataset folder.

    Args:
        source_dir: ``quic360-sample`` folder with ``test.csv`` and ``images/``.
        output_dir: Folder to (re)write.

    Returns:
        Sizes in bytes of the written files, by path relative to ``output_dir``.

    Raises:
        FileNotFoundError: If the source CSV or an image it names is missing.
        ValueError: If the source is malformed or the result exceeds the size budget.
    """
    source_csv = source_dir / "test.csv"
    if not source_csv.is_file():
        raise FileNotFoundError(f"no '{source_csv}': pass --source pointing at the quic360-sample folder")
    rows = read_rows(source_csv)
    urls = sorted({row[0] for row in rows})
    if len(urls) < NUM_TRAIN_IMAGES + NUM_VAL_IMAGES + 1:
        needed = NUM_TRAIN_IMAGES + NUM_VAL_IMAGES + 1
        raise ValueError(f"'{source_csv}' names {len(urls)} images; need at least {needed}")

    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    # Images of an older source would otherwise linger next to the new ones.
    for stale in (output_dir / "images").glob("*"):
        if stale.is_file() and stale.name not in {Path(u).name for u in urls}:
            stale.unlink()
    for url in urls:
        if not url.startswith("images/") or "/" in url[len("images/"):]:
            raise ValueError(f"'{source_csv}': expected urls like images/<id>.jpg, found '{url}'")
        source_image = source_dir / url
        if not source_image.is_file():
            raise FileNotFoundError(f"'{source_csv}' names '{url}', but '{source_image}' does not exist")
        downscale(source_image, output_dir / "images" / Path(url).name)

    train_urls = set(urls[:NUM_TRAIN_IMAGES])
    val_urls = set(urls[NUM_TRAIN_IMAGES : NUM_TRAIN_IMAGES + NUM_VAL_IMAGES])
    splits = {
        "train": [row for row in rows if row[0] in train_urls],
        "val": [row for row in rows if row[0] in val_urls],
        "test": rows,
    }
    (output_dir / "test.csv").write_bytes(source_csv.read_bytes())
    write_rows(splits["train"], output_dir / "train.csv")
    write_rows(splits["val"], output_dir / "val.csv")
    if read_rows(output_dir / "test.csv") != rows:
        raise AssertionError("test.csv copy differs from its source")

    table = "\n".join(
        f"| `{split}.csv` | {len(split_rows)} | {len({r[0] for r in split_rows})} | "
        f"{len({(r[0], r[1]) for r in split_rows})} |"
        for split, split_rows in splits.items()
    )
    readme = README.format(
        width=SIZE_WH[0], height=SIZE_WH[1], quality=JPEG_QUALITY, table=table,
        n_train=NUM_TRAIN_IMAGES, n_val=NUM_VAL_IMAGES,
    )
    (output_dir / "README.md").write_text(readme, encoding="utf-8")

    files = sorted(p for p in output_dir.rglob("*") if p.is_file())
    sizes = {str(p.relative_to(output_dir)): p.stat().st_size for p in files}
    total = sum(sizes.values())
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"'{output_dir}' holds {total} bytes, over the {MAX_TOTAL_BYTES}-byte budget")
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="quic360-sample folder (test.csv, images/)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to (re)write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sizes = make_mini(args.source.resolve(), args.output.resolve())
    except (OSError, ValueError) as error:
        logger.error("error: %s", error)
        return 1
    for name, size in sizes.items():
        logger.info("%8d  %s", size, name)
    logger.info("%8d  total bytes in %s", sum(sizes.values()), args.output.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
