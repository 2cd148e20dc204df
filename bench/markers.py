"""Rewrite the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a docs page."""

from __future__ import annotations

from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_between_markers(path, name: str, text: str) -> bool:
    """Replace the block ``name`` of ``path`` by ``text``; False (and nothing written) without the markers."""
    path = Path(path)
    begin, end = _markers(name)
    content = path.read_text()
    if begin not in content or end not in content.split(begin, 1)[1]:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True


def append_between_markers(path, name: str, text: str) -> None:
    """Append the block ``name`` with ``text``, inside new markers, at the end of ``path``."""
    path = Path(path)
    begin, end = _markers(name)
    content = path.read_text().rstrip("\n")
    path.write_text(f"{content}\n\n{begin}\n{text.rstrip()}\n{end}\n")
