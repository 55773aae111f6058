"""Did-you-mean hints for one-line errors: the closest allowed name, and the line for an unknown key."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def closest(word: str, candidates: Iterable[Any]) -> str:
    """ "; closest: x" for the most similar candidate, or "" when none is similar."""
    names = [str(c) for c in candidates]
    match = difflib.get_close_matches(str(word), names, n=1, cutoff=0.5)
    return f"; closest: {match[0]}" if match else ""


def unknown_key(key: str, allowed: Iterable[str], where: str = "") -> str:
    """One line for a key that does not exist: which keys do, and the closest one."""
    allowed = sorted(allowed)
    name = key.rsplit(".", 1)[-1]
    return f"{key}: no such key{f' in {where}' if where else ''}{closest(name, allowed)}; keys: {', '.join(allowed)}"
