"""Field checks shared by the request parsers: each error names the field it is about."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequestError


def required(data: Mapping[str, Any], field: str) -> Any:
    if field not in data or data[field] is None:
        raise BadRequestError(
            f"missing required parameter: '{field}'", code="missing_required_parameter", param=field
        )
    return data[field]


def type_error(field: str, expected: str) -> BadRequestError:
    return BadRequestError(f"'{field}' must be {expected}", code="invalid_type", param=field)


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32


def chat_messages(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``messages``, checked: a non-empty array of objects with a string role and string or
    part-list content."""
    messages = required(data, "messages")
    if not isinstance(messages, list) or not messages:
        raise type_error("messages", "a non-empty array of message objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise type_error(f"messages[{i}]", "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise type_error(f"messages[{i}].role", "a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise type_error(f"messages[{i}].content", "a string or an array of content parts")
    return messages
