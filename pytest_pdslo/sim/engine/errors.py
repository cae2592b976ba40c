"""Errors raised by the simulator core."""

from __future__ import annotations


class SimConfigError(ValueError):
    """A deployment, workload, load or profile the simulator cannot run.

    The message is meant for the user as it stands (no traceback needed): it names
    the deployment or profile and, for unknown names, lists the known ones.
    """
