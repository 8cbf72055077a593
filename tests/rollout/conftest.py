"""Rollout tier: a collection's versions judged, canaried, promoted, rejected and rolled back on the real
local stack with the real SmolLM2 model. `make test-rollout` (and CI); not in `make test`.

Every test collected below this folder gets the markers ``rollout``, ``storage`` here
(``TIER_MARKERS`` in tests/support.py).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)
