"""The message catalogue's source side: every error message the services can answer, read from the code.

``extract()`` walks the packages that answer clients (gateway, auth_worker, user_store, shared) and collects the
English template of every ``MinidoorError`` they raise (the first argument of a call to the class or a subclass,
a literal or a module constant; both branches of ``a if c else b``), and the literal descriptions written straight
into a wire message (``ErrorBody``/``LoginFailed``'s ``error_description``, ``error_from_wire``'s; a non-literal one
there passes on an error that was raised elsewhere). A message that is an f-string, or anything else it cannot
read, is a problem: its fields belong in keywords (see ``shared/errors.py``).

``make messages`` (``python -m services.catalogue``) appends an empty entry to each catalogue for every msgid it
lacks; translating one is then writing its ``msgstr``. ``tests/test_messages_i18n.py`` fails while any is empty.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import MinidoorError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "auth_worker", "user_store", "shared")
BASE = "MinidoorError"
#: Errors never rendered to a client: a process that cannot start prints them to its operator.
NOT_ANSWERED = frozenset({"ConfigError", "TLSRefused"})
#: Messages that are not in the code, by where they are built: what they can be is listed in the catalogue by hand.
DYNAMIC = {
    ("shared/middleware.py", "exc.reason"): "aiohttp's reason phrase of an HTTP error (405 and the like)",
    ("gateway/applications.py", "value.description"): "an error from the user store, re-raised with its template",
}
#: Wire messages whose ``error_description`` is a client-visible description.
_WIRE_MESSAGES = frozenset({"ErrorBody", "LoginFailed"})


@dataclass
class Extraction:
    #: msgid -> the places (path:line) that raise it.
    messages: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path))


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def _subclass_names(cls: type[MinidoorError]) -> set[str]:
    names: set[str] = set()
    for sub in cls.__subclasses__():
        names |= {sub.__name__, *_subclass_names(sub)}
    return names


def _error_classes(modules: list[tuple[str, ast.Module]]) -> set[str]:
    """``MinidoorError``, the tree of ``shared/errors.py`` and every class that derives from one, by name."""
    classes = {BASE, *_subclass_names(MinidoorError)}
    bases: dict[str, set[str]] = {}
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(_base_name(b) for b in node.bases)
    grown = True
    while grown:
        found = {name for name, parents in bases.items() if parents & classes} - classes
        classes |= found
        grown = bool(found)
    return classes - NOT_ANSWERED


def _constants(modules: list[tuple[str, ast.Module]]) -> dict[str, str]:
    """Module-level ``NAME = "text"`` of every module (a message constant is imported under its own name)."""
    constants: dict[str, str] = {}
    for _, tree in modules:
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                constants[target.id] = value.value
    return constants


class _Collector:
    def __init__(self, constants: dict[str, str]) -> None:
        self.constants = constants
        self.result = Extraction()

    def take(self, path: str, node: ast.expr, *, passed_on: bool = False) -> None:
        """Record the message ``node`` builds, or a problem; ``passed_on``: a non-literal is someone else's."""
        where = f"{path}:{node.lineno}"
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(node, ast.Name) and node.id in self.constants:
            text = self.constants[node.id]
        if isinstance(text, str):
            if text:
                self.result.messages.setdefault(text, []).append(where)
        elif isinstance(node, ast.IfExp):
            self.take(path, node.body, passed_on=passed_on)
            self.take(path, node.orelse, passed_on=passed_on)
        elif isinstance(node, ast.JoinedStr):
            self.result.problems.append(f"{where}: an f-string message; write a template, its fields as keywords")
        elif not passed_on and (path, ast.unparse(node)) not in DYNAMIC:
            self.result.problems.append(f"{where}: a message the catalogue cannot know: {ast.unparse(node)}")


def extract(root: Path = ROOT) -> Extraction:
    modules = list(_sources(root))
    classes = _error_classes(modules)
    collector = _Collector(_constants(modules))
    for path, tree in modules:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _base_name(node.func)
            if name in classes and node.args:
                collector.take(path, node.args[0])
            elif name == "error_from_wire" and len(node.args) >= 3:
                collector.take(path, node.args[2], passed_on=True)
            elif name in _WIRE_MESSAGES:
                for keyword in node.keywords:
                    if keyword.arg == "error_description":
                        collector.take(path, keyword.value, passed_on=True)
    return collector.result


def _po_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def append_missing(root: Path = ROOT) -> int:
    """Append an empty entry for every extracted msgid a catalogue lacks; the number appended."""
    from shared.i18n import LANGUAGES, catalogue_path, load_catalogue

    found = extract(root)
    for problem in found.problems:
        print(problem, file=sys.stderr)
    appended = 0
    for language in LANGUAGES:
        catalogue = load_catalogue(language)
        missing = [msgid for msgid in found.messages if msgid not in catalogue.messages]
        known = _all_msgids(Path(str(catalogue_path(language))))
        new = [msgid for msgid in missing if msgid not in known]
        if new:
            with Path(str(catalogue_path(language))).open("a", encoding="utf-8") as po:
                for msgid in new:
                    po.write(f'\n#: {found.messages[msgid][0]}\nmsgid {_po_string(msgid)}\nmsgstr ""\n')
        for msgid in missing:
            print(f"{language}: untranslated: {msgid}")
        appended += len(new)
    return appended


def _all_msgids(path: Path) -> set[str]:
    from babel.messages.pofile import read_po

    with path.open("rb") as fileobj:
        return {entry.id for entry in read_po(fileobj) if isinstance(entry.id, str) and not entry.context}


if __name__ == "__main__":
    append_missing()
