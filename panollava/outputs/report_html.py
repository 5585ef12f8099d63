"""``report.html``: one self-contained page to read an evaluation — metrics with provenance, then every sample.

The page holds the metric table with where it came from (checkpoint, settings, dataset, decoding, library
versions) and one row per sample: the panorama's thumbnail and the strip of views the model saw (cut again with
:func:`panollava.data.views.render_views` and the crop settings recorded in ``metrics.json``), the query, the
prediction, all references and the per-sample scores. Plain JavaScript sorts by any score (worst CIDEr-D first
by default), filters by text and groups the rows by panorama; it needs no network.

Images are embedded as base64 JPEG in CSS classes, one thumbnail and one strip per panorama shared by all of its
queries, so the page is one file that opens offline. Size bound: thumbnails ``THUMB_WIDTH_PX`` wide, views at
most ``VIEW_SIDE_PX`` on a side, JPEG quality ``JPEG_QUALITY``; docs/reporting.md gives the measured size for
QuIC-360 test (374 panoramas, 1,149 samples). An image that cannot be read shows ``image unavailable: <reason>``,
never a substitute.

The page state lives in the URL hash, so a view can be shared or scripted (the tests drive headless Chromium with
it): ``#sort=cider`` (ascending, worst first), ``#sort=-cider`` (descending), ``#sort=index`` (dataset order),
``&filter=chair``, ``&group=1``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError, PanoLLaVAError
from panollava.metrics.names import METRIC_LABELS, OFFICIAL_METRICS, PER_SAMPLE_METRICS_SHOWN
from panollava.outputs.files import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "JPEG_QUALITY",
    "SCORE_LABELS",
    "THUMB_WIDTH_PX",
    "VIEW_SIDE_PX",
    "PanoramaImages",
    "format_judge_score",
    "render_page",
    "render_panorama_images",
    "resolve_image_path",
    "view_config_from_metrics",
    "write_report_html",
]

#: Width of the embedded panorama thumbnail (height = width / 2 for an equirectangular image).
THUMB_WIDTH_PX = 384
REPORT_DECODE_WIDTH_PX = 1024
"""Panoramas are decoded reduced to at least this width for the report (JPEG DCT scaling: 4-8x faster on QuIC-360's
2048-5376 px files); 90-degree views of VIEW_SIDE_PX px need only 4 * VIEW_SIDE_PX px of it."""
#: Views larger than this (on their longer side) are downscaled in the strip; smaller ones are kept as they are.
VIEW_SIDE_PX = 64
#: JPEG quality of the embedded images.
JPEG_QUALITY = 70

#: Per-sample score keys (as in predictions.jsonl) and their column labels.
SCORE_LABELS: dict[str, str] = {k: METRIC_LABELS[k] for k in PER_SAMPLE_METRICS_SHOWN}
_VIEW_KEYS = ("crop_strategy", "image_size", "fov_deg", "overlap_ratio", "num_views")
_STRIP_GAP_PX = 2

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse} th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f5;position:sticky;top:0;z-index:1}
th[data-key]{cursor:pointer;user-select:none} th[data-key]:hover{background:#e4e4ea}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.kv td:first-child{color:#555;white-space:nowrap}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.muted{color:#777} .small{font-size:11px;word-break:break-all} .warn{color:#9a3b00} .bad{color:#b00020}
.controls{display:flex;gap:16px;align-items:center;margin:10px 0;flex-wrap:wrap}
.controls input[type=search]{width:280px;padding:3px 6px}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
ol.refs{margin:0;padding-left:20px;font-size:13px}
td.pred{font-weight:600;min-width:180px;max-width:280px} td.refs{min-width:340px;max-width:460px}
td.q{min-width:150px;max-width:200px;word-break:break-word}
table#samples{width:100%}
.pano{width:320px;height:160px;background-size:100% 100%;cursor:zoom-in;image-rendering:auto}
.strip{width:320px;background-size:100% 100%;margin-top:2px;image-rendering:pixelated}
.big .pano{width:720px;height:360px} .big .strip{width:720px}
td.img{width:324px} .unavailable{color:#b00020;max-width:320px;white-space:normal}
tr.cont td.img>*{display:none} tr.cont td{border-bottom-color:#f2f2f2}
tr.grouphead td{border-top:2px solid #888}
td.jf{white-space:normal;min-width:80px;max-width:130px} .jr{font-size:11px;text-align:left;word-break:break-word}
"""

