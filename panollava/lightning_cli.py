"""``PanoLLaVACLI``: LightningCLI with run-directory evaluation (``test --ckpt_dir``) and run-directory writing.

The configuration is read in layers, each parsed once by jsonargparse (:meth:`PanoLLaVACLI.parse_arguments`):
the built-in defaults, each ``--config`` file in order (relative paths resolved against its folder), then the
flags typed on the command line, which beat every config file wherever they stand in the command line. For an
evaluation, :func:`panollava.evaluation.plan.plan_evaluation` (or the plan of another model family) compares the
layers with the checkpoint metadata, key by key (CLI > metadata > config > defaults, SPEC §2), and its result is the
last layer (:meth:`PanoLLaVACLI.before_instantiate_classes`): the mismatch warning and the provenance come from
the layers, never from parsing the command line again. The plan's model family loads the model
(:func:`panollava.model_loader.load_evaluation_model`; ours with ``load_from_checkpoint``, strict keys,
``weights_only``). ``--print_config`` prints the merged configuration (with each setting's source) instead of
running.
"""

from __future__ import annotations

import logging
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from panollava.callbacks.eval_writer import EvaluationWriter, set_evaluation_timeout
from panollava.callbacks.run_writer import RunDirectoryWriter
from panollava.callbacks.sample_logger import DEFAULT_VAL_SAMPLES, SampleLogger
from panollava.console import echo, quiet_third_party
from panollava.data.datamodule import PanoDataModule
from panollava.distributed import check_launcher_world_size, destroy_process_group_at_exit
from panollava.errors import InvalidInputError
from panollava.evaluation.lock import refuse_if_busy
from panollava.evaluation.plan import (
    CSV_KEYS,
    EvaluationPlan,
    plan_evaluation,
    plan_hf_evaluation,
    plan_original_evaluation,
)
from panollava.families.base import FAMILY_PANOLLAVA
from panollava.families.original import recognise
from panollava.model_loader import load_evaluation_model
from panollava.module import PanoLLaVAModule
from panollava.outputs.files import format_metrics_table
from panollava.outputs.leaderboard import run_compare
from panollava.schema import (
    COMMAND_OPTIONS,
    SETTINGS,
    RunDirectoryOptions,
    RunSelection,
    SampleLogOptions,
    field_docs,
    to_plain,
    typed,
)
from panollava.settings import flat_settings

logger = logging.getLogger("panollava.cli")

_CSV_PATHS = ("data.train_csv", "data.val_csv", "data.test_csv", "data.predict_csv", "data.image_root", "csv_input")
_MODEL_PATHS = tuple(f"model.model_config.{k}" for k in ("vision_name", "language_model_name", "tokenizer_name"))


