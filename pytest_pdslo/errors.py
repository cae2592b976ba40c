"""Errors that carry a user-facing message (shown without a traceback)."""

from __future__ import annotations


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
