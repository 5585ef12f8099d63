"""``panollava-cli demo``: the whole loop on an embedded default, offline, on a CPU, in about a minute or two.

1. writes the tiny models (cached) and a generated panorama-captioning dataset (``panollava.offline.synthetic``:
   one coloured shape per panorama, at a known direction, captions that depend on it);
2. trains a tiny VLM (every part trainable, ``panollava/configs/demo.yaml``) with ``panollava-cli fit``, which
   writes a real run directory (with its TensorBoard curves and samples);
3. evaluates that run directory with ``panollava-cli test --ckpt_dir`` on the held-out test split;
4. trains and evaluates the same model with every view replaced by zeros (the image-blind baseline). Its ``fit``
   runs in a second process at the same time as the first ``fit`` (each on one torch thread: the tiny model is
   overhead-bound, so two cores train both in about the time of one); both ``test`` runs stay in this process so
   METEOR's JVM starts once;
5. puts the two evaluations side by side with ``panollava.outputs.leaderboard.run_compare`` (leaderboard: markdown, CSV, HTML),
   writes ``summary.json`` and prints the paths of the report, the leaderboard and the run directory.

A model that uses the image should beat the image-blind baseline by a wide margin (CIDEr); the two numbers side by
side are the demo's point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from panollava.console import echo
from panollava.console import quiet_third_party as _quiet_third_party
from panollava.errors import PanoLLaVAError, environment_error
from panollava.metrics.names import OFFICIAL_METRICS, PER_SAMPLE_METRICS_SHOWN
from panollava.outputs.files import read_json_object, write_json_atomic
from panollava.rundir import run_dir_path

DEMO_EXPERIMENT = "demo"
BLIND_EXPERIMENT = "demo-image-blind"
# Colour and direction are learned within the CPU budget; shape (asked about only inside "the object") is
# learned partly. Single-attribute queries with few classes would let a blind model guess right often.
DEMO_QUERIES = ("color", "the object")
DEMO_DATA = {"num_train": 160, "num_val": 20, "num_test": 40, "size_hw": (128, 256), "seed": 0,
             "queries": DEMO_QUERIES}
TABLE_KEYS = ("bleu_1", *PER_SAMPLE_METRICS_SHOWN)


def demo_config() -> Path:
    """The packaged training config of the demo."""
    return Path(str(resources.files("panollava") / "configs" / "demo.yaml"))


def _run(args: list[str]) -> None:
    from panollava.lightning_cli import run_lightning_cli

    command = f"panollava-cli {' '.join(args)}"
    echo(f"\n$ {command}")
    try:
        run_lightning_cli(args)
    except SystemExit as exc:  # jsonargparse's usage errors
        if exc.code not in (0, None):
            raise PanoLLaVAError(f"demo step failed with exit status {exc.code}: {command}") from None
    except (PanoLLaVAError, OSError) as exc:
        error = exc if isinstance(exc, PanoLLaVAError) else environment_error(exc)
        if error is None:
            raise
        raise PanoLLaVAError(f"demo step failed with exit status {error.exit_code}: {command}: {error}") from exc


class _Step:
    """One demo pipeline (trained or image-blind): its fit arguments, run directory and evaluation folder."""

    def __init__(self, out: Path, data: dict[str, Path], experiment: str, image_blind: bool, max_epochs: int | None):
        config = yaml.safe_load(demo_config().read_text(encoding="utf-8"))
        runs = out / "runs"
        shutil.rmtree(runs / experiment, ignore_errors=True)  # the demo owns this folder; reruns start clean
        self.name = "image_blind" if image_blind else "trained"
        self.image_blind = image_blind
        self.fit = [
            "fit", "--config", str(demo_config()),
            "--data.train_csv", str(data["train"]), "--data.val_csv", str(data["val"]), "--data.test_csv", str(data["test"]),
            "--experiment_name", experiment, "--runs_root", str(runs), "--dataset_name", "synthetic",
        ]
        if image_blind:
            self.fit += ["--data.image_blind", "true"]
        if max_epochs is not None:
            self.fit += ["--trainer.max_epochs", str(max_epochs)]
        self.run_dir = run_dir_path(runs, experiment, config["model"]["stage"], config["data"]["crop_strategy"],
                                    config["model"]["model_config"]["resampler_type"]).resolve()
        self.eval_dir = out / "eval" / self.name
        # A rerun trains anew, so the previous evaluation cannot be resumed: the demo owns this folder too.
        shutil.rmtree(self.eval_dir, ignore_errors=True)
        self.seconds: dict[str, float] = {}

    def test(self) -> dict[str, Any]:
        args = ["test", "--ckpt_dir", str(self.run_dir), "--output_dir", str(self.eval_dir)]
        if self.image_blind:
            args += ["--data.image_blind", "true"]
        started = time.perf_counter()
        _run(args)
        self.seconds["test"] = round(time.perf_counter() - started, 1)
        metrics = read_json_object(self.eval_dir / "metrics.json")
        return {
            "metrics": {k: metrics.get(k) for k in OFFICIAL_METRICS}
            | {"num_samples": metrics.get("num_samples")},
            "run_dir": str(self.run_dir),
            "output_dir": str(self.eval_dir),
            "seconds": self.seconds,
        }


class _BackgroundFit:
    """``panollava-cli fit`` in a child process (one torch thread), its output in a log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.args, self.log_path = args, log_path
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        echo(f"\n$ panollava-cli {' '.join(args)}  (in the background; output: {log_path})")
        self._log = open(log_path, "w", encoding="utf-8")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "panollava", *args], stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def wait(self) -> float:
        """Waits for the fit; returns its wall time in seconds.

        Raises:
            PanoLLaVAError: The fit failed (the message holds the end of its log).
        """
        status = self.process.wait()
        self._log.close()
        if status != 0:
            tail = "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
            raise PanoLLaVAError(
                f"demo step failed with exit status {status}: panollava-cli {' '.join(self.args)}\n"
                f"last lines of {self.log_path}:\n{tail}"
            )
        return round(time.perf_counter() - self.started, 1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()
        self._log.close()


def run_demo(
    output_dir: str = "panollava_demo", max_epochs: int | None = None, skip_baseline: bool = False
) -> dict[str, Any]:
    """Generate a small panorama-captioning dataset, train a tiny model on it, evaluate the run directory with
    'test --ckpt_dir', and compare with an image-blind baseline. Offline, CPU, about 90 s. Returns the summary written
    to ``output_dir/summary.json``.

    Args:
        output_dir: Folder for the dataset, runs, evaluation results, leaderboard and summary.
        max_epochs: Override the demo config's epochs.
        skip_baseline: Skip the image-blind baseline (and the leaderboard).

    Raises:
        PanoLLaVAError: A step failed (the message names the command).
    """
    import torch

    from panollava.offline.synthetic import generate_synthetic_dataset
    from panollava.offline.tiny_models import build_tiny_models

    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The tiny model is overhead-bound: one thread is faster than two (and far faster on a busy machine).
    torch.set_num_threads(1)
    echo(f"🧪 panollava demo → {out}")

    _quiet_third_party()
    models = build_tiny_models()
    echo(f"✅ tiny models: {models['tiny-siglip'].parent}")
    data = generate_synthetic_dataset(out / "data", **DEMO_DATA)
    echo(f"✅ dataset: {out / 'data'} (train/val/test: {DEMO_DATA['num_train']}/{DEMO_DATA['num_val']}/"
         f"{DEMO_DATA['num_test']} panoramas)")
    trained_step = _Step(out, data, DEMO_EXPERIMENT, False, max_epochs)
    blind_step = None if skip_baseline else _Step(out, data, BLIND_EXPERIMENT, True, max_epochs)
    background = _BackgroundFit(blind_step.fit, out / "logs" / "fit-image-blind.log") if blind_step else None
    try:
        fit_started = time.perf_counter()
        _run(trained_step.fit)
        trained_step.seconds["fit"] = round(time.perf_counter() - fit_started, 1)
        trained = trained_step.test()
        blind = None
        if background is not None:
            blind_step.seconds["fit"] = background.wait()
            blind = blind_step.test()
    finally:
        if background is not None:
            background.stop()

    leaderboard = None
    if blind is not None:
        from panollava.outputs.leaderboard import run_compare

        leaderboard = run_compare([trained["output_dir"], blind["output_dir"]], output_dir=str(out / "leaderboard"),
                                  baseline=blind["output_dir"])
    summary: dict[str, Any] = {
        "trained": trained["metrics"],
        "image_blind": blind["metrics"] if blind else None,
        "run_dir": trained["run_dir"],
        "run_dirs": {"trained": trained["run_dir"], "image_blind": blind["run_dir"] if blind else None},
        "output_dirs": {"trained": trained["output_dir"], "image_blind": blind["output_dir"] if blind else None},
        "report": str(Path(trained["output_dir"]) / "report.html"),
        "leaderboard": {"html": str(leaderboard["html_path"]), "csv": str(leaderboard["csv_path"])} if leaderboard else None,
        "tensorboard": str(Path(trained["run_dir"]) / "tensorboard"),
        "seconds": {"trained": trained["seconds"], "image_blind": blind["seconds"] if blind else None,
                    "total": round(time.perf_counter() - started, 1)},
        "dataset": {"dir": str(out / "data"), **{k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_DATA.items()}},
    }
    if blind and blind["metrics"].get("cider"):
        summary["cider_ratio"] = trained["metrics"]["cider"] / blind["metrics"]["cider"]
    write_json_atomic(out / "summary.json", summary)

    echo("\n" + "=" * 60)
    if leaderboard is not None:
        echo(leaderboard["markdown"])
        for warning in leaderboard.get("warnings") or []:
            echo(f"⚠️  {warning}")
    else:
        echo(f"{'metric':<10}{'trained':>12}")
        for key in TABLE_KEYS:
            echo(f"{key:<10}{_fmt(trained['metrics'].get(key)):>12}")
    echo("=" * 60)
    echo(f"📄 report: {summary['report']}")
    if leaderboard is not None:
        echo(f"🏁 leaderboard: {summary['leaderboard']['html']}  (csv: {summary['leaderboard']['csv']})")
    echo(f"📈 TensorBoard: tensorboard --logdir {summary['tensorboard']}")
    echo(f"📁 run directory: {trained['run_dir']}")
    echo(f"📄 summary: {out / 'summary.json'}  ({summary['seconds']['total']:.0f} s)")
    return summary


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
