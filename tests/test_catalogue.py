"""The catalogue of bad inputs and faults (issue 12): one parametrised case per row.

Each row is something a user can get wrong (or the machine can do to them), run through ``panollava.cli.main``
in this process (one shared tiny training run, ``tiny_run``; a fault that needs a fresh process starts one). Every
case asserts:

- the exit status (0: accepted, with a warning; 1: interrupted; 2: refused; 3: results written but a metric
  failed);
- a message that names the offending thing and the fix (the row's ``expect`` fragments, regular expressions);
- for a refusal: one paragraph (``error: ...`` on one line) and no traceback (``--verbose`` shows it);
- no partial output that looks complete: no ``metrics.json`` unless the status is 0 or 3 (then it holds a null
  with the reason for every metric that could not be computed).

``docs/TROUBLESHOOTING.md`` is generated from ``CASES`` by ``scripts/troubleshooting.py``; a test below fails when
the two drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from panollava.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(PROJECT_ROOT / "configs" / "tiny.yaml")
MINI = PROJECT_ROOT / "panollava" / "assets" / "quic360-mini"


# -- the catalogue's machinery ---------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a case may use: a scratch folder, the shared tiny run, pytest's fixtures."""

    tmp: Path
    run_dir: Path
    monkeypatch: pytest.MonkeyPatch
    output_dir: Path | None = None  # checked for partial output
    checks: list[Callable[[], None]] = field(default_factory=list)  # extra assertions after the run

    def copy_run(self) -> Path:
        target = self.tmp / "run"
        shutil.copytree(self.run_dir, target, symlinks=True)
        return target

    def out(self) -> Path:
        self.output_dir = self.tmp / "out"
        return self.output_dir

    def csv(self, text: str | bytes, name: str = "data.csv") -> Path:
        """A CSV beside links to the mini dataset's images (so relative urls resolve)."""
        folder = self.tmp / "csv"
        folder.mkdir(exist_ok=True)
        if not (folder / "images").exists():
            (folder / "images").symlink_to(MINI / "images")
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path

    def test(self, *args: str) -> list[str]:
        return ["test", "--ckpt_dir", str(self.run_dir), "--output_dir", str(self.out()), *args]

    def predict(self, csv: Path, *args: str) -> list[str]:
        return ["predict", "--ckpt_dir", str(self.run_dir), "--output_dir", str(self.out()), "--csv_input",
                str(csv), "--max_new_tokens", "2", *args]


@dataclass(frozen=True)
class Case:
    """One row of the catalogue (and of ``docs/TROUBLESHOOTING.md``)."""

    id: str
    area: str
    situation: str
    exit_code: int
    expect: tuple[str, ...]
    cause: str
    fix: str
    argv: Callable[[Ctx], list[str] | tuple[int, str]]  # CLI arguments, or (status, stderr) of a subprocess
    gap: str | None = None  # a known gap: the row states the required behaviour and is a strict xfail until fixed


def _mini_rows(n: int = 2) -> list[str]:
    return (MINI / "test.csv").read_text(encoding="utf-8").splitlines()[1 : n + 1]


def _first_image() -> str:
    return _mini_rows(1)[0].split(",", 1)[0]


def _edit_metadata(run: Path, edit: Callable[[dict], None]) -> None:
    path = run / "checkpoint_metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _best_file(run: Path) -> Path:
    return run / os.readlink(run / "best.ckpt")


def _save_image(ctx: Ctx, name: str, mode: str, size: tuple[int, int], fmt: str = "PNG", **kw) -> Path:
    from PIL import Image

    path = ctx.tmp / name
    if mode == "I;16":
        import numpy as np

        values = (np.arange(size[0] * size[1], dtype=np.uint32) % 65536).astype(np.uint16).reshape(size[1], size[0])
        Image.fromarray(values).save(path, fmt)
    else:
        Image.new(mode, size, (10, 120, 200, 255)[: len(mode)] if mode != "L" else 100).save(path, fmt, **kw)
    return path


def _views(ctx: Ctx, image: Path, *args: str) -> list[str]:
    return ["views", "--image", str(image), "--output_dir", str(ctx.out()), "--image_size", "32", *args]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def _predictions_jsonl(ctx: Ctx, records: list[dict] | None = None) -> Path:
    records = records or [
        {"sample_id": "a", "prediction": "a red chair in a room", "references": ["a red chair", "a chair in a room"]},
        {"sample_id": "b", "prediction": "blue sky", "references": ["the sky is blue", "a blue sky over the sea"]},
    ]
    path = ctx.tmp / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _score(ctx: Ctx, *args: str) -> list[str]:
    return ["score", "--predictions", str(_predictions_jsonl(ctx)), "--output_dir", str(ctx.out()), *args]


