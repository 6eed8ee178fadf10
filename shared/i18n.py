"""Errors in the caller's language: which language ``Accept-Language`` asks for, and the message catalogue.

An error's description is written in English as a template with named fields (``MinidoorError.message`` and
``.params``, see ``shared/errors.py``). The English template is the msgid of a gettext catalogue, one ``.po`` file
per language under ``shared/locale/<lang>/LC_MESSAGES/minidoor.po``, read once at start by Babel
(``load_catalogues``). A translation is a ``.po`` entry, its ``msgstr`` the same template in that language with the
same fields. A field a translator writes ``{name!t}`` is translated too, by the entry with ``msgctxt "term"`` whose
msgid is its value (an English word a template takes, like ``update`` in "a user may only {action} itself").

Only the gateway translates, and only when it renders an error: the success path never looks at the header, and a
language nobody asks for costs nothing. Errors raised in the worker or the user store cross to the gateway with
their template and fields (``LoginFailed``, ``ErrorBody``); one from a sender that predates them is translated by
its description when that has no fields.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

from shared.errors import MinidoorError, Param

#: The language of the templates themselves; every other language needs a catalogue.
DEFAULT_LANGUAGE = "en"
#: The languages with a catalogue, by their primary subtag (``zh`` is Simplified Chinese: zh, zh-CN, zh-Hans, ...).
LANGUAGES = ("zh",)
DOMAIN = "minidoor"
#: A ``msgctxt`` that marks a word a template's ``{field!t}`` translates, not a template.
TERM_CONTEXT = "term"
#: Language ranges read from one header; a longer list is cut (the header is the client's to make as long as it likes).
_MAX_RANGES = 32


def preferred_language(header: str | None, languages: tuple[str, ...] = LANGUAGES) -> str:
    """The language of ``languages`` or ``DEFAULT_LANGUAGE`` that ``Accept-Language`` (RFC 9110 §12.5.4) prefers:
    the highest q-value, the earlier range on a tie. A range counts for a language by its primary subtag (``zh``,
    ``zh-CN`` and ``zh-Hans`` are all ``zh``), ``*`` for a language no range names; a q-value of 0 refuses. No
    header, a header naming nothing we speak, or one that refuses everything is the default."""
    if not header:
        return DEFAULT_LANGUAGE
    named: dict[str, tuple[float, int]] = {}
    wildcard = (0.0, _MAX_RANGES)
    for position, item in enumerate(header.split(",", _MAX_RANGES)[:_MAX_RANGES]):
        tag, _, rest = item.partition(";")
        tag = tag.strip().lower()
        q = _quality(rest)
        if not tag or q is None:
            continue
        if tag == "*":
            wildcard = max(wildcard, (q, position), key=lambda ranked: ranked[0])
            continue
        primary = tag.partition("-")[0]
        if primary not in named or q > named[primary][0]:
            named[primary] = (q, position)
    best, best_rank = DEFAULT_LANGUAGE, (0.0, 0)
    for language in (DEFAULT_LANGUAGE, *languages):
        q, position = named.get(language, wildcard)
        if q > best_rank[0] or (q == best_rank[0] and q > 0 and position < best_rank[1]):
            best, best_rank = language, (q, position)
    return best


def _quality(params: str) -> float | None:
    """The ``q`` of a range's parameters, 1 when absent; ``None`` for a value that is not a qvalue."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() != "q":
            continue
        try:
            q = float(value.strip())
        except ValueError:
            return None
        return q if 0 <= q <= 1 else None
    return 1.0


class _Formatter(string.Formatter):
    """``str.format`` plus the conversion ``!t``: the field's value as a term of the catalogue."""

    def __init__(self, terms: Mapping[str, str]) -> None:
        self._terms = terms

    def convert_field(self, value: object, conversion: str | None) -> object:
        if conversion == "t":
            return self._terms.get(str(value), value)
        return super().convert_field(value, conversion)


@dataclass(frozen=True)
class Catalogue:
    """One language's templates by their English msgid, and its terms."""

    language: str
    messages: Mapping[str, str]
    terms: Mapping[str, str] = field(default_factory=dict)

    def translate(self, message: str, params: Mapping[str, Param]) -> str | None:
        """``message`` with ``params`` in this language; ``None`` when the catalogue lacks it (or its entry does not
        fit the fields it is given, which the catalogue test prevents)."""
        template = self.messages.get(message)
        if template is None:
            return None
        try:
            return _Formatter(self.terms).vformat(template, (), params)
        except (KeyError, IndexError, ValueError):
            return None


def describe(exc: MinidoorError, catalogue: Catalogue | None) -> str:
    """``exc``'s description in ``catalogue``'s language, or in English when there is none or it lacks it."""
    if catalogue is None:
        return exc.description
    return catalogue.translate(exc.message, exc.params) or exc.description


def catalogue_path(language: str) -> resources.abc.Traversable:
    return resources.files("shared") / "locale" / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def load_catalogue(language: str) -> Catalogue:
    """Read one language's ``.po`` file (fuzzy and empty entries count as missing)."""
    from babel.messages.pofile import read_po  # only the processes that translate pay for importing Babel

    with catalogue_path(language).open("rb") as fileobj:
        po = read_po(fileobj)
    messages: dict[str, str] = {}
    terms: dict[str, str] = {}
    for entry in po:
        if not entry.id or not isinstance(entry.id, str) or not isinstance(entry.string, str):
            continue
        if not entry.string or entry.fuzzy:
            continue
        (terms if entry.context == TERM_CONTEXT else messages)[entry.id] = entry.string
    return Catalogue(language=language, messages=messages, terms=terms)


def load_catalogues(languages: tuple[str, ...] = LANGUAGES) -> dict[str, Catalogue]:
    return {language: load_catalogue(language) for language in languages}
