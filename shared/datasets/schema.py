"""The row schema: what a conversation line must be, its normal form, and the error kinds.

Input rows follow the ultrachat_200k schema ``{"prompt", "prompt_id", "messages": [{"role",
"content"}, ...]}``; the output form is the same three keys and nothing else (what the
``chat_completion_pipeline`` component reads). ``output_form`` recognises a row already in that
form with C-level passes only (preparation's hot loop); ``normalise_conversation`` normalises
any other row or raises ``LineError`` naming its first problem, one of ``ERROR_KINDS``.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

ROLES = frozenset({"system", "user", "assistant"})
CONVERSATION_KEYS = frozenset({"prompt", "prompt_id", "messages"})
MESSAGE_KEYS = frozenset({"role", "content"})

# Error kinds: one per bad line (the first problem found), with its 1-based line number.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
LINE_TOO_LONG = "line_too_long"
NOT_AN_OBJECT = "not_an_object"
MISSING_MESSAGES = "missing_messages"
MESSAGES_NOT_A_LIST = "messages_not_a_list"
EMPTY_MESSAGES = "empty_messages"
MESSAGE_NOT_AN_OBJECT = "message_not_an_object"
MISSING_ROLE = "missing_role"
UNKNOWN_ROLE = "unknown_role"
MISSING_CONTENT = "missing_content"
CONTENT_NOT_A_STRING = "content_not_a_string"
EMPTY_CONTENT = "empty_content"
SYSTEM_NOT_FIRST = "system_not_first"
NO_USER_TURN = "no_user_turn"
NO_ASSISTANT_TURN = "no_assistant_turn"
INVALID_PROMPT = "invalid_prompt"
INVALID_PROMPT_ID = "invalid_prompt_id"
DUPLICATE = "duplicate"  # counted apart from the invalid lines: the data is fine, just repeated
UNREADABLE_FILE = "unreadable_file"  # corrupt gzip/parquet: reading stops there
TOO_LARGE = "too_large"  # decoded size or decoded/raw ratio above the limits: reading stops there

ERROR_KINDS = (
    INVALID_UTF8, INVALID_JSON, LINE_TOO_LONG, NOT_AN_OBJECT, MISSING_MESSAGES, MESSAGES_NOT_A_LIST,
    EMPTY_MESSAGES, MESSAGE_NOT_AN_OBJECT, MISSING_ROLE, UNKNOWN_ROLE, MISSING_CONTENT,
    CONTENT_NOT_A_STRING, EMPTY_CONTENT, SYSTEM_NOT_FIRST, NO_USER_TURN, NO_ASSISTANT_TURN,
    INVALID_PROMPT, INVALID_PROMPT_ID, DUPLICATE, UNREADABLE_FILE, TOO_LARGE,
)


def short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__)


class LineError(Exception):
    """A line that cannot be used; ``kind`` is one of ERROR_KINDS."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


_get_role = operator.itemgetter("role")
_get_content = operator.itemgetter("content")
_strip = str.strip


def output_form(obj: Any) -> tuple[list[dict[str, str]], list[str], list[str]] | None:
    """``(messages, roles, contents)`` when ``obj`` is a conversation exactly in the output form, else None.

    The common case, checked with a few C-level passes over the message list and no Python
    call per message: exactly the keys prompt, prompt_id (non-empty strings) and messages, every
    message exactly ``{"role", "content"}`` with a known role and already-stripped non-empty
    string content, a user and an assistant turn, a system turn only first. None means "look
    closer": ``normalise_conversation`` then normalises the line or names its problem.
    """
    if type(obj) is not dict or len(obj) != 3:
        return None
    messages = obj.get("messages")
    prompt = obj.get("prompt")
    prompt_id = obj.get("prompt_id")
    if (type(messages) is not list or type(prompt) is not str or type(prompt_id) is not str
            or not prompt_id or not prompt or prompt.isspace()):
        return None
    try:
        roles = list(map(_get_role, messages))  # TypeError/KeyError: a message that is not an object, no role
        contents = list(map(_get_content, messages))
        # str.strip returns the very same object when there is nothing to strip, so the list
        # compares by identity: "already stripped" costs no string comparison (and a
        # non-string content raises TypeError).
        if not (list(map(_strip, contents)) == contents and "" not in contents
                and sum(map(len, messages)) == 2 * len(roles)):  # both keys present: no other key
            return None
        # Every role a user or assistant turn but one system turn first (compared, not hashed:
        # fresh strings would have to be hashed for a set test).
        users, assistants = roles.count("user"), roles.count("assistant")
        others = len(roles) - users - assistants
        if not users or not assistants or (others and (others != 1 or roles[0] != "system")):
            return None
    except (TypeError, KeyError):  # not an object, a missing key, an unhashable role...
        return None
    return messages, roles, contents


