"""Generated parts of ``docs/``: written from the code, so they cannot drift from it.

A generated part sits between two marker lines of a Markdown file; the prose around it is
written by hand. This module renders the settings table of ``docs/configuration.md`` from
:class:`~opsmantik_stream.config.Settings` (its fields' ``doc(...)`` texts, types, limits and
defaults, read through msgspec's JSON schema); ``gateway/api_doc.py`` renders the route table of
``docs/http-api.md`` with the same helpers.

    python -m opsmantik_stream.docgen            # rewrite docs/configuration.md's table
    python -m opsmantik_stream.docgen --check    # exit 1 when it is stale
    make docs                                    # every generated part
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from opsmantik_stream.config import ENV_PREFIX, Settings

__all__ = [
    "BEGIN",
    "END",
    "REGENERATE",
    "DocgenError",
    "main_for",
    "settings_markdown",
    "splice",
    "table_cell",
    "undocumented_settings",
]

BEGIN = "<!-- BEGIN GENERATED: edit the code and run `make docs`, not this part -->"
END = "<!-- END GENERATED -->"
REGENERATE = "make docs"
DOCS = Path(__file__).resolve().parent.parent / "docs"


class DocgenError(Exception):
    """A document has no (or a broken) generated part, or the code lacks a description."""


def splice(document: str, generated: str) -> str:
    """``document`` with the text between its BEGIN and END markers replaced."""
    head, begin, rest = document.partition(BEGIN)
    _old, end, tail = rest.partition(END)
    if not begin or not end:
        raise DocgenError(f"the document has no '{BEGIN}' ... '{END}' part")
    return f"{head}{BEGIN}\n{generated.strip()}\n{END}{tail}"


def table_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _settings_schema() -> dict[str, Any]:
    schema = msgspec.json.schema(Settings)
    properties: dict[str, Any] = schema["$defs"]["Settings"]["properties"]
    return properties


def undocumented_settings() -> list[str]:
    """Settings without a description (each needs ``doc("...")`` in config.py)."""
    return [name for name, prop in _settings_schema().items() if not prop.get("description", "").strip()]


def _accepted(prop: dict[str, Any]) -> str:
    kinds = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    kind = kinds[0] if kinds else prop
    name = {"integer": "integer", "number": "number", "boolean": "`true` / `false`", "string": "text"}.get(
        kind.get("type", ""), kind.get("type", "value")
    )
    low, high = kind.get("minimum"), kind.get("maximum")
    if low is not None and high is not None:
        return f"{name} {_number(low)} to {_number(high)}"
    bounds = [
        f"{sign} {_number(kind[key])}"
        for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if kind.get(key) is not None
    ]
    return f"{name} {' and '.join(bounds)}".strip()


def _number(value: float) -> str:
    return f"{value:,g}" if isinstance(value, float) else f"{value:,}"


def _default(value: Any) -> str:
    # as it would be typed: no thousands separators
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def settings_markdown() -> str:
    """The settings table, one row per field of :class:`Settings` in declaration order."""
    missing = undocumented_settings()
    if missing:
        names = ", ".join(ENV_PREFIX + n.upper() for n in missing)
        raise DocgenError(f"settings without a description: {names} (add doc('...') in opsmantik_stream/config.py)")
    rows = ["| variable | default | accepts | what it does |", "|---|---|---|---|"]
    for name, prop in _settings_schema().items():
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_default(prop.get('default'))} | {_accepted(prop)} "
            f"| {table_cell(prop['description'])} |"
        )
    return "\n".join(rows)


def main_for(path: Path, render: Callable[[], str], argv: list[str] | None = None) -> int:
    """Command line shared by the generators: rewrite ``path``'s generated part, or with
    ``--check`` exit 1 (and say how to regenerate) when it differs from ``render()``."""
    parser = argparse.ArgumentParser(description=f"Regenerate the generated part of {path.name}.")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the file is stale")
    parser.add_argument("--path", type=Path, default=path, help=f"the document (default {path})")
    args = parser.parse_args(argv)
    try:
        current = args.path.read_text()
        wanted = splice(current, render())
    except (OSError, DocgenError) as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 2
    if current == wanted:
        return 0
    if args.check:
        print(f"{args.path} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1
    args.path.write_text(wanted)
    print(f"{args.path} updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main_for(DOCS / "configuration.md", settings_markdown))
