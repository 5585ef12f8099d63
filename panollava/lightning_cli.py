"""``PanoLLaVACLI``: LightningCLI with run-directory evaluation (``test --ckpt_dir``) and run-directory writing.

For ``test`` / ``predict`` the settings come from four sources, key by key: CLI flags > checkpoint metadata >
config file > built-in defaults (``panollava.settings``). The model is then loaded with
``PanoLLaVAModule.load_from_checkpoint`` (strict keys, ``weights_only``) using the merged hyper-parameters, with
the run's ``lora_weights/`` adapter.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml
from lightning.pytorch.cli import LightningCLI

from panollava.cli import echo
from panollava.data.datamodule import PanoDataModule
from panollava.errors import InvalidInputError
from panollava.module import PanoLLaVAModule

logger = logging.getLogger("panollava.cli")

# canonical setting key -> (namespace group, path inside its init args)
_MODEL_KEYS = {
    "vision_name": ("model", ("model_config", "vision_name")),
    "language_model_name": ("model", ("model_config", "language_model_name")),
    "tokenizer_name": ("model", ("model_config", "tokenizer_name")),
    "resampler_type": ("model", ("model_config", "resampler_type")),
    "latent_dimension": ("model", ("model_config", "latent_dimension")),
    "image_size": ("model", ("model_config", "image_size")),
    "image_token": ("model", ("model_config", "image_token")),
    "lora": ("model", ("lora",)),
    "prompt_template": ("model", ("prompt", "template")),
    "system_prompt": ("model", ("prompt", "system_prompt")),
    "enable_thinking": ("model", ("prompt", "enable_thinking")),
    "max_new_tokens": ("model", ("generation", "max_new_tokens")),
    "num_beams": ("model", ("generation", "num_beams")),
    "do_sample": ("model", ("generation", "do_sample")),
    "temperature": ("model", ("generation", "temperature")),
    "top_p": ("model", ("generation", "top_p")),
    "seed": ("model", ("generation", "seed")),
    "crop_strategy": ("data", ("crop_strategy",)),
    "fov_deg": ("data", ("fov_deg",)),
    "overlap_ratio": ("data", ("overlap_ratio",)),
    "use_vision_processor": ("data", ("use_vision_processor",)),
    "batch_size": ("data", ("eval_batch_size",)),
    "max_samples": ("data", ("max_samples",)),
    "num_workers": ("data", ("num_workers",)),
    "reference_mode": ("data", ("reference_mode",)),
}
_CLI_FLAGS = (
    "batch_size", "max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "seed", "max_samples",
    "csv_input", "output_dir", "reference_mode",
)


def _dig(mapping: Any, path: Sequence[str]) -> Any:
    for part in path:
        if mapping is None:
            return None
        mapping = mapping.get(part) if isinstance(mapping, dict) else getattr(mapping, part, None)
    return mapping


def _plain(value: Any) -> Any:
    """Namespace / Path values → plain JSON-able values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _config_files(cfg) -> list[Path]:
    files = []
    for item in cfg.get("config") or []:
        path = getattr(item, "absolute", None) or getattr(item, "relative", None) or str(item)
        files.append(Path(str(path)).resolve())
    return files


def _load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"config '{path}' must be a YAML mapping")
    return data


def _group_args(data: dict[str, Any], group: str) -> dict[str, Any]:
    section = data.get(group) or {}
    if isinstance(section, dict) and "init_args" in section:
        section = section.get("init_args") or {}
    return section if isinstance(section, dict) else {}