def normalise_conversation(obj: Any) -> tuple[str, str, list[dict[str, str]], list[str], list[str], bool,
                                              list[tuple[str, str]] | None]:
    """Check one parsed conversation and return it normalised; raise LineError for the first problem.

    Returns ``(prompt, prompt_id, messages, roles, contents, canonical, unknown_keys)``:
    ``canonical`` says the input already was exactly the output form (the line can be passed
    through), ``unknown_keys`` lists dropped keys for the warnings (or None).

    Normalisation: roles are lower-cased and stripped, content is stripped of surrounding
    whitespace, unknown keys are dropped, a missing prompt is the first user turn and a missing
    prompt_id is the SHA-256 hex of the prompt (ultrachat's own convention).
    """
    fast = output_form(obj)
    if fast is not None:
        messages, roles, contents = fast
        return obj["prompt"], obj["prompt_id"], messages, roles, contents, True, None
    if type(obj) is not dict:
        raise LineError(NOT_AN_OBJECT, f"a line must be a JSON object, got {_type_name(obj)}")
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        if messages is None:
            raise LineError(MISSING_MESSAGES, "no 'messages' list")
        if type(messages) is not list:
            raise LineError(MESSAGES_NOT_A_LIST, f"'messages' must be a list, got {_type_name(messages)}")
        raise LineError(EMPTY_MESSAGES, "'messages' is empty")
    messages_out, roles, contents, unknown = _normalise_messages(messages)
    canonical = messages_out is messages
    if len(obj) != 3 or not obj.keys() <= CONVERSATION_KEYS:
        canonical = False
        if not obj.keys() <= CONVERSATION_KEYS:
            unknown = [("conversation", str(k)) for k in obj if k not in CONVERSATION_KEYS] + (unknown or [])
    prompt = obj.get("prompt")
    if type(prompt) is not str or not prompt or prompt.isspace():
        if prompt is not None and type(prompt) is not str:
            raise LineError(INVALID_PROMPT, f"'prompt' must be a string, got {_type_name(prompt)}")
        prompt = contents[roles.index("user")]
        canonical = False
    prompt_id = obj.get("prompt_id")
    if type(prompt_id) is not str or not prompt_id:
        if prompt_id is not None and type(prompt_id) is not str:
            raise LineError(INVALID_PROMPT_ID, f"'prompt_id' must be a string, got {_type_name(prompt_id)}")
        prompt_id = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
        canonical = False
    return prompt, prompt_id, messages_out, roles, contents, canonical, unknown


def _normalise_messages(messages: list[Any]) -> tuple[list[dict[str, str]], list[str], list[str],
                                                      list[tuple[str, str]] | None]:
    """The full check of a message list, naming the first problem.

    Returns ``(messages, roles, contents, unknown)``; ``messages`` is the input list itself when
    every message already was in normal form, else a new normalised list.
    """
    roles: list[str] = []
    contents: list[str] = []
    unknown: list[tuple[str, str]] = []
    changed = False
    has_user = has_assistant = False
    for index, message in enumerate(messages, 1):
        if type(message) is not dict:
            raise LineError(MESSAGE_NOT_AN_OBJECT, f"message {index} must be an object, got {_type_name(message)}")
        role = message.get("role")
        content = message.get("content")
        if type(role) is not str or role not in ROLES:
            if role is None:
                raise LineError(MISSING_ROLE, f"message {index} has no 'role'")
            normalised = role.strip().lower() if type(role) is str else None
            if normalised not in ROLES:
                raise LineError(UNKNOWN_ROLE, f"message {index}: role {short_repr(role)} is not one of system, user, assistant")
            role = normalised
            changed = True
        if type(content) is not str:
            if content is None:
                raise LineError(MISSING_CONTENT, f"message {index} ({role}) has no 'content'")
            raise LineError(CONTENT_NOT_A_STRING, f"message {index} ({role}): content must be a string, got {_type_name(content)}")
        stripped = content.strip()
        if not stripped:
            raise LineError(EMPTY_CONTENT, f"message {index} ({role}) has empty content")
        if stripped is not content:
            changed = True
        if role == "assistant":
            has_assistant = True
        elif role == "user":
            has_user = True
        elif index != 1:
            raise LineError(SYSTEM_NOT_FIRST, f"message {index} is a system message; only the first may be")
        if len(message) > 2:
            unknown.extend(("message", str(k)) for k in message if k not in MESSAGE_KEYS)
            changed = True
        roles.append(role)
        contents.append(stripped)
    if not has_user:
        raise LineError(NO_USER_TURN, "no user message")
    if not has_assistant:
        raise LineError(NO_ASSISTANT_TURN, "no assistant message")
    out = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)] if changed else messages
    return out, roles, contents, unknown or None


def output_line(raw: bytes) -> bytes:
    """A line already in the output form, with exactly one "\\n" at its end."""
    return raw if raw[-1:] == b"\n" and raw[-2:] != b"\r\n" else raw.rstrip(b"\r\n") + b"\n"

