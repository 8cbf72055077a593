"""Integration tier: longer scenarios on the real local host, Azurite and local workspace (tiny model, real
training): corpus mode, the janitor's timer, deployment with events delivered and lost, the local workspace's
job -> event -> register -> deploy -> score -> delete. Runs in `make test-integration` (and CI), not in `make test`,
whose e2e tier keeps the mission end to end (tests/e2e).

Every test collected below this folder gets the markers ``integration``, ``e2e``, ``storage`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)
