"""Rewrite the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a docs page."""

from __future__ import annotations

from pathlib import Path


def write_between_markers(path, name: str, text: str) -> bool:
    """Replace the block ``name`` of ``path`` by ``text``; False (and nothing written) without the markers."""
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True