def _split_config_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(other args, config files)``: ``--config FILE`` / ``--config=FILE`` pulled out, order kept."""
    rest: list[str] = []
    files: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--config" or arg.startswith("--config="):
            files.append(arg.split("=", 1)[1] if "=" in arg else next(it, ""))
        else:
            rest.append(arg)
    return rest, files


def _resolve_relative(ns: Any, folder: Path) -> None:
    """Relative CSV/image-root paths written in a config file resolve against that file's folder; so do model
    names that start with ``.`` and exist there."""
    for path in _CSV_PATHS + _MODEL_PATHS:
        value = ns[path] if path in ns else None
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            continue
        if path in _MODEL_PATHS and not (value.startswith(".") and (folder / value).exists()):
            continue
        ns[path] = str((folder / value).resolve())


def _on_targets(layer: Namespace) -> Namespace:
    """A layer with each top-level settings flag (``--max_new_tokens``) moved onto the init arg it stands for
    (``model.generation.max_new_tokens``), so that merging the layers in order merges the aliases too."""
    for setting in SETTINGS.values():
        if setting.flag is not None and setting.targets and layer.get(setting.flag) is not None:
            layer[setting.targets[0]] = layer.pop(setting.flag)
    return layer


@dataclass
class ConfigLayers:
    """The configuration as the parser read it, one namespace per source (``defaults=False``: a key is present
    only where that source sets it).

    Attributes:
        configs: ``(file, namespace)`` per ``--config`` file, in the order given (later files win).
        cli: the flags typed on the command line.
    """

    configs: list[tuple[Path, Namespace]] = field(default_factory=list)
    cli: Namespace = field(default_factory=Namespace)

    def config_settings(self) -> dict[str, Any]:
        """The flat settings the config files set (a later file overrides an earlier one)."""
        out: dict[str, Any] = {}
        for _, ns in self.configs:
            out.update(flat_settings(ns))
        return out

    def config_value(self, *paths: str) -> Any:
        """The value the last config file setting one of ``paths`` gives it (None: none does)."""
        return next((ns[p] for _, ns in reversed(self.configs) for p in paths if ns.get(p) is not None), None)

    def config_name(self) -> str | None:
        """The config files, absolute and comma-separated, for messages (None without one)."""
        return ", ".join(str(path.resolve()) for path, _ in self.configs) or None


def _add_group_flags(parser: Any, group: type) -> None:
    """One top-level flag per field of a :mod:`panollava.schema` group: type, default and ``--help`` line from
    the declaration."""
    hints, docs = typing.get_type_hints(group), field_docs(group)
    for f in fields(group):
        parser.add_argument(f"--{f.name}", type=hints[f.name], default=f.default, help=docs[f.name])


class PanoLLaVACLI(LightningCLI):
    """LightningCLI for panollava (see the module docstring).

    Args:
        args: the command line after ``panollava-cli`` (``args[0]`` is fit/validate/test/predict; default:
            ``sys.argv[1:]``).
        run: run the subcommand.
        print_config: print the merged configuration and each setting's source, then exit.
        original_config: a training YAML of the original PanoLLaVA trainer given with ``--config`` (taken out of
            ``args``: it is the original family's input, not a layer).
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, *, print_config: bool = False,
                 original_config: str | None = None) -> None:
        args = list(sys.argv[1:] if args is None else args)
        self.command = " ".join(["panollava-cli", *args, *(["--config", original_config] if original_config else [])])
        self.print_merged_config = print_config
        self.original_config = original_config
        self.layers = ConfigLayers()
        self.plan: EvaluationPlan | None = None
        super().__init__(
            PanoLLaVAModule,
            PanoDataModule,
            subclass_mode_model=False,
            subclass_mode_data=False,
            save_config_callback=None,
            # logger stays None (not configured) unless --trainer.logger: fit then logs to TensorBoard in the run
            # directory, evaluation to no logger (after_instantiate_classes).
            trainer_defaults={"enable_checkpointing": False},
            args=args,
            run=run,
            parser_kwargs={"parser_mode": "yaml"},
        )

    def add_arguments_to_parser(self, parser) -> None:
        """The flags of :data:`panollava.schema.COMMAND_OPTIONS`, and the evaluation flags generated from
        ``panollava.schema.SETTINGS`` (one per setting with a top-level flag; those that stand for an init arg
        default to null: "not typed")."""
        for group in COMMAND_OPTIONS:
            _add_group_flags(parser, group)
        for setting in SETTINGS.values():
            if setting.flag is None:
                continue
            alias = bool(setting.targets)
            kind = typing.Optional[setting.type] if alias else setting.type
            also = f" (= --{setting.targets[0]})" if alias else ""
            parser.add_argument(f"--{setting.flag}", type=kind, default=None if alias else setting.default,
                                help=f"{setting.doc}{also}")

    # -- settings ---------------------------------------------------------------------------------------------------
    def parse_arguments(self, parser, args) -> None:
        """Parses each layer once (each config file, the typed flags) and merges them in priority order with
        jsonargparse (``parse_object`` onto the lower layers): defaults < config files < typed flags."""
        args = list(args)
        if not args or args[0] not in self.subcommands() or {"-h", "--help"} & set(args):
            super().parse_arguments(parser, args)
            return
        subcommand, sub = args[0], self._parser(args[0])
        typed_args, files = _split_config_args(args[1:])
        for file in files:
            ns = sub.parse_args(["--config", file], defaults=False)
            ns.pop("config", None)
            _resolve_relative(ns, Path(file).expanduser().resolve().parent)
            self.layers.configs.append((Path(file).expanduser(), _on_targets(ns)))
        self.layers.cli = _on_targets(sub.parse_args(typed_args, defaults=False))
        merged = sub.get_defaults()
        for layer in [ns for _, ns in self.layers.configs] + [self.layers.cli]:
            merged = sub.parse_object(layer.clone(), merged)
        merged["config"] = [Path(f).expanduser().resolve() for f in files] or None
        self.config = Namespace(subcommand=subcommand)
        self.config[subcommand] = merged

    def _plan_evaluation(self, cfg: Namespace) -> EvaluationPlan:
        """The plan of the family that serves the run (ours, the original PanoLLaVA trainer's, Hugging Face)."""
        csv_key = CSV_KEYS[self.subcommand]
        cli_ns = self.layers.cli
        flag = next((f for f in ("csv_input", f"data.{csv_key}") if cli_ns.get(f) is not None), None)
        common = dict(
            cli={k: v for k, v in flat_settings(cli_ns).items() if k != "csv_input"},
            config={k: v for k, v in self.layers.config_settings().items() if k != "csv_input"},
            config_name=self.layers.config_name(),
            cli_csv=(str(cli_ns[flag]), f"--{flag}") if flag else None,
            config_csv=self.layers.config_value(f"data.{csv_key}", "csv_input"),
            command=self.command,
        )
        run = typed(RunSelection, cfg)
        if run.hf_model is not None:
            if run.ckpt_dir is not None or cfg.get("ckpt_path") is not None:
                raise InvalidInputError("--hf_model evaluates a Hugging Face model, --ckpt_dir a run directory: "
                                        "give one of them")
            return plan_hf_evaluation(self.subcommand, hf_model=run.hf_model, hf_adapter=run.hf_adapter,
                                      hf_dtype=run.hf_dtype, **common)
        if run.hf_adapter is not None:
            raise InvalidInputError("--hf_adapter needs --hf_model (the model the adapter was trained on)")
        recognition = None
        if run.ckpt_dir is not None and Path(run.ckpt_dir).expanduser().is_dir():  # else the resolver explains
            recognition = recognise(run.ckpt_dir)
        if recognition is not None:
            return plan_original_evaluation(
                self.subcommand, recognition=recognition, run_dir=run.ckpt_dir, checkpoint=run.checkpoint,
                ckpt_path=cfg.get("ckpt_path"), original_config=self.original_config, **common)
        if self.original_config is not None:
            raise InvalidInputError(
                f"--config {self.original_config} is a training YAML of the original PanoLLaVA trainer, but "
                f"{run.ckpt_dir or 'no run directory'} is not a run directory of that trainer: pass its "
                "run directory with --ckpt_dir, or a panollava config (model:, data:, trainer: sections)"
            )
        return plan_evaluation(
            self.subcommand, ckpt_dir=run.ckpt_dir, checkpoint=run.checkpoint, ckpt_path=cfg.get("ckpt_path"),
            runs_root=typed(RunDirectoryOptions, cfg).runs_root,
            experiment_name=cfg.get("experiment_name"), config_stage=cfg["model"].get("stage"), **common)

    def before_instantiate_classes(self) -> None:
        """Plans an evaluation and applies the plan as the last layer (the merged settings on their init args,
        the CSV, the stage, the LoRA folder)."""
        cfg = self.config[self.subcommand]
        if cfg.get("merge_lora") is not None:  # --merge_lora is --model.merge_lora
            cfg["model"]["merge_lora"] = cfg["merge_lora"]
        if self.subcommand in CSV_KEYS and (cfg.get("ckpt_dir") is not None or self.subcommand != "validate"):
            self.plan = plan = self._plan_evaluation(cfg)
            if (message := plan.merged.warning_message()) is not None:
                logger.warning(message)
            for line in plan.banner:
                echo(line)
            for path, value in plan.targets().items():
                cfg[path] = value
            # Run-time options outside the settings schema: recorded; merge_lora is also in the resume fingerprint.
            plan.provenance["evaluation_options"] = {
                "merge_lora": bool(cfg["model"]["merge_lora"]),
                "view_device": cfg["data"].get("view_device"),
            }
        if self.print_merged_config:
            self._print_merged_config(cfg)

    def _print_merged_config(self, cfg) -> None:
        """Prints the configuration after the merge (YAML) and each setting's value and source, then exits."""
        plain = {k: v for k, v in to_plain(cfg).items() if k != "config"}
        echo(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip())
        if self.plan is not None:
            echo("# settings (value, source: cli > metadata > config > default):")
            for key, entry in self.plan.merged.provenance().items():
                echo(f"#   {key}: {yaml.safe_dump(entry['value'], default_flow_style=True).strip().removesuffix('...').strip()}"
                     f"  ({entry['source']})")
        raise SystemExit(0)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, except that an evaluation gets its model from its family
        (:meth:`after_instantiate_classes`): the config's ``model`` group is not instantiated."""
        if self.plan is None:
            super().instantiate_classes()
            return
        # the group's class is not called: the family's loader builds the model (jsonargparse's instantiator hook)
        self._parser(self.subcommand).add_instantiator(_not_instantiated, PanoLLaVAModule, subclasses=False)
        super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if not self.print_merged_config:  # before any work: a launcher that started another number of processes
            check_launcher_world_size(self.trainer.num_nodes, self.trainer.num_devices)
        callbacks = self.trainer.callbacks
        logs = typed(SampleLogOptions, cfg)
        if self.subcommand == "fit":  # a few samples per validation epoch to the loggers; printed with --log_samples
            val_samples = logs.log_max_samples if logs.log_samples else DEFAULT_VAL_SAMPLES
            callbacks.append(SampleLogger(logs.log_interval, logs.log_max_samples, val_samples, logs.log_samples))
        elif logs.log_samples:
            callbacks.append(SampleLogger(logs.log_interval, logs.log_max_samples))
        if cfg["trainer"].get("logger") is None:
            # No --trainer.logger: not Lightning's default TensorBoard logger in ./lightning_logs (Lightning creates
            # that folder before any callback's setup). fit logs to TensorBoard inside the run directory instead
            # (RunDirectoryWriter adds that logger once the run directory is known).
            self.trainer.loggers = []
        if self.subcommand == "fit":
            run = typed(RunDirectoryOptions, cfg)
            if not run.experiment_name:
                raise InvalidInputError("fit needs --experiment_name (or experiment_name: in the config)")
            self.run_dir_writer = RunDirectoryWriter(
                experiment_name=run.experiment_name, runs_root=run.runs_root, dataset_name=run.dataset_name,
                save_top_k=run.save_top_k, save_weights_only=run.save_weights_only, exist_ok=run.exist_ok,
                tensorboard=cfg["trainer"].get("logger") is None,  # no --trainer.logger: TensorBoard in the run dir
            )
            callbacks.append(self.run_dir_writer)
            return
        if self.plan is not None:  # test / predict / validate with a plan (before_instantiate_classes)
            if self.subcommand != "validate":  # a folder another evaluation is writing: refused before loading
                refuse_if_busy(self.plan.output_dir)
            self.config_init[self.subcommand]["ckpt_path"] = None
            if self.subcommand == "validate" and self.plan.family != FAMILY_PANOLLAVA:
                raise InvalidInputError(f"validate is not available for {self.plan.family} runs (no training loss)")
            self.model = load_evaluation_model(self.plan, to_plain(cfg["model"]))  # Namespace.items() flattens
            if self.subcommand == "validate":
                return
            values = self.plan.merged.values
            self.evaluation_writer = EvaluationWriter(
                str(self.plan.output_dir), self.plan.provenance, mode=self.subcommand,
                overwrite=bool(values["overwrite"]), strict_metrics=bool(values["strict_metrics"]),
                progress=bool(values["progress"]),
            )
            callbacks.append(self.evaluation_writer)
            set_evaluation_timeout(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        writer = getattr(self, "evaluation_writer", None)
        if writer is not None and subcommand == "test" and writer.metrics is not None:
            echo(f"\n📊 Metrics on {writer.metrics.get('num_samples')} samples:\n{format_metrics_table(writer.metrics)}")
            echo(f"📁 Results: {self.plan.output_dir}")
        elif writer is not None and subcommand == "predict":
            echo(f"📁 {len(writer.records)} captions written to {self.plan.output_dir / 'predictions.jsonl'}")
        if subcommand == "fit" and getattr(self, "run_dir_writer", None) is not None:
            echo(f"📁 Run directory: {self.run_dir_writer.run_dir}")


def _not_instantiated(class_type: type, *args: Any, **kwargs: Any) -> None:
    """A jsonargparse instantiator that leaves a config group uninstantiated (None)."""
    return None


ORIGINAL_YAML_SECTIONS = frozenset({"models", "image_processing", "training", "paths", "system_messages", "lora",
                                    "generation", "experiment", "environment"})
"""Top-level sections of the original PanoLLaVA trainer's YAML (``configs/default.yaml`` of that tool)."""
_OUR_SECTIONS = frozenset({"model", "trainer", "ckpt_dir", "seed_everything", "optimizer", "lr_scheduler"})


def _take_original_config(argv: list[str]) -> tuple[list[str], str | None]:
    """``(argv without it, path)`` of a ``--config`` file laid out as the original trainer's YAML (its sections
    ``models:``, ``image_processing:``, ``training:`` …; none of ours), which jsonargparse would refuse key by key:
    the original family reads the keys that define its model and inputs (``panollava.families.original``)."""
    rest: list[str] = []
    found: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (argv[i + 1] if arg == "--config" and
                                                                         i + 1 < len(argv) else None)
        step = (1 if "=" in arg else 2) if path is not None else 1
        if path is not None and Path(path).is_file():
            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                data = None
            keys = set(data) if isinstance(data, dict) else set()
            if keys & ORIGINAL_YAML_SECTIONS and not keys & _OUR_SECTIONS:
                if found is not None:
                    raise InvalidInputError(f"two original training YAMLs given with --config ({found}, {path}); "
                                            "give the one the run was trained with")
                found = path
                i += step
                continue
        rest.extend(argv[i:i + step])
        i += step
    return rest, found


def _sweep_protocols(argv: list[str]) -> tuple[list[str], int] | None:
    """``(protocols, index of the flag)`` when ``--data.crop_strategy`` names several, comma-separated."""
    for i, arg in enumerate(argv):
        for flag in ("--data.crop_strategy", "--crop_strategy"):
            if arg == flag and i + 1 < len(argv) and "," in argv[i + 1]:
                return [p.strip() for p in argv[i + 1].split(",") if p.strip()], i
            if arg.startswith(flag + "=") and "," in arg:
                return [p.strip() for p in arg.split("=", 1)[1].split(",") if p.strip()], i
    return None


def run_protocol_sweep(argv: list[str], protocols: list[str], index: int) -> list[PanoLLaVACLI]:
    """One evaluation per view protocol (``--data.crop_strategy resize,cubemap,anyres_e2p``), each into
    ``OUTPUT_DIR/<protocol>``, then a leaderboard across them in ``OUTPUT_DIR`` (``leaderboard.csv``/``.html``;
    the first protocol is the baseline row)."""
    if argv[0] != "test":
        raise InvalidInputError(f"a protocol sweep (--data.crop_strategy {','.join(protocols)}) works with test, "
                                f"not {argv[0]}")
    rest = argv[:index] + argv[index + (1 if "=" in argv[index] else 2):]
    out_at = next((i for i, a in enumerate(rest) if a == "--output_dir" or a.startswith("--output_dir=")), None)
    if out_at is None:
        raise InvalidInputError(
            f"a protocol sweep (--data.crop_strategy {','.join(protocols)}) needs --output_dir ROOT: each protocol's "
            "evaluation goes to ROOT/<protocol> and the leaderboard across them to ROOT"
        )
    root = Path(rest[out_at].split("=", 1)[1] if "=" in rest[out_at] else rest[out_at + 1]).expanduser().resolve()
    rest = rest[:out_at] + rest[out_at + (1 if "=" in rest[out_at] else 2):]
    clis = []
    for protocol in protocols:
        echo(f"\n🔁 Protocol {protocol} → {root / protocol}")
        clis.append(run_lightning_cli([*rest, "--data.crop_strategy", protocol, "--output_dir", str(root / protocol)]))
    result = run_compare([str(root / p) for p in protocols], str(root), None)
    echo(result["markdown"])
    for warning in result["warnings"]:
        logger.warning("%s", warning)
    echo(f"📁 {result['csv_path']}\n📁 {result['html_path']}")
    return clis


def run_lightning_cli(argv: Sequence[str]) -> PanoLLaVACLI:
    """Run a Lightning subcommand (``argv[0]`` is fit/validate/test/predict).

    ``--print_config`` is taken out here and handled after the merge, so that it shows the settings a
    ``test --ckpt_dir`` run would use (jsonargparse's own would print them before the metadata is read).
    """
    quiet_third_party()
    sweep = _sweep_protocols(list(argv))
    if sweep is not None:
        return run_protocol_sweep(list(argv), *sweep)[-1]
    argv, original_config = _take_original_config(list(argv))
    cli = PanoLLaVACLI([a for a in argv if not a.startswith("--print_config")],
                       print_config=any(a.startswith("--print_config") for a in argv), original_config=original_config)
    destroy_process_group_at_exit()  # after a finished command only: a failed rank must not wait in a teardown
    return cli
