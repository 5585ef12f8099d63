"""Evaluation planning: what ``test`` / ``predict`` / ``validate --ckpt_dir`` will evaluate, as one pure step.

:func:`plan_evaluation` turns the run directory, the settings typed on the command line and the settings of the
config files into an :class:`EvaluationPlan`: the checkpoint, the merged settings with their sources, the CSV,
the output folder, the provenance recorded in ``metrics.json`` and the banner lines. It reads files (metadata,
checkpoint hashes) but prints nothing and changes no configuration: ``panollava.lightning_cli`` applies the plan
and ``panollava.console`` prints it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError
from panollava.families.base import FAMILY_HF, FAMILY_PANOLLAVA
from panollava.metadata import metadata_recorded_training, metadata_settings
from panollava.outputs.files import installed_library_versions, sha256_file
from panollava.rundir import ResolvedRun, banner_lines, find_run_dir_from_config, resolve_run_dir
from panollava.schema import SETTINGS, GenerationSettings, RunDirectoryOptions
from panollava.settings import MergedSettings, merge_settings, resolve_csv

logger = logging.getLogger(__name__)

CSV_KEYS = {"test": "test_csv", "predict": "predict_csv", "validate": "val_csv"}
_EVAL_LIBRARIES = ("pycocoevalcap", "torchmetrics", "tokenizers", "py360convert")


@dataclass
class EvaluationPlan:
    """Everything an evaluation needs, decided before any model is built.

    Attributes:
        subcommand: ``test``, ``predict`` or ``validate``.
        resolved: the resolved run directory, or None (``--ckpt_path`` without a run directory).
        merged: the merged settings and their sources (``csv_input`` = the CSV evaluated).
        checkpoint_path: the checkpoint to load, absolute.
        csv_path: the CSV to evaluate, absolute.
        csv_reason: why that CSV.
        output_dir: where predictions and metrics go, absolute (default: :func:`default_output_dir`).
        provenance: what ``metrics.json`` records (checkpoint, run, metadata, settings, decoding, dataset, ...).
        banner: the start-up lines for the user (SPEC §2).
        stage: the run's stage from the metadata, or None.
        family: the model family that serves it (``panollava.families.base.FAMILIES``).
        family_source: what that family's loader needs (run directory, checkpoint, model name, adapter, ...);
            empty for our own family, which LightningCLI builds from the merged settings.
    """

    subcommand: str
    resolved: ResolvedRun | None
    merged: MergedSettings
    checkpoint_path: Path
    csv_path: Path
    csv_reason: str
    output_dir: Path
    provenance: dict[str, Any]
    banner: list[str] = field(default_factory=list)
    stage: str | None = None
    family: str = FAMILY_PANOLLAVA
    family_source: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> dict[str, Any]:
        """Dotted LightningCLI config path → value, for every merged setting that has one, plus the CSV, the
        stage and the LoRA folder."""
        out = {target: value for key, value in self.merged.values.items()
               for target in (SETTINGS[key].targets if key in SETTINGS else ())}
        out[f"data.{CSV_KEYS[self.subcommand]}"] = str(self.csv_path)
        if self.stage is not None:
            out["model.stage"] = self.stage
        if self.resolved is not None:
            out["model.lora_dir"] = str(self.resolved.lora_dir) if self.resolved.lora_dir is not None else None
        return out


def default_output_dir(checkpoint_path: Path, csv_path: Path, resolved: ResolvedRun | None) -> Path:
    """Where an evaluation goes without ``--output_dir``: one folder per (run, checkpoint, dataset).

    ``eval_results/<experiment>/<stage>/<run>/<checkpoint stem>-<CSV stem>`` (``eval_results/<run>/<checkpoint
    stem>-<CSV stem>`` without metadata), so that evaluating the val and the test CSV of one checkpoint never
    meet in one folder (one level, as before, so ``compare RUN_DIR`` finds every evaluation of a run). Two CSVs with one stem in different folders still share it; the resume fingerprint (the
    CSV's sha256) then refuses the second instead of mixing them.

    Args:
        checkpoint_path: The checkpoint evaluated.
        csv_path: The CSV evaluated.
        resolved: The run directory, or None (``--ckpt_path`` alone).

    Returns:
        The folder, relative to the working directory.
    """
    meta = resolved.metadata if resolved is not None else None
    name = f"{checkpoint_path.stem}-{Path(csv_path).stem}"
    if meta is not None and meta.experiment_name:
        run = resolved.run_dir
        return Path("eval_results") / meta.experiment_name / run.parent.name / run.name / name
    return Path("eval_results") / (resolved.run_dir.name if resolved else "run") / name


def plan_evaluation(
    subcommand: str,
    *,
    cli: Mapping[str, Any],
    config: Mapping[str, Any],
    ckpt_dir: str | None = None,
    checkpoint: str | None = None,
    ckpt_path: str | None = None,
    runs_root: str = RunDirectoryOptions.runs_root,
    experiment_name: str | None = None,
    config_stage: str | None = None,
    config_name: str | None = None,
    cli_csv: tuple[str, str] | None = None,
    config_csv: str | None = None,
    command: str = "",
) -> EvaluationPlan:
    """Plans an evaluation (see the module docstring).

    Args:
        subcommand: ``test``, ``predict`` or ``validate``.
        cli: flat settings typed on the command line (``panollava.schema`` keys; absent = not typed).
        config: flat settings from the config file(s).
        ckpt_dir: the run directory (``--ckpt_dir``), or None (config-only mode or ``--ckpt_path``).
        checkpoint: the checkpoint rule (``best``/``last``) or None.
        ckpt_path: an explicit checkpoint file (``--ckpt_path``), or None.
        runs_root: the folder of experiments, to derive the run directory in config-only mode.
        experiment_name: the config's experiment name (config-only mode).
        config_stage: the config's ``model.stage`` (config-only mode).
        config_name: the config file(s), for messages.
        cli_csv: ``(path, flag)`` of a CSV typed on the command line (``--csv_input`` or ``--data.test_csv``).
        config_csv: the CSV a config file names for this split.
        command: the command line, recorded in the provenance.

    Returns:
        The :class:`EvaluationPlan`.

    Raises:
        InvalidInputError: no run directory can be found or derived, or a setting is invalid.
        InputNotFoundError: the run directory, checkpoint or CSV does not exist.
    """
    if ckpt_dir is None and ckpt_path is None:
        if not config and experiment_name is None:
            raise InvalidInputError(
                f"{subcommand} needs a run directory: pass --ckpt_dir runs/EXP/STAGE/CROP_RESAMPLER, or a "
                "--config whose experiment_name, model and data settings name it"
            )
        ckpt_dir = str(find_run_dir_from_config(
            runs_root, experiment_name, config_stage,
            {**config, **cli}.get("crop_strategy", SETTINGS["crop_strategy"].default),
            {**config, **cli}.get("resampler_type", SETTINGS["resampler_type"].default),
        ))
    resolved = None
    if ckpt_dir is not None:
        resolved = resolve_run_dir(ckpt_dir, str(ckpt_path) if ckpt_path is not None else checkpoint)
    meta = resolved.metadata if resolved is not None else None
    merged = merge_settings(
        cli, metadata_settings(meta) if meta is not None else None, config, config_name=config_name,
        metadata_name=str(resolved.metadata_path) if meta is not None else None,
    )
    merged.require()

    if subcommand == "validate" and cli_csv is None:
        cli_csv = (config_csv or (meta.dataset.get("val_csv") if meta else None), "--data.val_csv")
    csv_path, csv_reason, csv_source = _choose_csv(merged, cli_csv, meta, resolved.run_dir if resolved else None,
                                                   config_csv, config_name)
    if merged.sources.get("image_root") == "metadata" and csv_source != "metadata":
        # The metadata's image_root belongs to the metadata's CSV; another CSV resolves against its own root.
        merged.sources["image_root"] = "config" if "image_root" in config else "default"
        merged.values["image_root"] = config.get("image_root")

    checkpoint_path = resolved.checkpoint_path if resolved is not None else Path(str(ckpt_path)).resolve()
    output_dir = _choose_output_dir(merged, default_output_dir(checkpoint_path, csv_path, resolved))
    if resolved is not None and output_dir == resolved.run_dir:
        logger.warning("writing evaluation results into the run directory, as --output_dir asks")

    mismatch = merged.warning_message()
    provenance = {
        "checkpoint": {
            "path": str(checkpoint_path),
            "sha256": sha256_file(checkpoint_path) if checkpoint_path.is_file() else None,
            "rule": resolved.checkpoint_rule if resolved else "--ckpt_path",
            "reason": resolved.checkpoint_reason if resolved else "given with --ckpt_path",
        },
        "run": resolved.to_dict() if resolved is not None else None,
        "metadata": meta.data if meta is not None else None,
        "recorded_training": metadata_recorded_training(meta) if meta is not None else None,
        "settings_mismatches": mismatch,
        **_evaluation_provenance(merged, csv_path, csv_reason, command),
    }
    banner = banner_lines(resolved, merged_ok=not mismatch, include_warnings=False) if resolved else []
    banner.append(f"📄 Data: {csv_path} ({csv_reason})")
    if meta is None:
        banner.append("⚠️  No metadata: settings come from the config and the defaults")
    return EvaluationPlan(
        subcommand=subcommand, resolved=resolved, merged=merged, checkpoint_path=checkpoint_path,
        csv_path=csv_path, csv_reason=csv_reason, output_dir=output_dir, provenance=provenance, banner=banner,
        stage=meta.stage if meta is not None and meta.stage else None,
    )


def _choose_csv(merged: MergedSettings, cli_csv: tuple[str | None, str] | None, meta: Any, run_dir: Path | None,
                config_csv: str | None, config_name: str | None) -> tuple[Path, str, str]:
    """:func:`~panollava.settings.resolve_csv` for a plan; the CSV becomes the merged ``csv_input``."""
    csv_given, csv_flag = cli_csv if cli_csv is not None else (None, "--csv_input")
    csv_path, csv_reason, csv_source = resolve_csv(csv_given, meta, run_dir, config_csv=config_csv,
                                                   cli_flag=csv_flag, config_name=config_name)
    merged.values["csv_input"], merged.sources["csv_input"] = str(csv_path), csv_source
    return csv_path, csv_reason, csv_source


def _choose_output_dir(merged: MergedSettings, default: Path) -> Path:
    """``--output_dir`` (or ``default``), absolute; it becomes the merged ``output_dir``."""
    output_dir = Path(merged.values.get("output_dir") or default).resolve()
    merged.values["output_dir"] = str(output_dir)
    return output_dir


def _evaluation_provenance(merged: MergedSettings, csv_path: Path, csv_reason: str, command: str) -> dict[str, Any]:
    """The provenance every family's evaluation records: settings with their sources, the decoding asked for,
    the dataset, the library versions and the command line."""
    return {
        "settings": merged.provenance(),
        "decoding": {f.name: merged.values[f.name] for f in fields(GenerationSettings)},
        "dataset": {"path": str(csv_path), "sha256": sha256_file(csv_path), "reason": csv_reason,
                    "reference_mode": merged.values["reference_mode"]},
        "library_versions": {**installed_library_versions(), **installed_library_versions(_EVAL_LIBRARIES)},
        "command": command,
    }


def plan_original_evaluation(
    subcommand: str,
    *,
    recognition,
    run_dir: str,
    cli: Mapping[str, Any],
    config: Mapping[str, Any],
    checkpoint: str | None = None,
    ckpt_path: str | None = None,
    original_config: str | None = None,
    config_name: str | None = None,
    cli_csv: tuple[str, str] | None = None,
    config_csv: str | None = None,
    command: str = "",
) -> EvaluationPlan:
    """Plans the evaluation of a run directory written by the original PanoLLaVA trainer (family
    ``panollava-v1``): the checkpoint by that family's rule, the CSV, the output folder and the provenance. What
    defines the model comes from the run itself (resolved when the family loads it); the settings merged here are
    the evaluation's (decoding, data layout, output).

    Args:
        subcommand: ``test`` or ``predict``.
        recognition: The family's :class:`~panollava.families.base.Recognition` of the run directory.
        run_dir: The run directory.
        cli: Flat settings typed on the command line.
        config: Flat settings from panollava config files.
        checkpoint: The checkpoint rule (``best``/``last``) or None.
        ckpt_path: An explicit checkpoint file, or None.
        original_config: The original training YAML given with ``--config``, or None.
        config_name: The config file(s), for messages.
        cli_csv: ``(path, flag)`` of a CSV typed on the command line.
        config_csv: The CSV a panollava config file names.
        command: The command line, recorded in the provenance.

    Returns:
        The :class:`EvaluationPlan` (``family`` ``panollava-v1``; ``family_source`` is what the loader needs).
    """
    from panollava.families.original import choose_checkpoint

    run = Path(run_dir).expanduser().resolve()
    chosen = choose_checkpoint(run, ckpt_path or checkpoint)
    merged = merge_settings(cli, None, config, config_name=config_name)
    csv_path, csv_reason, _ = _choose_csv(merged, cli_csv, None, run, config_csv, config_name)
    image_root_note = None
    if merged.values.get("image_root") is None:
        # The original trainer opened relative urls against its working directory (its CSVs name
        # data/quic360/...), not against the CSV's folder as panollava does.
        merged.values["image_root"], merged.sources["image_root"] = str(Path.cwd()), "default"
        image_root_note = (f"🖼️  Relative image urls resolve against the working directory {Path.cwd()}, as the "
                           "original trainer opened them (--data.image_root to change)")
    output_dir = _choose_output_dir(  # runs/<experiment>/<stage>/<crop>_<resampler>/, as our run directories
        merged, Path("eval_results") / run.parent.parent.name / run.parent.name / run.name
        / f"{chosen.path.stem}-{csv_path.stem}")
    provenance = {
        "family": recognition.family,
        "checkpoint": {"path": str(chosen.path), "sha256": sha256_file(chosen.path), "rule": chosen.rule,
                       "reason": chosen.reason},
        "run": {"run_dir": str(run), "family": recognition.family, "recognition": list(recognition.reasons),
                "original_config": str(Path(original_config).resolve()) if original_config else None},
        "metadata": None,
        "settings_mismatches": None,
        **_evaluation_provenance(merged, csv_path, csv_reason, command),
    }
    banner = [
        "=" * 60,
        f"📂 Checkpoint directory: {run}",
        "=" * 60,
        f"🧬 Recognised: {recognition.banner()}",
        f"✅ {chosen.reason}",
        f"📄 Data: {csv_path} ({csv_reason})",
    ]
    if image_root_note:
        banner.append(image_root_note)
    if original_config:
        banner.append(f"📋 Original training YAML: {Path(original_config).resolve()}")
    return EvaluationPlan(
        subcommand=subcommand, resolved=None, merged=merged, checkpoint_path=chosen.path, csv_path=csv_path,
        csv_reason=csv_reason, output_dir=output_dir, provenance=provenance, banner=banner,
        family=recognition.family,
        family_source={"run_dir": str(run), "checkpoint": str(chosen.path), "config_yaml": original_config},
    )


def plan_hf_evaluation(
    subcommand: str,
    *,
    hf_model: str,
    hf_adapter: str | None,
    hf_dtype: str,
    cli: Mapping[str, Any],
    config: Mapping[str, Any],
    config_name: str | None = None,
    cli_csv: tuple[str, str] | None = None,
    config_csv: str | None = None,
    command: str = "",
) -> EvaluationPlan:
    """Plans the evaluation of an off-the-shelf Hugging Face VLM (family ``hf``, ``--hf_model``): the CSV, the
    output folder and the provenance. The view protocol is ``--data.crop_strategy`` (with fov, overlap, views and
    ``--model.model_config.image_size`` for the rendered views); the prompt is ``--prompt_template``'s (ours by
    default); the model's identity (resolved revision, adapter hashes, processor settings) is added when it loads.

    Args:
        subcommand: ``test`` or ``predict``.
        hf_model: Hub id or local model folder.
        hf_adapter: A peft LoRA adapter folder trained on it, or None.
        hf_dtype: ``float32``, ``bfloat16`` or ``float16``.
        cli: Flat settings typed on the command line.
        config: Flat settings from panollava config files.
        config_name: The config file(s), for messages.
        cli_csv: ``(path, flag)`` of a CSV typed on the command line.
        config_csv: The CSV a config file names.
        command: The command line, recorded in the provenance.

    Returns:
        The :class:`EvaluationPlan` (``family`` ``hf``).
    """
    merged = merge_settings(cli, None, config, config_name=config_name)
    csv_path, csv_reason, _ = _choose_csv(merged, cli_csv, None, None, config_csv, config_name)
    # eval_results/hf/<model>[+<adapter>]/<protocol>-<dataset>
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(hf_model.rstrip("/")).name if Path(hf_model).exists()
                  else hf_model.replace("/", "__"))
    if hf_adapter:
        name += "+" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(hf_adapter.rstrip("/")).name)
    output_dir = _choose_output_dir(
        merged, Path("eval_results") / "hf" / name / f"{merged.values['crop_strategy']}-{csv_path.stem}")
    provenance = {
        "family": FAMILY_HF,
        "checkpoint": {"path": hf_model, "sha256": None, "rule": "--hf_model",
                       "reason": "an off-the-shelf Hugging Face VLM given with --hf_model"},
        "run": {"hf_model": hf_model, "hf_adapter": hf_adapter, "dtype": hf_dtype},
        "metadata": None,
        "settings_mismatches": None,
        **_evaluation_provenance(merged, csv_path, csv_reason, command),
    }
    banner = [
        "=" * 60,
        f"🤗 Hugging Face VLM: {hf_model}" + (f" + adapter {hf_adapter}" if hf_adapter else ""),
        "=" * 60,
        f"🖼️  Views: {merged.values['crop_strategy']} (--data.crop_strategy); prompt: "
        f"{merged.values['prompt_template']!r}",
        f"📄 Data: {csv_path} ({csv_reason})",
    ]
    return EvaluationPlan(
        subcommand=subcommand, resolved=None, merged=merged, checkpoint_path=Path(hf_model), csv_path=csv_path,
        csv_reason=csv_reason, output_dir=output_dir, provenance=provenance, banner=banner, family=FAMILY_HF,
        family_source={"name": hf_model, "adapter": hf_adapter, "dtype": hf_dtype},
    )
