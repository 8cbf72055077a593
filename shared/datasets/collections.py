"""Collections: the first folder of an upload's blob name, each with its own fine-tuned model.

``chat-data/support-bot/2026-12-01.jsonl`` (blob ``support-bot/2026-12-01.jsonl`` in the
chat-data container) belongs to collection ``support-bot``; a file at the container root to
``default``. A folder name must already be canonical (issue 26.3: lower-case letters and
digits in hyphen-separated runs, at most 40 characters, see :func:`folder_problem`): ``Support_Bot/``,
``support.bot/`` or ``SUPPORT BOT/`` are refused with that reason, never folded into
``support-bot`` where a writer of one folder would train another's model. In corpus mode (``TRAINING_MODE=corpus``) a collection's jobs train on all of its
accepted, not retired datasets, and its model is served by name (``model`` on
``/api/v1/chat/completions`` and ``/api/score``).
"""

from __future__ import annotations

import re

from shared.settings import Settings

DEFAULT_COLLECTION = "default"
_MAX_NAME = 40
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_CANONICAL_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class FolderNameError(ValueError):
    """A blob's first folder is not a canonical collection name (the message says why and what would be)."""


def _first_folder(blob_name: str) -> str | None:
    folder, sep, _ = blob_name.replace("\\", "/").lstrip("/").partition("/")
    return folder if sep else None


def folder_problem(blob_name: str) -> str | None:
    """Why the blob's first folder cannot be a collection name, or None when it is one (or at the root).

    A collection name is the folder exactly as written: lower-case ASCII letters and digits,
    single hyphens between them, at most 40 characters. Nothing is folded, so two folders are
    never one collection.
    """
    folder = _first_folder(blob_name)
    if folder is None:
        return None
    if len(folder) <= _MAX_NAME and _CANONICAL_NAME.fullmatch(folder):
        return None
    shown = repr(folder if len(folder) <= 80 else folder[:77] + "...")
    if len(folder) > _MAX_NAME:
        why = f"it is {len(folder)} characters long, more than {_MAX_NAME}"
    else:
        why = "only lower-case letters a-z, digits and single hyphens between them are allowed"
    folded = _NOT_NAME_CHARS.sub("-", folder.lower()).strip("-")[:_MAX_NAME].strip("-")
    hint = f" (e.g. {folded!r}: upload there if that is the collection you mean)" if folded else ""
    return f"folder {shown} is not a collection name: {why}{hint}; the upload is refused, not merged into another collection"


def canonical_collection_of(blob_name: str) -> str:
    """The collection of a new upload: its first folder exactly as written, ``default`` at the root;
    raises FolderNameError for a folder that is not already a canonical name."""
    problem = folder_problem(blob_name)
    if problem:
        raise FolderNameError(problem)
    return _first_folder(blob_name) or DEFAULT_COLLECTION


def collection_of(blob_name: str) -> str:
    """The collection name a blob's folder folds to (lower-cased, runs outside [a-z0-9] a hyphen,
    40 characters; ``default`` at the root). Only for records made before folder names were
    checked (they carry no ``collection``); new uploads use :func:`canonical_collection_of`."""
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
