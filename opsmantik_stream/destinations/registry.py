"""The destinations this deployment can send conversions to: name -> implementing class.

A destination is one module with one :class:`~opsmantik_stream.destinations.base.Destination`
subclass; it ships by adding one line to ``SHIPPED`` (``destinations/shipped.py``) (and one migration allowing its name
in the schema's CHECK lists: ``SELECT allow_destination('name');``). See docs/destinations.md.

Entries are import paths, loaded on first use. The shipped table itself lives in
``destinations/shipped.py``, which imports nothing, so ``opsmantik_stream.enums`` builds its
``Destination`` enum from it without an import circle.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from opsmantik_stream.destinations.shipped import SHIPPED

if TYPE_CHECKING:
    from opsmantik_stream.destinations.base import Destination

__all__ = ["SHIPPED", "UnknownDestination", "get", "names", "register", "unregister"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_entries: dict[str, str] = dict(SHIPPED)
_loaded: dict[str, type[Destination]] = {}


class UnknownDestination(KeyError):
    """No destination of that name is registered."""


def names() -> list[str]:
    """Every registered destination name (the shipped ones first)."""
    return list(_entries)


def register(name: str, target: str) -> None:
    """Add a destination at run time (a plug-in, or a test): ``target`` is "module:Class".

    A shipped destination is one line in :data:`SHIPPED` instead.
    """
    if not _NAME.match(name):
        raise ValueError(f"destination names are lower-case identifiers: {name!r}")
    _entries[name] = target
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    """Forget a destination added with :func:`register` (tests clean up with it)."""
    if name in SHIPPED:
        raise ValueError(f"{name} is shipped")
    _entries.pop(name, None)
    _loaded.pop(name, None)


def get(name: str) -> type[Destination]:
    """The class implementing destination ``name``; :class:`UnknownDestination` if none."""
    cls = _loaded.get(name)
    if cls is not None:
        return cls
    try:
        target = _entries[name]
    except KeyError:
        raise UnknownDestination(name) from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if getattr(cls, "name", None) != name:
        raise TypeError(f"{target} declares name {getattr(cls, 'name', None)!r}, registered as {name!r}")
    _loaded[name] = cls
    return cls  # type: ignore[no-any-return]  # loaded by name: checked by its declared name above
