"""An LLM judge beside the n-gram metrics: rubric scores of finished evaluations (``panollava-cli judge``).

- :mod:`panollava.judge.rubric`: rubric files (dimensions, weights, prompt), identified by their sha256;
- :mod:`panollava.judge.protocol`: the chat messages, the JSON schema and the validation of an answer;
- :mod:`panollava.judge.backends`: an OpenAI-compatible endpoint (the ``openai`` client) or a local model;
- :mod:`panollava.judge.run`: the resumable run over evaluation folders (settings, cache, concurrency);
- :mod:`panollava.judge.pairwise`: A vs B with the judge's position bias;
- :mod:`panollava.judge.cost`: the calls still to make and their prompt tokens (``--count_tokens``);
- :mod:`panollava.judge.scores`: reading the scores back (for ``compare``).

docs/judge.md explains the command, serving a judge with vLLM, the cost, and what the numbers mean. Importing the
package is light: the backends' libraries load when a backend is built.
"""

from panollava.judge.scores import JudgeScores, judge_identity_key, judge_sample_scores, judge_scores_from_metrics

__all__ = ["JudgeScores", "judge_identity_key", "judge_sample_scores", "judge_scores_from_metrics"]
