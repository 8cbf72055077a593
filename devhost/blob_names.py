"""Blob names that Azure Blob Storage or the local emulator (Azurite) cannot handle, and why.

One rule for ``make upload`` (which refuses such names) and for the local blob trigger (which
keeps its receipts for such blobs under a digest of the name instead of the name itself):

- control characters: Azurite's container listing answers 500 for every listing that would
  include the blob (the XML it writes cannot hold the character), which stalls a poller that
  lists the container; Azure percent-encodes them in listings, but they are unreadable in logs;
- a backslash: Azurite stores it as ``/``, so the stored name is not the uploaded one;
- ``.`` or ``..`` path segments, empty segments, a trailing ``.`` or ``/``: URLs are normalised
  on the way, so the blob cannot be addressed by its name (every request fails authorization
  or is refused);
- more than 1,024 characters (Azure's limit for a blob name).
"""

from __future__ import annotations

import re

MAX_BLOB_NAME_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters XML 1.0 cannot carry: a listing holding one of them fails in the emulator.
UNLISTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a blob name here; None when it can."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_BLOB_NAME_CHARS:
        return f"the name is {len(name)} characters long; Azure Blob Storage allows at most {MAX_BLOB_NAME_CHARS}"
    control = _CONTROL.search(name)
    if control:
        return (
            f"the name holds the control character U+{ord(control.group()):04X} at position {control.start()}: "
            "the storage emulator's container listing fails on it, which stalls the blob trigger for every upload"
        )
    if "\\" in name:
        return "the name holds a backslash: the storage emulator stores it as '/', so the blob would get another name"
    segments = name.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "the name has a '.' or '..' path segment: URLs are normalised, so the blob could not be addressed by its name"
    if "" in segments[:-1]:
        return "the name has an empty path segment ('//' or a leading '/')"
    if name.endswith((".", "/")):
        return "the name ends with '.' or '/', which Azure Blob Storage does not keep"
    return None
