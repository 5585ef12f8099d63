"""Prompts: the chat-templated query with the image placeholder, tokenised the same way for training and test.

The user turn is ``<|vision_start|><|image_pad|><|vision_end|>\\n`` followed by the query text (image first), rendered
through the tokenizer's chat template with ``add_generation_prompt=True`` (and ``enable_thinking`` passed through for
Qwen3's official template). The single placeholder is then expanded, in token-id space, to one placeholder per
image feature vector. Training appends the reference caption and the end-of-turn token; generation starts right
after the prompt, so both see the image tokens at the same positions.

Rendering and tokenising a prompt is cached per query text in a least-recently-used cache of
:data:`PROMPT_CACHE_SIZE` queries (the tokens with the single placeholder: a few dozen ids each), so free-form queries
cannot grow it without bound; the placeholder is expanded on every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from panollava.errors import InvalidInputError
from panollava.schema import DEFAULT_PROMPT_TEMPLATE, PromptSettings, ViewSettings

IGNORE_INDEX = -100

PROMPT_CACHE_SIZE = 4096
"""Queries whose tokenised prompt :class:`PromptEncoder` keeps (least recently used dropped first)."""


def format_user_text(template: str, query: str) -> str:
    """Fill ``{query}`` in the template (the query itself may contain braces)."""
    if "{query}" not in template:
        raise InvalidInputError(f"prompt template {template!r} has no '{{query}}' field")
    return template.replace("{query}", query)


@dataclass
class PromptEncoder:
    """Turns queries (and, for training, answers) into left-padded token batches.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template and the image token.
        image_token: The placeholder token string (e.g. ``<|image_pad|>``).
        template: User text template with ``{query}``.
        system_prompt: Optional system message.
        enable_thinking: Passed to the chat template (Qwen3's official template adds an empty think block when
            False); ignored by templates that do not use it.
        max_answer_tokens: Training answers are truncated to this many tokens (the end-of-turn token kept).
        prompt_cache_size: Queries whose tokenised prompt is kept (least recently used dropped first).
    """

    tokenizer: object
    image_token: str
    template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = PromptSettings.system_prompt
    enable_thinking: bool = PromptSettings.enable_thinking
    max_answer_tokens: int = ViewSettings.max_answer_tokens
    prompt_cache_size: int = PROMPT_CACHE_SIZE

    def __post_init__(self) -> None:
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self._prompt_cache: OrderedDict[str, tuple[list[int], int]] = OrderedDict()

    def render(self, query: str) -> str:
        """The prompt text (one placeholder) for ``query``."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        image_block = f"<|vision_start|>{self.image_token}<|vision_end|>\n"
        messages.append({"role": "user", "content": image_block + format_user_text(self.template, query)})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )

    def _tokenised(self, query: str) -> tuple[list[int], int]:
        """(prompt ids with the one placeholder, the placeholder's index), through the LRU cache."""
        cached = self._prompt_cache.get(query)
        if cached is not None:
            self._prompt_cache.move_to_end(query)
            return cached
        ids = self.tokenizer(self.render(query), add_special_tokens=False)["input_ids"]
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != 1:
            raise InvalidInputError(
                f"the rendered prompt for query {query!r} holds {len(where)} image tokens {self.image_token!r}; "
                "expected exactly 1 (remove the image token from the query / template)"
            )
        self._prompt_cache[query] = cached = (ids, where[0])
        while len(self._prompt_cache) > max(1, self.prompt_cache_size):
            self._prompt_cache.popitem(last=False)
        return cached

    def prompt_ids(self, query: str, num_image_tokens: int) -> list[int]:
        """Token ids of the prompt with the placeholder expanded to ``num_image_tokens`` copies (a new list)."""
        ids, i = self._tokenised(query)
        return ids[:i] + [self.image_token_id] * num_image_tokens + ids[i + 1 :]

    def min_prompt_tokens(self) -> int:
        """A lower bound on any prompt's length: the empty query's prompt without image tokens (not cached)."""
        ids = self.tokenizer(self.render(""), add_special_tokens=False)["input_ids"]
        return len(ids) - sum(1 for t in ids if t == self.image_token_id)

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of the answer followed by the end-of-turn (eos) token."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.max_answer_tokens - 1]
        return ids + [self.tokenizer.eos_token_id]

    def encode(
        self, queries: Sequence[str], num_image_tokens: int, answers: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Left-padded batch.

        Args:
            queries: B query strings.
            num_image_tokens: Placeholders per prompt (views × tokens per view).
            answers: B answers for teacher forcing, or None for generation prompts.

        Returns:
            ``input_ids`` (B, L), ``attention_mask`` (B, L) and, with answers, ``labels`` (B, L) that are
            ``IGNORE_INDEX`` except on answer tokens.
        """
        rows, label_rows = [], []
        for k, query in enumerate(queries):
            prompt = self.prompt_ids(query, num_image_tokens)
            if answers is None:
                rows.append(prompt)
            else:
                answer = self.answer_ids(answers[k])
                rows.append(prompt + answer)
                label_rows.append([IGNORE_INDEX] * len(prompt) + answer)
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long) if answers is not None else None
        for k, row in enumerate(rows):
            input_ids[k, length - len(row) :] = torch.tensor(row)
            attention_mask[k, length - len(row) :] = 1
            if labels is not None:
                labels[k, length - len(row) :] = torch.tensor(label_rows[k])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            batch["labels"] = labels
        return batch
