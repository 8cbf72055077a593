"""List a watched container for the local blob trigger, past blobs the emulator cannot list.

Azurite answers 500 to every listing page that would hold a blob whose name has a character
XML 1.0 cannot carry (U+0001, ...): one such upload would stop the trigger for every blob listed
after it. The blob itself can still be read by its name, so when a page fails the lister finds
the names around the failure with listings the emulator *can* answer:

- the longest run of listable blobs after the last good name (a binary search on the page size);
- the unlistable name itself, character by character: ``startFrom`` (inclusive, and, unlike the
  marker, not echoed in the response) fails exactly when the first blob at or after it is the
  unlistable one, so each character is a binary search over code points (about 21 listings);
- then it lists on from just after that name.

Found names are cached for a minute (keyed by the container, prefix and the good name before
them), so a steady poll costs a few listings more, not a bisection. When the failure does not
behave like a bad name (every listing fails, or the search runs past 1,024 characters) the
listing is reported as stalled, with the last good name, for the caller to say so loudly.
Real Azure percent-encodes such names in listings (``Encoded="true"``), so none of this runs
there.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, ContainerClient

from devhost.blob_names import MAX_BLOB_NAME_CHARS

log = logging.getLogger(__name__)

MAX_PAGE = 5000  # the List Blobs page size limit
MAX_HIDDEN_PER_LISTING = 20
CACHE_TTL_S = 60.0
_LAST_CODE_POINT = 0x10FFFF
_SURROGATES = 0xE000 - 0xD800
_CODE_POINTS = _LAST_CODE_POINT - _SURROGATES  # U+0001..U+10FFFF without the surrogates


def _code_point(index: int) -> str:
    cp = index + 1
    return chr(cp + _SURROGATES if cp >= 0xD800 else cp)


class _QuietStorageLog(logging.Filter):
    """The SDK logs one warning per failed listing page it cannot decode; probes expect those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ContentDecodePolicy" not in record.getMessage()


logging.getLogger("azure.storage.blob._shared.response_handlers").addFilter(_QuietStorageLog())


@dataclasses.dataclass
class ListingResult:
    blobs: list[BlobProperties]
    hidden: list[str]  # names the emulator could not list, found by bisection (their blobs are in ``blobs``)
    stalled: str | None = None  # why listing stopped early; None when the whole container was listed
    last_listed: str | None = None  # the last name listed before the stall


_cache: dict[tuple[str, str, str | None], tuple[float, str]] = {}


class _Lister:
    def __init__(self, container: ContainerClient, prefix: str | None) -> None:
        self.container = container
        self.prefix = prefix
        self.probes = 0

    def page(self, marker: str | None, start_from: str | None, size: int) -> list[BlobProperties] | None:
        """One listing page (no SDK retries); None when the service fails to answer it."""
        self.probes += 1
        try:
            pages = self.container.list_blobs(
                name_starts_with=self.prefix, start_from=start_from, results_per_page=size, retry_total=0
            ).by_page(continuation_token=marker)
            return list(next(pages, []))
        except ResourceNotFoundError:
            raise
        except HttpResponseError:
            return None

    def fails_from(self, marker: str | None, start_from: str) -> bool:
        return self.page(marker, start_from, 1) is None

    def listable_run(self, marker: str | None, start_from: str | None) -> list[BlobProperties]:
        """The longest run of blobs after ``marker`` that lists (a binary search on the page size)."""
        best: list[BlobProperties] = []
        lo, hi = 1, MAX_PAGE
        while lo <= hi:
            mid = (lo + hi) // 2
            got = self.page(marker, start_from, mid)
            if got is None:
                hi = mid - 1
            else:
                best = got
                if len(got) < mid:
                    break  # the run ended before the page filled: nothing longer exists
                lo = mid + 1
        return best

    def unlistable_name(self, marker: str | None, start_from: str | None) -> str | None:
        """The first blob name after ``marker`` (and at or after ``start_from``) that fails to list."""
        floor = start_from or ""
        name = self.prefix or ""

        def fails(candidate: str) -> bool:
            return self.fails_from(marker, max(candidate, floor))

        while len(name) <= MAX_BLOB_NAME_CHARS:
            if not fails(name + "\x01"):
                return name if name and fails(name) else None
            lo, hi = 0, _CODE_POINTS - 1  # the largest code point c with fails(name + c) is the next character
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fails(name + _code_point(mid)):
                    lo = mid
                else:
                    hi = mid - 1
            name += _code_point(lo)
        return None


def list_container(container: ContainerClient, prefix: str | None) -> ListingResult:
    """Every blob under ``prefix`` the trigger should see, also past names the emulator cannot list."""
    lister = _Lister(container, prefix)
    result = ListingResult(blobs=[], hidden=[])
    marker: str | None = None
    start_from: str | None = None
    while True:
        pages = container.list_blobs(name_starts_with=prefix, start_from=start_from, retry_total=0).by_page(
            continuation_token=marker
        )
        try:
            for page in pages:
                page_items = list(page)
                result.blobs.extend(page_items)
                if page_items:
                    result.last_listed = page_items[-1].name
            return result
        except ResourceNotFoundError:
            raise
        except HttpResponseError as exc:
            failure = f"{type(exc).__name__} {exc.status_code}: {str(exc).splitlines()[0][:200]}"
        marker = result.last_listed
        if len(result.hidden) >= MAX_HIDDEN_PER_LISTING:
            result.stalled = f"more than {MAX_HIDDEN_PER_LISTING} unlistable blob names ({failure})"
            return result
        if lister.fails_from(marker, "\U0010ffff"):  # even an empty listing fails: not a blob name
            result.stalled = f"the container cannot be listed ({failure})"
            return result
        run = lister.listable_run(marker, start_from)
        result.blobs.extend(run)
        if run:
            result.last_listed = marker = run[-1].name
        key = (container.container_name, prefix or "", marker)
        cached = _cache.get(key)
        hidden = cached[1] if cached and time.monotonic() - cached[0] < CACHE_TTL_S else None
        if hidden is None:
            hidden = lister.unlistable_name(marker, start_from)
            if hidden is None:
                result.stalled = f"listing fails after {marker!r} and the failing name could not be isolated ({failure})"
                return result
            _cache[key] = (time.monotonic(), hidden)
            log.info("found unlistable blob %r in %s with %d listings", hidden, container.container_name, lister.probes)
        try:
            result.blobs.append(container.get_blob_client(hidden).get_blob_properties())
            result.hidden.append(hidden)
        except ResourceNotFoundError:
            _cache.pop(key, None)  # deleted meanwhile: the next poll lists past it
        start_from = hidden + "\x01"  # inclusive: the first name after it