_SORT_JS = r"""
(function () {
  "use strict";
  const table = document.querySelector("table.sortable");
  if (!table) { return; }
  const tbody = table.tBodies[0];
  const rows = Array.from(tbody.querySelectorAll("tr.row"));
  const defaults = {sort: table.dataset.defaultSort || "index", filter: "", group: false};
  const state = Object.assign({}, defaults);
  const filterBox = document.getElementById("filter");
  const groupBox = document.getElementById("group");
  const sortSelect = document.getElementById("sort");
  const count = document.getElementById("count");

  function readHash() {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("sort")) { state.sort = params.get("sort"); }
    if (params.has("filter")) { state.filter = params.get("filter"); }
    if (params.has("group")) { state.group = params.get("group") === "1"; }
  }
  function writeHash() {
    const params = new URLSearchParams();
    params.set("sort", state.sort);
    if (state.filter) { params.set("filter", state.filter); }
    if (state.group) { params.set("group", "1"); }
    history.replaceState(null, "", "#" + params.toString());
  }
  function value(row, key) {
    const raw = row.getAttribute("data-" + key);
    if (raw === null || raw === "") { return null; }
    const num = Number(raw);
    return Number.isNaN(num) ? raw.toLowerCase() : num;
  }
  function compare(a, b, key, desc) {
    const va = value(a, key), vb = value(b, key);
    if (va === null && vb === null) { return value(a, "index") - value(b, "index"); }
    if (va === null) { return 1; }   // missing scores go last either way
    if (vb === null) { return -1; }
    if (va < vb) { return desc ? 1 : -1; }
    if (va > vb) { return desc ? -1 : 1; }
    return value(a, "index") - value(b, "index");
  }
  function apply() {
    const desc = state.sort.startsWith("-");
    const key = desc ? state.sort.slice(1) : state.sort;
    const needle = state.filter.trim().toLowerCase();
    let ordered = rows.slice().sort(function (a, b) { return compare(a, b, key, desc); });
    if (state.group) {
      const groups = new Map();
      ordered.forEach(function (row) {
        const g = row.getAttribute("data-group") || "";
        if (!groups.has(g)) { groups.set(g, []); }
        groups.get(g).push(row);
      });
      ordered = [];
      groups.forEach(function (members) { ordered = ordered.concat(members); });
    }
    let shown = 0, previous = null;
    ordered.forEach(function (row) {
      const visible = !needle || (row.getAttribute("data-text") || row.textContent).toLowerCase().includes(needle);
      row.style.display = visible ? "" : "none";
      const g = row.getAttribute("data-group");
      const cont = state.group && visible && previous !== null && g === previous;
      row.classList.toggle("cont", cont);
      row.classList.toggle("grouphead", state.group && visible && !cont);
      if (visible) { shown += 1; previous = g; }
      tbody.appendChild(row);
    });
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      th.classList.toggle("sorted-asc", th.dataset.key === key && !desc);
      th.classList.toggle("sorted-desc", th.dataset.key === key && desc);
    });
    if (count) { count.textContent = shown + " of " + rows.length + " shown"; }
    document.body.setAttribute("data-shown", String(shown));
    document.body.setAttribute("data-sort", state.sort);
    if (filterBox && filterBox.value !== state.filter) { filterBox.value = state.filter; }
    if (groupBox) { groupBox.checked = state.group; }
    if (sortSelect) { sortSelect.value = state.sort; }
    writeHash();
  }
  table.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      const key = th.dataset.key;
      state.sort = state.sort === key ? "-" + key : key;
      apply();
    });
  });
  if (filterBox) { filterBox.addEventListener("input", function () { state.filter = filterBox.value; apply(); }); }
  if (groupBox) { groupBox.addEventListener("change", function () { state.group = groupBox.checked; apply(); }); }
  if (sortSelect) { sortSelect.addEventListener("change", function () { state.sort = sortSelect.value; apply(); }); }
  tbody.addEventListener("click", function (event) {
    const cell = event.target.closest("td.img");
    if (cell) { cell.classList.toggle("big"); }
  });
  window.addEventListener("hashchange", function () { readHash(); apply(); });
  readHash();
  apply();
  document.body.setAttribute("data-ready", "1");
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_page(title: str, body: str, *, extra_css: str = "") -> str:
    """A complete HTML page with the shared style and the sort/filter/group script.

    The script drives the first ``table.sortable``: rows ``tr.row`` with ``data-<key>`` values, headers
    ``th[data-key]``, optional ``#filter`` (search box), ``#group`` (checkbox), ``#sort`` (select) and ``#count``.

    Args:
        title: The page title.
        body: HTML of the body (trusted: built by this module or :mod:`panollava.outputs.leaderboard`).
        extra_css: More CSS rules (e.g. the embedded images).

    Returns:
        The page as a string.
    """
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_esc(title)}</title>"
        f"<style>{_CSS}{extra_css}</style></head>\n<body>\n{body}\n<script>{_SORT_JS}</script>\n</body></html>\n"
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _data_value(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(float(value))


# -- views and images -------------------------------------------------------------------------------------------------
def _family_views(metrics: Mapping[str, Any]) -> tuple[Any, list[str]] | None:
    """The views a model of another family than ours recorded in ``metrics["model"]`` (its provenance): an
    off-the-shelf model's protocol, or the view geometry of a run of the original trainer. None for our family."""
    from panollava.data.views import ViewConfig

    model = metrics.get("model")
    if not isinstance(model, Mapping):
        return None
    protocol = model.get("protocol")
    views = protocol.get("views") if isinstance(protocol, Mapping) else None
    if isinstance(views, Mapping) and views.get("crop_strategy") and views.get("image_size"):
        keys = ("crop_strategy", "image_size", "fov_deg", "overlap_ratio", "num_views", "pitch_range_deg")
        config = ViewConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in views.items() if k in keys})
        return config, [f"the views of the model's protocol ({views['crop_strategy']}), as recorded under model.protocol"]
    views = model.get("views")
    if isinstance(views, Mapping) and views.get("out_hw") and views.get("fov_deg") is not None:
        config = ViewConfig(crop_strategy="anyres_e2p", image_size=tuple(views["out_hw"]),
                            fov_deg=float(views["fov_deg"]), overlap_ratio=float(views["overlap_ratio"]))
        return config, ["the original trainer's anyres_e2p geometry (fov, overlap, size) drawn by panollava's "
                        "renderer; the original letterboxed its global view at 336 px first, so view 0 may differ "
                        "by resampling"]
    return None


