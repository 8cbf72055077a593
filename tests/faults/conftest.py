"""Fault tier: kills processes and stops storage under the real local stack. Runs in `make test-faults` (and CI), not in `make test`.

Every test collected below this folder gets the markers ``faults`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)
