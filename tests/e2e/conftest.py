"""End-to-end tier: the real local host, Azurite and local workspace (tiny model, real training). Runs in `make test`, not in `make test-fast`.

Every test collected below this folder gets the markers ``e2e``, ``storage`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)

