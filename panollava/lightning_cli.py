"""``PanoLLaVACLI``: LightningCLI with run-directory evaluation (``test --ckpt_dir``) and run-directory writing.

The hooks here only connect LightningCLI to the rest: which settings the user typed and which a config file set
come from the parser itself (:meth:`PanoLLaVACLI._explicit_sources` parses the command line again without
defaults, and each config file on its own); :func:`panollava.evaluation.plan.plan_evaluation` merges them with the
checkpoint metadata (CLI > metadata > config > defaults) and :meth:`PanoLLaVACLI.before_instantiate_classes`
applies the plan to the init args. The model is then loaded with ``PanoLLaVAModule.load_from_checkpoint``
(strict keys, ``weights_only``) with the run's ``lora_weights/`` adapter. ``--print_config`` prints the merged
configuration (with each setting's source) instead of running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

from lightning.pytorch.cli import LightningCLI

from panollava.console import echo, quiet_third_party
from panollava.data.datamodule import PanoDataModule
from panollava.distributed import destroy_process_group_at_exit
from panollava.errors import InvalidInputError
from panollava.families.base import FAMILY_HF, FAMILY_ORIGINAL, FAMILY_PANOLLAVA
from panollava.module import PanoLLaVAModule
from panollava.schema import SETTINGS, to_plain
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


class PanoLLaVACLI(LightningCLI):
    """LightningCLI for panollava (see the module docstring)."""

    _argv: list[str] = []
    _print_config: bool = False
    _original_config: str | None = None  # a training YAML of the original PanoLLaVA trainer (--config)

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            PanoLLaVAModule,
            PanoDataModule,
            subclass_mode_model=False,
            subclass_mode_data=False,
            save_config_callback=None,
            # logger stays None (not configured) unless --trainer.logger: fit then logs to TensorBoard in the run
            # directory, evaluation to no logger (after_instantiate_classes).
            trainer_defaults={"enable_checkpointing": False},
            args=list(args) if args is not None else None,
            run=run,
            parser_kwargs={"parser_mode": "yaml"},
        )

    def add_arguments_to_parser(self, parser) -> None:
        """Run-directory flags, and the evaluation flags generated from ``panollava.schema`` (one per setting
        with a top-level flag; those that stand for an init arg default to null: "not typed")."""
        parser.add_argument("--experiment_name", type=Optional[str], default=None,
                            help="Experiment name: runs/<experiment>/<stage>/<crop>_<resampler>/ (fit; config-only test).")
        parser.add_argument("--runs_root", type=str, default="runs", help="Folder holding the experiments.")
        parser.add_argument("--ckpt_dir", type=Optional[str], default=None,
                            help="Run directory to evaluate; settings come from its checkpoint_metadata.json.")
        parser.add_argument("--checkpoint", type=Optional[str], default=None,
                            help="Checkpoint rule: best or last (default: best → last → newest *.ckpt).")
        parser.add_argument("--hf_model", type=Optional[str], default=None,
                            help="Evaluate an off-the-shelf Hugging Face VLM (hub id or local folder) instead of a run "
                            "directory: its own processor and chat template, the views of --data.crop_strategy.")
        parser.add_argument("--hf_adapter", type=Optional[str], default=None,
                            help="With --hf_model: a peft LoRA adapter folder trained on that model.")
        parser.add_argument("--hf_dtype", type=Literal["float32", "bfloat16", "float16"], default="float32",
                            help="With --hf_model: the dtype its weights are loaded in.")
        for key, setting in SETTINGS.items():
            if setting.flag is None:
                continue
            alias = bool(setting.targets)
            kind = Optional[setting.type] if alias else setting.type
            also = f" (= --{setting.targets[0]})" if alias else ""
            parser.add_argument(f"--{setting.flag}", type=kind, default=None if alias else setting.default,
                                help=f"{setting.doc}{also}")
        parser.add_argument("--merge_lora", type=bool, default=False, help="Merge the LoRA adapter into the LM before evaluating.")
        parser.add_argument("--log_samples", type=bool, default=False, help="Print prediction/reference pairs.")
        parser.add_argument("--log_interval", type=int, default=10, help="With --log_samples: every N test batches.")
        parser.add_argument("--log_max_samples", type=int, default=16, help="With --log_samples: at most M pairs.")
        parser.add_argument("--dataset_name", type=Optional[str], default=None, help="Dataset part of checkpoint names (fit).")
        parser.add_argument("--save_top_k", type=int, default=-1, help="Keep the k best checkpoints (fit; -1: all).")
        parser.add_argument("--save_weights_only", type=bool, default=False, help="Checkpoints without optimizer state (fit).")
        parser.add_argument("--exist_ok", type=bool, default=False, help="Allow training into a run directory with checkpoints.")

    # -- settings ---------------------------------------------------------------------------------------------------
    def _explicit_sources(self) -> tuple[dict[str, Any], Any, list[Any]]:
        """What the user typed and what each config file sets, from the parser (never by comparing with defaults).

        Returns:
            ``(cli_values, cli_namespace, config_namespaces)``: the flat settings typed on the command line,
            the namespace of the typed arguments, and one namespace per config file (in order; relative
            paths resolved against the file's folder).
        """
        parser = self._parser(self.subcommand)
        args = [a for a in self._argv[1:] if not a.startswith("--print_config")]
        typed, files = _split_config_args(args)
        typed_ns = parser.parse_args(typed, defaults=False)
        config_ns = []
        for file in files:
            ns = parser.parse_args(["--config", file], defaults=False)
            _resolve_relative(ns, Path(file).expanduser().resolve().parent)
            config_ns.append(ns)
        return flat_settings(typed_ns), typed_ns, config_ns

    def _recognise_family(self, ckpt_dir: str | None):
        """The :class:`~panollava.families.base.Recognition` of a run directory written for another family than
        ours (today: the original PanoLLaVA trainer's), or None (our own run directories, or no directory)."""
        if ckpt_dir is None or not Path(ckpt_dir).expanduser().is_dir():
            return None  # the resolver explains a missing directory
        from panollava.families.original import recognise

        return recognise(ckpt_dir)

    def before_instantiate_classes(self) -> None:
        from panollava.evaluation.plan import CSV_KEYS, plan_evaluation

        cfg = self.config[self.subcommand]
        cli, typed_ns, config_ns = self._explicit_sources()
        config: dict[str, Any] = {}
        for ns in config_ns:  # a later file overrides an earlier one; typed flags override both
            config.update(flat_settings(ns))
            for path in _CSV_PATHS + _MODEL_PATHS:
                if path in ns and path not in typed_ns:
                    cfg[path] = ns[path]
        self._plan = None
        if self.subcommand in CSV_KEYS and (cfg.get("ckpt_dir") is not None or self.subcommand != "validate"):
            csv_key = CSV_KEYS[self.subcommand]
            flag = next((f for f in ("csv_input", f"data.{csv_key}") if typed_ns.get(f) is not None), None)
            cli_csv = (str(typed_ns[flag]), f"--{flag}") if flag else None
            config_csv = next((ns[p] for ns in reversed(config_ns) for p in (f"data.{csv_key}", "csv_input")
                               if ns.get(p) is not None), None)
            config_name = ", ".join(str(Path(str(getattr(f, "absolute", None) or f)).resolve())
                                    for f in cfg.get("config") or []) or None
            recognition = self._recognise_family(cfg.get("ckpt_dir"))
            if cfg.get("hf_model") is not None:
                from panollava.evaluation.plan import plan_hf_evaluation

                if cfg.get("ckpt_dir") is not None or cfg.get("ckpt_path") is not None:
                    raise InvalidInputError("--hf_model evaluates a Hugging Face model, --ckpt_dir a run directory: "
                                            "give one of them")
                self._plan = plan = plan_hf_evaluation(
                    self.subcommand, hf_model=cfg["hf_model"], hf_adapter=cfg.get("hf_adapter"),
                    hf_dtype=cfg.get("hf_dtype") or "float32",
                    cli={k: v for k, v in cli.items() if k != "csv_input"},
                    config={k: v for k, v in config.items() if k != "csv_input"}, config_name=config_name,
                    cli_csv=cli_csv, config_csv=config_csv, command=" ".join(["panollava-cli", *self._argv]),
                )
            elif cfg.get("hf_adapter") is not None:
                raise InvalidInputError("--hf_adapter needs --hf_model (the model the adapter was trained on)")
            elif recognition is not None:
                from panollava.evaluation.plan import plan_original_evaluation

                self._plan = plan = plan_original_evaluation(
                    self.subcommand, recognition=recognition, run_dir=cfg["ckpt_dir"],
                    cli={k: v for k, v in cli.items() if k != "csv_input"},
                    config={k: v for k, v in config.items() if k != "csv_input"},
                    checkpoint=cfg.get("checkpoint"), ckpt_path=cfg.get("ckpt_path"),
                    original_config=self._original_config, config_name=config_name, cli_csv=cli_csv,
                    config_csv=config_csv, command=" ".join(["panollava-cli", *self._argv]),
                )
            else:
                if self._original_config is not None:
                    raise InvalidInputError(
                        f"--config {self._original_config} is a training YAML of the original PanoLLaVA trainer, but "
                        f"{cfg.get('ckpt_dir') or 'no run directory'} is not a run directory of that trainer: pass its "
                        "run directory with --ckpt_dir, or a panollava config (model:, data:, trainer: sections)"
                    )
                self._plan = plan = plan_evaluation(
                    self.subcommand,
                    cli={k: v for k, v in cli.items() if k != "csv_input"},
                    config={k: v for k, v in config.items() if k != "csv_input"},
                    ckpt_dir=cfg.get("ckpt_dir"),
                    checkpoint=cfg.get("checkpoint"),
                    ckpt_path=cfg.get("ckpt_path"),
                    runs_root=cfg.get("runs_root") or "runs",
                    experiment_name=cfg.get("experiment_name"),
                    config_stage=cfg["model"].get("stage"),
                    config_name=config_name,
                    cli_csv=cli_csv,
                    config_csv=config_csv,
                    command=" ".join(["panollava-cli", *self._argv]),
                )
            if (message := plan.merged.warning_message()) is not None:
                logger.warning(message)
            for line in plan.banner:
                echo(line)
            for path, value in plan.targets().items():
                cfg[path] = value
            cfg["model"]["merge_lora"] = bool(cfg.get("merge_lora"))
            # Run-time options outside the settings schema: recorded; merge_lora is also in the resume fingerprint.
            plan.provenance["evaluation_options"] = {
                "merge_lora": bool(cfg.get("merge_lora")),
                "view_device": cfg["data"].get("view_device"),
            }
        if self._print_config:
            self._print_merged_config(cfg)

    def _print_merged_config(self, cfg) -> None:
        """Prints the configuration after the merge (YAML) and each setting's value and source, then exits."""
        import yaml

        plain = {k: v for k, v in to_plain(cfg).items() if k != "config"}
        echo(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip())
        if self._plan is not None:
            echo("# settings (value, source: cli > metadata > config > default):")
            for key, entry in self._plan.merged.provenance().items():
                echo(f"#   {key}: {yaml.safe_dump(entry['value'], default_flow_style=True).strip().removesuffix('...').strip()}"
                     f"  ({entry['source']})")
        raise SystemExit(0)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, except that a run of another model family gets its model from that family
        (:meth:`after_instantiate_classes`): the config's ``model`` group, our family's, is not instantiated."""
        if self._plan is None or self._plan.family == FAMILY_PANOLLAVA:
            super().instantiate_classes()
            return
        # the group's class is not called: the family's model replaces it (jsonargparse's instantiator hook)
        self._parser(self.subcommand).add_instantiator(_not_instantiated, PanoLLaVAModule, subclasses=False)
        super().instantiate_classes()

    def _load_checkpoint(self, model_kwargs: dict[str, Any]) -> None:
        """Our family: ``load_from_checkpoint`` (strict keys, ``weights_only``) with the merged settings."""
        ckpt = self._plan.checkpoint_path
        try:
            self.model = PanoLLaVAModule.load_from_checkpoint(
                ckpt, map_location="cpu", weights_only=True, strict=True, **model_kwargs
            )
        except Exception as exc:  # issue 12: a bad file is the user's error, explained (errors.py)
            from panollava.errors import checkpoint_load_error

            explained = checkpoint_load_error(ckpt, exc)
            if explained is None:
                raise
            raise explained from exc
        if model_kwargs.get("merge_lora"):
            self.model.merge_adapter()
        echo(f"✅ Loaded {ckpt.name} (strict, weights_only)")

    def _load_family_model(self) -> None:
        """Builds the plan's model family, its weights restored strictly, and wraps it for Lightning."""
        from panollava.captioning import FamilyModule
        from panollava.generation.settings import DecodeSettings

        plan = self._plan
        source = plan.family_source
        values = plan.merged.values
        decode = DecodeSettings.from_dict(plan.provenance["decoding"])
        if plan.family == FAMILY_ORIGINAL:
            from panollava.families.original import load_original_run

            caption_model = load_original_run(
                source["run_dir"], checkpoint=source["checkpoint"], config_yaml=source["config_yaml"],
                decode=decode, base_dir=Path.cwd(), share_prefix=bool(values["share_prefix"]),
            )
        elif plan.family == FAMILY_HF:
            from panollava.data.views import ViewConfig
            from panollava.families.hf import load_hf_model

            views = ViewConfig(crop_strategy=values["crop_strategy"], fov_deg=float(values["fov_deg"]),
                               overlap_ratio=float(values["overlap_ratio"]), num_views=int(values["num_views"]),
                               **({"image_size": values["image_size"]} if values.get("image_size") else {}))
            caption_model = load_hf_model(
                source["name"], adapter=source["adapter"], views=views, prompt_template=values["prompt_template"],
                decode=decode, dtype=source["dtype"], share_prefix=bool(values["share_prefix"]),
            )
        else:  # pragma: no cover - every family of FAMILIES is handled above
            raise InvalidInputError(f"no loader for model family {plan.family!r}")
        self.model = FamilyModule(caption_model)
        plan.provenance["model"] = caption_model.provenance()
        plan.provenance["model_fingerprint"] = caption_model.fingerprint()
        echo(f"✅ Loaded {caption_model.provenance().get('model') or Path(plan.checkpoint_path).name} "
             f"({plan.family})")

    def after_instantiate_classes(self) -> None:
        from panollava.callbacks.eval_writer import EvaluationWriter, set_evaluation_timeout
        from panollava.callbacks.run_writer import RunDirectoryWriter
        from panollava.callbacks.sample_logger import DEFAULT_VAL_SAMPLES, SampleLogger

        cfg = self.config[self.subcommand]
        if not self._print_config:  # before any work: a launcher that started another number of processes
            from panollava.distributed import check_launcher_world_size

            check_launcher_world_size(self.trainer.num_nodes, self.trainer.num_devices)
        callbacks = self.trainer.callbacks
        log_samples = bool(cfg.get("log_samples"))
        if self.subcommand == "fit":  # a few samples per validation epoch to the loggers; printed with --log_samples
            val_samples = cfg.get("log_max_samples") if log_samples else DEFAULT_VAL_SAMPLES
            callbacks.append(SampleLogger(cfg.get("log_interval"), cfg.get("log_max_samples"), val_samples, log_samples))
        elif log_samples:
            callbacks.append(SampleLogger(cfg.get("log_interval"), cfg.get("log_max_samples")))
        if cfg["trainer"].get("logger") is None:
            # No --trainer.logger: not Lightning's default TensorBoard logger in ./lightning_logs (Lightning creates
            # that folder before any callback's setup). fit logs to TensorBoard inside the run directory instead
            # (RunDirectoryWriter adds that logger once the run directory is known).
            self.trainer.loggers = []
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
                tensorboard=cfg["trainer"].get("logger") is None,  # no --trainer.logger: TensorBoard in the run dir
            )
            callbacks.append(self.run_dir_writer)
            return
        if self._plan is not None:  # test / predict / validate with a plan (before_instantiate_classes)
            if self.subcommand != "validate":  # a folder another evaluation is writing: refused before loading
                from panollava.evaluation.lock import refuse_if_busy

                refuse_if_busy(self._plan.output_dir)
            self.config_init[self.subcommand]["ckpt_path"] = None
            if self._plan.family != FAMILY_PANOLLAVA:
                if self.subcommand == "validate":
                    raise InvalidInputError(f"validate is not available for {self._plan.family} runs (no training loss)")
                self._load_family_model()
            else:
                self._load_checkpoint(to_plain(cfg["model"]))  # Namespace.items() would flatten nested keys
            if self.subcommand == "validate":
                return
            values = self._plan.merged.values
            self.evaluation_writer = EvaluationWriter(
                str(self._plan.output_dir), self._plan.provenance, mode=self.subcommand,
                overwrite=bool(values["overwrite"]), strict_metrics=bool(values["strict_metrics"]),
                progress=bool(values["progress"]),
            )
            callbacks.append(self.evaluation_writer)
            set_evaluation_timeout(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        writer = getattr(self, "evaluation_writer", None)
        if writer is not None and subcommand == "test" and writer.metrics is not None:
            from panollava.outputs.files import format_metrics_table

            echo(f"\n📊 Metrics on {writer.metrics.get('num_samples')} samples:\n{format_metrics_table(writer.metrics)}")
            echo(f"📁 Results: {self._plan.output_dir}")
        elif writer is not None and subcommand == "predict":
            echo(f"📁 {len(writer.records)} captions written to {self._plan.output_dir / 'predictions.jsonl'}")
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
    import yaml

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
    from panollava.outputs.leaderboard import run_compare

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
    argv, PanoLLaVACLI._original_config = _take_original_config(list(argv))
    PanoLLaVACLI._argv = argv
    PanoLLaVACLI._print_config = any(a.startswith("--print_config") for a in argv)
    cli = PanoLLaVACLI(args=[a for a in argv if not a.startswith("--print_config")])
    destroy_process_group_at_exit()  # after a finished command only: a failed rank must not wait in a teardown
    return cli
