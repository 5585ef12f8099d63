"""``CaptionMetric``: state gathered across ranks as objects, de-duplicated by sample id, same result as 1
process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from panollava.errors import InvalidInputError
from panollava.metrics import score_captions
from panollava.metrics.metric import CaptionMetric, merge_states, sample_sort_key

SAMPLES = [
    ("s1", "a man rides a bike", ["A man riding a bicycle.", "Someone cycles."]),
    ("s2", "", ["Two dogs in the snow."]),
    ("s3", "a white kitchen", ["A kitchen with white cabinets.", "A white kitchen and a sink."]),
    ("s10", "people in a square", ["People walk across a square."]),
    ("s4", "a red car 🚗 parked", ["A red car parked on the street.", "A parked red car."]),
]


def _rank_batches(world_size: int) -> list[list[tuple[str, str, list[str]]]]:
    """Each sample on exactly one rank (as panollava's evaluation loaders shard), interleaved."""
    return [SAMPLES[rank::world_size] for rank in range(world_size)]


def _update(metric: CaptionMetric, samples, batch_size: int = 2) -> None:
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        metric.update([s[0] for s in chunk], [s[1] for s in chunk], [s[2] for s in chunk])


def test_merge_states_orders_naturally():
    states = [
        {"sample_ids": ["s1", "s3", "s4"], "predictions": ["a", "c", "d"],
         "references": [["x"], ["z"], ["w"]]},
        {"sample_ids": ["s2", "s10"], "predictions": ["b", "e"],
         "references": [["y"], ["v"]]},
    ]
    ids, preds, refs = merge_states(states)
    assert ids == ["s1", "s2", "s3", "s4", "s10"]
    assert preds == ["a", "b", "c", "d", "e"] and refs[4] == ["v"]
    assert sorted(["10", "9", "img_2", "img_10"], key=sample_sort_key) == ["9", "10", "img_2", "img_10"]


def test_merge_states_refuses_any_duplicate():
    states = [
        {"sample_ids": ["s1"], "predictions": ["a cat"], "references": [["x"]]},
        {"sample_ids": ["s1"], "predictions": ["a dog"], "references": [["x"]]},
    ]
    with pytest.raises(InvalidInputError, match="'s1' was scored twice .with different predictions"):
        merge_states(states)
    same = [{"sample_ids": ["s1"], "predictions": ["a cat"], "references": [["x"]]}] * 2
    with pytest.raises(InvalidInputError, match="'s1' was scored twice .identical copies.*exactly once"):
        merge_states(same)


@pytest.fixture(scope="module")
def single_process():
    metric = CaptionMetric(secondary=False)
    _update(metric, SAMPLES)
    values = metric.compute()
    return values, metric.last_scores


def test_single_process_equals_functional_api(single_process):
    values, scores = single_process
    direct = score_captions({s[0]: s[1] for s in SAMPLES}, {s[0]: s[2] for s in SAMPLES}, secondary=False)
    assert scores.corpus == direct.corpus and scores.per_sample == direct.per_sample
    assert set(values) == {k for k, v in direct.corpus.items() if v is not None}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in values.values())
    assert float(values["cider"]) == pytest.approx(direct.corpus["cider"])


def test_two_simulated_ranks_equal_one_process(single_process):
    _, expected = single_process
    ranks = _rank_batches(2)
    metrics = []
    for rank in range(2):
        metric = CaptionMetric(
            secondary=False,
            distributed_available_fn=lambda: True,
            object_gather_fn=lambda obj, rank=rank: [
                obj if r == rank else {
                    "sample_ids": [s[0] for s in ranks[r]],
                    "predictions": [s[1] for s in ranks[r]],
                    "references": [list(s[2]) for s in ranks[r]],
                }
                for r in range(2)
            ],
        )
        _update(metric, ranks[rank], batch_size=2)
        metrics.append(metric)
    for metric in metrics:
        values = metric.compute()
        assert metric.last_scores.corpus == expected.corpus
        assert metric.last_scores.per_sample == expected.per_sample
        assert metric.last_scores.num_samples == len(SAMPLES)
        assert set(values) == {k for k, v in expected.corpus.items() if v is not None}
    # the local state is restored after the synced compute (torchmetrics unsync)
    assert metrics[1].sample_ids == [s[0] for s in ranks[1]]


def test_update_validates_batches():
    metric = CaptionMetric(secondary=False, meteor=False)
    with pytest.raises(InvalidInputError, match="must match"):
        metric.update(["a", "b"], ["x"], [["y"], ["z"]])
    with pytest.raises(InvalidInputError, match="not a string"):
        metric.update(["a"], [None], [["y"]])
    with pytest.raises(InvalidInputError, match="non-empty list"):
        metric.update(["a"], ["x"], [[]])
    metric.update(torch.tensor([7]), ["x"], [["x y"]])
    assert metric.sample_ids == ["7"]


def test_moving_the_metric_keeps_string_states():
    metric = CaptionMetric(secondary=False, meteor=False)
    metric.update(["a"], ["x"], [["x y"]])
    metric.to("cpu").double().float()
    assert metric.sample_ids == ["a"] and metric.references == [["x y"]]


def test_compute_without_samples_says_so():
    metric = CaptionMetric(secondary=False, meteor=False)
    with pytest.warns(UserWarning), pytest.raises(InvalidInputError, match="no samples"):
        metric.compute()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metric = CaptionMetric(secondary=False, meteor=False, tokenizer="python")
        _update(metric, _rank_batches(world_size)[rank], batch_size=2)
        values = metric.compute()
        result = {
            "values": {k: float(v) for k, v in values.items()},
            "metrics": metric.last_scores.to_metrics_json(),
            "per_sample": metric.last_scores.per_sample,
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_real_two_process_gloo_run_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = score_captions({s[0]: s[1] for s in SAMPLES}, {s[0]: s[2] for s in SAMPLES}, secondary=False,
                              meteor=False, tokenizer="python")
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text(encoding="utf-8"))
        assert result["metrics"] == json.loads(json.dumps(expected.to_metrics_json()))
        assert result["per_sample"] == expected.per_sample
        assert result["values"]["cider"] == expected.corpus["cider"]
