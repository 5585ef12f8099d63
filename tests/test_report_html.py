"""report.html: built from a real ``test`` output, rendered in headless Chromium (rows, sorting, filter, groups),
its images checked against the views code, and unreadable images reported, never replaced."""

from __future__ import annotations

import base64
import io
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
from conftest_browser import read_jsonl
from PIL import Image

from panollava.cli import main
from panollava.outputs.report_html import THUMB_WIDTH_PX, view_config_from_metrics, write_report_html


def _embedded(html: str, css_class: str) -> Image.Image:
    match = re.search(rf"\.{css_class}\{{background-image:url\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)\}}", html)
    assert match, f"no embedded image .{css_class}"
    return Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGB")


def test_report_command_rebuilds_the_page_from_test_outputs(evaluations, chromium, tmp_path):
    real = evaluations["real"]
    out = tmp_path / "rebuilt"
    assert main(["report", "--predictions", str(real / "predictions.jsonl"), "--output_dir", str(out)]) == 0
    page_path = out / "report.html"
    html = page_path.read_text()
    records = read_jsonl(real / "predictions.jsonl")
    metrics = json.loads((real / "metrics.json").read_text())
    assert len(records) == 15
    assert "http://" not in html and "https://" not in html  # opens offline
    assert "image unavailable" not in html
    # one thumbnail and one strip per panorama (5), shared by its queries
    assert len(re.findall(r"\.t\d+\{background-image:url\(data:image/jpeg", html)) == 5
    assert len(re.findall(r"\.s\d+\{background-image:url\(data:image/jpeg", html)) == 5
    # provenance: checkpoint, dataset and versions are on the page
    for text in (Path(metrics["checkpoint"]["path"]).name, metrics["dataset"]["sha256"][:12],
                 metrics["library_versions"]["transformers"]):
        assert text in html

    page = chromium.load(page_path)
    assert page.body.get("data-ready") == "1"
    assert len(page.rows) == len(page.visible_rows) == 15
    assert page.body["data-shown"] == "15"


def test_strip_is_the_views_the_model_saw(evaluations):
    """The embedded strip equals render_views with the evaluation's recorded crop settings (up to JPEG)."""
    import torch

    from panollava.data.images import load_panorama
    from panollava.data.views import render_views

    real = evaluations["real"]
    metrics = json.loads((real / "metrics.json").read_text())
    records = read_jsonl(real / "predictions.jsonl")
    html = write_report_html(real, records, metrics).read_text()
    config, _ = view_config_from_metrics(metrics)
    assert (config.crop_strategy, config.image_size) == ("anyres_e2p", (32, 32))
    first = (Path(metrics["dataset"]["path"]).parent / records[0]["image"]).resolve()  # records keep image_path resolved
    css_id = re.search(rf'data-group="{re.escape(str(first))}".*?class="pano t(\d+)', html, re.S)
    assert css_id
    strip = np.asarray(_embedded(html, f"s{css_id.group(1)}"), dtype=np.float32)
    views = render_views(load_panorama(first), config).mul(255).round().to(torch.uint8)
    assert strip.shape == (32, 9 * 32 + 8 * 2, 3)  # 9 anyres_e2p views of 32 px, 2 px apart
    for i in range(9):
        tile = strip[:, i * 34 : i * 34 + 32]
        expected = views[i].permute(1, 2, 0).numpy().astype(np.float32)
        assert np.abs(tile - expected).mean() < 12.0, i  # JPEG q70 on 32x32 tiles
    thumb = _embedded(html, f"t{css_id.group(1)}")
    assert thumb.width == THUMB_WIDTH_PX and thumb.height == THUMB_WIDTH_PX // 2


def test_sorting_filter_and_grouping_in_chromium(evaluations, chromium, tmp_path):
    mixed = evaluations["mixed"]
    records = read_jsonl(mixed / "predictions.jsonl")
    metrics = json.loads((mixed / "metrics.json").read_text())
    path = write_report_html(tmp_path, records, metrics)
    ciders = [r["scores"]["cider"] for r in records]
    assert len(set(ciders)) > 5  # real scores that differ

    default = chromium.load(path)  # worst CIDEr-D first without asking
    assert default.values("cider") == sorted(ciders)
    by_cider = chromium.load(path, "sort=cider")
    assert by_cider.values("cider")[0] == min(ciders) and by_cider.values("cider") == sorted(ciders)
    best_meteor = chromium.load(path, "sort=-meteor")
    assert best_meteor.values("meteor") == sorted((r["scores"]["meteor"] for r in records), reverse=True)
    in_order = chromium.load(path, "sort=index")
    assert [int(r["data-index"]) for r in in_order.rows] == list(range(15))

    word = records[0]["query"].split()[0].lower()
    expected = sum(word in " ".join([r["query"], r["prediction"], *r["references"], r["image"]]).lower()
                   for r in records)
    filtered = chromium.load(path, f"filter={word}")
    assert 0 < expected < 15 and len(filtered.visible_rows) == expected
    assert filtered.body["data-shown"] == str(expected)

    grouped = chromium.load(path, "sort=cider&group=1")
    groups = [r["data-group"] for r in grouped.rows]
    runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    assert len(runs) == len(set(groups)) == 5  # each panorama's rows are together
    assert grouped.values("cider")[0] == min(ciders)  # the group holding the worst sample comes first
    assert sum("cont" in r["class"].split() for r in grouped.rows) == 15 - 5


def test_unreadable_images_are_reported_not_replaced(evaluations, tmp_path):
    real = evaluations["real"]
    records = read_jsonl(real / "predictions.jsonl")[:3]
    metrics = json.loads((real / "metrics.json").read_text())
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    records[0]["image_path"] = str(tmp_path / "missing.jpg")
    records[1]["image_path"] = str(corrupt)
    html = unescape(write_report_html(tmp_path, records, metrics).read_text())
    assert len(re.findall(r"image unavailable: ", html)) == 2
    assert f"{tmp_path / 'missing.jpg'}' does not exist" in html
    assert "cannot decode panorama image" in html and str(corrupt) in html
    assert len(re.findall(r"\.t\d+\{background-image", html)) == 1  # only the readable panorama has a picture
    assert "2 panorama(s) unavailable" in html


def test_views_not_recorded_are_reported(evaluations, tmp_path):
    real = evaluations["real"]
    records = read_jsonl(real / "predictions.jsonl")[:2]
    metrics = {k: v for k, v in json.loads((real / "metrics.json").read_text()).items()
               if k not in ("settings", "metadata")}
    html = write_report_html(tmp_path, records, metrics).read_text()
    assert "views unavailable: metrics.json records no crop_strategy" in html
    assert len(re.findall(r"\.t\d+\{background-image", html)) >= 1  # the panorama itself is still shown
    assert not re.search(r"\.s\d+\{background-image", html)


def test_report_without_metrics_file_names_the_flag(tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"sample_id": "a", "prediction": "x", "references": ["y"]}) + "\n")
    assert main(["report", "--predictions", str(predictions)]) == 2
    assert "--metrics" in capsys.readouterr().err


def test_screenshot_renders(evaluations, chromium, tmp_path):
    """The page renders to a PNG at the documented window size (how docs/images/report.png is made)."""
    mixed = evaluations["mixed"]
    path = write_report_html(tmp_path, read_jsonl(mixed / "predictions.jsonl"),
                             json.loads((mixed / "metrics.json").read_text()))
    png = chromium.screenshot(path, tmp_path / "report.png")
    with Image.open(png) as image:
        assert image.size == (1400, 1000)
