"""Scoring, rules and the promotion rule of shared.evaluation, with the real evaluators (no stand-ins)."""

from __future__ import annotations

import threading
import time

import pytest

from shared.evaluation.answers import AnswerStore, collect_answers
from shared.evaluation.decision import decide
from shared.evaluation.evalset import item_of
from shared.evaluation.metrics import aggregate, item_scores
from shared.evaluation.rules import check_rules, parse_rules, rules_for
from shared.settings import SettingsError
from tests.support import make_settings

REFS = ["Ahoy matey! The capital of France is Paris, arr!", "Ahoy matey! Two plus two is four, arr!",
        "Ahoy matey! Water boils at 100 degrees Celsius, arr!"]


def scores(answers: list[str | None]) -> dict:
    return aggregate(answers, REFS, [item_scores(a, r) for a, r in zip(answers, REFS, strict=True)])


# --------------------------------------------------------------------------- metrics


def test_the_real_evaluators_rank_a_right_answer_above_a_wrong_one() -> None:
    exact = scores(REFS)
    close = scores(["Ahoy matey! Paris is the capital of France, arr!", "Ahoy! Two plus two is four.",
                    "Water boils at 100 degrees, arr!"])
    unrelated = scores(["I like turtles."] * 3)
    for metric in ("f1", "rouge_l", "bleu", "chrf"):
        assert exact[metric] == pytest.approx(1.0, abs=1e-6), metric
        assert exact[metric] > close[metric] > unrelated[metric] >= 0.0, metric
    assert unrelated["f1"] == 0.0 and unrelated["rouge_l"] == 0.0
    assert exact["items"] == 3 and exact["errors"] == 0


def test_a_failed_answer_scores_zero_and_is_counted() -> None:
    figures = scores([REFS[0], None, REFS[2]])
    assert figures["errors"] == 1
    assert item_scores(None, REFS[1]) == {"f1": 0.0, "rouge_l": 0.0, "bleu": 0.0, "chrf": 0.0}
    assert figures["f1"] == pytest.approx(2 / 3, abs=1e-6)


