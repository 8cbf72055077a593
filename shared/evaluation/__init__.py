"""Judge before you ship: every new model of a collection against the one serving, on held-out data.

- :mod:`shared.evaluation.evalset`: which conversations a collection is judged on (carved from its
  corpus by :mod:`shared.datasets.evalset`, plus golden files under ``<collection>/eval/``);
- :mod:`shared.evaluation.answers`: asking candidate and champion (bounded parallelism, a time
  budget, every answer stored as it comes, so a crashed run resumes);
- :mod:`shared.evaluation.metrics`: azure-ai-evaluation F1 / ROUGE-L, sacrebleu BLEU / chrF, the
  optional judge model;
- :mod:`shared.evaluation.rules`: ``EVAL_RULES`` (must / must-not patterns, JSON, length bounds);
- :mod:`shared.evaluation.decision`: the promotion rule;
- :mod:`shared.evaluation.judge`: the ``evaluation`` ledger record, the report blob, ``judge_candidate``,
  the operators' promote / reject, and the view model of status and the dashboard.

Nothing heavy is imported here (azure-ai-evaluation and sacrebleu load only when answers are scored).
"""

from shared.evaluation.evalset import EvalItem, EvalSet, held_out_conversations, load_eval_set
from shared.evaluation.judge import Verdict, decision_for, evaluation_view, judge_candidate, promote, reject

__all__ = ["EvalItem", "EvalSet", "Verdict", "decision_for", "evaluation_view", "held_out_conversations",
           "judge_candidate", "load_eval_set", "promote", "reject"]
