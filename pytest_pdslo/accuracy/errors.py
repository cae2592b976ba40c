"""Accuracy failures: one classified, readable message per item."""

from __future__ import annotations


class AccuracyError(Exception):
    """An accuracy check could not produce a verdict.

    ``kind``: ``setup`` (no harness installed), ``unknown_task``, ``unknown_harness``,
    ``missing_dataset``, ``task_error``, ``unsupported``, ``endpoint_error``, ``metric``
    (the gated metric is not in the results), ``timeout``, ``internal``.
    """

    def __init__(self, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class NotApplicable(Exception):
    """The check does not apply to this deployment on this target (reported as a skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
