"""The Lightning commands' configuration in layers (issue 18): each source parsed once, merged by jsonargparse in
priority order (defaults < config files < typed flags; the evaluation plan adds the checkpoint metadata under the
typed flags), never by parsing the command line a second time."""

from __future__ import annotations

from pathlib import Path

import jsonargparse
import pytest

from panollava.lightning_cli import PanoLLaVACLI
from panollava.schema import to_plain

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


class _Stop(Exception):
    pass


class _Configured(PanoLLaVACLI):
    """Stops where the classes would be instantiated: the configuration and the plan, nothing built."""

    def instantiate_classes(self) -> None:
        raise _Stop(self)


def configured(args: list[str]) -> PanoLLaVACLI:
    with pytest.raises(_Stop) as stop:
        _Configured(args)
    return stop.value.args[0]


def test_each_layer_is_parsed_once_and_typed_flags_beat_config_files_wherever_they_stand(monkeypatch, tmp_path):
    parsed: list[list[str]] = []
    original = jsonargparse.ArgumentParser.parse_args

    def counting(self, args=None, *rest, **kwargs):
        parsed.append(list(args or []))
        return original(self, args, *rest, **kwargs)

    monkeypatch.setattr(jsonargparse.ArgumentParser, "parse_args", counting)
    later = tmp_path / "later.yaml"
    later.write_text("trainer:\n  max_epochs: 7\n  log_every_n_steps: 3\nmax_new_tokens: 9\n")
    cli = configured(["fit", "--trainer.max_epochs", "4", "--config", TINY, "--config", str(later),
                      "--data.batch_size", "3"])
    assert parsed == [["--config", TINY], ["--config", str(later)],
                      ["--trainer.max_epochs", "4", "--data.batch_size", "3"]]
    cfg = cli.config["fit"]
    assert cfg.trainer.max_epochs == 4  # typed before the files, still the command line's
    assert cfg.trainer.log_every_n_steps == 3  # the later file beats the earlier one
    assert cfg.data.batch_size == 3
    # a top-level settings flag lands on the init arg it stands for, in a config file too (fit included)
    assert cfg.model.generation.max_new_tokens == 9
    assert cfg.data.train_csv.startswith(str(Path(TINY).parent.parent))  # resolved against the file's folder
    assert [layer.get("trainer.max_epochs") for _, layer in cli.layers.configs] == [2, 7]


def test_the_plan_compares_the_layers_with_the_metadata(tiny_run, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  num_views: 6\n  fov_deg: 80.0\ntop_k: 2\n")
    cli = configured(["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--config", str(config),
                      "--max_new_tokens", "5", "--data.num_views", "4"])
    cfg, sources = cli.config["test"], cli.plan.merged.sources
    assert cfg.model.generation.max_new_tokens == 5 and sources["max_new_tokens"] == "cli"
    assert cfg.data.num_views == 4 and sources["num_views"] == "cli"  # beats the metadata and the config
    assert cfg.model.generation.top_k == 2 and sources["top_k"] == "config"
    assert sources["fov_deg"] == "metadata" and cfg.data.fov_deg == 90.0  # the metadata beats the config
    assert sources["batch_size"] == "default"
    message = cli.plan.merged.warning_message()
    assert "fov_deg: config 80.0, metadata 90.0" in message and "num_views" in message


@pytest.mark.parametrize("args, merged", [([], False), (["--model.merge_lora", "true"], True),
                                          (["--merge_lora", "true"], True),
                                          (["--model.merge_lora", "true", "--merge_lora", "false"], False)])
def test_merge_lora_flag_is_the_init_arg(tiny_run, args, merged):
    """``--merge_lora`` stands for ``--model.merge_lora``; either one typed alone is applied (the init arg used to
    be reset by the flag's default) and recorded in the provenance."""
    cli = configured(["test", "--ckpt_dir", str(tiny_run["run_dir"]), *args])
    assert to_plain(cli.config["test"]["model"])["merge_lora"] is merged
    assert cli.plan.provenance["evaluation_options"]["merge_lora"] is merged
