"""Sharding (whole panoramas per rank, balanced, no padding), batch packing and the on-disk evaluation state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panollava.errors import InvalidInputError
from panollava.evaluation.sharding import assign_to_ranks, group_by_panorama, pack_batches, rank_batches
from panollava.evaluation.state import (
    ResumeRefusedError,
    ShardWriter,
    begin_attempt,
    count_shard_lines,
    finish_attempt,
    fingerprint_changes,
    read_done,
    shard_path,
)

# 11 samples on 5 panoramas with 1 to 5 queries each, interleaved as a CSV might list them.
KEYS = ["a", "b", "b", "c", "c", "c", "d", "e", "e", "e", "e"] + ["e"]  # e has 5 queries


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 20])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_every_sample_exactly_once_whole_panoramas(world_size: int, batch_size: int) -> None:
    seen: list[int] = []
    owner: dict[str, int] = {}
    for rank in range(world_size):
        batches = rank_batches(KEYS, rank, world_size, batch_size)
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            seen.extend(batch)
            for i in batch:
                assert owner.setdefault(KEYS[i], rank) == rank, "a panorama was split over ranks"
    assert sorted(seen) == list(range(len(KEYS)))


def test_balanced_and_deterministic() -> None:
    groups = group_by_panorama(KEYS)
    assert [g.key for g in groups] == ["a", "b", "c", "d", "e"] and len(groups[4]) == 5
    shards = assign_to_ranks(groups, 2)
    loads = [sum(len(g) for g in shard) for shard in shards]
    assert sorted(loads) == [6, 6]  # e (5) + a (1) vs c (3) + b (2) + d (1)
    assert shards == assign_to_ranks(groups, 2)
    for shard in shards:  # dataset order inside a rank
        assert [g.indices[0] for g in shard] == sorted(g.indices[0] for g in shard)
    assert [len(s) for s in assign_to_ranks(groups, 8)].count(0) == 3  # more ranks than panoramas


def test_batches_keep_panoramas_together_when_they_fit() -> None:
    groups = group_by_panorama(KEYS)
    assert pack_batches(groups, 4) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10], [11]]
    # a 5-query panorama with batch 2: consecutive chunks, features carry over
    assert pack_batches(groups[4:], 2) == [[7, 8], [9, 10], [11]]
    with pytest.raises(ValueError):
        pack_batches(groups, 0)


def test_resume_skips_done_before_sharding() -> None:
    done = [0, 3, 4, 5]
    got = sorted(i for r in range(3) for b in rank_batches(KEYS, r, 3, 4, skip=done) for i in b)
    assert got == [i for i in range(len(KEYS)) if i not in done]


# -- on-disk state ---------------------------------------------------------------------------------------------------
FP = {"checkpoint_sha256": "abc", "decoding.max_new_tokens": 8, "setting.crop_strategy": "anyres_e2p"}


def _rec(sid: str, text: str = "a caption") -> dict:
    return {"sample_id": sid, "prediction": text, "references": ["r"]}


def test_shards_resume_and_refuse_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    attempt, done = begin_attempt(out, FP, mode="test", overwrite=False, sample_ids=["s1", "s2", "s3"], world_size=2)
    assert done == {}
    writer = ShardWriter(shard_path(out, attempt, 1))
    writer.append([_rec("s1"), _rec("s2", "")])  # an empty caption is a result
    writer.close()
    with open(shard_path(out, attempt, 0), "w") as fh:
        fh.write('{"sample_id": "s3", "predic')  # a write cut by SIGKILL
    assert count_shard_lines(out, attempt, {}) == 2

    attempt2, done = begin_attempt(out, FP, mode="test", overwrite=False, sample_ids=["s1", "s2", "s3"], world_size=1)
    assert sorted(done) == ["s1", "s2"] and done["s2"]["prediction"] == ""
    state = json.loads((out / "eval_state.json").read_text())
    assert [a["resumed"] for a in state["attempts"]] == [0, 2] and state["attempts"][1]["remaining"] == 1

    changed = {**FP, "decoding.max_new_tokens": 16}
    with pytest.raises(ResumeRefusedError,
                       match=r"max_new_tokens: 8 -> 16.*new --output_dir.*--overwrite would delete 2 finished caption"):
        begin_attempt(out, changed, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
    _, done = begin_attempt(out, changed, mode="test", overwrite=True, sample_ids=["s1"], world_size=1)
    assert done == {} and not (out / "shards").exists()


def test_a_setting_added_after_the_state_was_written_is_a_change_only_off_its_default() -> None:
    old = {"decoding.max_new_tokens": 8, "setting.share_prefix": True}  # written before compile_decode existed
    assert fingerprint_changes(old, {**old, "decoding.compile_decode": False, "setting.compile_decode": False}) == []
    assert fingerprint_changes(old, {**old, "setting.compile_decode": True}) == [("setting.compile_decode", None, True)]
    assert fingerprint_changes({**old, "setting.compile_decode": False}, old) == [
        ("setting.compile_decode", False, None)]  # a key that disappeared is a change
    assert fingerprint_changes(old, {**old, "checkpoint_sha256": "ab"}) == [("checkpoint_sha256", None, "ab")]


def test_final_set_and_finished_folder(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    attempt, _ = begin_attempt(out, FP, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
    ShardWriter(shard_path(out, attempt, 0)).append([_rec("s1")])

    def write_outputs() -> None:
        (out / "predictions.jsonl").write_text(json.dumps(_rec("s1")) + "\n")

    finish_attempt(out, mode="test", attempt=attempt, generated=1, write_outputs=write_outputs,
                   metrics_name="metrics.json", metrics={"cider": 1.0})
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["predictions_sha256"]) == 64 and not (out / "shards").exists()
    _, done = begin_attempt(out, FP, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
    assert list(done) == ["s1"]  # a finished folder: nothing left to generate


def test_conflicting_records_and_foreign_outputs_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "x-rank0.jsonl").write_text(json.dumps(_rec("s1", "one")) + "\n")
    (out / "shards" / "y-rank0.jsonl").write_text(json.dumps(_rec("s1", "two")) + "\n")
    with pytest.raises(InvalidInputError, match="two different captions"):
        read_done(out, include_final=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "metrics.json").write_text("{}")
    with pytest.raises(ResumeRefusedError, match="no eval_state.json"):
        begin_attempt(legacy, FP, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