def view_config_from_metrics(metrics: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The :class:`~panollava.data.views.ViewConfig` of an evaluation, read from its ``metrics.json``.

    Each of crop_strategy, image_size, fov_deg, overlap_ratio and num_views comes from
    ``metrics["settings"][key]["value"]``, else from the recorded metadata (``training_config`` /
    ``model_config``); crop_strategy and image_size are required, the others fall back to the view defaults.

    Args:
        metrics: The evaluation's ``metrics.json`` content.

    Returns:
        ``(config, notes)``: the validated config and one note per value not found in the settings.

    Raises:
        InvalidInputError: crop_strategy or image_size is recorded nowhere, or the recorded values are invalid.
    """
    from panollava.data.views import ViewConfig

    family_views = _family_views(metrics)
    if family_views is not None:
        config, notes = family_views
        config.validate()
        return config, notes
    settings = metrics.get("settings") or {}
    meta = metrics.get("metadata") or {}
    recorded = {**(meta.get("model_config") or {}), **(meta.get("training_config") or {})}
    values: dict[str, Any] = {}
    notes: list[str] = []
    for key in _VIEW_KEYS:
        entry = settings.get(key)
        if isinstance(entry, Mapping) and entry.get("value") is not None:
            values[key] = entry["value"]
        elif recorded.get(key) is not None:
            values[key] = recorded[key]
            notes.append(f"{key} {recorded[key]!r} from the recorded metadata (not in settings)")
        elif key in ("crop_strategy", "image_size"):
            raise InvalidInputError(
                f"metrics.json records no {key} (looked in settings.{key}.value and the metadata): the views the "
                "model saw cannot be cut again. Pass the metrics.json that 'panollava-cli test' wrote"
            )
        else:
            notes.append(f"{key} not recorded: the default {getattr(ViewConfig, key)!r}")
    size = values["image_size"]
    config = ViewConfig(
        crop_strategy=values["crop_strategy"],
        image_size=tuple(size) if isinstance(size, list) else size,
        **{k: values[k] for k in ("fov_deg", "overlap_ratio", "num_views") if k in values},
    )
    config.validate()
    return config, notes


def resolve_image_path(
    record: Mapping[str, Any], metrics: Mapping[str, Any], image_root: str | Path | None = None
) -> Path:
    """Where a sample's panorama file is.

    Order: ``image_root`` (argument) joined with the record's ``image``; the record's ``image_path``; its
    ``image`` when absolute; else ``image`` against the recorded image root (``settings.image_root`` or
    ``dataset.image_root``) or the folder of the evaluated CSV (``dataset.path``), as the data loader resolves it.

    Args:
        record: A predictions.jsonl record.
        metrics: The evaluation's metrics.json content.
        image_root: A folder that overrides the recorded one (``report --image_root``).

    Returns:
        The path (it may not exist; the caller reports that).

    Raises:
        InvalidInputError: The record has no image, or a relative one with nothing to resolve it against.
    """
    url = record.get("image")
    if image_root is not None and url:
        return Path(image_root).expanduser() / str(url)
    if record.get("image_path"):
        return Path(str(record["image_path"])).expanduser()
    if not url:
        raise InvalidInputError("the record has neither image_path nor image")
    path = Path(str(url)).expanduser()
    if path.is_absolute():
        return path
    setting = (metrics.get("settings") or {}).get("image_root")
    root = setting.get("value") if isinstance(setting, Mapping) else None
    root = root or (metrics.get("dataset") or {}).get("image_root")
    if root:
        return Path(str(root)).expanduser() / path
    dataset = (metrics.get("dataset") or {}).get("path")
    if dataset:
        return Path(str(dataset)).expanduser().parent / path
    raise InvalidInputError(
        f"relative image {url!r} and no dataset path or image root in metrics.json to resolve it against; "
        "pass --image_root"
    )


@dataclass(frozen=True)
class PanoramaImages:
    """A panorama's embedded pictures, or why there are none.

    Attributes:
        thumb_jpeg: The thumbnail (JPEG bytes), None when unavailable.
        thumb_hw: Its (H, W).
        strip_jpeg: The views in one row (JPEG bytes), None when unavailable.
        strip_hw: Its (H, W).
        num_views: Number of views in the strip.
        error: Why the panorama is unavailable (None when it rendered); ``strip_error`` for the views only.
        strip_error: Why the views are unavailable while the thumbnail is shown.
    """

    thumb_jpeg: bytes | None
    thumb_hw: tuple[int, int]
    strip_jpeg: bytes | None
    strip_hw: tuple[int, int]
    num_views: int
    error: str | None = None
    strip_error: str | None = None


def _jpeg(image: Any, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def render_panorama_images(
    path: Path,
    view_config: Any | None,
    *,
    thumb_width: int = THUMB_WIDTH_PX,
    view_side: int = VIEW_SIDE_PX,
    jpeg_quality: int = JPEG_QUALITY,
    view_error: str | None = None,
) -> PanoramaImages:
    """Decode one panorama and make its thumbnail and its strip of views (the views the model saw).

    Args:
        path: The panorama file.
        view_config: How the evaluation cut views (None: no strip, with ``view_error`` as the reason).
        thumb_width: Thumbnail width in px.
        view_side: Longest side of a view in the strip; smaller views keep their size.
        jpeg_quality: JPEG quality of both pictures.
        view_error: Why there is no view config (shown instead of the strip).

    Returns:
        The pictures; a file that cannot be read gives ``error`` (never a substitute picture).
    """
    import torch
    from PIL import Image

    from panollava.data.images import load_panorama
    from panollava.data.views import render_views

    try:
        pano = load_panorama(path, max_width=REPORT_DECODE_WIDTH_PX)
    except PanoLLaVAError as exc:
        return PanoramaImages(None, (0, 0), None, (0, 0), 0, error=str(exc))
    full = Image.fromarray(pano.permute(1, 2, 0).numpy())
    h, w = full.height, full.width
    tw = min(thumb_width, w)
    th = max(1, round(tw * h / w))
    thumb = full.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=2.0)
    thumb_jpeg = _jpeg(thumb, jpeg_quality)
    if view_config is None:
        return PanoramaImages(thumb_jpeg, (th, tw), None, (0, 0), 0, strip_error=view_error)
    try:
        views = render_views(pano, view_config)
    except PanoLLaVAError as exc:
        return PanoramaImages(thumb_jpeg, (th, tw), None, (0, 0), 0, strip_error=str(exc))
    views_u8 = views.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    v, _, vh, vw = views_u8.shape
    scale = min(1.0, view_side / max(vh, vw))
    sh, sw = max(1, round(vh * scale)), max(1, round(vw * scale))
    strip = Image.new("RGB", (v * sw + (v - 1) * _STRIP_GAP_PX, sh), (255, 255, 255))
    for i in range(v):
        view = Image.fromarray(views_u8[i].permute(1, 2, 0).numpy())
        if (sh, sw) != (vh, vw):
            view = view.resize((sw, sh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        strip.paste(view, (i * (sw + _STRIP_GAP_PX), 0))
    return PanoramaImages(thumb_jpeg, (th, tw), _jpeg(strip, jpeg_quality), (strip.height, strip.width), v)


# -- the page ---------------------------------------------------------------------------------------------------------
def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><td>{_esc(k)}</td><td class=\"mono\">{_esc(v)}</td></tr>" for k, v in rows if v is not None)
    return f"<table class=\"kv\">{cells}</table>"


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    unavailable = metrics.get("unavailable") or {}
    failed = metrics.get("failed") or {}
    impl = metrics.get("implementations") or {}
    keys = [k for k in OFFICIAL_METRICS if k in metrics or k in unavailable or k in failed]
    head = "".join(f"<th class=\"num\">{_esc(k)}</th>" for k in keys)
    cells = []
    for key in keys:
        css = " bad" if key in failed else (" muted" if key in unavailable else "")
        cells.append(f"<td class=\"num{css}\" data-metric=\"{key}\">{_esc(_fmt(metrics.get(key)))}</td>")
    notes = [f"<li class=\"bad\">{_esc(k)} failed: {_esc(v)}</li>" for k, v in failed.items()]
    notes += [f"<li class=\"muted\">{_esc(k)} unavailable: {_esc(v)}</li>" for k, v in unavailable.items()]
    notes += [f"<li class=\"muted\">{_esc(n)}</li>" for n in metrics.get("notes") or []]
    how = _kv_table(sorted(impl.items()))
    return (
        f"<h2>Metrics</h2><table id=\"metrics\"><tr>{head}</tr><tr>{''.join(cells)}</tr></table>"
        + (f"<ul>{''.join(notes)}</ul>" if notes else "")
        + _judge_summary(metrics.get("judge"))
        + (f"<details><summary>How each metric was computed</summary>{how}</details>" if impl else "")
    )


def _provenance_section(metrics: Mapping[str, Any], view_notes: Sequence[str], view_desc: str) -> str:
    ckpt = metrics.get("checkpoint") or {}
    run = metrics.get("run") or {}
    dataset = metrics.get("dataset") or {}
    decoding = metrics.get("decoding") or {}
    versions = metrics.get("library_versions") or {}
    checkpoint = None
    if ckpt.get("path"):
        checkpoint = f"{ckpt['path']} ({ckpt.get('rule', 'rule not recorded')}; sha256 {str(ckpt.get('sha256'))[:12]})"
    data = None
    if dataset.get("path"):
        data = (f"{dataset['path']} (sha256 {str(dataset.get('sha256'))[:12]}; references "
                f"{dataset.get('reference_mode', 'not recorded')})")
    rows = [
        ("checkpoint", checkpoint),
        ("run directory", run.get("run_dir")),
        ("dataset", data),
        ("source", json.dumps(metrics["source"]) if metrics.get("source") else None),
        ("views", view_desc),
        *[("views note", n) for n in view_notes],
        ("decoding", " ".join(f"{k}={json.dumps(v)}" for k, v in decoding.items()) or None),
        ("versions", " ".join(f"{k} {v}" for k, v in versions.items()) or None),
        ("command", metrics.get("command")),
    ]
    parts = ["<h2>Provenance</h2>", _kv_table(rows)]
    details = [("checkpoint rule", ckpt.get("reason")), ("LoRA", run.get("lora_dir")),
               ("dataset reason", dataset.get("reason")), ("checkpoint sha256", ckpt.get("sha256")),
               ("dataset sha256", dataset.get("sha256"))]
    settings = metrics.get("settings") or {}
    rows_html = "".join(
        f"<tr><td>{_esc(k)}</td><td class=\"mono\">{_esc(json.dumps(v.get('value')))}</td>"
        f"<td class=\"muted\">{_esc(v.get('source', ''))}</td></tr>"
        for k, v in sorted(settings.items()) if isinstance(v, Mapping)
    )
    parts.append(
        f"<details><summary>Settings ({len(settings)}) and details</summary>{_kv_table(details)}"
        f"<table class=\"kv\"><tr><th>setting</th><th>value</th><th>source</th></tr>{rows_html}</table></details>"
    )
    mismatches = metrics.get("settings_mismatches")
    if mismatches:
        parts.append("<details open><summary class=\"warn\">Config / metadata mismatches</summary>"
                     f"<pre class=\"mono\">{_esc(json.dumps(mismatches, indent=2))}</pre></details>")
    return "".join(parts)


def _image_cell(images: PanoramaImages | None, css_id: int, error: str | None, name: str) -> str:
    if images is None or images.error is not None:
        reason = error if images is None else images.error
        return f"<td class=\"img\"><div class=\"unavailable\">image unavailable: {_esc(reason)}</div></td>"
    th, tw = images.thumb_hw
    out = [f"<div class=\"pano t{css_id}\" role=\"img\" aria-label=\"panorama {_esc(name)}\" "
           f"style=\"aspect-ratio:{tw}/{th};height:auto\" title=\"{_esc(name)}\"></div>"]
    if images.strip_jpeg is not None:
        sh, sw = images.strip_hw
        out.append(f"<div class=\"strip s{css_id}\" role=\"img\" aria-label=\"{images.num_views} views\" "
                   f"style=\"aspect-ratio:{sw}/{sh}\" title=\"the {images.num_views} views the model saw\"></div>")
    else:
        out.append(f"<div class=\"unavailable\">views unavailable: {_esc(images.strip_error)}</div>")
    return f"<td class=\"img\">{''.join(out)}</td>"


def format_judge_score(block: Mapping[str, Any]) -> str:
    """``"71.25 [68.10, 74.02] (n 1140, failed 9 = 0.8%; judge NAME)"``: a judge score, always with its failure rate.

    Args:
        block: The ``judge`` block of metrics.json (written by ``panollava-cli judge``).
    """
    score, ci = block.get("score"), block.get("ci95")
    shown = "n/a" if score is None else f"{score:.2f}"
    if isinstance(ci, Mapping):
        shown += f" [{ci['low']:.2f}, {ci['high']:.2f}]"
    rate = block.get("failure_rate")
    failed = f"failed {block.get('num_failed', 0)}" + (f" = {100 * rate:.1f}%" if rate is not None else "")
    model = (block.get("identity") or {}).get("model")
    return f"{shown} (n {block.get('n', 0)} of {block.get('num_samples', '?')}, {failed}; judge {model})"


def _judge_summary(block: Any) -> str:
    """The judge's line under the metrics: score, interval, n and failure rate, who judged with which rubric."""
    if not isinstance(block, Mapping):
        return ""
    identity = block.get("identity") or {}
    rubric = block.get("rubric") or {}
    images = "text only" if (block.get("images") or {}).get("text_only") else "with the panorama"
    dims = ", ".join(f"{k} {_fmt(v.get('mean'), 2)}" for k, v in (block.get("dimensions") or {}).items()
                     if isinstance(v, Mapping))
    css = " bad" if block.get("num_failed") else ""
    return (
        f"<p id=\"judge\" class=\"{css.strip()}\">LLM judge (20-100): {_esc(format_judge_score(block))}"
        f"<br><span class=\"muted\">{_esc(identity.get('backend'))} {_esc(identity.get('model'))}, {images}; rubric "
        f"{_esc(rubric.get('name'))} sha256 {_esc(str(rubric.get('sha256'))[:12])}; {_esc(dims)}</span></p>"
    )


def _judge_cells(block: Any) -> tuple[dict[str, float], dict[str, str]] | None:
    """Per-sample judge scores and failures of a judge block (None when the evaluation was not judged)."""
    if not isinstance(block, Mapping) or not isinstance(block.get("per_sample"), Mapping):
        return None
    scores = {str(k): float(v) for k, v in block["per_sample"].items() if isinstance(v, (int, float))}
    failed = {str(k): str(v) for k, v in (block.get("failed") or {}).items()}
    return scores, failed


def write_report_html(
    output_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    *,
    image_root: str | Path | None = None,
    thumb_width: int = THUMB_WIDTH_PX,
    view_side: int = VIEW_SIDE_PX,
    jpeg_quality: int = JPEG_QUALITY,
    filename: str = "report.html",
) -> Path:
    """Write ``report.html``: metrics with provenance, then one row per sample, worst CIDEr-D first.

    Args:
        output_dir: Folder to write into (created).
        records: predictions.jsonl records (``sample_id``, ``query``, ``prediction``, ``references``, ``image``
            and/or ``image_path``, optional ``index`` and ``scores``), in dataset order.
        metrics: The evaluation's metrics.json content (view settings from ``settings[key]["value"]``).
        image_root: Folder that relative ``image`` values resolve against (default: as recorded).
        thumb_width: Thumbnail width in px.
        view_side: Longest side of a view in the strip, in px.
        jpeg_quality: JPEG quality of the embedded pictures.
        filename: Name of the page.

    Returns:
        The path of the page.

    Raises:
        InvalidInputError: A record lacks ``sample_id`` or ``prediction``.
    """
    out = Path(output_dir).expanduser().resolve()
    try:
        view_config, view_notes = view_config_from_metrics(metrics)
        view_error = None
        size = "x".join(str(s) for s in view_config.image_size)
        view_desc = (f"{view_config.crop_strategy}, {size} px, fov {view_config.fov_deg:g}°, overlap "
                     f"{view_config.overlap_ratio:g}, num_views {view_config.num_views}")
    except InvalidInputError as exc:
        view_config, view_notes, view_error, view_desc = None, [], str(exc), f"not shown: {exc}"

    pano_ids: dict[str, int] = {}
    pano_paths: list[Path | None] = []
    path_errors: dict[str, str] = {}
    row_html: list[str] = []
    has_scores = any(r.get("scores") for r in records)
    judge = _judge_cells(metrics.get("judge"))
    groups: list[str] = []
    for position, rec in enumerate(records):
        for key in ("sample_id", "prediction"):
            if key not in rec:
                raise InvalidInputError(
                    f"record #{position} lacks {key!r} (found: {', '.join(sorted(rec))}); pass the records of "
                    "predictions.jsonl"
                )
        try:
            path = resolve_image_path(rec, metrics, image_root)
            group = str(path)
        except InvalidInputError as exc:
            path, group = None, f"?{rec.get('image', '')}"
            path_errors[group] = str(exc)
        if group not in pano_ids:
            pano_ids[group] = len(pano_ids)
            pano_paths.append(path)
        groups.append(group)

    def render(path: Path | None) -> PanoramaImages | None:
        if path is None:
            return None
        return render_panorama_images(path, view_config, thumb_width=thumb_width, view_side=view_side,
                                      jpeg_quality=jpeg_quality, view_error=view_error)

    # JPEG decoding and encoding release the GIL: one thread per core renders the panoramas side by side.

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        pano_images: list[PanoramaImages | None] = list(pool.map(render, pano_paths))
    for position, rec in enumerate(records):
        group = groups[position]
        css_id = pano_ids[group]
        index = rec.get("index", position)
        scores = rec.get("scores") or {}
        refs = rec.get("references") or []
        text = " ".join([str(rec.get("query", "")), rec["prediction"], *refs, str(rec.get("image", ""))])
        data = "".join(f" data-{k}=\"{_data_value(scores.get(k))}\"" for k in SCORE_LABELS)
        score_cells = "".join(f"<td class=\"num\">{_esc(_fmt(scores.get(k)))}</td>" for k in SCORE_LABELS)
        if judge is not None:
            sid = str(rec["sample_id"])
            value = judge[0].get(sid)
            data += f" data-judge=\"{_data_value(value)}\""
            if sid in judge[1]:
                reason = judge[1][sid]
                short = reason if len(reason) <= 80 else reason[:79] + "…"
                score_cells += (f"<td class=\"num bad jf\" data-judge-failed=\"1\" title=\"{_esc(reason)}\">failed"
                                f"<div class=\"jr\">{_esc(short)}</div></td>")
            else:
                score_cells += f"<td class=\"num\">{_esc(_fmt(value, 2))}</td>"
        refs_html = "".join(f"<li>{_esc(r)}</li>" for r in refs)
        name = str(rec.get("image") or rec.get("image_path") or "")
        row_html.append(
            f"<tr class=\"row\" id=\"s-{_esc(rec['sample_id'])}\" data-index=\"{int(index)}\" "
            f"data-group=\"{_esc(group)}\" data-text=\"{_esc(text.lower())}\"{data}>"
            f"<td class=\"num\">{int(index)}</td>"
            + _image_cell(pano_images[css_id], css_id, path_errors.get(group), name)
            + f"<td class=\"q\"><div>{_esc(rec.get('query', ''))}</div>"
            f"<div class=\"muted mono\">{_esc(rec['sample_id'])}</div>"
            f"<div class=\"muted mono\">{_esc(name)}</div></td>"
            f"<td class=\"pred\">{_esc(rec['prediction'])}</td>"
            f"<td class=\"refs\"><ol class=\"refs\">{refs_html}</ol></td>{score_cells}</tr>"
        )

    css = []
    for css_id, images in enumerate(pano_images):
        if images is None or images.thumb_jpeg is None:
            continue
        css.append(f".t{css_id}{{background-image:url(data:image/jpeg;base64,"
                   f"{base64.b64encode(images.thumb_jpeg).decode('ascii')})}}")
        if images.strip_jpeg is not None:
            css.append(f".s{css_id}{{background-image:url(data:image/jpeg;base64,"
                       f"{base64.b64encode(images.strip_jpeg).decode('ascii')})}}")
    unavailable = sum(1 for i in pano_images if i is None or i.error is not None)

    default_sort = "cider" if has_scores else "index"
    options = [("index", "dataset order")] + [
        (f"{s}{k}", f"{label} {'worst' if not s else 'best'} first")
        for k, label in SCORE_LABELS.items() for s in ("", "-")
    ]
    if judge is not None:
        options += [("judge", "judge worst first"), ("-judge", "judge best first")]
    select = "".join(f"<option value=\"{v}\">{_esc(t)}</option>" for v, t in options)
    headers = "".join(f"<th class=\"num\" data-key=\"{k}\">{_esc(label)}</th>" for k, label in SCORE_LABELS.items())
    if judge is not None:
        headers += "<th class=\"num\" data-key=\"judge\" title=\"LLM judge, 20-100 (failed: no score)\">judge</th>"
    title = _report_title(metrics)
    body = (
        f"<h1>{_esc(title)}</h1>"
        f"<div class=\"muted\">{len(records)} samples on {len(pano_ids)} panoramas"
        + (f"; <span class=\"bad\">{unavailable} panorama(s) unavailable</span>" if unavailable else "")
        + "</div>"
        + _metrics_section(metrics)
        + _provenance_section(metrics, view_notes, view_desc)
        + "<h2>Samples</h2><div class=\"controls\">"
        f"<label>sort <select id=\"sort\">{select}</select></label>"
        "<label>filter <input type=\"search\" id=\"filter\" placeholder=\"text in query, caption, references\">"
        "</label><label><input type=\"checkbox\" id=\"group\"> group by panorama</label>"
        "<span id=\"count\" class=\"muted\"></span>"
        "<span class=\"muted\">click a header to sort, a picture to enlarge it</span></div>"
        f"<table class=\"sortable\" id=\"samples\" data-default-sort=\"{default_sort}\"><thead><tr>"
        "<th class=\"num\" data-key=\"index\">#</th><th>panorama and the views the model saw</th>"
        f"<th>query</th><th>prediction</th><th>references</th>{headers}</tr></thead>"
        f"<tbody>{''.join(_sorted_rows(row_html, records, default_sort))}</tbody></table>"
    )
    page = render_page(title, body, extra_css="\n".join(css))
    path = out / filename
    write_text_atomic(path, page)
    logger.info(
        "wrote %s: %d samples, %d panoramas (%d unavailable), %.1f MB",
        path, len(records), len(pano_ids), unavailable, len(page.encode("utf-8")) / 1e6,
    )
    return path


def _sorted_rows(rows: list[str], records: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Rows in the page's default order, so the page reads worst first even without JavaScript."""
    if key == "index":
        return rows

    def sort_key(i: int) -> tuple[int, float, int]:
        value = (records[i].get("scores") or {}).get(key)
        missing = value is None or not math.isfinite(float(value))
        return (1 if missing else 0, 0.0 if missing else float(value), i)

    return [rows[i] for i in sorted(range(len(rows)), key=sort_key)]


def _report_title(metrics: Mapping[str, Any]) -> str:
    meta = metrics.get("metadata") or {}
    ckpt = (metrics.get("checkpoint") or {}).get("path")
    parts = [p for p in (meta.get("experiment_name"), meta.get("stage")) if p]
    name = " / ".join(parts) if parts else "evaluation"
    return f"panollava report: {name}" + (f" — {Path(str(ckpt)).name}" if ckpt else "")