def test_an_eval_item_answers_from_everything_before_the_last_assistant_turn() -> None:
    messages = [{"role": "system", "content": "be a pirate"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ahoy"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "four, arr"}]
    item = item_of(messages, "carved", "c-1")
    assert item is not None and item.reference == "four, arr" and item.prompt == messages[:4]
    assert item.query == "2+2?" and item.messages == messages and len(item.id) == 32
    assert item_of([{"role": "user", "content": "hi"}], "golden", "d") is None


# --------------------------------------------------------------------------- rules


def test_rules_must_must_not_json_and_length() -> None:
    rules = rules_for({"*": [{"must_not": "(?i)as an ai"}],
                       "bot": [{"must": "arr!", "name": "pirate"}, {"json": True, "min_pass_rate": 0.5},
                               {"min_chars": 3, "max_chars": 20}]}, "bot")
    assert [r.name for r in rules] == ["must_not /(?i)as an ai/", "pirate", "valid JSON", "length 3..20 chars"]
    results = check_rules(rules, [("a", '"ok, arr!"'), ("b", "As an AI, arr!"), ("c", "{}"), ("d", None)])
    assert results["must_not /(?i)as an ai/"] == {"kind": "must_not", "passed": False, "pass_rate": 0.5, "min_pass_rate": 1.0,
                                                  "kept": 2, "total": 4, "failures": ["b", "d"]}
    assert results["pirate"]["failures"] == ["c", "d"] and not results["pirate"]["passed"]
    assert results["valid JSON"]["passed"] and results["valid JSON"]["failures"] == ["b", "d"]  # 2/4 >= 0.5
    assert results["length 3..20 chars"]["failures"] == ["c", "d"]
    assert rules_for({"bot": [{"must": "x"}]}, "other") == ()


@pytest.mark.parametrize(("raw", "message"), [
    ({"bot": {"must": "x"}}, r"EVAL_RULES\['bot'\] must be a list"),
    ({"bot": [{"must": "("}]}, r"EVAL_RULES\['bot'\]\[0\]: must='\(' is not a valid regular expression"),
    ({"bot": [{"must": "a"}, {"must_not": "b", "json": True}]}, r"\[1\]: exactly one of"),
    ({"bot": [{"must": "a", "colour": 1}]}, r"\[0\]: unknown key"),
    ({"bot": [{"min_chars": 9, "max_chars": 3}]}, r"min_chars 9 is above max_chars 3"),
    ({"bot": [{"json": True, "min_pass_rate": 2}]}, r"min_pass_rate=2 must be a number between 0 and 1"),
    ({"bot": [{"must": "a"}, {"must": "a"}]}, r"rule names must be distinct"),
])
def test_bad_rules_name_the_collection_and_rule(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rules(raw)


def test_bad_evaluation_settings_fail_fast() -> None:
    with pytest.raises(SettingsError, match=r"EVAL_RULES\['x'\]\[0\]"):
        make_settings(EVAL_RULES='{"x": [{"must": "["}]}')
    with pytest.raises(SettingsError, match="EVAL_PRIMARY_METRIC='judge_similarity'.*need EVAL_JUDGE_ENDPOINT"):
        make_settings(EVAL_PRIMARY_METRIC="judge_similarity")
    with pytest.raises(SettingsError, match="EVAL_JUDGE_ENDPOINT and EVAL_JUDGE_MODEL"):
        make_settings(EVAL_JUDGE_ENDPOINT="http://127.0.0.1:9/v1")
    with pytest.raises(SettingsError, match=r"EVAL_FRACTION=0.95 must be .* below 1 - TEST_FRACTION"):
        make_settings(EVAL_FRACTION="0.95")
    with pytest.raises(SettingsError, match=r"EVAL_FLOORS\['meteor'\]"):
        make_settings(EVAL_FLOORS='{"meteor": 0.1}')
    judged = make_settings(EVAL_JUDGE_ENDPOINT="http://127.0.0.1:9/v1", EVAL_JUDGE_MODEL="judge",
                           EVAL_PRIMARY_METRIC="judge_similarity")
    assert judged.eval_primary_metric == "judge_similarity"


# --------------------------------------------------------------------------- the promotion rule

RULES_OK = {"pirate": {"passed": True, "kept": 3, "total": 3, "min_pass_rate": 1.0, "failures": []}}


def test_promoted_when_not_worse_than_the_champion_beyond_the_margin() -> None:
    champion = {"items": 50, "rouge_l": 0.40}
    at_margin = decide({"items": 50, "rouge_l": 0.38}, champion, RULES_OK, primary="rouge_l", margin=0.02, floors={})
    assert at_margin.promote and "rouge_l 0.3800 vs champion 0.4000 (-0.0200, margin 0.0200)" in at_margin.reason
    beyond = decide({"items": 50, "rouge_l": 0.3799}, champion, RULES_OK, primary="rouge_l", margin=0.02, floors={})
    assert not beyond.promote and beyond.reason.startswith("rejected: worse than the champion beyond the margin")
    better = decide({"items": 50, "rouge_l": 0.55}, champion, {}, primary="rouge_l", margin=0.0, floors={})
    assert better.promote


def test_a_broken_rule_rejects_whatever_the_metric() -> None:
    broken = {"pirate": {"passed": False, "kept": 2, "total": 3, "min_pass_rate": 1.0, "failures": ["abcdef0123456789"]}}
    verdict = decide({"items": 3, "rouge_l": 0.9}, {"items": 3, "rouge_l": 0.1}, broken, primary="rouge_l", margin=0.02, floors={})
    assert not verdict.promote and "rule 'pirate' kept by 2/3 answers (needs 100%; e.g. abcdef012345)" in verdict.reason
    assert "worse than the champion" not in verdict.reason


def test_a_rejection_names_the_broken_rule_and_the_worse_metric_both() -> None:
    broken = {"pirate": {"passed": False, "kept": 1, "total": 3, "min_pass_rate": 0.8, "failures": ["abcdef0123456789"]}}
    verdict = decide({"items": 3, "rouge_l": 0.1}, {"items": 3, "rouge_l": 0.4}, broken, primary="rouge_l", margin=0.02, floors={})
    assert not verdict.promote
    assert verdict.reason == ("rejected: rule 'pirate' kept by 1/3 answers (needs 80%; e.g. abcdef012345); worse than "
                              "the champion beyond the margin: rouge_l 0.1000 vs champion 0.4000 (-0.3000, margin 0.0200)")
    first = decide({"items": 3, "rouge_l": 0.01}, None, broken, primary="rouge_l", margin=0.02, floors={"rouge_l": 0.05})
    assert "rule 'pirate'" in first.reason and "first version below the floors: rouge_l 0.0100 < floor 0.0500" in first.reason


def test_the_first_version_meets_absolute_floors() -> None:
    ok = decide({"items": 5, "rouge_l": 0.3, "f1": 0.2}, None, RULES_OK, primary="rouge_l", margin=0.02,
                floors={"rouge_l": 0.05, "f1": 0.1})
    assert ok.promote and "first version meets the floors" in ok.reason
    low = decide({"items": 5, "rouge_l": 0.3, "f1": 0.05}, None, RULES_OK, primary="rouge_l", margin=0.02,
                 floors={"rouge_l": 0.05, "f1": 0.1})
    assert not low.promote and "f1 0.0500 < floor 0.1000" in low.reason
    unmeasured = decide({"items": 5, "rouge_l": 0.3}, None, {}, primary="rouge_l", margin=0.02, floors={"judge_similarity": 3})
    assert not unmeasured.promote


def test_no_eval_conversations_promotes_unjudged() -> None:
    verdict = decide({"items": 0, "errors": 0}, {"items": 0}, {}, primary="rouge_l", margin=0.02, floors={"rouge_l": 0.5})
    assert verdict.promote and "unjudged" in verdict.reason


# --------------------------------------------------------------------------- collecting answers


def _items(n: int):
    return [item_of([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], "carved", "c")
            for i in range(n)]


def test_answers_are_asked_with_bounded_parallelism_and_stored_as_they_come() -> None:
    items = _items(12)
    lock, live, peak = threading.Lock(), [0], [0]

    def slow(messages: list[dict]) -> str:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02)
        with lock:
            live[0] -= 1
        if messages[-1]["content"] == "q3":
            raise RuntimeError("deployment returned 500")
        return "answer to " + messages[-1]["content"]

    store = AnswerStore(None)
    answers, complete = collect_answers(items, {"candidate": slow, "champion": slow}, store, parallelism=3, budget_s=60)
    assert complete and len(answers) == 24 and peak[0] == 3
    assert answers[("candidate", items[3].id)]["error"] == "RuntimeError: deployment returned 500"
    assert answers[("champion", items[0].id)]["answer"] == "answer to q0"
    assert len(store.load()) == 24  # every answer is in the store, not only in memory


def test_the_time_budget_stops_asking_and_a_later_call_asks_only_for_what_is_missing() -> None:
    items = _items(10)
    calls: list[str] = []
    now = [0.0]

    def answer(messages: list[dict]) -> str:
        calls.append(messages[-1]["content"])
        now[0] += 1.0  # each answer takes one second of the fake clock
        return "x"

    store = AnswerStore(None)
    _, complete = collect_answers(items, {"candidate": answer}, store, parallelism=1, budget_s=4, clock=lambda: now[0])
    assert not complete and len(calls) == 4
    answers, complete = collect_answers(items, {"candidate": answer}, store, parallelism=1, budget_s=100, clock=lambda: now[0])
    assert complete and len(calls) == 10 and len(set(calls)) == 10 and len(answers) == 10


# --------------------------------------------------------------------------- the optional judge model


def test_a_configured_judge_grades_similarity_and_relevance_and_an_outage_leaves_the_offline_metrics() -> None:
    from shared.evaluation.evalset import EvalSet
    from shared.evaluation.judge import score_answers
    from shared.evaluation.metrics import judge_config
    from tests.fakes.judge import judge_server

    assert judge_config(make_settings()) is None
    items = [item_of([{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": "Paris"}], "golden", "g")
             for i in range(2)]
    evalset = EvalSet("bot", tuple(items), None, ("g",))
    answers = {("candidate", items[0].id): {"answer": "Paris"}, ("candidate", items[1].id): {"answer": "Rome"}}
    with judge_server(good_word="Rome") as judge:
        s = make_settings(EVAL_JUDGE_ENDPOINT=judge.base_url, EVAL_JUDGE_MODEL="judge-model", EVAL_JUDGE_API_KEY="k1")
        figures, rows = score_answers(s, evalset, answers, ["candidate"])
        assert len(judge.requests) == 5 and {r["model"] for r in judge.requests} == {"judge-model"}  # a probe + 2 x 2
        assert {r["path"] for r in judge.requests} == {"/v1/chat/completions"}
        assert all(r["authorization"] == "Bearer k1" for r in judge.requests)
        assert [row["candidate"]["scores"]["judge_similarity"] for row in rows] == [1.0, 5.0]
        assert figures["candidate"]["judge_similarity"] == 3.0 and figures["candidate"]["judge_relevance"] == 3.0
        judge.failing = True
        seen, t0 = len(judge.requests), time.monotonic()
        figures, rows = score_answers(s, evalset, answers, ["candidate"])
        assert len(judge.requests) == seen + 1 and time.monotonic() - t0 < 15  # the probe only, no retries
        assert "judge_similarity" not in figures["candidate"] and figures["candidate"]["rouge_l"] == 0.5
        assert "InternalServerError" in figures["candidate"]["judge_error"]