def _in_subprocess(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


# -- run directories ---------------------------------------------------------------------------------------------------
def _rundir_missing(ctx: Ctx) -> list[str]:
    ctx.run_dir = ctx.tmp / "runs" / "nope"
    return ctx.test()


def _rundir_file(ctx: Ctx) -> list[str]:
    ctx.run_dir = ctx.tmp / "run.txt"
    ctx.run_dir.write_text("not a run\n")
    return ctx.test()


def _rundir_empty(ctx: Ctx) -> list[str]:
    ctx.run_dir = ctx.tmp / "empty"
    ctx.run_dir.mkdir()
    return ctx.test()


def _dangling_best(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _best_file(run).unlink()
    ctx.run_dir = run
    return ctx.test("--max_samples", "1", "--max_new_tokens", "2")


def _link_loop(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    for name, target in (("best.ckpt", "last.ckpt"), ("last.ckpt", "best.ckpt")):
        (run / name).unlink()
        (run / name).symlink_to(target)
    ctx.run_dir = run
    return ctx.test()


def _truncated_ckpt(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    best = _best_file(run)
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    ctx.run_dir = run
    return ctx.test()


def _other_architecture(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _edit_metadata(run, lambda m: m["model_config"].update(latent_dimension=32))
    ctx.run_dir = run
    return ctx.test()


def _code_running_pickle(ctx: Ctx) -> list[str]:
    """A .ckpt whose unpickling would create a file (as any code could): refused, and the file never appears."""
    marker = ctx.tmp / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = ctx.copy_run()
    best = _best_file(run)
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload()}, best, pickle_protocol=2)
    assert b"system" in best.read_bytes() or b"posix" in best.read_bytes()
    ctx.run_dir = run
    ctx.checks.append(lambda: pytest.fail("unpickling ran the payload") if marker.exists() else None)
    return ctx.test()


def _fit_existing_run(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.chdir(ctx.run_dir.parents[3])
    return ["fit", "--config", TINY_CONFIG, "--trainer.max_epochs", "1"]


# -- metadata ----------------------------------------------------------------------------------------------------------
def _metadata_not_json(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    (run / "checkpoint_metadata.json").write_text('{"experiment_name": "tiny",\n  "stage": finetune}\n')
    ctx.run_dir = run
    return ctx.test()


def _metadata_wrong_type(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _edit_metadata(run, lambda m: m["model_config"].update(latent_dimension="big"))
    ctx.run_dir = run
    return ctx.test()


def _metadata_missing_key(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _edit_metadata(run, lambda m: m["model_config"].pop("vision_name"))
    ctx.run_dir = run
    return ctx.test()


def _metadata_unknown_key(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _edit_metadata(run, lambda m: m["model_config"].update(frobnicate=1))
    ctx.run_dir = run
    return ctx.predict(MINI / "test.csv", "--max_samples", "1")


def _metadata_nan_loss(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()

    def nan(meta: dict) -> None:
        for entry in meta["checkpoints"]["all"]:
            entry["val_loss"] = float("nan")
        meta["checkpoints"]["best"]["val_loss"] = float("nan")

    _edit_metadata(run, nan)
    assert "NaN" in (run / "checkpoint_metadata.json").read_text()
    ctx.run_dir = run
    return ctx.test("--max_samples", "1", "--max_new_tokens", "2")


# -- adapters ----------------------------------------------------------------------------------------------------------
def _adapter_without_config(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    (run / "lora_weights" / "adapter_config.json").unlink()
    ctx.run_dir = run
    return ctx.test()


def _adapter_other_model(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    path = run / "lora_weights" / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(r=4, lora_alpha=8, base_model_name_or_path="Qwen/Qwen3-0.6B")
    path.write_text(json.dumps(config))
    ctx.run_dir = run
    return ctx.test()


# -- CSVs --------------------------------------------------------------------------------------------------------------
def _csv_missing_file(ctx: Ctx) -> list[str]:
    return ctx.test("--csv_input", str(ctx.tmp / "nope.csv"))


def _csv_missing_column(ctx: Ctx) -> list[str]:
    rows = [r.split(",", 1)[0] + ",x" for r in _mini_rows()]
    return ctx.test("--csv_input", str(ctx.csv("url,annotation\n" + "\n".join(rows) + "\n")))


def _csv_without_annotation_in_test(ctx: Ctx) -> list[str]:
    rows = [",".join(r.split(",")[:2]) for r in _mini_rows()]
    return ctx.test("--csv_input", str(ctx.csv("url,query\n" + "\n".join(rows) + "\n")))


def _csv_empty(ctx: Ctx) -> list[str]:
    return ctx.test("--csv_input", str(ctx.csv("")))


def _csv_header_only(ctx: Ctx) -> list[str]:
    return ctx.test("--csv_input", str(ctx.csv("url,query,annotation\n")))


def _csv_empty_query(ctx: Ctx) -> list[str]:
    image = _first_image()
    return ctx.test("--csv_input", str(ctx.csv(f"url,query,annotation\n{image},room,a room\n{image}, ,a room\n")))


def _csv_nan_annotation(ctx: Ctx) -> list[str]:
    image = _first_image()
    return ctx.test("--csv_input", str(ctx.csv(f"url,query,annotation\n{image},room,a room\n{image},room,nan\n")))


def _csv_blank_lines(ctx: Ctx) -> list[str]:
    image = _first_image()
    text = f"url,query,annotation\n{image},room,a room\n\n\n{image}, ,a room\n"
    return ctx.test("--csv_input", str(ctx.csv(text)))


def _csv_bad_utf8(ctx: Ctx) -> list[str]:
    image = _first_image()
    data = f"url,query,annotation\n{image},room,a caf".encode() + b"\xe9 room\n"
    return ctx.test("--csv_input", str(ctx.csv(data)))


def _csv_ragged_row(ctx: Ctx) -> list[str]:
    image = _first_image()
    return ctx.test("--csv_input", str(ctx.csv(f"url,query,annotation\n{image},room,a room, with a comma\n")))


def _csv_bom(ctx: Ctx) -> list[str]:
    text = "url,query,annotation\n" + "\n".join(_mini_rows()) + "\n"
    csv = ctx.csv(b"\xef\xbb\xbf" + text.encode("utf-8"))

    def check() -> None:
        lines = (ctx.output_dir / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["query"] == _mini_rows(1)[0].split(",")[1]

    ctx.checks.append(check)
    return ctx.predict(csv)


def _csv_duplicate_rows(ctx: Ctx) -> list[str]:
    row = _mini_rows(1)[0]
    return ctx.predict(ctx.csv(f"url,query,annotation\n{row}\n{row}\n\n{row}\n"))


# -- images ------------------------------------------------------------------------------------------------------------
def _image_missing(ctx: Ctx) -> list[str]:
    return ctx.test("--csv_input", str(ctx.csv("url,query,annotation\nimages/gone.jpg,room,a room\n")))


def _image_corrupt_in_evaluation(ctx: Ctx) -> list[str]:
    image = Path(MINI / _first_image())
    folder = ctx.tmp / "csv"
    folder.mkdir(exist_ok=True)
    (folder / "broken.jpg").write_bytes(image.read_bytes()[:600])
    rows = "\n".join(_mini_rows(1)) + "\nbroken.jpg,room,a room\n"
    return ctx.test("--csv_input", str(ctx.csv("url,query,annotation\n" + rows)))


def _image_corrupt(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "corrupt.jpg"
    path.write_bytes((MINI / _first_image()).read_bytes()[:600])
    return _views(ctx, path)


def _image_rgba(ctx: Ctx) -> list[str]:
    return _views(ctx, _save_image(ctx, "rgba.png", "RGBA", (256, 128)))


def _image_16bit(ctx: Ctx) -> list[str]:
    return _views(ctx, _save_image(ctx, "gray16.png", "I;16", (256, 128)))


def _image_cmyk(ctx: Ctx) -> list[str]:
    return _views(ctx, _save_image(ctx, "cmyk.jpg", "CMYK", (256, 128), fmt="JPEG"))


def _image_not_2to1(ctx: Ctx) -> list[str]:
    return _views(ctx, _save_image(ctx, "wide.png", "RGB", (300, 100)))


def _image_portrait(ctx: Ctx) -> list[str]:
    return _views(ctx, _save_image(ctx, "portrait.png", "RGB", (100, 200)))


def _image_bomb(ctx: Ctx) -> list[str]:
    return _views(ctx, _png_header_only(ctx.tmp / "bomb.png", 40000, 20000))


def _image_huge(ctx: Ctx) -> tuple[int, str]:
    """16384x8192 JPEG through ``views`` in a fresh process: peak RSS must stay far below the 1.3 GB of a full decode."""
    image = ctx.tmp / "huge.jpg"
    status, text = _in_subprocess(
        "from PIL import Image; Image.new('RGB', (16384, 8192), (90, 120, 200)).save(%r, quality=75)" % str(image)
    )
    assert status == 0, text
    out = ctx.out()
    # VmHWM of this process's own memory map: ru_maxrss would also count the parent's (pytest's) resident size,
    # inherited through vfork + exec, so a long test session made the case fail (980 MB vs 315 MB on its own).
    code = (
        "import sys\n"
        "from panollava.cli import main\n"
        f"status = main(['views', '--image', {str(image)!r}, '--output_dir', {str(out)!r}, '--image_size', '32'])\n"
        "hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print('peak_rss_mb', hwm // 1024, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    status, text = _in_subprocess(code)
    peak = int(re.search(r"peak_rss_mb (\d+)", text).group(1))
    ctx.checks.append(lambda: None if peak < 900 else pytest.fail(f"peak RSS {peak} MB: the image was decoded whole"))
    return status, text


# -- settings ----------------------------------------------------------------------------------------------------------
def _crop_unknown(ctx: Ctx) -> list[str]:
    return _views(ctx, MINI / _first_image(), "--crop_strategy", "fisheye")


def _crop_unknown_in_test(ctx: Ctx) -> list[str]:
    return ctx.test("--data.crop_strategy", "fisheye")


def _resampler_unknown(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.chdir(ctx.tmp)
    ctx.checks.append(lambda: None if not (ctx.tmp / "runs").exists() else pytest.fail("a run directory was created"))
    return ["fit", "--config", TINY_CONFIG, "--model.model_config.resampler_type", "qformer"]


def _fov_out_of_range(ctx: Ctx) -> list[str]:
    return _views(ctx, MINI / _first_image(), "--fov_deg", "200")


def _overlap_out_of_range(ctx: Ctx) -> list[str]:
    return _views(ctx, MINI / _first_image(), "--overlap_ratio", "1.0")


def _conflicting_decoding(ctx: Ctx) -> list[str]:
    return ctx.test("--num_beams", "2", "--do_sample", "true")


# -- environment and metrics -------------------------------------------------------------------------------------------
def _hub_offline(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = ctx.copy_run()
    _edit_metadata(run, lambda m: m["model_config"].update(vision_name="google/siglip2-so400m-patch16-256"))
    ctx.run_dir = run
    return ctx.test()


def _no_java(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.setenv("PATH", str(ctx.tmp / "no-java-here"))
    ctx.checks.append(lambda: _assert_null_with_reason(ctx, "meteor", "unavailable", "java is not on PATH"))
    return _score(ctx)


def _no_java_strict(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.setenv("PATH", str(ctx.tmp / "no-java-here"))
    ctx.checks.append(lambda: _assert_null_with_reason(ctx, "meteor", "unavailable", "java is not on PATH"))
    return _score(ctx, "--strict_metrics", "true")


def _break_cider(ctx: Ctx) -> None:
    from pycocoevalcap.cider.cider import Cider

    def boom(self, gts, res):
        raise ZeroDivisionError("float division by zero")

    ctx.monkeypatch.setattr(Cider, "compute_score", boom)
    ctx.checks.append(lambda: _assert_null_with_reason(ctx, "cider", "failed", "ZeroDivisionError"))


def _metric_fails_score(ctx: Ctx) -> list[str]:
    _break_cider(ctx)
    ctx.checks.append(lambda: (ctx.output_dir / "predictions_scored.jsonl").is_file() or pytest.fail("no predictions"))
    return _score(ctx)


def _metric_fails_test(ctx: Ctx) -> list[str]:
    _break_cider(ctx)
    ctx.checks.append(lambda: (ctx.output_dir / "predictions.jsonl").is_file() or pytest.fail("no predictions"))
    return ctx.test("--max_samples", "2", "--max_new_tokens", "2")


def _empty_reference_score(ctx: Ctx) -> list[str]:
    path = _predictions_jsonl(ctx, [{"sample_id": "a", "prediction": "x", "references": ["", "nan"]}])
    return ["score", "--predictions", str(path), "--output_dir", str(ctx.out())]


def _assert_null_with_reason(ctx: Ctx, metric: str, kind: str, reason: str) -> None:
    metrics = json.loads((ctx.output_dir / "metrics.json").read_text())
    assert metrics[metric] is None and reason in metrics[kind][metric], metrics[kind]


def _output_under_a_file(ctx: Ctx) -> list[str]:
    (ctx.tmp / "results.txt").write_text("a file\n")
    ctx.output_dir = ctx.tmp / "results.txt" / "eval"
    return ["score", "--predictions", str(_predictions_jsonl(ctx)), "--output_dir", str(ctx.output_dir)]


def _output_permission_denied(ctx: Ctx) -> list[str]:
    """Simulated: as root, chmod cannot deny a write, so creating the temporary file raises EACCES as it would."""
    import tempfile

    real = tempfile.mkstemp

    def denied(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(str(ctx.tmp / "out")):
            raise PermissionError(13, "Permission denied", str(kwargs["dir"]))
        return real(*args, **kwargs)

    ctx.monkeypatch.setattr(tempfile, "mkstemp", denied)
    return _score(ctx)


def _disk_full(ctx: Ctx) -> tuple[int, str]:
    """Simulated with RLIMIT_FSIZE in a fresh process: the kernel fails the write itself (EFBIG where a full disk
    gives ENOSPC), after the file was opened and partly written, the same path through the writer."""
    predictions = _predictions_jsonl(ctx)
    out = ctx.out()
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "from panollava.cli import main\n"
        f"sys.exit(main(['score', '--predictions', {str(predictions)!r}, '--output_dir', {str(out)!r}]))\n"
    )
    ctx.checks.append(lambda: None if not list(out.glob(".*.tmp")) else pytest.fail("a temporary file was left"))
    return _in_subprocess(code, env={"PATH": str(ctx.tmp)})  # no Java: no JVM to start in a one-off process


# -- interruption --------------------------------------------------------------------------------------------------
def _interrupt_after_first_record(ctx: Ctx, sig: int) -> tuple[int, str, int]:
    """Starts ``test`` (batch 1) in a subprocess and sends ``sig`` while it is paused after its first flushed record.

    The run waits at the ``flushed`` pause point (``panollava/evaluation/testhooks.py``) until the signal arrives, so
    the signal always lands mid-run however fast the run is (no race with a short evaluation).
    """
    import time

    out = ctx.out()
    pauses = ctx.tmp / "pauses"
    pauses.mkdir()
    cmd = [sys.executable, "-m", "panollava", *ctx.test("--batch_size", "1", "--max_new_tokens", "16",
                                                         "--progress", "false")]
    # SIGINT at its default in the child: a suite started in the background by a shell without job control
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt (the paused run would wait forever)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                 "PANOLLAVA_TEST_PAUSE": "flushed", "PANOLLAVA_TEST_PAUSE_DIR": str(pauses)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (pauses / "flushed.reached").exists():  # an event the paused run creates
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never paused after its first record:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.02)
    proc.send_signal(sig)
    try:
        text, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a paused run behind
        pytest.fail(f"the run did not stop within 120 s of {signal.Signals(sig).name}:\n{proc.communicate()[0][-3000:]}")
    saved = sum(p.read_text().count("\n") for p in (out / "shards").glob("*.jsonl"))
    assert saved >= 1 and not (out / "metrics.json").exists(), (saved, text[-2000:])
    return proc.returncode, text, saved


def _sigint(ctx: Ctx) -> tuple[int, str]:
    status, text, _ = _interrupt_after_first_record(ctx, signal.SIGINT)  # asserts something was saved
    return status, text  # Lightning exits 1 after a KeyboardInterrupt


def _sigkill_then_rerun(ctx: Ctx) -> list[str]:
    status, _, saved = _interrupt_after_first_record(ctx, signal.SIGKILL)
    assert status == -signal.SIGKILL

    def resumed() -> None:
        state = json.loads((ctx.output_dir / "eval_state.json").read_text())
        last = state["attempts"][-1]
        assert last["resumed"] == saved and last["generated"] == last["remaining"] == state["num_samples"] - saved

    ctx.checks.append(resumed)
    return ctx.test("--max_new_tokens", "16")


def _sigterm(ctx: Ctx) -> tuple[int, str]:
    status, text, _ = _interrupt_after_first_record(ctx, signal.SIGTERM)  # asserts something was saved
    return status, text


def _output_busy(ctx: Ctx) -> list[str]:
    """Another evaluation holds the folder: its lock is taken here, as the other run's rank 0 would hold it."""
    from panollava.evaluation.lock import OutputLock

    lock = OutputLock(ctx.out())
    lock.acquire()
    ctx.checks.append(lock.release)
    return ctx.test("--max_new_tokens", "2")


def _world_size_mismatch(ctx: Ctx) -> list[str]:
    """torchrun started 2 processes (simulated: its environment) but the trainer expects 1 (no --trainer.*)."""
    for key, value in {"TORCHELASTIC_RUN_ID": "catalogue", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        ctx.monkeypatch.setenv(key, value)
    return ctx.test("--max_new_tokens", "2")


# -- runs of the original PanoLLaVA trainer (../shared/fixtures/panollava-v1, issue 19) -----------------------------
ORIGINAL_FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "panollava-v1"
ORIGINAL_RUN = "runs/only_finetune/finetune/anyres-e2p_mlp"


def _original_root(ctx: Ctx, drop: tuple[str, ...] = ()) -> Path:
    """A writable copy of the fixture's root, the current folder (the original resolved paths against it)."""
    if not (ORIGINAL_FIXTURE / ORIGINAL_RUN).is_dir():
        pytest.skip(f"fixture not found at {ORIGINAL_FIXTURE}")
    root = ctx.tmp / "v1"
    shutil.copytree(ORIGINAL_FIXTURE, root, ignore=shutil.ignore_patterns("expected"))
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    for name in drop:
        (root / ORIGINAL_RUN / name).unlink()
    ctx.monkeypatch.chdir(root)
    return root


def _original_test(ctx: Ctx, *args: str) -> list[str]:
    return ["test", "--ckpt_dir", ORIGINAL_RUN, "--csv_input", "data/test.csv", "--max_new_tokens", "2",
            "--output_dir", str(ctx.out()), *args]


def _original_as_written(ctx: Ctx) -> list[str]:
    _original_root(ctx)
    return _original_test(ctx)


def _original_no_metadata(ctx: Ctx) -> list[str]:
    _original_root(ctx, drop=("checkpoint_metadata.json", "config.yaml"))
    return _original_test(ctx)


def _original_yaml(ctx: Ctx) -> list[str]:
    _original_root(ctx, drop=("checkpoint_metadata.json", "config.yaml"))
    return _original_test(ctx, "--config", "configs/default.yaml")


def _original_last_file(ctx: Ctx) -> list[str]:
    root = _original_root(ctx)
    assert not (root / ORIGINAL_RUN / "last.ckpt").is_symlink()
    return _original_test(ctx, "--checkpoint", "last")


def _original_code_adapter(ctx: Ctx) -> list[str]:
    """An ``adapter_model.bin`` whose unpickling would create a file: refused, and the file never appears."""
    marker = ctx.tmp / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = _original_root(ctx)
    import torch

    torch.save({"payload": Payload()}, root / ORIGINAL_RUN / "lora_weights" / "adapter_model.bin", pickle_protocol=2)
    ctx.checks.append(lambda: pytest.fail("unpickling ran the payload") if marker.exists() else None)
    return _original_test(ctx)



# -- the rows ----------------------------------------------------------------------------------------------------------
RUN = "Run directory"
META = "Metadata"
ADAPTER = "LoRA adapter"
CSV = "CSV"
IMAGE = "Image"
SETTING = "Settings"
ENV = "Environment"
METRIC = "Metrics"
INTERRUPT = "Interruption"
ORIGINAL = "Original PanoLLaVA runs"

CASES: tuple[Case, ...] = (
    Case("rundir-missing", RUN, "`--ckpt_dir` names a folder that does not exist", 2,
         (r"does not exist", r"/runs/nope"),
         "a typo, or the run was written elsewhere (relative paths start at the current folder)",
         "pass the run directory training printed (`runs/<experiment>/<stage>/<crop>_<resampler>`)",
         _rundir_missing),
    Case("rundir-file", RUN, "`--ckpt_dir` names a file", 2, (r"run\.txt", r"not a directory|is a file"),
         "a checkpoint or another file was passed where the run directory is expected",
         "pass the folder that holds it, or the file itself with `--ckpt_path`", _rundir_file),
    Case("rundir-empty", RUN, "the run directory is empty", 2, (r"no checkpoint", r"empty"),
         "training never reached its first validation, or the files were moved",
         "pass the run directory that training wrote (it holds `*.ckpt`, `best.ckpt`, `last.ckpt`)", _rundir_empty),
    Case("dangling-best", RUN, "`best.ckpt` points at a deleted file", 0, (r"best\.ckpt", r"dangling|does not exist|missing"),
         "the best checkpoint was deleted (e.g. by hand, to save space)",
         "nothing to do if the fallback (`last.ckpt`) is what you want; otherwise pass `--ckpt_path FILE`",
         _dangling_best),
    Case("link-loop", RUN, "`best.ckpt` and `last.ckpt` point at each other", 0,
         (r"best\.ckpt in '.*' is a dangling link", r"last\.ckpt in '.*' is a dangling link", r"newest of 2"),
         "links rewritten by hand or by a copy tool; both links are reported and the newest `*.ckpt` is used",
         "recreate the links (`ln -sf <file>.ckpt best.ckpt`) or pass `--ckpt_path FILE`", _link_loop),
    Case("truncated-ckpt", RUN, "the chosen `.ckpt` is truncated", 2, (r"truncated or corrupt", r"\.ckpt'"),
         "an interrupted copy or a full disk while saving",
         "copy it again, or evaluate another checkpoint (`--ckpt_path FILE`)", _truncated_ckpt),
    Case("other-architecture", RUN, "the checkpoint's weights do not fit the model the metadata describes", 2,
         (r"another architecture", r"size mismatch", r"model_config"),
         "metadata edited or copied from another run (here `latent_dimension` 64 → 32)",
         "fix `model_config` in `checkpoint_metadata.json`, or pass the run directory the checkpoint came from",
         _other_architecture),
    Case("code-running-pickle", RUN, "a `.ckpt` crafted to run code when unpickled", 2,
         (r"refused to load checkpoint", r"weights_only=True"),
         "a checkpoint from an untrusted source; `torch.load(weights_only=True)` refuses anything but tensors and "
         "plain values, and the test proves the payload did not run",
         "use checkpoints written by `panollava-cli fit`; never load untrusted pickles with `weights_only=False`",
         _code_running_pickle),
    Case("fit-existing-run", RUN, "`fit` into a run directory that already holds checkpoints", 2,
         (r"already holds checkpoints", r"--ckpt_path", r"--exist_ok true"),
         "the same experiment name, crop and resampler as an earlier run",
         "continue it with `--ckpt_path <run>/last.ckpt`, add to it with `--exist_ok true`, or pick another "
         "`--experiment_name`", _fit_existing_run),
    Case("metadata-not-json", META, "`checkpoint_metadata.json` is not JSON", 2,
         (r"is not valid JSON", r"line 2", r"json\.tool"),
         "edited by hand (here an unquoted string)", "fix the file where the message points, or regenerate it",
         _metadata_not_json),
    Case("metadata-wrong-type", META, "a metadata value has the wrong type", 2,
         (r"model_config\.latent_dimension", r"\"big\" is not valid", r"Fix the value"),
         "edited by hand or written by another tool", "fix the value the message names, or delete it to use the default",
         _metadata_wrong_type),
    Case("metadata-missing-key", META, "a required metadata key is missing", 2,
         (r"model_config\.vision_name is missing", r"Add it"),
         "the file was written by an older or foreign tool", "add the key the message names (hub id or local folder)",
         _metadata_missing_key),
    Case("metadata-unknown-key", META, "metadata holds a key panollava does not know", 0,
         (r"unknown key\(s\) model_config\.frobnicate are kept but not applied",),
         "a newer panollava, another tool, or a typo", "nothing (a warning); fix the spelling if it was meant as a setting",
         _metadata_unknown_key),
    Case("metadata-nan-loss", META, "the metadata records NaN validation losses", 0, (r"holds NaN .* read as null",),
         "a diverged epoch or an empty validation set in a run written before NaN was stored as null",
         "nothing: evaluation still writes a valid `metrics.json` (non-finite numbers become null)",
         _metadata_nan_loss),
    Case("adapter-without-config", ADAPTER, "`lora_weights/` lacks `adapter_config.json`", 0,
         (r"lora_weights' has no adapter_config\.json", r"not loaded"),
         "an incomplete copy of the adapter folder; the LoRA tensors stored in the checkpoint are used",
         "copy the whole `lora_weights/` folder again, or remove it to silence the warning",
         _adapter_without_config),
    Case("adapter-other-model", ADAPTER, "`lora_weights/` belongs to another model or run", 2,
         (r"LoRA adapter does not fit", r"lora_weights/"),
         "an adapter folder copied from another run (here rank 4 instead of 8)",
         "restore the run's own `lora_weights/`, or remove it to use the LoRA tensors in the checkpoint",
         _adapter_other_model),
    Case("csv-missing-file", CSV, "`--csv_input` does not exist", 2, (r"nope\.csv", r"not found", r"--csv_input"),
         "a typo or a relative path from another folder", "pass an existing CSV (relative paths start at the current folder)",
         _csv_missing_file),
    Case("csv-missing-column", CSV, "the CSV lacks a required column", 2, (r"lacks column\(s\) \['query'\]", r"found:"),
         "another dataset's layout", "rename the columns to `url,query,annotation`", _csv_missing_column),
    Case("csv-without-annotation", CSV, "`test` on a CSV without `annotation`", 0,
         (r"no annotations: captions are written without scores",),
         "`test` scores captions against references, and there are none",
         "nothing for captions only (or use `predict`); add the `annotation` column to get scores",
         _csv_without_annotation_in_test),
    Case("csv-empty", CSV, "the CSV file is empty", 2, (r"data\.csv' is empty", r"header"),
         "an export that failed", "write the header `url,query,annotation` and one row per reference", _csv_empty),
    Case("csv-header-only", CSV, "the CSV has a header and no rows", 2, (r"header but no rows",),
         "an export with a filter that matched nothing", "add rows", _csv_header_only),
    Case("csv-empty-query", CSV, "an empty query cell", 2, (r"line 3: column 'query' is empty",),
         "a missing value in the source table", "fill in or delete the row the message names", _csv_empty_query),
    Case("csv-nan-annotation", CSV, "an annotation cell holding `nan` (QuIC-360's test.csv has three empty ones)", 0,
         (r"dropped 1 empty or missing-value reference\(s\) .* on line\(s\) 3", r"1 sample keeps 1 reference"),
         "a table saved by pandas after `astype(str)` (a missing value written as `nan`), or an empty cell",
         "nothing: the cell is dropped and its sample is scored against its other references (a sample with none "
         "left is refused); fill in or delete the cell to silence the warning", _csv_nan_annotation),
    Case("csv-blank-lines", CSV, "an error after blank lines names the right line", 2,
         (r"line 5: column 'query'",),
         "blank lines in the middle of the file (they are skipped, and still counted)",
         "look at the line the message names (`sed -n 5p file.csv`)", _csv_blank_lines),
    Case("csv-bad-utf8", CSV, "the CSV is not UTF-8", 2, (r"not valid UTF-8", r"byte\(s\) 0xe9 at byte offset \d+ \(line 2",
                                                          r"iconv"),
         "saved as Latin-1 / Windows-1252", "re-save as UTF-8 (`iconv -f latin1 -t utf-8`)", _csv_bad_utf8),
    Case("csv-ragged-row", CSV, "a row has more cells than the header", 2, (r"line 2 has 4 cell\(s\) but the header has 3",
                                                                           r"quote"),
         "a caption containing a comma, not quoted", "quote fields that contain commas", _csv_ragged_row),
    Case("csv-bom", CSV, "the CSV starts with a byte-order mark", 0, (),
         "saved by Excel as \"CSV UTF-8\"", "nothing: the mark is accepted", _csv_bom),
    Case("csv-duplicate-rows", CSV, "exact duplicate rows", 0, (r"dropped 2 exact duplicate row\(s\)", r"3 \(= line 2\), 5 \(= line 2\)"),
         "rows pasted twice; kept, they would count one reference twice",
         "nothing (they are dropped with a warning); delete them to silence it", _csv_duplicate_rows),
    Case("image-missing", IMAGE, "a CSV row names an image that does not exist", 2,
         (r"line 2: image '.*gone\.jpg' does not exist", r"--data\.image_root"),
         "images in another folder than the CSV's", "set `--data.image_root` or fix the paths", _image_missing),
    Case("image-corrupt-in-evaluation", IMAGE, "a corrupt image in the evaluation CSV", 2,
         (r"cannot decode panorama image '.*broken\.jpg'", r"corrupt or truncated"),
         "an interrupted download", "replace the file (no neighbour's image is substituted)", _image_corrupt_in_evaluation),
    Case("image-corrupt", IMAGE, "a truncated JPEG", 2, (r"cannot decode panorama image '.*corrupt\.jpg'",),
         "an interrupted download", "download the image again", _image_corrupt),
    Case("image-rgba", IMAGE, "an RGBA PNG", 0, (r"alpha channel dropped",),
         "a panorama exported with transparency", "nothing (a warning)", _image_rgba),
    Case("image-16bit", IMAGE, "a 16-bit grayscale PNG", 0, (r"16-bit grayscale", r"v / 257"),
         "a high-dynamic-range export", "nothing (a warning: scaled to 8 bits)", _image_16bit),
    Case("image-cmyk", IMAGE, "a CMYK JPEG", 0, (r"CMYK", r"colours approximate"),
         "a print-oriented export", "convert it with colour management if colours matter", _image_cmyk),
    Case("image-not-2to1", IMAGE, "a panorama that is not 2:1", 0, (r"not the 2:1", r"stretched"),
         "a cropped or partial panorama", "use the full equirectangular image", _image_not_2to1),
    Case("image-portrait", IMAGE, "a portrait image", 2, (r"is portrait", r"rotated"),
         "a rotated or ordinary photo", "pass an equirectangular panorama (W:H = 2:1)", _image_portrait),
    Case("image-huge", IMAGE, "a 16384×8192 JPEG", 0, (r"peak_rss_mb",),
         "a full-resolution camera export", "nothing: it is decoded at reduced size (memory stays bounded)",
         _image_huge),
    Case("image-bomb", IMAGE, "a decompression bomb (a PNG claiming 40000×20000 px)", 2,
         (r"too large to decode safely", r"MAX_IMAGE_PIXELS"),
         "a malicious or broken file", "downscale it; raise `PIL.Image.MAX_IMAGE_PIXELS` only for files you trust",
         _image_bomb),
    Case("crop-unknown", SETTING, "an unknown crop strategy (`views`)", 2, (r"fisheye", r"anyres_e2p"),
         "a typo", "use one of the strategies the message lists", _crop_unknown),
    Case("crop-unknown-test", SETTING, "an unknown crop strategy (`test`)", 2, (r"fisheye", r"anyres_e2p"),
         "a typo", "use one of the strategies the message lists", _crop_unknown_in_test),
    Case("resampler-unknown", SETTING, "an unknown resampler", 2, (r"resampler_type", r"qformer", r"'mlp'"),
         "a typo, or a resampler of another tool", "use one the message lists; no run directory is created",
         _resampler_unknown),
    Case("fov-out-of-range", SETTING, "a field of view of 200°", 2, (r"fov_deg", r"200"),
         "a value outside (0, 180)", "pass a field of view between 0 and 180 degrees", _fov_out_of_range),
    Case("overlap-out-of-range", SETTING, "an overlap ratio of 1.0", 2, (r"overlap_ratio", r"1"),
         "a value outside [0, 1)", "pass an overlap in [0, 1)", _overlap_out_of_range),
    Case("conflicting-decoding", SETTING, "beam search and sampling together", 2, (r"num_beams", r"do_sample"),
         "flags that ask for two decoding methods", "choose beams or sampling", _conflicting_decoding),
    Case("hub-offline", ENV, "a hub model name on a machine without network", 2,
         (r"google/siglip2-so400m-patch16-256", r"local folder", r"hf download"),
         "no network and no local copy in the Hugging Face cache",
         "download it where there is network and copy the cache, or pass a local folder", _hub_offline),
    Case("java-absent", ENV, "no `java` on PATH (`score`)", 0, (r"meteor is unavailable", r"java is not on PATH"),
         "a machine without a Java runtime (common on GPU clusters)",
         "install a Java runtime for METEOR; the other metrics are computed", _no_java),
    Case("java-absent-strict", ENV, "no `java` on PATH with `--strict_metrics true`", 3,
         (r"unavailable \(strict mode\)", r"meteor", r"written"),
         "strict mode makes an unavailable metric fatal", "install Java, or drop `--strict_metrics`", _no_java_strict),
    Case("output-under-a-file", ENV, "`--output_dir` inside a regular file", 2, (r"results\.txt", r"ENOTDIR|ENOENT|not a directory|Not a directory"),
         "a typo in the output path", "choose a folder you can write", _output_under_a_file),
    Case("output-permission-denied", ENV, "an unwritable output folder (simulated EACCES)", 2,
         (r"Permission denied", r"EACCES", r"--output_dir"),
         "a shared folder without write permission", "choose a folder you can write, or fix its permissions",
         _output_permission_denied),
    Case("disk-full", ENV, "the disk fills while results are written (simulated with a file-size limit)", 2,
         (r"cannot write '.*metrics\.json'", r"EFBIG", r"Free space"),
         "a full disk or quota", "free space and run the same command again", _disk_full),
    Case("metric-fails-score", METRIC, "a metric raises (`score`)", 3,
         (r"1 metric\(s\) failed: cider: CIDEr-D raised ZeroDivisionError", r"written"),
         "a bug or an input the metric cannot handle",
         "the other metrics and the predictions are written; fix the cause and score again", _metric_fails_score),
    Case("metric-fails-test", METRIC, "a metric raises (`test`)", 3, (r"cider", r"ZeroDivisionError"),
         "a bug or an input the metric cannot handle",
         "predictions and the other metrics are written; rerun `score` on the predictions once fixed",
         _metric_fails_test),
    Case("empty-reference", METRIC, "a sample whose references are all empty in a predictions file (`score`)", 2,
         (r"no reference left", r"sample 'a'"),
         "empty cells exported as \"\" or `nan` (one empty reference among others is dropped with a warning)",
         "fill in a reference or delete the sample; an empty reference is never scored", _empty_reference_score),
    Case("sigint", INTERRUPT, "Ctrl-C (SIGINT) during `test`", 1,
         (r"interrupted on rank 0: \d+ sample\(s\) are saved", r"Rerun the same command"),
         "the user or the scheduler stops the run",
         "run the same command again (same `--output_dir`): finished samples are skipped", _sigint),
    Case("sigterm", INTERRUPT, "SIGTERM during `test` (a scheduler's notice before it kills the job)", 1,
         (r"interrupted by SIGTERM on rank 0: \d+ sample\(s\) are saved", r"Rerun the same command"),
         "SLURM or Kubernetes stops the job (time limit, pre-emption)",
         "run the same command again (same `--output_dir`): finished samples are skipped", _sigterm),
    Case("output-busy", ENV, "a second evaluation into a folder another evaluation is writing", 2,
         (r"is in use by another evaluation", r"process \d+ on host", r"another --output_dir"),
         "two jobs (or a job and its resubmission) given the same `--output_dir`",
         "wait for the other one, or pass another `--output_dir`", _output_busy),
    Case("world-size-mismatch", ENV, "a launcher that started another number of processes than the trainer expects",
         2, (r"WORLD_SIZE=2 \(torchrun\)", r"--trainer.num_nodes 1 x --trainer.devices 1 = 1", r"--nnodes"),
         "a multi-node `torchrun`/`srun` without `--trainer.num_nodes` (or `--trainer.devices`)",
         "pass `--trainer.num_nodes` and `--trainer.devices` whose product is the launcher's world size",
         _world_size_mismatch),
    Case("sigkill-resume", INTERRUPT, "the job is killed (SIGKILL, pre-emption), then rerun", 0,
         (r"resuming '.*': \d+ of \d+ samples are done, \d+ remain",),
         "a pre-empted or killed job", "run the same command again; it continues from the shards",
         _sigkill_then_rerun),
    Case("original-as-written", ORIGINAL, "a run directory of the original PanoLLaVA trainer, as it wrote it (its "
         "adapter holds the resized embedding rows)", 0,
         (r"Recognised: family panollava-v1", r"no best\.ckpt link; .* lowest loss in its name",
          r"resized embedding rows .*weights_only=True"),
         "the original trainer added `<|vision|>` and resized the vocabulary, so peft saved the embedding rows with "
         "the adapter; it wrote weights-only `.ckpt` files and no `best.ckpt` link",
         "nothing: the run is recognised and evaluated as the original architecture ([original-runs.md]"
         "(original-runs.md))", _original_as_written),
    Case("original-no-metadata", ORIGINAL, "an original run without `checkpoint_metadata.json` or `config.yaml`", 0,
         (r"no usable checkpoint_metadata\.json", r"\.ckpt hyper-parameters", r"original code's defaults: .*"
          r"use_projection_pe=False"),
         "the original trainer never wrote its metadata for weights-only checkpoints",
         "pass the run's training YAML with `--config` when it set anything the weights do not show "
         "(positional encodings, stitching)", _original_no_metadata),
    Case("original-yaml-config", ORIGINAL, "the original training YAML given with `--config`", 0,
         (r"Original training YAML: .*default\.yaml",),
         "its layout (`models:`, `image_processing:`, …) is not panollava's",
         "nothing: its model-defining keys are read by the original family; unknown ones are named once",
         _original_yaml),
    Case("original-last-file", ORIGINAL, "`--checkpoint last` on an original run (`last.ckpt` is a copy)", 0,
         (r"last\.ckpt requested \(a regular file",),
         "the original's `save_last=True` wrote a second full copy, not a link",
         "nothing: it is used and announced as a regular file", _original_last_file),
    Case("original-code-adapter", ORIGINAL, "an original run whose `adapter_model.bin` would run code when "
         "unpickled", 2, (r"refused to load LoRA adapter .*adapter_model\.bin", r"weights_only=True"),
         "a file from elsewhere (`adapter_model.bin` is a pickle)",
         "use the file the original trainer wrote, or re-save its tensors as a plain state dict or safetensors",
         _original_code_adapter),
)


# -- the test ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_run(tiny_run) -> Path:
    return tiny_run["run_dir"]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.gap)) if c.gap else c for c in CASES],
    ids=[c.id for c in CASES],
)
def test_catalogue(case: Case, shared_run: Path, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    caplog.set_level("INFO")
    ctx = Ctx(tmp=tmp_path, run_dir=shared_run, monkeypatch=monkeypatch)
    argv = case.argv(ctx)
    if isinstance(argv, tuple):
        status, text = argv
    else:
        status = main(argv)
        captured = capsys.readouterr()
        text = captured.out + captured.err + caplog.text
    assert status == case.exit_code, text[-3000:]
    for fragment in case.expect:
        assert re.search(fragment, text, re.S), f"{fragment!r} not in:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    if case.exit_code in (2, 3):  # a refusal or a failed metric: one paragraph (1 is an interruption)
        assert len(errors) == 1, f"expected one error paragraph, found {errors}"
    if ctx.output_dir is not None and case.exit_code not in (0, 3):
        assert not (ctx.output_dir / "metrics.json").exists(), "a failed run left a metrics.json that looks complete"
    if ctx.output_dir is not None and case.exit_code in (0, 3) and (ctx.output_dir / "metrics.json").exists():
        json.loads((ctx.output_dir / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    for check in ctx.checks:
        check()


def test_catalogue_has_at_least_40_rows() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    from panollava.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="is portrait"):
        ctx = Ctx(tmp=tmp_path, run_dir=tmp_path, monkeypatch=pytest.MonkeyPatch())
        main([*_image_portrait(ctx), "--verbose"])


def test_troubleshooting_doc_is_generated_from_the_catalogue() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("troubleshooting", PROJECT_ROOT / "scripts" / "troubleshooting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render(CASES)
    actual = (PROJECT_ROOT / "docs" / "TROUBLESHOOTING.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/TROUBLESHOOTING.md is stale: run python scripts/troubleshooting.py"
