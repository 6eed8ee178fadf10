"""Casdoor's ``columns`` parameter of update-user names fields in camelCase or snake_case; both sides read it so."""

from __future__ import annotations


def camel(column: str) -> str:
    """``display_name`` -> ``displayName``; camelCase passes unchanged."""
    head, *rest = column.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def named(columns: str) -> set[str]:
    """The fields ``columns`` names, in camelCase (empty: every field the body has)."""
    return {camel(item.strip()) for item in columns.split(",") if item.strip()}
