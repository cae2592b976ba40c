"""Live progress of long items on the terminal, without disturbing pytest's own output.

Shown only on an interactive terminal and not under ``-q`` or xdist: the line
is drawn after the cursor with save/restore-cursor escapes (pytest's own line
and its column bookkeeping stay untouched) and erased when the item ends. In
CI logs (not a TTY) nothing is written, so there is no carriage-return spam.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

SAVE, RESTORE, CLEAR_EOL = "\x1b7", "\x1b8", "\x1b[K"


class LiveProgress:
    """Draws ``[done/total requests, N tok/s]`` next to the running item."""

    def __init__(self, config: pytest.Config) -> None:
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.shown = False

    def _write(self, text: str) -> None:
        if self.capman is not None:
            with self.capman.global_and_fixture_disabled():
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def __call__(self, p: Any) -> None:
        self.shown = True
        self._write(f"{SAVE}  [{p.done}/{p.total} requests, {p.output_throughput:,.0f} tok/s]{CLEAR_EOL}{RESTORE}")

    def clear(self) -> None:
        if self.shown:
            self._write(f"{SAVE}{CLEAR_EOL}{RESTORE}")
            self.shown = False

    @staticmethod
    def wanted(config: pytest.Config) -> bool:
        if config.get_verbosity() < 0 or hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
            return False
        return sys.__stdout__ is not None and sys.__stdout__.isatty()
