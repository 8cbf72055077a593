"""Benchmark: time to evaluate a candidate against its champion on 50 eval conversations.

    .venv/bin/python bench/evaluation.py [--models tiny-random smollm2] [--conversations 50]
                                         [--max-new-tokens 32] [--parallelism 2]

For each local base model (the tiny random model of the tests, and the real SmolLM2-135M-Instruct),
two copies are loaded as "champion" and "candidate" (two models side by side, as two deployments
would be) and, in one run:

- ``baseline``: one call at a time (``collect_answers`` with parallelism 1): every conversation
  answered one after the other by each model;
- ``app``: :func:`shared.evaluation.answers.collect_answers` as ``judge_candidate`` runs it
  (``--parallelism`` calls in flight, every answer appended to the answer store as it arrives: the
  in-memory store here; in the app each answer is also one append-block call to Azurite / Blob Storage);
- ``scoring``: :func:`shared.evaluation.judge.score_answers` with the real evaluators
  (azure-ai-evaluation F1 and ROUGE-L, sacrebleu BLEU and chrF) over both models' answers.

It prints seconds per phase, answers per second, the app/baseline ratio and the RSS of the two
models loaded side by side. Answers are greedy, ``--max-new-tokens`` long at most, generated
in-process with transformers (the same model code the local endpoint server runs), so the figure
is the evaluation's own cost without the HTTP hop.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def eval_items(n: int):
    from shared.evaluation.evalset import item_of

    topics = ["the sea", "a ship", "treasure", "the wind", "a parrot", "rum", "the captain", "an island", "a map", "the crew"]
    items = []
    for i in range(n):
        topic = topics[i % len(topics)]
        messages = [{"role": "user", "content": f"Tell me one thing about {topic} (question {i})."},
                    {"role": "assistant", "content": f"Ahoy matey! {topic.capitalize()} is a fine thing to ask about, arr!"}]
        items.append(item_of(messages, "carved", "bench"))
    return items


def load(kind: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localworkspace.base_model import ensure_base_model
    from shared.settings import load_settings

    folder = ensure_base_model(kind, load_settings(environ={}).local_model_cache)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return tok, model


def answerer(tok, model, max_new_tokens: int):
    import torch

    def answer(messages: list[dict]) -> str:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return answer


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run(kind: str, n: int, max_new_tokens: int, parallelism: int, rounds: int) -> dict[str, float]:
    import torch  # noqa: F401 - imported before the baseline RSS, so the figure is the models' own
    import transformers  # noqa: F401

    from shared.evaluation.answers import AnswerStore, collect_answers
    from shared.evaluation.evalset import EvalSet
    from shared.evaluation.judge import score_answers
    from shared.settings import load_settings

    before = rss_mb()
    champion, candidate = load(kind), load(kind)
    two_models_mb = rss_mb() - before
    answer = {"champion": answerer(*champion, max_new_tokens), "candidate": answerer(*candidate, max_new_tokens)}
    items = eval_items(n)
    answer["champion"](items[0].prompt)  # warm-up (the first generate is slow), as a served model is warm
    answer["candidate"](items[0].prompt)

    def sequential() -> float:
        # the same code with one call in flight (a worker thread, as the app's calls run: torch in the
        # main thread behaves differently under load, which would not be a fair baseline)
        t0 = time.perf_counter()
        got, complete = collect_answers(items, answer, AnswerStore(None), parallelism=1, budget_s=3600)
        assert complete and len(got) == 2 * len(items)
        return time.perf_counter() - t0

    def bounded() -> tuple[float, dict]:
        t0 = time.perf_counter()
        got, complete = collect_answers(items, answer, AnswerStore(None), parallelism=parallelism, budget_s=3600)
        assert complete and len(got) == 2 * len(items)
        return time.perf_counter() - t0, got

    # alternating rounds (baseline, app, app, baseline), best of two each: drift on a shared machine hits both alike
    base_1 = sequential()
    app_1, answers = bounded()
    app_2, _ = bounded()
    base_2 = sequential() if rounds > 1 else base_1
    baseline, app = min(base_1, base_2), min(app_1, app_2)

    t0 = time.perf_counter()
    figures, _ = score_answers(load_settings(environ={}), EvalSet("bench", tuple(items), "bench", ()), answers,
                               ["candidate", "champion"])
    scoring = time.perf_counter() - t0
    return {"baseline_s": baseline, "app_s": app, "scoring_s": scoring, "two_models_mb": two_models_mb,
            "rouge_l": figures["candidate"].get("rouge_l", 0.0), "threads": threading.active_count()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny-random", "smollm2"])
    p.add_argument("--conversations", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="2: baseline and app measured twice each, alternating")
    args = p.parse_args()
    print(f"{args.conversations} eval conversations x 2 models (champion + candidate), greedy, <= {args.max_new_tokens} "
          f"new tokens, {os.cpu_count()} CPUs, parallelism {args.parallelism}")
    print(f"{'model':<12} {'baseline s':>10} {'app s':>8} {'app/base':>8} {'answers/s':>9} {'scoring s':>9} "
          f"{'total s':>8} {'2 models MB':>11}")
    for kind in args.models:
        r = run(kind, args.conversations, args.max_new_tokens, args.parallelism, args.rounds)
        total = r["app_s"] + r["scoring_s"]
        print(f"{kind:<12} {r['baseline_s']:>10.1f} {r['app_s']:>8.1f} {r['app_s'] / r['baseline_s']:>8.2f} "
              f"{2 * args.conversations / r['app_s']:>9.2f} {r['scoring_s']:>9.2f} {total:>8.1f} {r['two_models_mb']:>11.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
