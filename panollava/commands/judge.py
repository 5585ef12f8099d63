"""``panollava-cli judge``: run :mod:`panollava.judge.run` and print what it found, the failure rate always beside
the score."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from panollava.errors import InvalidInputError
from panollava.judge.cost import count_prompt_tokens
from panollava.judge.pairwise import run_pairwise
from panollava.judge.run import JudgeSettings, run_judge
from panollava.outputs.report_html import format_judge_score

__all__ = ["run_judge_command"]


def _print_block(result: Mapping[str, Any]) -> None:
    block = result["block"]
    if result["picked"] not in ("evaluation folder", "predictions file"):
        print(f"🔎 {result['picked']}")
    print(f"⚖️  judge score {format_judge_score(block)}")
    print(f"   {block['scale']}")
    for key, value in block["dimensions"].items():
        mean = "n/a" if value["mean"] is None else f"{value['mean']:.3f}"
        print(f"   {key:<18} {mean}  (weight {value['weight']:.2f})")
    images = "the panorama attached" if block["images"]["attached"] else "text only (no image)"
    print(f"   {images}; rubric {block['rubric']['name']} sha256 {block['rubric']['sha256'][:12]}; "
          f"{block['cache']['asked']} asked, {block['cache']['reused']} from the cache")
    shown = list(block["failed"].items())
    for sid, reason in shown[:5]:
        print(f"   failed {sid}: {reason}", file=sys.stderr)
    if len(shown) > 5:
        print(f"   ... and {len(shown) - 5} more failures (metrics.json judge.failed)", file=sys.stderr)
    print(f"📁 {result['metrics_path']}" + (f"\n📄 {result['report']}" if result["report"] else ""))


def run_judge_command(
    settings: JudgeSettings,
    eval_dir: list[str] | None = None,
    predictions: list[str] | None = None,
    pairwise: list[str] | None = None,
    output_dir: str | None = None,
    count_tokens: str | None = None,
) -> int:
    """Score finished evaluations with an LLM judge and a rubric (default: 5 dimensions, 1-5 each, weighted, x 20 =
    a 20-100 score) through an OpenAI-compatible endpoint or a local transformers model. Answers are cached in the
    evaluation folder (a rerun asks only what is missing); failed samples are counted, never imputed. Writes the
    'judge' block of metrics.json, judge_scores.jsonl and report.html. Exit status 3 when some samples failed. See
    docs/judge.md.

    Args:
        settings: How the judge is asked (:class:`~panollava.judge.run.JudgeSettings`; each field is a flag).
        eval_dir: Evaluation folders (metrics.json + predictions.jsonl) or run directories.
        predictions: predictions.jsonl files (metrics.json beside each gets the judge block).
        pairwise: Two evaluation folders A and B: compare them caption by caption (random order per sample,
            position bias reported) instead of scoring each.
        output_dir: Folder for judge_pairwise.json (default: the current folder).
        count_tokens: A tokenizer folder: ask nothing, print the calls still to make and their prompt tokens.

    Returns:
        The number of failed samples (``cli`` exits with status 3 when it is not 0).
    """
    eval_dirs, predictions, pairwise = list(eval_dir or []), list(predictions or []), list(pairwise or [])
    if sum(bool(x) for x in (eval_dirs, predictions, pairwise)) != 1:
        raise InvalidInputError("judge: pass exactly one of --eval_dir DIR..., --predictions FILE... or "
                                "--pairwise DIR_A DIR_B")
    if pairwise and len(pairwise) != 2:
        raise InvalidInputError(f"judge: --pairwise takes two evaluation folders, got {len(pairwise)}")
    if count_tokens and pairwise:
        raise InvalidInputError("judge: --count_tokens works with --eval_dir or --predictions, not --pairwise")

    if count_tokens:
        for est in count_prompt_tokens(settings, count_tokens, eval_dirs, predictions):
            tokens = est["prompt_tokens"]
            mean = "n/a" if tokens["mean"] is None else f"{tokens['mean']:.0f}"
            print(f"🧮 {est['folder']}: {est['samples']} samples, {est['cached']} cached, {est['to_ask']} call(s) to "
                  f"make; prompt text {tokens['total']} tokens (mean {mean}, max {tokens['max']}) with the "
                  f"tokenizer {est['tokenizer']}; answers at most {est['max_answer_tokens']} tokens each"
                  + ("; plus the image tokens of each attached panorama (docs/judge.md)" if est["images"] else ""))
        return 0
    if pairwise:
        result = run_pairwise(settings, pairwise[0], pairwise[1], output_dir)
        ci = result["a_win_rate_ci95"]
        rate = "n/a" if result["a_win_rate"] is None else f"{result['a_win_rate']:.3f}"
        if ci:
            rate += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
        print(f"⚖️  A vs B on {result['num_samples']} shared samples: A wins {result['wins_a']}, B wins "
              f"{result['wins_b']}, ties {result['ties']}, failed {result['num_failed']} "
              f"({100 * result['failure_rate']:.1f}%)")
        print(f"   A's win rate (ties count half) {rate}")
        bias = result["position_bias"]
        for name, label in (("overall", "all"), ("a_first", "A shown first"), ("b_first", "B shown first")):
            b = bias[name]
            r = "n/a" if b["first_shown_win_rate"] is None else f"{b['first_shown_win_rate']:.3f}"
            print(f"   position bias ({label}): the first-shown caption won {b['first_shown_wins']} of "
                  f"{b['decisive']} decisive answers ({r})")
        print(f"   order seed {result['order']['seed']}: {result['order']['swapped']} swapped, "
              f"{result['order']['not_swapped']} not")
        for sid, reason in list(result["failed"].items())[:5]:
            print(f"   failed {sid}: {reason}", file=sys.stderr)
        print(f"📁 {result['path']}")
        return int(result["num_failed"])
    results = run_judge(settings, eval_dirs, predictions)
    for result in results:
        _print_block(result)
    return sum(int(r["block"]["num_failed"]) for r in results)
