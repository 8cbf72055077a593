"""Judge before you ship: every new model of a collection against the one serving, on held-out data.

- :mod:`shared.evaluation.evalset`: which conversations a collection is judged on (carved from its
  corpus by :mod:`shared.datasets.evalset`, plus golden files under ``<collection>/eval/``).

Nothing heavy is imported here (azure-ai-evaluation and sacrebleu load only when a candidate is scored).
"""

from shared.evaluation.evalset import EvalItem, EvalSet, held_out_conversations, load_eval_set

__all__ = ["EvalItem", "EvalSet", "held_out_conversations", "load_eval_set"]
