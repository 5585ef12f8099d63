"""Off-the-shelf Hugging Face VLMs as a ``CaptionModel`` (the ``hf`` family).

:func:`load_hf_model` loads a hub id or a local folder with ``AutoModelForImageTextToText``, its own processor
(see :mod:`.processor`) and, optionally, a peft LoRA adapter trained on it. Captions are made by the model's own
``generate`` on the model's own prompt format:

* the user turn holds the panorama's images first, then exactly our prompt text
  (``panollava.schema.DEFAULT_PROMPT_TEMPLATE`` with the query, overridable), rendered by the model's chat template
  with the generation prompt; no system message is added (a template that inserts its own default one keeps it);
* the images come from the crop strategy (:func:`.processor.panorama_images`): ``resize`` 1, ``cubemap`` 4,
  ``anyres_e2p`` 9 (with the default view settings), in the order documented in ``docs/baselines.md``;
* greedy decoding: no sampling, one beam, no repetition penalty (the model's ``generation_config`` sampling
  defaults are not used: a fresh ``GenerationConfig`` carries only our settings and the model's eos/pad/bos ids);
  a repetition penalty applies to the generated tokens only, and sampling is seeded per sample (both in
  :class:`.sampling.TokenChooser`);
* batches are left-padded whatever the tokenizer's default; special tokens are skipped when decoding, and the
  caption is stripped of surrounding whitespace.

Speed: the image processor runs once per panorama (``panorama_transform``, in the loader's workers) and so does the
vision encoder: each panorama's ``get_image_features`` output is computed once and handed to ``generate`` as
``mm_encoder_outputs`` (transformers' own pre-encoded input), repeated for each of its queries, so ``generate``
never re-encodes pixels. The encoder outputs of the previous batch's last panoramas are kept (by ``panorama_key``)
for a panorama that continues into the next batch. The language model then takes one of two paths
(``describe_decoding()["path"]``):

* ``shared_prefix``: each panorama's prompt prefix (template and images: everything before the query, found as
  the common prefix of its prompts and of two probe prompts) is run once; its cache is selected for each of the
  panorama's rows, and ``generate`` runs the rest with the rows laid out as ``prefix | padding | query part``
  (attention mask 0 on the padding), so every token keeps the position it has in its own prompt, multimodal
  rotary positions included (Qwen's per-row ``rope_deltas`` are selected with the cache). Used where proven exact
  against per-sample ``generate`` (Qwen2-VL/2.5-VL, LLaVA, InternVL; greedy, sampled and penalised), with
  full attention in every layer (a sliding window would count the padding) and one beam;
* ``generate``: one batched, left-padded ``generate`` over whole prompts (Gemma 3, BLIP-2, beam search,
  ``share_prefix=False``, transformers without ``mm_encoder_outputs``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download

from panollava.data.prompts import format_user_text
from panollava.data.views import ViewConfig, view_geometries
from panollava.errors import InputNotFoundError, InvalidInputError, ModelUnavailableError
from panollava.families.base import FAMILY_HF
from panollava.families.hf.processor import (
    LoadedProcessor,
    PanoramaProcessor,
    chat_template_sha256,
    image_processor_settings,
    load_processor,
    merged_call_kwargs,
    processor_settings,
    prompt_inputs,
    render_prompt,
)
from panollava.families.hf.sampling import TokenChooser
from panollava.generation.settings import DecodeSettings
from panollava.outputs.files import sha256_file
from panollava.schema import DEFAULT_PROMPT_TEMPLATE, GenerationSettings, ViewSettings

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURES", "Architecture", "HFCaptionModel", "load_hf_model"]

FAMILY = FAMILY_HF
DTYPES = ("float32", "bfloat16", "float16")
_PIXEL_KEYS = ("pixel_values", "pixel_values_images", "image_patches")
# two queries that share no first character: the common prefix of their prompts stops before any query text
_PROBE_QUERIES = ("a", "Z")
_SNAPSHOT_RE = re.compile(r"models--(?P<repo>[^/]+)/snapshots/(?P<rev>[0-9a-f]{40})(/|$)")


@dataclass(frozen=True)
class Architecture:
    """What the family knows of one model type.

    Attributes:
        label: Human name.
        max_images: Images one prompt can hold (None: any number).
        notes: How its inputs differ (for the docs and the provenance).
        shared_prefix: Whether the shared-prefix path is proven exact for it (tests/test_hf_family.py); it still
            needs full attention in every layer (a sliding window counts the padding between prefix and query).
    """

    label: str
    max_images: int | None
    notes: str
    shared_prefix: bool = False


#: Model types (``config.model_type``) the family serves, each proven on a tiny model in tests/test_hf_family.py.
ARCHITECTURES: dict[str, Architecture] = {
    "qwen2_vl": Architecture("Qwen2-VL", None, "multimodal rotary positions (image_grid_thw, mm_token_type_ids)",
                             shared_prefix=True),
    "qwen2_5_vl": Architecture("Qwen2.5-VL", None, "multimodal rotary positions, windowed vision attention",
                               shared_prefix=True),
    "llava": Architecture("LLaVA", None, "fixed-size images, one placeholder token per patch", shared_prefix=True),
    "gemma3": Architecture("Gemma 3", None, "pooled image tokens between <start_of_image>/<end_of_image>, "
                                           "bidirectional attention over them (token_type_ids)"),
    "internvl": Architecture("InternVL (transformers-native, -HF checkpoints)", None,
                             "each image cut into 448 px patches (+ thumbnail) by the processor, "
                             "<img><IMG_CONTEXT>...</img> per image", shared_prefix=True),
    "blip-2": Architecture("BLIP-2", 1, "one image per prompt: Q-Former query tokens before the text"),
}


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))


def resolve_model_folder(
    name_or_dir: str | Path, cache_dir: str | Path | None = None
) -> tuple[Path, str, str | None]:
    """A local folder for a hub id or a folder, and its resolved revision.

    Args:
        name_or_dir: A local model folder, or a hub id (``org/name``), downloaded into / read from the
            Hugging Face cache (offline, ``HF_HUB_OFFLINE=1``: the cached snapshot).
        cache_dir: Hugging Face cache folder (None: the hub library's default, ``$HF_HUB_CACHE``).

    Returns:
        ``(folder, model_id, revision)``: the absolute folder; the hub id (the folder's repo when it is a cache
        snapshot, else the folder path as given); the snapshot's commit hash when the folder is a
        Hugging Face cache snapshot, else None.

    Raises:
        InputNotFoundError: A path-like name that is not a folder.
        ModelUnavailableError: A hub id that is neither cached nor downloadable.
    """
    text = str(name_or_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path.resolve()
        if not (folder / "config.json").is_file():
            raise InputNotFoundError(
                f"'{folder}' is a folder but holds no config.json: pass a Hugging Face model folder (config.json, "
                "weights, processor and tokenizer files) or a hub id such as Qwen/Qwen2.5-VL-3B-Instruct"
            )
        match = _SNAPSHOT_RE.search(folder.as_posix())
        if match:
            return folder, match.group("repo").replace("--", "/"), match.group("rev")
        return folder, text, None
    if path.exists():
        raise InputNotFoundError(f"--hf_model '{path.resolve()}' is a file; pass a model folder or a hub id")
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise InputNotFoundError(
            f"--hf_model '{path.absolute()}' does not exist; pass an existing model folder or a hub id (org/name)"
        )

    try:
        folder = Path(snapshot_download(
            text, cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=["*.json", "*.jinja", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"],
        ))
    except Exception as exc:  # noqa: BLE001 - hub/network errors come in many classes
        raise ModelUnavailableError(
            f"cannot get the model {text!r} from the Hugging Face hub or its local cache: {type(exc).__name__}: "
            f"{exc}. Check the id, your network / HF_HUB_OFFLINE, or pass a local folder"
        ) from exc
    match = _SNAPSHOT_RE.search(folder.resolve().as_posix()) or _SNAPSHOT_RE.search(folder.as_posix())
    return folder, text, match.group("rev") if match else None


@dataclass
class _Adapter:
    path: Path
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    base_model: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "files": dict(self.files),
                "base_model_name_or_path": self.base_model}


def _read_adapter(adapter: str | Path) -> _Adapter:
    path = Path(adapter).expanduser().resolve()
    if not path.is_dir():
        raise InputNotFoundError(f"--hf_adapter '{path}' is not a folder; pass the folder peft's save_pretrained wrote")
    config = path / "adapter_config.json"
    weights = [p for p in ("adapter_model.safetensors", "adapter_model.bin") if (path / p).is_file()]
    if not config.is_file() or not weights:
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise InputNotFoundError(
            f"--hf_adapter '{path}' is not a peft adapter: expected adapter_config.json and "
            f"adapter_model.safetensors (found: {found}); pass the folder peft's save_pretrained wrote"
        )
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as exc:
        raise InvalidInputError(f"cannot read the adapter config '{config}': {exc}") from exc
    files = {p.name: sha256_file(p) for p in [config, *(path / w for w in weights)]}
    return _Adapter(path=path, files=files, base_model=base)


def _check_dtype(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidInputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return name


class HFCaptionModel:
    """A Hugging Face VLM behind the ``CaptionModel`` protocol (build it with :func:`load_hf_model`).

    Args:
        module: The model (a ``PeftModel`` when an adapter is loaded); the caller moves it.
        hf_model: The ``...ForConditionalGeneration`` inside ``module`` (``module`` itself without an adapter).
        loaded: The processor.
        views: View settings.
        prompt_template: User text with ``{query}``.
        decode: Decoding settings.
        identity: model id, folder, revision, model type, dtype, adapter.
    """

    family = FAMILY

    def __init__(
        self,
        module: torch.nn.Module,
        hf_model: Any,
        loaded: LoadedProcessor,
        views: ViewConfig,
        prompt_template: str,
        decode: DecodeSettings,
        identity: dict[str, Any],
        resize_max_side: int | None = None,
        share_prefix: bool = GenerationSettings.share_prefix,
    ) -> None:
        self.module = module
        self.hf_model = hf_model
        self.loaded = loaded
        self.processor = loaded.processor
        self.views = views
        self.prompt_template = prompt_template
        self.decode = decode
        self.identity = identity
        self._kwargs = merged_call_kwargs(self.processor)
        self.resize_max_side = resize_max_side
        self._transform = PanoramaProcessor(
            self.processor.image_processor, dict(self._kwargs["images_kwargs"]), views, resize_max_side
        )
        self._prompt_cache: dict[tuple[str, int], str] = {}
        self._features: dict[Any, Any] = {}  # panorama_key -> encoder output (previous batch's)
        pixels = inspect.signature(hf_model.generate).parameters.get("pixel_values")
        # transformers' pre-encoded input (``mm_encoder_outputs``) is recent (absent from 5.17): without it the
        # vision encoder runs inside generate, once per sample
        self._encode_once = (
            "mm_encoder_outputs" in inspect.signature(hf_model.forward).parameters
            and hasattr(hf_model.base_model, "get_image_features")
            and (pixels is None or pixels.default is not inspect.Parameter.empty)  # BLIP-2's generate needs pixels
        )
        tokenizer = self.processor.tokenizer
        gen = hf_model.generation_config
        self.pad_token_id = next(
            (t for t in (tokenizer.pad_token_id, gen.pad_token_id, tokenizer.eos_token_id) if t is not None), None
        )
        if self.pad_token_id is None:
            raise ModelUnavailableError(
                f"the model '{identity['folder']}' defines no pad, and no eos token: batches cannot be padded"
            )
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self._weights_sha256: dict[str, str] | None = None
        token_id = getattr(hf_model.config, "image_token_id", None)
        self._image_token_id = token_id if token_id is not None else getattr(hf_model.config, "image_token_index", None)
        self.shared_prefix_refusal = self._shared_prefix_refusal(share_prefix)
        self._last_path: str | None = None
        self._probe()

    def _shared_prefix_refusal(self, share_prefix: bool) -> str | None:
        """Why the shared-prefix path cannot run (None: it runs)."""
        if not share_prefix:
            return "share_prefix is off"
        if not self._encode_once:
            return "the vision encoder runs inside generate (no mm_encoder_outputs, or a generate that needs pixels)"
        if self.decode.num_beams != 1:
            return "beam search"
        text = self.hf_model.config.get_text_config()
        layer_types = getattr(text, "layer_types", None)
        if (layer_types and any(t != "full_attention" for t in layer_types)) or (
            layer_types is None and getattr(text, "use_sliding_window", False)
        ):
            return "the language model has sliding-window layers (the padding between prefix and query would count)"
        if not ARCHITECTURES[self.identity["model_type"]].shared_prefix:
            return f"not proven exact for {self.identity['model_type']!r}"
        return None

    def _probe(self) -> None:
        """Run the input half once on a blank panorama, so that a template that drops the images (or a processor
        that cannot take this many) fails at load time, not in the first batch."""
        blank = torch.zeros((3, 64, 128), dtype=torch.uint8)
        item = self._transform(blank)
        text = self._prompt("probe", item["num_images"])
        inputs, _ = prompt_inputs(self.processor, text, item["image_inputs"], item["num_images"])
        token_id = self._image_token_id
        # older processors (transformers 5.17) do not count placeholders against images: the model would fail
        # on the first batch
        if token_id is not None and not bool((inputs["input_ids"] == token_id).any()):
            raise InvalidInputError(
                f"the prompt does not fit the {item['num_images']} image(s) of the panorama: no image token "
                f"(id {token_id}) in the prompt. Check that the model's chat template places an image for each "
                f"{{'type': 'image'}} item. Prompt: {text[:500]!r}"
            )

    # -- inputs ---------------------------------------------------------------------------------------------
    def panorama_transform(self, view_settings=None) -> PanoramaProcessor:
        """The picklable ``panorama → image inputs`` transform (the processor's image half; ``collate`` keeps the
        P panoramas' inputs as a list). Its views were fixed at load time from the same view settings; an
        image-blind baseline is not available for this family."""
        if view_settings is not None and getattr(view_settings, "image_blind", False):
            raise InvalidInputError(
                "--data.image_blind is not available with --hf_model: an off-the-shelf model's processor builds its "
                "own inputs from the images; evaluate it with the images"
            )
        return self._transform

    # -- generation -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the encoder outputs kept from the previous batch."""
        self._features.clear()

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.module.parameters())
        return param.device, param.dtype

    def _to(self, value: Any, device: torch.device, dtype: torch.dtype) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, dtype) if value.is_floating_point() else value.to(device)
        return value

    def _encode(self, item: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
        encoder = self.hf_model.base_model.get_image_features
        names = [n for n in inspect.signature(encoder).parameters if n != "kwargs"]
        kwargs = {n: self._to(item["image_inputs"][n], device, dtype) for n in names if n in item["image_inputs"]}
        return encoder(**kwargs, return_dict=True)

    def _prompt(self, query: str, num_images: int) -> str:
        key = (query, num_images)
        if key not in self._prompt_cache:
            user_text = format_user_text(self.prompt_template, query)
            self._prompt_cache[key] = render_prompt(self.processor, self.loaded.chat_template, num_images, user_text)
        return self._prompt_cache[key]

    @torch.inference_mode()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """One caption per sample, in batch order (see the module docstring for the decoding).

        Args:
            batch: ``query`` (B), ``sample_id`` (B), ``pixel_values`` (P panoramas' image inputs),
                ``panorama_index`` (B,) long, ``panorama_key`` (P) (optional: enables reuse across batches).

        Returns:
            B captions.
        """
        from transformers import GenerationConfig

        queries, sample_ids, items = list(batch["query"]), list(batch["sample_id"]), batch["pixel_values"]
        index = [int(i) for i in torch.as_tensor(batch["panorama_index"]).tolist()]
        keys = list(batch.get("panorama_key") or [None] * len(items))
        if not (len(queries) == len(sample_ids) == len(index)):
            raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(sample_ids)} ids, {len(index)} indices")
        if any(not 0 <= p < len(items) for p in index) or len(keys) != len(items):
            raise ValueError(
                f"panorama_index {index} / panorama_key ({len(keys)}) do not fit the batch's {len(items)} panoramas"
            )
        if not queries:
            return []
        device, dtype = self._device_dtype()

        rows, image_names = [], []
        for q, p in zip(queries, index):
            row, names = prompt_inputs(
                self.processor, self._prompt(q, items[p]["num_images"]), items[p]["image_inputs"],
                items[p]["num_images"],
            )
            rows.append(row)
            image_names = names  # the same names for every panorama (one processor, one protocol)
        encoded = self._encode_panoramas(items, index, keys, device, dtype) if self._encode_once else None
        if encoded is not None:
            image_names = [n for n in image_names if n not in _PIXEL_KEYS]
        config = GenerationConfig(
            max_new_tokens=self.decode.max_new_tokens,
            do_sample=False,
            num_beams=self.decode.num_beams,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.hf_model.generation_config.bos_token_id,
        )
        if self.shared_prefix_refusal is None:
            prefix_length = self._prefix_lengths(rows, items, index)
            if prefix_length is not None:
                self._last_path = "shared_prefix"
                return self._generate_shared(
                    rows, items, index, sample_ids, encoded, image_names, config, device, dtype, prefix_length
                )
        self._last_path = "generate"
        length = max(r["input_ids"].shape[1] for r in rows)
        text: dict[str, torch.Tensor] = {}
        for name in rows[0]:  # left-padded whatever the tokenizer's default
            fill = self.pad_token_id if name == "input_ids" else 0
            out = torch.full((len(rows), length), fill, dtype=rows[0][name].dtype)
            for k, r in enumerate(rows):
                out[k, length - r[name].shape[1]:] = r[name][0]
            text[name] = out.to(device)
        extra = self._image_extras(items, index, image_names, device, dtype)
        if encoded is not None:
            extra["mm_encoder_outputs"] = {"image": _combine([encoded[p] for p in index])}
        return self._run_generate(text, extra, config, sample_ids, length)

    def _encode_panoramas(
        self, items: list[dict[str, Any]], index: list[int], keys: list[Any], device: torch.device,
        dtype: torch.dtype,
    ) -> dict[int, Any]:
        """Vision-encoder outputs of the batch's panoramas (reusing the previous batch's by ``panorama_key``)."""
        encoded = {}
        for p in sorted(set(index)):
            key = keys[p]
            if key is not None and key in self._features:
                encoded[p] = self._features[key]
            else:
                encoded[p] = self._encode(items[p], device, dtype)
        self._features = {keys[p]: encoded[p] for p in encoded if keys[p] is not None}
        return encoded

    def _image_extras(
        self, items: list[dict[str, Any]], panoramas: list[int], names: list[str], device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        """The image inputs other than pixels (e.g. ``image_grid_thw``), one panorama's per entry of ``panoramas``."""
        extra: dict[str, Any] = {}
        for name in names:
            values = [items[p]["image_inputs"][name] for p in panoramas]
            if isinstance(values[0], torch.Tensor):
                extra[name] = self._to(torch.cat(values, dim=0), device, dtype)
            else:
                extra[name] = [v for group in values for v in group]
        return extra

    def _run_generate(
        self, text: dict[str, torch.Tensor], extra: dict[str, Any], config: Any, sample_ids: list[str], length: int
    ) -> list[str]:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList()
        if TokenChooser.needed(self.decode):
            processors.append(TokenChooser(self.decode, sample_ids, length))
        out = self.hf_model.generate(**text, **extra, generation_config=config, logits_processor=processors)
        new = out[:, length:].cpu()
        captions = self.processor.tokenizer.batch_decode(
            new, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [c.strip() for c in captions]

    def _query_independent_length(self, item: dict[str, Any], rows: list[torch.Tensor]) -> int:
        """Tokens shared by every prompt of this panorama: the common prefix of its rows and of two probe
        prompts (so that it never reaches into a query), leaving each row at least one token of its own."""
        probes = [
            prompt_inputs(self.processor, self._prompt(q, item["num_images"]), item["image_inputs"],
                          item["num_images"])[0]["input_ids"][0]
            for q in _PROBE_QUERIES
        ]
        limit = min(len(r) for r in rows) - 1
        width = min(limit, *(len(p) for p in probes))
        if width <= 0:
            return 0
        stacked = torch.stack([s[:width] for s in rows + probes])
        differs = (stacked != stacked[0]).any(dim=0).nonzero()
        return int(differs[0]) if len(differs) else width

    def _prefix_lengths(
        self, rows: list[dict[str, torch.Tensor]], items: list[dict[str, Any]], index: list[int]
    ) -> dict[int, int] | None:
        """Each panorama's shared prefix length, or None when some prompt has an image token after it (a template
        that puts the images after the text: then the batch runs the plain ``generate`` path)."""
        lengths = {}
        for p in sorted(set(index)):
            ids = [rows[k]["input_ids"][0] for k in range(len(rows)) if index[k] == p]
            c = self._query_independent_length(items[p], ids)
            if c == 0 or any(bool((row[c:] == self._image_token_id).any()) for row in ids):
                return None
            lengths[p] = c
        return lengths

    def _generate_shared(
        self, rows: list[dict[str, torch.Tensor]], items: list[dict[str, Any]], index: list[int],
        sample_ids: list[str], encoded: dict[int, Any], image_names: list[str], config: Any,
        device: torch.device, dtype: torch.dtype, prefix_length: dict[int, int],
    ) -> list[str]:
        """Each panorama's prompt prefix (everything before the query: template, images) is run once; its cache
        is selected for each of the panorama's rows, and ``generate`` runs the rest: the rows are laid out as
        ``prefix | padding | query part`` (attention mask 0 on the padding), so every token keeps the position it
        has in the row's own prompt. Rows are grouped by prefix length (equal when the panoramas give the same
        number of image tokens)."""
        groups: dict[int, list[int]] = {}
        for k, p in enumerate(index):
            groups.setdefault(prefix_length[p], []).append(k)
        captions: list[str] = [""] * len(rows)
        for c, ks in groups.items():
            panos = list(dict.fromkeys(index[k] for k in ks))
            first = {p: next(k for k in ks if index[k] == p) for p in panos}
            prefix = {
                name: torch.stack([rows[first[p]][name][0, :c] for p in panos]).to(device)
                for name in rows[0]
            }
            out = self.hf_model(
                **prefix,
                **self._image_extras(items, panos, image_names, device, dtype),
                mm_encoder_outputs={"image": _combine([encoded[p] for p in panos])},
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            local = torch.tensor([panos.index(index[k]) for k in ks], device=device)
            cache.batch_select_indices(local)
            deltas = getattr(self.hf_model.base_model, "rope_deltas", None)
            if deltas is not None:  # multimodal rotary positions: each row continues from its panorama's offset
                self.hf_model.base_model.rope_deltas = deltas.index_select(0, local)
            suffix = max(rows[k]["input_ids"].shape[1] - c for k in ks)
            text = {}
            for name in rows[0]:
                fill = self.pad_token_id if name == "input_ids" else 0
                full = torch.full((len(ks), c + suffix), fill, dtype=rows[0][name].dtype)
                for r, k in enumerate(ks):
                    ids = rows[k][name][0]
                    full[r, :c] = ids[:c]
                    full[r, c + suffix - (ids.shape[0] - c):] = ids[c:]
                if name == "attention_mask":
                    full[:, :c] = 1
                text[name] = full.to(device)
            key = "cache" if "cache" in inspect.signature(self.hf_model.forward).parameters else "past_key_values"
            group_captions = self._run_generate(
                text, {key: cache}, config, [sample_ids[k] for k in ks], c + suffix
            )
            for k, caption in zip(ks, group_captions):
                captions[k] = caption
        return captions

    # -- provenance -----------------------------------------------------------------------------------------
    def describe_decoding(self) -> dict[str, Any]:
        """Settings, path and eos ids of the decoding that runs."""
        return {
            **self.decode.to_dict(),  # flat, as every family's decoding record (compare reads these keys)
            "family": FAMILY,
            "path": self._last_path or ("generate" if self.shared_prefix_refusal else "shared_prefix"),
            "shared_prefix_refused": self.shared_prefix_refusal,
            "padding": "left",
            "vision_encoder": "once_per_panorama" if self._encode_once else "per_sample",
            "image_processor": "once_per_panorama",
            "sampling": "seeded_per_sample_logits_processor" if self.decode.do_sample else None,
            "repetition_penalty_on": "generated_tokens",
            "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "skip_special_tokens": True,
        }

    def provenance(self) -> dict[str, Any]:
        """Identity of the model and its inputs (JSON-able)."""
        return {
            "family": FAMILY,
            "model": self.identity["model_id"],
            "folder": self.identity["folder"],
            "revision": self.identity["revision"],
            "model_type": self.identity["model_type"],
            "architecture": self.identity["architecture"],
            "adapter": self.identity["adapter"],
            "dtype": self.identity["dtype"],
            "protocol": {
                "crop_strategy": self.views.crop_strategy,
                "num_images": len(view_geometries(self.views)) if self.views.crop_strategy != "resize" else 1,
                "views": _view_dict(self.views),
                "resize_max_side": self.resize_max_side,
            },
            "prompt_template": self.prompt_template,
            "processor": {
                "class": type(self.processor).__name__,
                "how": self.loaded.how,
                "why_not_auto": self.loaded.reason,
                "image_processor": image_processor_settings(self.processor.image_processor),
                **processor_settings(self.processor, self._kwargs["images_kwargs"]),
                "chat_template_sha256": chat_template_sha256(self.loaded.chat_template),
            },
        }

    def weights_sha256(self) -> dict[str, str]:
        """sha256 of each weight file of the model folder (computed once; used when there is no revision)."""
        if self._weights_sha256 is None:
            folder = Path(self.identity["folder"])
            self._weights_sha256 = {p.name: sha256_file(p) for p in _weight_files(folder)}
        return self._weights_sha256

    def fingerprint(self) -> dict[str, Any]:
        """What changes captions besides the decoding settings: weights identity (revision, else file hashes),
        adapter hash, dtype, protocol, prompt, chat template and image-processor settings."""
        prov = self.provenance()
        return {
            "family": FAMILY,
            "model": prov["model"],
            "revision": prov["revision"],
            "weights_sha256": None if prov["revision"] else self.weights_sha256(),
            "adapter_sha256": prov["adapter"]["sha256"] if prov["adapter"] else None,
            "dtype": prov["dtype"],
            "protocol": prov["protocol"],
            "prompt_template": self.prompt_template,
            "chat_template_sha256": prov["processor"]["chat_template_sha256"],
            "image_processor": prov["processor"]["image_processor"],
            "processor_settings": prov["processor"]["settings"],
            "images_kwargs": prov["processor"]["images_kwargs"],
        }


def _combine(outputs: list[Any]) -> Any:
    """One encoder output holding the given panoramas' image features, in order (tensors or per-image lists)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pooled = [o.pooler_output for o in outputs]
    if isinstance(pooled[0], torch.Tensor):
        combined: Any = torch.cat(pooled, dim=0)
    else:
        combined = type(pooled[0])(x for group in pooled for x in group)
    return BaseModelOutputWithPooling(pooler_output=combined)


def _view_dict(views: ViewConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(views)))


def load_hf_model(
    name_or_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    crop_strategy: str = ViewSettings.crop_strategy,
    views: ViewConfig | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    decode: DecodeSettings | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    resize_max_side: int | None = None,
    cache_dir: str | Path | None = None,
    share_prefix: bool = GenerationSettings.share_prefix,
    force_assembled_processor: bool = False,
) -> HFCaptionModel:
    """Load a Hugging Face VLM (and optionally its peft LoRA adapter) as a ``CaptionModel``.

    Args:
        name_or_dir: Hub id (``Qwen/Qwen2.5-VL-3B-Instruct``) or local model folder.
        adapter: Folder of a peft LoRA adapter trained on this model (``adapter_config.json`` +
            ``adapter_model.safetensors``).
        crop_strategy: ``resize`` (the whole panorama, 1 image), ``cubemap`` (4 faces), ``anyres_e2p``
            (global view + tiles, 9 images by default), or ``e2p`` / ``sliding_window``. Ignored when ``views``
            is given.
        views: Full view settings (``image_size`` is the size of every rendered view); default
            ``ViewConfig(crop_strategy=crop_strategy)``.
        prompt_template: User text; ``{query}`` is replaced by the query.
        decode: Decoding settings (default: greedy, 64 new tokens).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: Where the weights are loaded.
        resize_max_side: ``resize`` only: a panorama whose longer side exceeds this is reduced to it (aspect
            kept, antialiased) before the processor, which then applies its own resizing (None: the panorama
            as decoded, e.g. Qwen2.5-VL's default ``max_pixels`` then bounds it).
        cache_dir: Hugging Face cache folder for a hub id (None: the hub library's default).
        share_prefix: Run each panorama's image prefix once for all its queries where that is proven exact
            (see the module docstring); False: one batched ``generate`` over the whole prompts.
        force_assembled_processor: Build the processor from its parts even where ``AutoProcessor`` works.

    Returns:
        The caption model.

    Raises:
        InputNotFoundError: Missing model folder or adapter folder.
        ModelUnavailableError: Unknown or unsupported architecture; the model cannot be loaded.
        InvalidInputError: The protocol asks for more images than the architecture takes; no chat template;
            bad dtype, views or prompt template.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    dtype_name = _check_dtype(dtype)
    views = views if views is not None else ViewConfig(crop_strategy=crop_strategy)
    views.validate()
    if resize_max_side is not None and (
        not isinstance(resize_max_side, int) or isinstance(resize_max_side, bool) or resize_max_side < 8
    ):
        raise InvalidInputError(f"resize_max_side must be an integer >= 8 (pixels) or None; got {resize_max_side!r}")
    if "{query}" not in prompt_template:
        raise InvalidInputError(f"prompt template {prompt_template!r} has no '{{query}}' field")
    decode = decode if decode is not None else DecodeSettings()
    folder, model_id, revision = resolve_model_folder(name_or_dir, cache_dir)
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - unknown model types raise ValueError / KeyError
        raise ModelUnavailableError(
            f"cannot read the model config '{folder / 'config.json'}': {type(exc).__name__}: {exc}. The hf family "
            f"serves {', '.join(sorted(ARCHITECTURES))}"
        ) from exc
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ModelUnavailableError(
            f"the model '{folder}' is a {config.model_type!r} ({', '.join(config.architectures or [])}), which the hf "
            f"family does not serve; supported model types: {', '.join(sorted(ARCHITECTURES))} "
            "(image-text-to-text models whose processor takes the images and a chat-templated prompt)"
        )
    num_images = 1 if views.crop_strategy == "resize" else len(view_geometries(views))
    if arch.max_images is not None and num_images > arch.max_images:
        raise InvalidInputError(
            f"{arch.label} ('{folder}') takes {arch.max_images} image per prompt, but crop_strategy "
            f"{views.crop_strategy!r} gives {num_images} images per panorama; use --data.crop_strategy resize "
            "(the whole panorama as one image) with this model"
        )
    loaded = load_processor(folder, config.model_type, force_assembled=force_assembled_processor)
    try:
        hf_model = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=getattr(torch, dtype_name), device_map=None
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailableError(
            f"cannot load '{folder}' with AutoModelForImageTextToText: {type(exc).__name__}: {exc}"
        ) from exc
    hf_model.to(device).eval()
    module: torch.nn.Module = hf_model
    adapter_info = None
    if adapter is not None:
        from peft import PeftModel

        adapter_info = _read_adapter(adapter)
        if adapter_info.base_model and Path(adapter_info.base_model).name != Path(str(model_id)).name:
            logger.warning(
                "adapter '%s' was trained on %r; loading it on %r", adapter_info.path, adapter_info.base_model, model_id
            )
        try:
            module = PeftModel.from_pretrained(hf_model, str(adapter_info.path), is_trainable=False)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInputError(
                f"cannot load the adapter '{adapter_info.path}' on '{folder}': {type(exc).__name__}: {exc}. Pass an "
                "adapter trained on this model"
            ) from exc
        module.eval()
        hf_model = module.get_base_model()
    identity = {
        "model_id": str(model_id),
        "folder": str(folder),
        "revision": revision or getattr(config, "_commit_hash", None),
        "model_type": config.model_type,
        "architecture": (config.architectures or [type(hf_model).__name__])[0],
        "dtype": dtype_name,
        "adapter": adapter_info.to_dict() if adapter_info else None,
    }
    logger.info(
        "hf model %s (%s, revision %s, %s)%s, processor %s, %s: %d image(s) per panorama",
        model_id, config.model_type, identity["revision"], dtype_name,
        f" + adapter {adapter_info.path}" if adapter_info else "", loaded.how, views.crop_strategy, num_images,
    )
    return HFCaptionModel(
        module, hf_model, loaded, views, prompt_template, decode, identity, resize_max_side, share_prefix
    )
