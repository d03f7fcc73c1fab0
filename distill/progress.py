"""Progress bars for long work, with one policy: live on a terminal, throttled in a file or pipe.

On a terminal the bar redraws in place. Written to a file or a pipe (a log, ``tee``, CI) every
redraw is a new line, so there it is throttled to at most one line per :data:`FILE_EVERY_S`
seconds (plus the last one).

Example::

    with progress_bar(total=len(todo), desc="align dlib_150", unit="img") as bar:
        for item in todo:
            ...
            bar.update(1)
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

#: seconds between lines when progress goes to a file or a pipe
FILE_EVERY_S = 60.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _LineBar(tqdm):
    """A bar for logs: each refresh is a whole line (a pipe reading lines sees it at once), no carriage returns."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the bar's current state as one line."""
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        """Print the final state once, as a line."""
        if self.disable:
            return
        if self.n != self.last_print_n:
            self.refresh()
        self.disable = True
        with self.get_lock():
            self._instances.discard(self)


def progress_bar(total: int | None = None, *, desc: str, unit: str = "it", disable: bool = False,
                 initial: int = 0, leave: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (rate and ETA) on stderr that follows the policy of the module docs."""
    if _is_terminal(kwargs.get("file") or sys.stderr):
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave,
                    dynamic_ncols=True, **kwargs)
    kwargs.setdefault("mininterval", FILE_EVERY_S)
    return _LineBar(total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave, **kwargs)
