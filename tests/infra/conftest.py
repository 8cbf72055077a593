"""Infra tier: infra/*.bicep, azure.yaml and the post-deploy script checked against published schemas (and checkov). Runs in `make test` and `make test-fast`.

Every test collected below this folder gets the markers ``infra`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)
