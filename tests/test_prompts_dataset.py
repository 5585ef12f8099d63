"""Prompt encoding (ChatML, image placeholder, labels, padding) and caption CSV reading / grouping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from panollava.data.dataset import (
    CaptionSample,
    group_samples,
    read_caption_csv,
    sample_id_for,
    training_samples,
)
from panollava.data.prompts import DEFAULT_PROMPT_TEMPLATE, IGNORE_INDEX, PromptEncoder, format_user_text
from panollava.errors import InputNotFoundError, InvalidInputError

IMAGE_TOKEN = "<|image_pad|>"
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)


# -- prompts ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from panollava.offline.tiny_models import build_tiny_models

    return AutoTokenizer.from_pretrained(build_tiny_models()["tiny-qwen3"])


@pytest.fixture()
def encoder(tokenizer) -> PromptEncoder:
    return PromptEncoder(tokenizer, IMAGE_TOKEN)


def test_rendered_prompt_is_chatml_with_the_image_first(encoder: PromptEncoder) -> None:
    text = encoder.render("furniture")
    user = DEFAULT_PROMPT_TEMPLATE.replace("{query}", "furniture")
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\n"
        + user
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert user == 'In this panoramic image, please provide a concise but detailed description of "furniture".'


def test_system_prompt_comes_first(tokenizer) -> None:
    text = PromptEncoder(tokenizer, IMAGE_TOKEN, system_prompt="You describe panoramas.").render("room")
    assert text.startswith("<|im_start|>system\nYou describe panoramas.<|im_end|>\n<|im_start|>user\n<|vision_start|>")


def test_placeholder_is_expanded_in_place(encoder: PromptEncoder, tokenizer) -> None:
    single = tokenizer(encoder.render("room"), add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for n in (1, 7, 64):
        ids = encoder.prompt_ids("room", n)
        assert len(ids) == len(single) - 1 + n
        where = [i for i, t in enumerate(ids) if t == image_id]
        assert len(where) == n and where == list(range(where[0], where[0] + n))  # one contiguous block
        assert ids[where[0] - 1] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert ids[where[-1] + 1] == tokenizer.convert_tokens_to_ids("<|vision_end|>")
        assert ids[: where[0]] == single[: where[0]] and ids[where[-1] + 1 :] == single[where[0] + 1 :]


def test_generation_batch_is_left_padded(encoder: PromptEncoder, tokenizer) -> None:
    queries = ["room", "what they are doing in the room behind the sofa"]
    batch = encoder.encode(queries, 5)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.dtype == torch.long
    assert bool(mask[:, -1].all())  # every prompt ends at the last column
    for row, query in enumerate(queries):
        prompt = encoder.prompt_ids(query, 5)
        pad = ids.shape[1] - len(prompt)
        assert ids[row, pad:].tolist() == prompt
        assert mask[row].tolist() == [0] * pad + [1] * len(prompt)
        assert ids[row, :pad].tolist() == [tokenizer.pad_token_id] * pad
    assert int((mask[0] == 0).sum()) > 0 and int((mask[1] == 0).sum()) == 0


def test_labels_cover_only_the_answer_and_eos(encoder: PromptEncoder, tokenizer) -> None:
    queries, answers = ["room", "what they are doing"], ["a red sofa near the window", "people"]
    batch = encoder.encode(queries, 4, answers)
    for row in range(2):
        answer = tokenizer(answers[row], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = batch["labels"][row].tolist()
        kept = [t for t in labels if t != IGNORE_INDEX]
        assert kept == answer
        assert labels[-len(answer) :] == answer and set(labels[: -len(answer)]) == {IGNORE_INDEX}
        # The input is prompt + answer, left-padded; the prompt part is the generation prompt.
        prompt = encoder.prompt_ids(queries[row], 4)
        assert batch["input_ids"][row, -len(answer) - len(prompt) :].tolist() == prompt + answer
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"
    # The generation prompt of the same query is the teacher-forced prefix: image tokens at the same positions.
    gen = encoder.encode(queries[:1], 4)["input_ids"][0].tolist()
    forced = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    assert forced[: len(gen)] == gen


def test_answers_are_truncated_keeping_eos(tokenizer) -> None:
    encoder = PromptEncoder(tokenizer, IMAGE_TOKEN, max_answer_tokens=3)
    ids = encoder.answer_ids("a red sofa near the window and a table")
    assert len(ids) == 3 and ids[-1] == tokenizer.eos_token_id


def test_query_with_the_image_token_is_refused(encoder: PromptEncoder) -> None:
    with pytest.raises(InvalidInputError, match=r"holds 2 image tokens .*expected exactly 1"):
        encoder.prompt_ids(f"a {IMAGE_TOKEN} here", 4)


def test_query_with_braces_is_kept_verbatim(encoder: PromptEncoder, tokenizer) -> None:
    query = "a {query} {0} {{x}} }{ %s"
    text = encoder.render(query)
    assert f'description of "{query}".' in text
    assert format_user_text("Q: {query}!", "{query}") == "Q: {query}!"
    ids = encoder.prompt_ids(query, 3)
    assert tokenizer.decode(ids).count(query) == 1
    with pytest.raises(InvalidInputError, match="no '{query}' field"):
        format_user_text("describe the image", "room")


def test_enable_thinking_is_passed_to_the_chat_template(tokenizer) -> None:
    from transformers import AutoTokenizer

    thinking = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    thinking.chat_template = THINKING_TEMPLATE
    off = PromptEncoder(thinking, IMAGE_TOKEN, enable_thinking=False).render("room")
    on = PromptEncoder(thinking, IMAGE_TOKEN, enable_thinking=True).render("room")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n")
    # A template that does not mention it renders the same either way.
    assert PromptEncoder(tokenizer, IMAGE_TOKEN, enable_thinking=True).render("room") == PromptEncoder(
        tokenizer, IMAGE_TOKEN, enable_thinking=False
    ).render("room")


# -- caption CSVs ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_csv(shared_data_dir: Path) -> Path:
    return shared_data_dir / "quic360-sample" / "test.csv"


def test_real_csv_groups_into_15_samples(sample_csv: Path) -> None:
    rows = read_caption_csv(sample_csv)
    assert len(rows) == 87
    assert [r["row"] for r in rows] == list(range(2, 89))
    for r in rows:
        assert Path(r["image_path"]).is_absolute() and Path(r["image_path"]).is_file()
        assert Path(r["image_path"]) == sample_csv.parent.resolve() / r["url"]
    samples = group_samples(rows)
    assert len(samples) == 15
    assert all(isinstance(s, CaptionSample) for s in samples)
    assert all(4 <= len(s.references) <= 6 for s in samples)
    assert sum(len(s.references) for s in samples) == 87
    assert sorted(r for s in samples for r in s.rows) == list(range(2, 89))
    assert len({(s.url, s.query) for s in samples}) == 15
    assert len({Path(s.image_path).name for s in samples}) == 5
    ids = [s.sample_id for s in samples]
    assert len(set(ids)) == 15
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    assert ids == [sample_id_for(s.url, s.query) for s in samples]
    # Stable: the same ids from a fresh read, in the order of first rows.
    assert [s.sample_id for s in group_samples(read_caption_csv(sample_csv))] == ids
    assert [s.rows[0] for s in samples] == sorted(s.rows[0] for s in samples)
    first = samples[0]
    assert first.references == [r["annotation"] for r in rows if (r["url"], r["query"]) == (first.url, first.query)]


def test_per_row_mode_and_training_samples(sample_csv: Path) -> None:
    rows = read_caption_csv(sample_csv)
    per_row = group_samples(rows, "per_row")
    assert len(per_row) == 87 and all(len(s.references) == 1 for s in per_row)
    assert len({s.sample_id for s in per_row}) == 87
    assert per_row[0].sample_id == sample_id_for(rows[0]["url"], rows[0]["query"], 2)
    train = training_samples(rows)
    assert len(train) == 87
    assert [s.references[0] for s in train] == [r["annotation"] for r in rows]
    assert [s.sample_id for s in train] == [s.sample_id for s in per_row]
    with pytest.raises(InvalidInputError, match="reference_mode 'legacy'"):
        group_samples(rows, "legacy")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(b"not decoded here")
    return folder


def test_missing_csv(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "test.csv"
    with pytest.raises(InputNotFoundError, match=re.escape(f"'{missing}' does not exist")):
        read_caption_csv(missing)


def test_missing_column_is_named_with_the_found_ones(tmp_path: Path) -> None:
    csv = _write(tmp_path / "c.csv", "url,question,annotation\nimages/a.jpg,room,a room\n")
    found = re.escape("lacks column(s) ['query'] (found: ['url', 'question', 'annotation'])")
    with pytest.raises(InvalidInputError, match=found):
        read_caption_csv(csv)
    no_annotation = _write(tmp_path / "d.csv", "url,query\nimages/a.jpg,room\n")
    with pytest.raises(InvalidInputError, match=r"\['annotation'\]"):
        read_caption_csv(no_annotation, check_images=False)


def test_csv_without_annotations_when_allowed(image_dir: Path) -> None:
    csv = _write(image_dir.parent / "q.csv", "url,query\nimages/a.jpg,room\nimages/a.jpg,room\nimages/b.jpg,sky\n")
    rows = read_caption_csv(csv, require_annotation=False)
    assert [r["annotation"] for r in rows] == [None, None, None]
    samples = group_samples(rows)
    assert [(s.query, s.references, s.rows) for s in samples] == [("room", [], [2, 3]), ("sky", [], [4])]


def test_empty_cell_names_the_line(image_dir: Path) -> None:
    csv = _write(
        image_dir.parent / "e.csv",
        "url,query,annotation\nimages/a.jpg,room,a room\nimages/b.jpg,  ,a sky\nimages/b.jpg,sky,\n",
    )
    with pytest.raises(InvalidInputError, match=r"line 3: column 'query' is empty"):
        read_caption_csv(csv)


def test_missing_image_names_the_line_and_absolute_path(image_dir: Path) -> None:
    csv = _write(
        image_dir.parent / "m.csv",
        "url,query,annotation\nimages/a.jpg,room,a room\nimages/gone.jpg,sky,a sky\nimages/gone.jpg,sky,blue\n",
    )
    expected = image_dir / "gone.jpg"
    with pytest.raises(InputNotFoundError, match=re.escape(f"line 3: image '{expected}' does not exist")) as info:
        read_caption_csv(csv)
    assert "1 of 2 images missing" in str(info.value) and "--data.image_root" in str(info.value)
    rows = read_caption_csv(csv, check_images=False)  # loading errors then surface when the image is read
    assert rows[1]["image_path"] == str(expected)


def test_relative_urls_resolve_against_csv_folder_or_image_root(image_dir: Path, tmp_path: Path) -> None:
    text = f"url,query,annotation\nimages/a.jpg,room,a room\n{image_dir / 'b.jpg'},sky,a sky\n"  # relative, absolute
    csv = _write(image_dir.parent / "r.csv", text)
    rows = read_caption_csv(csv)
    assert rows[0]["image_path"] == str(image_dir / "a.jpg") and rows[1]["image_path"] == str(image_dir / "b.jpg")
    elsewhere = _write(tmp_path / "csvs" / "r.csv", "url,query,annotation\nimages/a.jpg,room,a room\n")
    with pytest.raises(InputNotFoundError, match=re.escape(str(tmp_path / "csvs" / "images" / "a.jpg"))):
        read_caption_csv(elsewhere)
    rows = read_caption_csv(elsewhere, image_root=image_dir.parent)
    assert rows[0]["image_path"] == str(image_dir / "a.jpg")


def test_header_only_csv(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no rows"):
        read_caption_csv(_write(tmp_path / "h.csv", "url,query,annotation\n"))


def test_empty_annotation_among_others_is_dropped_for_evaluation_and_training(image_dir: Path, caplog) -> None:
    csv = _write(
        image_dir.parent / "n.csv",
        "url,query,annotation\nimages/a.jpg,room,a room\nimages/a.jpg,room,nan\nimages/a.jpg,room,\n"
        "images/a.jpg,room,a big room\nimages/b.jpg,sky,a sky\n",
    )
    with caplog.at_level("WARNING", logger="panollava"):
        rows = read_caption_csv(csv)
    assert [r["row"] for r in rows] == [2, 5, 6]
    assert "line(s) 3, 4" in caplog.text and "1 sample keeps 2 references" in caplog.text
    assert [s.references for s in group_samples(rows)] == [["a room", "a big room"], ["a sky"]]
    assert [s.references for s in training_samples(rows)] == [["a room"], ["a big room"], ["a sky"]]
