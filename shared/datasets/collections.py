"""Collections: the first folder of an upload's blob name, each with its own fine-tuned model.

``chat-data/support-bot/2026-12-01.jsonl`` (blob ``support-bot/2026-12-01.jsonl`` in the
chat-data container) belongs to collection ``support-bot``; a file at the container root to
``default``. In corpus mode (``TRAINING_MODE=corpus``) a collection's jobs train on all of its
accepted, not retired datasets, and its model is served by name (``model`` on
``/api/v1/chat/completions`` and ``/api/score``).
"""

from __future__ import annotations

import re

from shared.settings import Settings

DEFAULT_COLLECTION = "default"
_MAX_NAME = 40
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")


def collection_of(blob_name: str) -> str:
    """The collection of a blob: its first folder, lower-cased, every run of characters outside
    [a-z0-9] a hyphen (a valid ledger key, tag value and path segment); ``default`` at the root."""
    folder, sep, _ = blob_name.replace("\\", "/").lstrip("/").partition("/")
    if not sep:
        return DEFAULT_COLLECTION
    name = _NOT_NAME_CHARS.sub("-", folder.lower()).strip("-")[:_MAX_NAME].strip("-")
    return name or DEFAULT_COLLECTION


def model_name_for(settings: Settings, collection: str) -> str:
    """The fine-tuned model name of a collection.

    ``COLLECTION_MODEL_NAMES`` wins; else ``default`` keeps the app's model name
    (``FINETUNED_MODEL_NAME`` or ``<base model>-chat-ft``, as before collections) and any other
    collection gets that name followed by ``-<collection>``.
    """
    override = settings.collection_model_names.get(collection)
    if override:
        return str(override)
    if collection == DEFAULT_COLLECTION:
        return settings.model_name
    return f"{settings.model_name}-{collection}"
