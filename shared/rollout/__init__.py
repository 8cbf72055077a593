"""A new version of a model deployed beside the one serving, in the same endpoint: judged against
it (:mod:`shared.evaluation`), canaried on live traffic, then promoted or rolled back by itself.

- :mod:`shared.rollout.flow`: the ``rollout`` records and their steps (:func:`begin_candidate`,
  :func:`advance`, :func:`advance_all`);
- :mod:`shared.rollout.answers`: the answer callables, one per deployment of the endpoint;
- :mod:`shared.rollout.canary`: the canary's regression rule.
"""

from shared.rollout.flow import (
    SUMMARY_KEYS,
    advance,
    advance_all,
    begin_candidate,
    deployment_name_for,
    roll_back_in_endpoint,
)

__all__ = ["SUMMARY_KEYS", "advance", "advance_all", "begin_candidate", "deployment_name_for", "roll_back_in_endpoint"]