def _metric_library_versions() -> dict[str, str | None]:
    """Versions of the evaluation-side libraries (read from package metadata)."""
    from importlib import metadata as importlib_metadata

    versions: dict[str, str | None] = {}
    for name in ("pycocoevalcap", "torchmetrics", "tokenizers", "py360convert"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class PanoLLaVACLI(LightningCLI):
    """LightningCLI for panollava (see the module docstring)."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            PanoLLaVAModule,
            PanoDataModule,
            subclass_mode_model=False,
            subclass_mode_data=False,
            save_config_callback=None,
            trainer_defaults={"enable_checkpointing": False, "logger": False},
            args=list(args) if args is not None else None,
            run=run,
            parser_kwargs={"parser_mode": "yaml"},
        )

    def add_arguments_to_parser(self, parser) -> None:
        """Run-directory and evaluation flags (see ``panollava-cli test --help``)."""
        parser.add_argument("--experiment_name", type=Optional[str], default=None,
                            help="Experiment name: runs/<experiment>/<stage>/<crop>_<resampler>/ (fit; config-only test).")
        parser.add_argument("--runs_root", type=str, default="runs", help="Folder holding the experiments.")
        parser.add_argument("--ckpt_dir", type=Optional[str], default=None,
                            help="Run directory to evaluate; settings come from its checkpoint_metadata.json.")
        parser.add_argument("--checkpoint", type=Optional[str], default=None,
                            help="Checkpoint rule: best or last (default: best → last → newest *.ckpt).")
        parser.add_argument("--csv_input", type=Optional[str], default=None,
                            help="CSV to evaluate (default: metadata dataset.test_csv, else val_csv).")
        parser.add_argument("--max_samples", type=Optional[int], default=None, help="Evaluate only the first N samples.")
        parser.add_argument("--output_dir", type=Optional[str], default=None,
                            help="Where predictions and metrics go (default: ./eval_results/<experiment>/<stage>/<crop>_<resampler>/<checkpoint>).")
        parser.add_argument("--batch_size", type=Optional[int], default=None, help="Evaluation batch size.")
        parser.add_argument("--max_new_tokens", type=Optional[int], default=None, help="Longest caption, in tokens.")
        parser.add_argument("--num_beams", type=Optional[int], default=None, help="Beam search width (1: greedy).")
        parser.add_argument("--do_sample", type=Optional[bool], default=None, help="Sample instead of greedy decoding.")
        parser.add_argument("--temperature", type=Optional[float], default=None, help="Sampling temperature.")
        parser.add_argument("--top_p", type=Optional[float], default=None, help="Nucleus sampling threshold.")
        parser.add_argument("--seed", type=Optional[int], default=None, help="Seed for sampling.")
        parser.add_argument("--reference_mode", type=Optional[str], default=None,
                            help="grouped (all annotations of a (url, query) are references; default) or per_row (legacy).")
        parser.add_argument("--merge_lora", type=bool, default=False, help="Merge the LoRA adapter into the LM before evaluating.")
        parser.add_argument("--log_samples", type=bool, default=False, help="Print prediction/reference pairs.")
        parser.add_argument("--log_interval", type=int, default=10, help="With --log_samples: every N test batches.")
        parser.add_argument("--log_max_samples", type=int, default=16, help="With --log_samples: at most M pairs.")
        parser.add_argument("--dataset_name", type=Optional[str], default=None, help="Dataset part of checkpoint names (fit).")
        parser.add_argument("--save_top_k", type=int, default=-1, help="Keep the k best checkpoints (fit; -1: all).")
        parser.add_argument("--save_weights_only", type=bool, default=False, help="Checkpoints without optimizer state (fit).")
        parser.add_argument("--exist_ok", type=bool, default=False, help="Allow training into a run directory with checkpoints.")

    # -- settings ---------------------------------------------------------------------------------------------------
    def _resolve_config_paths(self, cfg) -> None:
        """Relative paths written in a config file resolve against that file's folder."""
        for path in _config_files(cfg):
            data = _load_yaml(path)
            data_args = _group_args(data, "data")
            for key in ("train_csv", "val_csv", "test_csv", "predict_csv", "image_root"):
                value = data_args.get(key)
                if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                    cfg["data"][key] = str((path.parent / value).resolve())
            model_config = _group_args(data, "model").get("model_config") or {}
            for key in ("vision_name", "language_model_name", "tokenizer_name"):
                value = model_config.get(key)
                if isinstance(value, str) and value.startswith((".", "..")) and (path.parent / value).exists():
                    cfg["model"]["model_config"][key] = str((path.parent / value).resolve())

    def _config_settings(self, cfg) -> dict[str, Any]:
        """Flat settings the config files (and --model.* / --data.* flags) give."""
        out: dict[str, Any] = {}
        for key, (group, path) in _MODEL_KEYS.items():
            value = _dig(cfg.get(group), path)
            if value is not None:
                out[key] = _plain(value)
        given_in_files: set[str] = set()
        for path in _config_files(cfg):
            data = _load_yaml(path)
            for key, (group, p) in _MODEL_KEYS.items():
                if _dig(_group_args(data, group), p) is not None:
                    given_in_files.add(key)
        # Values equal to the parser's defaults count as "not given" unless a config file sets them.
        defaults = self._parser(self.subcommand).get_defaults()
        for key in list(out):
            group, p = _MODEL_KEYS[key]
            if key not in given_in_files and _plain(_dig(defaults.get(group), p)) == out[key]:
                del out[key]
        if "batch_size" not in out and cfg["data"].get("batch_size") is not None and "batch_size" in given_in_files:
            out["batch_size"] = cfg["data"]["batch_size"]
        return out

    def _prepare_evaluation(self, cfg) -> None:
        from panollava.metadata import installed_library_versions, metadata_recorded_training, metadata_settings
        from panollava.report import sha256_file
        from panollava.rundir import banner_lines, find_run_dir_from_config, resolve_run_dir
        from panollava.settings import merge_settings, resolve_csv

        ckpt_dir = cfg.get("ckpt_dir")
        explicit_ckpt = cfg.get("ckpt_path")
        if ckpt_dir is None:
            if cfg["model"].get("model_config") is None and cfg.get("experiment_name") is None and explicit_ckpt is None:
                raise InvalidInputError(
                    f"{self.subcommand} needs a run directory: pass --ckpt_dir runs/EXP/STAGE/CROP_RESAMPLER, or a "
                    "--config whose experiment_name, model and data settings name it"
                )
            if explicit_ckpt is None:
                mc = cfg["model"].get("model_config") or {}
                ckpt_dir = str(find_run_dir_from_config(
                    cfg.get("runs_root") or "runs", cfg.get("experiment_name"), cfg["model"].get("stage"),
                    cfg["data"].get("crop_strategy"), _dig(mc, ("resampler_type",)) or "mlp",
                ))
        resolved = None
        if ckpt_dir is not None:
            checkpoint = str(explicit_ckpt) if explicit_ckpt is not None else cfg.get("checkpoint")
            resolved = resolve_run_dir(ckpt_dir, checkpoint)
        self._resolved = resolved
        meta = resolved.metadata if resolved is not None else None
        cli = {k: cfg.get(k) for k in _CLI_FLAGS}
        config_settings = self._config_settings(cfg)
        config_names = ", ".join(str(p) for p in _config_files(cfg)) or None
        merged = merge_settings(
            cli,
            metadata_settings(meta) if meta is not None else None,
            config_settings,
            config_name=config_names,
            metadata_name=str(resolved.metadata_path) if meta is not None else None,
        )
        mismatch = merged.warning_message()
        if mismatch:
            logger.warning(mismatch)
        self._merged = merged
        for line in banner_lines(resolved, merged_ok=not merged.mismatches, include_warnings=False) if resolved else []:
            echo(line)

        # Apply: metadata/config/defaults → model and data init args.
        model = cfg["model"]
        model["model_config"] = model.get("model_config") or {}
        values = merged.values
        for key, (group, path) in _MODEL_KEYS.items():
            if key not in values:
                continue
            target = cfg[group]
            for part in path[:-1]:
                if target.get(part) is None:
                    target[part] = {}
                target = target[part]
            target[path[-1]] = copy.deepcopy(values[key])
        if meta is not None and meta.stage:
            model["stage"] = meta.stage
        if resolved is not None:
            model["lora_dir"] = str(resolved.lora_dir) if resolved.lora_dir is not None else None
        model["merge_lora"] = bool(cfg.get("merge_lora"))
        if meta is not None and meta.lora_weights is None and resolved is not None and resolved.lora_dir is None:
            model["lora"] = values.get("lora")
        if meta is not None:
            num_views = meta.training_config.get("num_views")
            if num_views is not None:
                cfg["data"]["num_views"] = int(num_views)
            # Training's target truncation, so that `validate` reproduces the validation loss of training.
            if meta.training_config.get("max_answer_tokens") is not None:
                model["max_answer_tokens"] = int(meta.training_config["max_answer_tokens"])

        csv_key = {"test": "test_csv", "predict": "predict_csv", "validate": "val_csv"}[self.subcommand]
        given = cfg.get("csv_input") or cfg["data"].get(csv_key)
        if self.subcommand == "validate" and given is None and meta is not None:
            given = meta.dataset.get("val_csv")
        csv_path, csv_reason = resolve_csv(given, meta, resolved.run_dir if resolved else None)
        cfg["data"][csv_key] = str(csv_path)
        if cfg.get("csv_input") is None and meta is not None and meta.dataset.get("image_root"):
            cfg["data"]["image_root"] = meta.dataset["image_root"]
        echo(f"📄 Data: {csv_path} ({csv_reason})")

        checkpoint_path = resolved.checkpoint_path if resolved is not None else Path(str(explicit_ckpt)).resolve()
        output_dir = cfg.get("output_dir")
        if output_dir is None:
            if meta is not None and meta.experiment_name:
                run = resolved.run_dir
                output_dir = Path("eval_results") / meta.experiment_name / run.parent.name / run.name / checkpoint_path.stem
            else:
                output_dir = Path("eval_results") / (resolved.run_dir.name if resolved else "run") / checkpoint_path.stem
        self._output_dir = Path(output_dir).resolve()
        if resolved is not None and self._output_dir == resolved.run_dir:
            logger.warning("writing evaluation results into the run directory, as --output_dir asks")
        self._checkpoint_path = checkpoint_path
        self._provenance = {
            "checkpoint": {
                "path": str(checkpoint_path),
                "sha256": sha256_file(checkpoint_path) if checkpoint_path.is_file() else None,
                "rule": resolved.checkpoint_rule if resolved else "--ckpt_path",
                "reason": resolved.checkpoint_reason if resolved else "given with --ckpt_path",
            },
            "run": resolved.to_dict() if resolved is not None else None,
            "metadata": meta.data if meta is not None else None,
            "recorded_training": metadata_recorded_training(meta) if meta is not None else None,
            "settings": merged.provenance(),
            "settings_mismatches": mismatch,
            "decoding": _plain(cfg["model"].get("generation")),
            "dataset": {"path": str(csv_path), "sha256": sha256_file(csv_path), "reason": csv_reason,
                        "reference_mode": cfg["data"].get("reference_mode")},
            "library_versions": {**installed_library_versions(), **_metric_library_versions()},
            "command": " ".join(["panollava-cli", *self._argv]),
        }
        if meta is None:
            echo("⚠️  No metadata: settings come from the config and the defaults")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        self._resolve_config_paths(cfg)
        self._resolved = None
        if self.subcommand in ("test", "predict", "validate") and (
            cfg.get("ckpt_dir") is not None or self.subcommand != "validate"
        ):
            self._prepare_evaluation(cfg)

    def after_instantiate_classes(self) -> None:
        from panollava.callbacks.outputs import EvaluationWriter, SampleLogger
        from panollava.callbacks.run_writer import RunDirectoryWriter

        cfg = self.config[self.subcommand]
        callbacks = self.trainer.callbacks
        if cfg.get("log_samples"):
            callbacks.append(SampleLogger(cfg.get("log_interval"), cfg.get("log_max_samples")))
        if self.subcommand == "fit":
            if not cfg.get("experiment_name"):
                raise InvalidInputError("fit needs --experiment_name (or experiment_name: in the config)")
            self.run_dir_writer = RunDirectoryWriter(
                experiment_name=cfg["experiment_name"],
                runs_root=cfg.get("runs_root") or "runs",
                dataset_name=cfg.get("dataset_name"),
                save_top_k=cfg.get("save_top_k", -1),
                save_weights_only=bool(cfg.get("save_weights_only")),
                exist_ok=bool(cfg.get("exist_ok")),
            )
            callbacks.append(self.run_dir_writer)
            return
        if self.subcommand in ("test", "predict", "validate") and getattr(self, "_checkpoint_path", None) is not None:
            model_kwargs = {k: _plain(v) for k, v in cfg["model"].items()}
            try:
                self.model = PanoLLaVAModule.load_from_checkpoint(
                    self._checkpoint_path, map_location="cpu", weights_only=True, strict=True, **model_kwargs
                )
            except Exception as exc:  # issue 12: a bad file is the user's error, explained (errors.py)
                from panollava.errors import checkpoint_load_error

                explained = checkpoint_load_error(self._checkpoint_path, exc)
                if explained is None:
                    raise
                raise explained from exc
            if model_kwargs.get("merge_lora"):
                self.model.merge_adapter()
            self.config_init[self.subcommand]["ckpt_path"] = None
            echo(f"✅ Loaded {self._checkpoint_path.name} (strict, weights_only)")
            if self.subcommand == "validate":
                return
            self.evaluation_writer = EvaluationWriter(str(self._output_dir), self._provenance)
            callbacks.append(self.evaluation_writer)

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        writer = getattr(self, "evaluation_writer", None)
        if writer is not None and subcommand == "test" and writer.metrics is not None:
            from panollava.report import format_metrics_table

            echo(f"\n📊 Metrics on {writer.metrics.get('num_samples')} samples:\n{format_metrics_table(writer.metrics)}")
            echo(f"📁 Results: {self._output_dir}")
        elif writer is not None and subcommand == "predict":
            echo(f"📁 {len(writer.records)} captions written to {self._output_dir / 'predictions.jsonl'}")
        if subcommand == "fit" and getattr(self, "run_dir_writer", None) is not None:
            echo(f"📁 Run directory: {self.run_dir_writer.run_dir}")


class _DropAdvert(logging.Filter):
    """Drops Lightning's start-up advertisement for its hosted logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def _quiet_third_party() -> None:
    """Silence known, harmless third-party noise (progress bars while loading weights, deprecation notes)."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*litlogger.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in target.filters):
            target.addFilter(_DropAdvert())
    warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")


def run_lightning_cli(argv: Sequence[str]) -> PanoLLaVACLI:
    """Run a Lightning subcommand (``argv[0]`` is fit/validate/test/predict)."""
    _quiet_third_party()
    PanoLLaVACLI._argv = list(argv)
    return PanoLLaVACLI(args=argv)
