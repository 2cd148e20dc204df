"""Progress bars that show on a terminal and stay out of logs.

A bar redraws itself with carriage returns; written to a file or a pipe that fills the
log with partial lines. :func:`progress_bar` is tqdm with ``disable=None`` when enabled,
which turns the bar off unless stderr is a terminal.
"""

from __future__ import annotations


def progress_bar(iterable=None, *, enabled: bool = True, **options):
    """A tqdm bar over ``iterable`` (or ``total=``), off when ``enabled`` is False or stderr is not a TTY."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **options)
