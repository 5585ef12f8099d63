"""SampleLogger and fit's default TensorBoard logger: what a user finds in the run directory and in test's loggers."""

from __future__ import annotations

import csv
import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from panollava.callbacks.sample_logger import LoggedSample, samples_markdown, views_strip


def read_tensorboard_events(folder: Path) -> dict[str, list]:
    """Every summary value in the event files under ``folder``, by tag (in file order).

    Parses the TFRecord framing (length, masked CRC32C of the length, payload, masked CRC32C of the payload) and
    the payload with tensorboardX's own ``Event`` protobuf class; both CRCs are checked.
    """
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    values: dict[str, list] = defaultdict(list)
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}: {sorted(p.name for p in folder.rglob('*'))}"
    for path in files:
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            header = raw[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[pos + 8 : pos + 12])[0] == masked(header), f"bad length CRC in {path}"
            payload = raw[pos + 12 : pos + 12 + length]
            assert struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])[0] == masked(payload)
            pos += 16 + length
            event = Event.FromString(payload)
            for value in event.summary.value:
                values[value.tag].append((event.step, value))
    return values


def _text(value) -> str:
    return b"".join(value.tensor.string_val).decode()


def _texts(events: dict[str, list], tag: str) -> list:
    """Text summaries of ``tag``: tensorboardX's ``add_text`` appends ``/text_summary`` to the tag, tensorboard's not."""
    return events.get(tag) or events.get(f"{tag}/text_summary") or []


# -- pure pieces ----------------------------------------------------------------------------------------------------
def test_views_strip_denormalises_and_places_views_left_to_right():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    original = torch.rand(3, 3, 4, 5)
    normalised = (original - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    strip = views_strip(normalised, mean, std)
    assert strip.shape == (3, 4, 15)
    for v in range(3):
        torch.testing.assert_close(strip[:, :, 5 * v : 5 * (v + 1)], original[v])
    assert views_strip(normalised * 10, mean, std).min() >= 0 and views_strip(normalised * 10, mean, std).max() <= 1
    with pytest.raises(ValueError, match=r"\(V, 3, H, W\)"):
        views_strip(torch.zeros(3, 4, 5), mean, std)


def test_samples_markdown_is_one_row_per_sample_with_escaped_cells():
    samples = [
        LoggedSample("a#1", 0, "img/a.jpg", "color", "a red | cube", ("ref one", "ref\ntwo"), None),
        LoggedSample("b#2", 1, "img/b.jpg", "the object", "", (), None),
    ]
    lines = samples_markdown(samples).splitlines()
    assert lines[0] == "| sample | image | query | prediction | references |" and len(lines) == 4
    assert lines[2] == "| a#1 | img/a.jpg | color | a red \\| cube | ref one<br>ref two |"
    assert lines[3].endswith("| (none) |")


# -- fit: default logger ------------------------------------------------------------------------------------------
def test_fit_with_default_flags_writes_tensorboard_in_the_run_directory(tiny_run):
    run_dir: Path = tiny_run["run_dir"]
    tb_dirs = sorted((run_dir / "tensorboard").glob("version_*"))
    assert [d.name for d in tb_dirs] == ["version_0"], tb_dirs
    # and nothing in the folder it ran from: Lightning's default logger would have made ./lightning_logs
    assert sorted(p.name for p in tiny_run["workdir"].iterdir()) == ["runs"]
    events = read_tensorboard_events(run_dir / "tensorboard")
    train_loss = [v.simple_value for _, v in events["train/loss"]]
    val_loss = [v.simple_value for _, v in events["val/loss"]]
    assert len(train_loss) >= 2 and all(x > 0 for x in train_loss)
    assert len(val_loss) == 2  # configs/tiny.yaml: 2 epochs, one validation each
    texts = _texts(events, "val/samples")
    assert len(texts) == 2 and texts[0][1].metadata.plugin_data.plugin_name == "text"
    table = _text(texts[-1][1]).splitlines()
    assert table[0].startswith("| sample | image | query | prediction | references |")
    assert len(table) == 2 + 4  # header + separator + the default 4 samples per validation epoch
    # The logged samples are the validation CSV's first rows (first validation batch), with their references.
    with open(Path(tiny_run["cli"].datamodule.hparams.val_csv), encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))
    assert first["query"] in table[2] and first["annotation"].replace("|", "\\|")[:40] in _text(texts[-1][1])
    # One views strip per sample: a PNG of the image's height and V widths (tiny: 9 views of 32×32).
    views = events["val/views/0"]
    assert len(views) == 2 and {f"val/views/{n}" for n in range(4)} <= set(events)
    image = views[0][1].image
    assert (image.height, image.width, image.colorspace) == (32, 9 * 32, 3)
    assert image.encoded_image_string.startswith(b"\x89PNG")


# -- test: --log_samples to the configured loggers ----------------------------------------------------------------
def test_test_log_samples_adds_samples_to_its_loggers(tiny_run, tmp_path):
    from panollava.cli import main

    loggers = [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path), "name": "tb"}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "csv"}},
    ]
    status = main([
        "test", "--ckpt_dir", str(tiny_run["run_dir"]), "--output_dir", str(tmp_path / "eval"),
        "--max_samples", "6", "--batch_size", "2",
        "--log_samples", "true", "--log_interval", "2", "--log_max_samples", "3",
        "--trainer.logger", json.dumps(loggers),
    ])
    assert status == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    by_id = {r["sample_id"]: r for r in records}
    # Batches 0 and 2 of 3 (interval 2): 2 + 1 samples (capped at 3).
    with open(tmp_path / "csv" / "version_0" / "samples.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["0", "0", "2"] and {r["stage"] for r in rows} == {"test"}
    for row in rows:
        rec = by_id[row["sample_id"]]
        assert row["prediction"] == rec["prediction"] and json.loads(row["references"]) == rec["references"]
    events = read_tensorboard_events(tmp_path / "tb")
    assert [step for step, _ in _texts(events, "test/samples")] == [0, 2]
    assert all(f"test/views/{r['sample_id']}" in events for r in rows)
    assert rows[0]["prediction"].replace("|", "\\|") in _text(_texts(events, "test/samples")[0][1])
    assert "test/cider" in events  # the metrics reach the same logger


def test_test_without_a_logger_writes_no_event_files(tiny_run, tmp_path, monkeypatch):
    from panollava.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--output_dir", str(tmp_path / "eval"),
                 "--max_samples", "2"]) == 0
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "lightning_logs").exists()


def test_wandb_table_offline(tmp_path, monkeypatch):
    """W&B is optional (not a dependency): checked only where it is installed, offline."""
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from panollava.callbacks.sample_logger import write_wandb_samples

    monkeypatch.setenv("WANDB_MODE", "offline")
    wl = WandbLogger(save_dir=str(tmp_path), offline=True, project="panollava-test")
    samples = [LoggedSample("a#1", 0, "a.jpg", "color", "red", ("red", "a red cube"), torch.rand(3, 4, 12))]
    write_wandb_samples(wl, "val", samples, step=0)
    wl.experiment.finish()
    assert list(tmp_path.rglob("*.wandb")), "no offline W&B run file"
    assert wandb.run is None
