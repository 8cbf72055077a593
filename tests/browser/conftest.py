"""Browser tier: the dashboard in headless Chromium (Playwright) over the real stack. Runs in `make test-browser` (and CI).

Every test collected below this folder gets the markers ``browser``, ``e2e``, ``storage`` here, so the
Makefile's ``-m`` expressions select tiers by folder (the markers are ``TIER_MARKERS`` in tests/support.py; tests/unit/test_tiers.py checks it).
"""

from tests.support import mark_tier

pytest_itemcollected = mark_tier(__file__)
