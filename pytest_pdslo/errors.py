"""Errors that carry a user-facing message (shown without a traceback)."""

from __future__ import annotations

import reprlib


class PdsloError(Exception):
    """Base of errors whose message is meant for the user as-is."""


class SuiteError(PdsloError):
    """A suite file is malformed; the message names the file, key path and fix."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid suite {path}:\n{lines}")


class TargetError(PdsloError):
    """A target cannot be reached or started; the message says which and why."""


def short_repr(value: object) -> str:
    """A bounded repr for messages: a hostile value (YAML aliases can nest a list a
    billion elements deep at no cost to the parser) still makes a one-line message."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 40, 40
    return r.repr(value)
