"""Scores of one model's answers against the eval set's reference answers.

Offline, no download (azure-ai-evaluation's BLEU/GLEU/METEOR call ``nltk.download`` at first use,
which cannot work without internet, so they are not used):

- ``f1``: azure-ai-evaluation ``F1ScoreEvaluator`` (token overlap), mean over items, 0..1;
- ``rouge_l``: azure-ai-evaluation ``RougeScoreEvaluator(RougeType.ROUGE_L)`` F1, mean, 0..1;
- ``bleu``, ``chrf``: sacrebleu's corpus BLEU and chrF over all items, scaled to 0..1.

With a judge model configured (``EVAL_JUDGE_ENDPOINT``, ``EVAL_JUDGE_MODEL``, any OpenAI-compatible
endpoint): ``judge_similarity`` and ``judge_relevance`` from azure-ai-evaluation's
``SimilarityEvaluator`` / ``RelevanceEvaluator``, means on their 1..5 scale.

A failed answer (the call raised) scores 0 on every metric and is counted in ``errors``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings

OFFLINE_METRICS = ("f1", "rouge_l", "bleu", "chrf")
JUDGE_METRICS = ("judge_similarity", "judge_relevance")
METRICS = OFFLINE_METRICS + JUDGE_METRICS


@functools.lru_cache(maxsize=1)
def _offline_evaluators() -> tuple[Any, Any]:
    from azure.ai.evaluation import F1ScoreEvaluator, RougeScoreEvaluator, RougeType

    return F1ScoreEvaluator(), RougeScoreEvaluator(rouge_type=RougeType.ROUGE_L)


def judge_config(settings: Settings) -> dict[str, Any] | None:
    """azure-ai-evaluation's ``OpenAIModelConfiguration`` for the judge, or None when not configured."""
    if not (settings.eval_judge_endpoint and settings.eval_judge_model):
        return None
    return {"type": "openai", "base_url": settings.eval_judge_endpoint, "model": settings.eval_judge_model,
            "api_key": settings.eval_judge_api_key or "none"}


PROBE_TIMEOUT_S = 20.0


def probe_judge(judge: dict[str, Any]) -> str | None:
    """One cheap call to the judge with no retries (None when it answers, else why not).

    azure-ai-evaluation retries a failing judge call up to 10 times with back-off (minutes per
    call); an evaluation probes first, so a judge outage costs seconds and leaves the offline metrics.
    """
    from openai import OpenAI

    client = OpenAI(base_url=judge["base_url"], api_key=judge["api_key"], max_retries=0, timeout=PROBE_TIMEOUT_S)
    try:
        client.chat.completions.create(model=judge["model"], max_tokens=1,
                                       messages=[{"role": "user", "content": "Reply with the digit 1."}])
    except Exception as exc:  # noqa: BLE001 - any failure means: judge not usable now
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def item_scores(response: str | None, reference: str) -> dict[str, float]:
    """Per-item offline scores (the report lists them; the aggregates come from :func:`aggregate`)."""
    if response is None:
        return {"f1": 0.0, "rouge_l": 0.0, "bleu": 0.0, "chrf": 0.0}
    import sacrebleu

    f1, rouge = _offline_evaluators()
    return {
        "f1": float(f1(response=response, ground_truth=reference)["f1_score"]),
        "rouge_l": float(rouge(response=response, ground_truth=reference)["rouge"]),  # ROUGE-L F1
        "bleu": sacrebleu.sentence_bleu(response, [reference]).score / 100.0,
        "chrf": sacrebleu.sentence_chrf(response, [reference]).score / 100.0,
    }


def judge_scores(judge: dict[str, Any], query: str, response: str | None, reference: str) -> dict[str, float | None]:
    """The judge model's similarity and relevance (1..5) of one answer; None where the judge gave none."""
    if response is None:
        return {"judge_similarity": 1.0, "judge_relevance": 1.0}  # the lowest grade: no answer at all
    similarity, relevance = _judge_evaluators(tuple(sorted(judge.items())))
    out: dict[str, float | None] = {}
    for key, evaluator, kwargs in (("judge_similarity", similarity, {"ground_truth": reference}), ("judge_relevance", relevance, {})):
        result = evaluator(query=query, response=response, **kwargs)
        value = result.get(key.removeprefix("judge_"))
        out[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return out


@functools.lru_cache(maxsize=4)
def _judge_evaluators(config: tuple[tuple[str, Any], ...]) -> tuple[Any, Any]:
    from azure.ai.evaluation import RelevanceEvaluator, SimilarityEvaluator

    model_config: Any = dict(config)
    return SimilarityEvaluator(model_config), RelevanceEvaluator(model_config)


def aggregate(responses: Sequence[str | None], references: Sequence[str], per_item: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """One model's figures over the eval set: means of the per-item scores, corpus BLEU and chrF."""
    import sacrebleu

    n = len(references)
    out: dict[str, Any] = {"items": n, "errors": sum(1 for r in responses if r is None)}
    if not n:
        return out
    for key in ("f1", "rouge_l", *JUDGE_METRICS):
        values = [s[key] for s in per_item if s.get(key) is not None]
        if values:
            out[key] = round(sum(values) / len(values), 6)  # type: ignore[arg-type]
    hyps = [r if r is not None else "" for r in responses]
    out["bleu"] = round(sacrebleu.corpus_bleu(hyps, [list(references)]).score / 100.0, 6)
    out["chrf"] = round(sacrebleu.corpus_chrf(hyps, [list(references)]).score / 100.0, 6)
    out["mean_chars"] = round(sum(len(h) for h in hyps) / n, 1)
    return out
