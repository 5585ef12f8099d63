"""Where the judge's answers come from: any OpenAI-compatible chat-completions endpoint, or a local model.

:class:`EndpointJudge` talks to what vLLM, SGLang, TGI, Ollama and hosted APIs serve at ``…/v1`` through the
official ``openai`` client (the optional extra ``judge``; imported when the backend is built, so the CLI starts
fast). The client's own retries are off (``max_retries=0``) and this module retries instead, so that the two
causes are bounded separately and every attempt is counted: a 429 waits what its ``Retry-After`` (or
``retry-after-ms``) header says, at most :data:`MAX_RETRY_AFTER_S`, up to ``max_rate_limit_retries`` times; a 5xx,
a 408/409, a timeout or a dropped connection is retried ``max_retries`` times with exponential backoff. A wrong key, URL or
model name (401, 403, 404) stops the whole run (:class:`JudgeConfigError`): every sample would fail the same way.
Any other 4xx fails the sample with the server's message.

:class:`LocalJudge` runs a transformers causal LM from a folder, greedy, text only (the panorama is not shown).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panollava.errors import InvalidInputError, ModelUnavailableError, PanoLLaVAError

logger = logging.getLogger(__name__)

__all__ = ["MAX_RETRY_AFTER_S", "EndpointJudge", "JudgeConfigError", "JudgeReply", "LocalJudge", "parse_retry_after"]

#: Longest ``Retry-After`` that is waited for; a longer one fails the sample (the same bound as the openai client's).
MAX_RETRY_AFTER_S = 120.0


class JudgeConfigError(PanoLLaVAError):
    """The endpoint refused the request for a reason every sample shares (key, URL, model name)."""


@dataclass
class JudgeReply:
    """One answer of the judge, or why there is none.

    Attributes:
        text: The answer's text (None when the call failed).
        error: Why the call failed after its retries (None when ``text`` is set).
        attempts: Requests sent for it (1 without retries).
        usage: ``{"prompt_tokens", "completion_tokens"}`` when the server reported them.
        finish_reason: The server's finish reason (``stop``, ``length``).
        served_model: The model name the server answered with.
        latency_s: Seconds from the first request to the answer.
        retry_waits_s: The waits before each retry.
        status: The HTTP status of a refused request (4xx other than 408/409/429), else None.
    """

    text: str | None
    error: str | None = None
    attempts: int = 1
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    served_model: str | None = None
    latency_s: float = 0.0
    retry_waits_s: list[float] = field(default_factory=list)
    status: int | None = None


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


class EndpointJudge:
    """A judge served by an OpenAI-compatible chat-completions endpoint.

    Args:
        endpoint: The API base, e.g. ``http://gpu-node:8000/v1``.
        model: The served model's name (``--judge_model``).
        api_key: The key (servers without authentication accept any non-empty string).
        timeout_s: Seconds one request may take.
        max_retries: Retries of a 5xx, a timeout or a connection error.
        max_rate_limit_retries: Retries of a 429.
        backoff_s: First backoff of a 5xx retry (doubled each time, at most 30 s); also the wait after a 429 that
            names no ``Retry-After``.
        temperature: Sampling temperature (0: the most likely answer).
        seed: Seed sent with every request.
        max_tokens: Longest answer.
        use_response_format: Send the JSON schema as ``response_format`` (servers with guided decoding honour it).
        stop: Set to abandon waits (retries) at once, e.g. on Ctrl-C.
    """

    backend = "openai-compatible"

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str,
        *,
        timeout_s: float,
        max_retries: int,
        max_rate_limit_retries: int,
        backoff_s: float,
        temperature: float,
        seed: int,
        max_tokens: int,
        use_response_format: bool,
        stop: threading.Event | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ModelUnavailableError(
                "the judge's endpoint backend needs the 'openai' client library, which is not installed: "
                "pip install 'panollava[judge]' (or pip install openai)"
            ) from exc
        self._openai = openai
        self.endpoint = endpoint
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_rate_limit_retries = max_rate_limit_retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.seed = seed
        self.max_tokens = max_tokens
        self.use_response_format = use_response_format
        self.stop = stop or threading.Event()
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=timeout_s, max_retries=0)

    def identity(self) -> dict[str, Any]:
        """Who answers: backend, endpoint, model name and client version."""
        return {"backend": self.backend, "endpoint": self.endpoint, "model": self.model,
                "client": f"openai {self._openai.__version__}"}

    def close(self) -> None:
        self.client.close()

    def _wait(self, seconds: float, reply: JudgeReply) -> bool:
        reply.retry_waits_s.append(round(seconds, 3))
        return not self.stop.wait(seconds)

    def complete(self, messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> JudgeReply:
        """Ask once (with the bounded retries of the module docstring).

        Raises:
            JudgeConfigError: 401, 403 or 404: the key, the endpoint or the model name is wrong.
        """
        openai = self._openai
        reply = JudgeReply(text=None, attempts=0)
        start = time.monotonic()
        transient = rate_limited = 0
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": self.temperature, "seed": self.seed,
            "max_tokens": self.max_tokens, "stream": False,
        }
        if self.use_response_format and response_format is not None:
            kwargs["response_format"] = response_format
        while True:
            reply.attempts += 1
            try:
                response = self.client.chat.completions.create(**kwargs)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise JudgeConfigError(
                    f"the judge endpoint {self.endpoint} refused the request with HTTP {exc.status_code} "
                    f"({_message(exc)}): check --endpoint (the API base, ending in /v1), --judge_model (a name the "
                    "server lists at /v1/models) and the API key's environment variable (--api_key_env)"
                ) from exc
            except openai.RateLimitError as exc:
                rate_limited += 1
                wait = parse_retry_after(exc.response.headers)
                if rate_limited > self.max_rate_limit_retries:
                    reply.error = f"HTTP 429 rate limited {rate_limited} times (retried {self.max_rate_limit_retries})"
                elif wait is not None and wait > MAX_RETRY_AFTER_S:
                    reply.error = f"HTTP 429 with Retry-After {wait:.0f} s (more than {MAX_RETRY_AFTER_S:.0f} s)"
                elif self._wait(self.backoff_s if wait is None else wait, reply):
                    continue
                else:
                    reply.error = "stopped while waiting to retry a 429"
            except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError) as exc:
                status = getattr(exc, "status_code", None)
                what = (f"HTTP {status} ({_message(exc)})" if status is not None
                        else f"timed out after {self.timeout_s:g} s" if isinstance(exc, openai.APITimeoutError)
                        else f"connection error ({exc})")
                if status is not None and status < 500 and status not in (408, 409):
                    reply.error = what  # another 4xx: this request is refused (too long, malformed); others may pass
                    reply.status = status
                else:  # a 5xx, 408/409, timeout or dropped connection: worth another try
                    transient += 1
                    if transient > self.max_retries:
                        reply.error = f"{what}; gave up after {reply.attempts} attempt(s)"
                    elif self._wait(min(30.0, self.backoff_s * 2 ** (transient - 1)), reply):
                        continue
                    else:
                        reply.error = f"{what}; stopped before retrying"
            else:
                reply.latency_s = time.monotonic() - start
                reply.served_model = getattr(response, "model", None)
                choices = getattr(response, "choices", None) or []
                if not choices:
                    reply.error = "the server answered without choices"
                    return reply
                reply.text = choices[0].message.content if choices[0].message is not None else None
                reply.finish_reason = choices[0].finish_reason
                usage = getattr(response, "usage", None)
                if usage is not None:
                    reply.usage = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                if reply.text is None:
                    reply.text = ""  # an answer without content: an answer, parsed (and failed) as empty
                return reply
            reply.latency_s = time.monotonic() - start
            return reply


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config.json and the names and sizes of the weight files (cheap; identifies a checkpoint)."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


class LocalJudge:
    """A judge run in this process: a transformers causal LM with a chat template, greedy, text only.

    Args:
        model_dir: The model folder (``save_pretrained`` layout with a tokenizer that has a chat template).
        seed: Seed of torch before each answer (greedy decoding does not sample; recorded all the same).
        max_tokens: Longest answer (new tokens).
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    """

    backend = "transformers"

    def __init__(self, model_dir: str | Path, *, seed: int, max_tokens: int, device: str = "auto") -> None:
        folder = Path(model_dir).expanduser().resolve()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ModelUnavailableError(
                f"--judge_model '{folder}' is not a local model folder (no config.json). Without --endpoint the "
                "judge runs a transformers model from a folder; to use a served model pass --endpoint URL/v1 and "
                "its name as --judge_model"
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.folder = folder
        self.seed = seed
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInputError(
                f"the tokenizer in '{folder}' has no chat template; the judge needs a chat model (instruct/chat "
                "checkpoint, or add a chat_template to tokenizer_config.json)"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(self.device).eval()
        self._lock = threading.Lock()
        import transformers

        self._version = transformers.__version__

    def identity(self) -> dict[str, Any]:
        """Who answers: the model folder and a fingerprint of its config and weights."""
        return {"backend": self.backend, "model": str(self.folder), "fingerprint": _folder_fingerprint(self.folder),
                "client": f"transformers {self._version}"}

    def close(self) -> None:
        pass

    def complete(self, messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> JudgeReply:
        """Generate the answer greedily (``response_format`` cannot be enforced here: the prompt asks for JSON)."""
        torch = self._torch
        start = time.monotonic()
        for message in messages:
            if not isinstance(message["content"], str):
                raise InvalidInputError("the local judge reads text only; run it with --judge_images false")
        with self._lock:
            try:
                enc = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                    enable_thinking=False,
                )
            except Exception as exc:  # noqa: BLE001 - jinja raises its own types; the model's template is at fault
                raise InvalidInputError(
                    f"the chat template of '{self.folder}' cannot render the judge's system + user messages "
                    f"({type(exc).__name__}: {exc}); use a chat model whose template accepts a system message"
                ) from exc
            ids = enc["input_ids"].to(self.device)
            limit = getattr(self.model.config, "max_position_embeddings", None)
            if limit is not None and ids.shape[1] + self.max_tokens > limit:
                return JudgeReply(text=None, error=(
                    f"the prompt ({ids.shape[1]} tokens) plus {self.max_tokens} answer tokens exceeds the model's "
                    f"{limit} positions"), latency_s=time.monotonic() - start)
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=enc["attention_mask"].to(self.device), do_sample=False,
                    max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
        new = out[0, ids.shape[1]:]
        finish = "stop" if new.numel() < self.max_tokens else "length"
        # drop the end and padding tokens only: other special tokens stay visible in a failed answer's reason
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        text = self.tokenizer.decode([t for t in new.tolist() if t not in ends], skip_special_tokens=False)
        return JudgeReply(
            text=text, usage={"prompt_tokens": int(ids.shape[1]), "completion_tokens": int(new.numel())},
            finish_reason=finish, served_model=str(self.folder), latency_s=time.monotonic() - start,
        )
