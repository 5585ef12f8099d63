"""Benchmark: the anyres_e2p views of one panorama, this implementation vs py360convert, side by side.

What is timed, per panorama size (JPEG decode excluded, every cache warm, all in one process, interleaved):

* ours: ``render_views(pano, ViewConfig("anyres_e2p", image_size=S))`` on the ``load_panorama`` tensor
  (9 views: letterboxed global + 8 tiles of 90° at yaw 0, 45, ..., -45, S x S, float32 in [0, 1]);
  with ``--device cuda`` twice: the panorama already on the GPU ("resident") and uploaded from host memory in
  the timed call ("+upload");
* (A) the original PanoLLaVA tool's way: ``py360convert.e2p`` at 672 x 672 per tile, each tile through PIL
  and ``interpolate(..., bilinear)`` to S, plus the global view letterboxed with PIL bicubic at 336 and
  resized to S;
* (B) ``py360convert.e2p`` straight to S x S per tile, plus a PIL-letterboxed global view, stacked to float.

py360convert uses OpenCV's ``remap`` when ``cv2`` imports; the issue's numbers are without OpenCV, so the
benchmark turns that path off (``py360convert.utils.cv2 = None``) unless ``--py360-opencv`` is given.
The baselines are single-threaded (scipy; OpenBLAS pinned to 1 thread, because its threads spinning after
scipy slow torch down); ours runs with ``--threads`` torch threads, 1 by default: what every DataLoader worker
uses (``torch.utils.data`` sets 1 thread per worker), and robust on a shared machine, where 2 threads waiting
for each other at every parallel region measured 30 ms instead of 5. Run:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_views.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_views.py --device cuda     # on a GPU machine, < 2 min
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/scipy load; see the module docstring

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panollava.data.images import load_panorama  # noqa: E402
from panollava.data.views import ViewConfig, render_views, view_geometries  # noqa: E402

SAMPLE_DIR = ROOT.parent / "shared" / "data" / "quic360-sample" / "images"


def _pick_images(sizes: list[tuple[int, int]], explicit: list[str]) -> list[Path]:
    """One real panorama per requested (W, H): the given files, else the first sample of that size."""
    if explicit:
        return [Path(p) for p in explicit]
    found: list[Path] = []
    candidates = sorted(SAMPLE_DIR.glob("*.jpg")) if SAMPLE_DIR.is_dir() else []
    for size in sizes:
        match = next((p for p in candidates if Image.open(p).size == size), None)
        if match is None:
            sys.exit(f"no {size[0]}x{size[1]} panorama in {SAMPLE_DIR}; pass --image FILE (repeatable)")
        found.append(match)
    return found


# -- (A): the original tool -------------------------------------------------------------------------------
def _letterbox_square_pil(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    resized = img.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img).astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _resize_to_vit(t: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def baseline_a(
    pil: Image.Image, erp: np.ndarray, angles: list[tuple[float, float]], size: int, e2p: Callable
) -> torch.Tensor:
    """The original tool: global letterbox at 336 (PIL bicubic) + e2p tiles at 672, resized to ``size``."""
    views = [_resize_to_vit(_pil_to_tensor(_letterbox_square_pil(pil, 336)), size)]
    bgr = erp[:, :, ::-1]
    for yaw, pitch in angles:
        persp = e2p(bgr, 90.0, yaw, pitch, out_hw=(672, 672))
        tile = Image.fromarray(np.ascontiguousarray(persp[:, :, ::-1]))
        views.append(_resize_to_vit(_pil_to_tensor(tile), size))
    return torch.stack(views)


# -- (B): py360convert straight to the view size ---------------------------------------------------------
def baseline_b(
    pil: Image.Image, erp: np.ndarray, angles: list[tuple[float, float]], size: int, e2p: Callable
) -> torch.Tensor:
    """e2p straight to ``size`` per tile + a PIL-letterboxed global view: (V, 3, size, size), [0, 1]."""
    w, h = pil.size
    nh = round(h * size / w)
    canvas = np.zeros((size, size, 3), np.uint8)
    top = (size - nh) // 2
    canvas[top : top + nh] = np.asarray(pil.resize((size, nh), Image.BILINEAR))
    views = [canvas] + [e2p(erp, 90.0, yaw, pitch, out_hw=(size, size)) for yaw, pitch in angles]
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float().div_(255.0)


def _time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1000.0


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print a table.

    Args:
        argv: Command-line arguments (see ``--help``).

    Returns:
        The measurements, as printed (also written to ``--json`` when given).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ours; the baselines are CPU numpy)")
    parser.add_argument("--image", action="append", default=[], help="panorama file(s); default: the samples")
    parser.add_argument("--sizes", default="2048x1024,4096x2048", help="W x H of the sample panoramas to use")
    parser.add_argument("--image_size", type=int, default=256, help="view side S")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds: A once, B once, ours --inner")
    parser.add_argument("--inner", type=int, default=10, help="calls of ours per round")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (ours and (A)'s torch resizes); 1 = what each DataLoader worker uses",
    )
    parser.add_argument("--no-baselines", action="store_true", help="time ours only (no py360convert needed)")
    parser.add_argument("--py360-opencv", action="store_true", help="let py360convert use cv2 if it imports")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    e2p = None
    cv2_note = "n/a"
    if not args.no_baselines:
        try:
            import py360convert
            import py360convert.utils as p360_utils
        except ImportError:
            sys.exit("py360convert is not installed: pip install py360convert (or pass --no-baselines)")
        has_cv2 = p360_utils.cv2 is not None
        if has_cv2 and not args.py360_opencv:
            p360_utils.cv2 = None  # measure the scipy path, as without OpenCV installed
        cv2_note = f"opencv {'installed' if has_cv2 else 'not installed'}; py360convert uses " + (
            "cv2.remap" if p360_utils.cv2 is not None else "scipy map_coordinates"
        )
        e2p = py360convert.e2p

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    paths = _pick_images(sizes, args.image)  # type: ignore[arg-type]
    config = ViewConfig("anyres_e2p", image_size=(args.image_size, args.image_size))
    geoms = view_geometries(config)
    angles = [(g.yaw_deg, g.pitch_deg) for g in geoms if g.kind == "perspective"]

    header = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "py360convert": cv2_note,
        "views": f"{len(geoms)} x {args.image_size}x{args.image_size} (anyres_e2p, fov 90, overlap 0.5)",
    }
    print("bench_views: " + ", ".join(f"{k}={v}" for k, v in header.items()))
    results: dict = {"header": header, "runs": []}

    for path in paths:
        pano = load_panorama(path)  # decode: not timed
        pil = Image.fromarray(pano.permute(1, 2, 0).numpy())
        erp = np.ascontiguousarray(pano.permute(1, 2, 0).numpy())
        h, w = pano.shape[1:]
        pano_dev = pano.to(device)
        ours = lambda: render_views(pano_dev, config)  # noqa: E731
        ours_up = lambda: render_views(pano.to(device), config)  # noqa: E731
        # warm every cache (grids, band buffer, CUDA context and kernels) and check agreement with (B)
        out = ours()
        ours_up()
        row: dict = {"image": path.name, "size": f"{w}x{h}"}
        if e2p is not None:
            ref_b = baseline_b(pil, erp, angles, args.image_size, e2p)
            baseline_a(pil, erp, angles[:1], args.image_size, e2p)
            diff = (out[1:].cpu() - ref_b[1:]).abs().mean(dim=(1, 2, 3)).max().item() * 255
            row["max_tile_mean_abs_diff_vs_B_x255"] = round(diff, 3)
        t_ours, t_up, t_a, t_b = [], [], [], []
        for _ in range(args.repeats):
            if e2p is not None:
                t_a.append(_time(lambda: baseline_a(pil, erp, angles, args.image_size, e2p), sync))
                t_b.append(_time(lambda: baseline_b(pil, erp, angles, args.image_size, e2p), sync))
            t_ours += [_time(ours, sync) for _ in range(args.inner)]
            if device.type == "cuda":
                t_up += [_time(ours_up, sync) for _ in range(args.inner)]
        row["ours_ms"] = statistics.median(t_ours)
        line = f"{w}x{h} ({path.name}): ours {row['ours_ms']:.2f} ms"
        if t_up:
            row["ours_with_upload_ms"] = statistics.median(t_up)
            line += f" resident, {row['ours_with_upload_ms']:.2f} ms +upload"
        if t_a:
            row["A_ms"], row["B_ms"] = statistics.median(t_a), statistics.median(t_b)
            row["speedup_vs_A"] = row["A_ms"] / row["ours_ms"]
            row["speedup_vs_B"] = row["B_ms"] / row["ours_ms"]
            line += (
                f" | (A) original 672->resize {row['A_ms']:.1f} ms -> {row['speedup_vs_A']:.1f}x"
                f" | (B) e2p@{args.image_size} {row['B_ms']:.1f} ms -> {row['speedup_vs_B']:.1f}x"
            )
            if t_up:
                row["speedup_vs_A_with_upload"] = row["A_ms"] / row["ours_with_upload_ms"]
                line += f" | vs (A) +upload {row['speedup_vs_A_with_upload']:.1f}x"
            line += f" | max tile diff vs (B) {row['max_tile_mean_abs_diff_vs_B_x255']:.3f}/255"
        print(line, flush=True)
        results["runs"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
