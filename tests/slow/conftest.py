"""Slow tier: minutes long (a real SmolLM2 fine-tune). Runs in `make test-slow` (and CI), not in `make test`.

Every test collected below this folder gets the markers ``slow``, ``storage`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)

