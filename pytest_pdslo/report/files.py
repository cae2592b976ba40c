"""Writing report files atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def log_dir(report_dir: Path | None, name: str) -> Path:
    """Where a launcher target keeps server logs: ``<report>/<name>`` when there is a
    report directory (they travel with the report), else a fresh temporary directory."""
    if report_dir is not None:
        path = Path(report_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"pdslo-{name}-"))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the old file's mode, or the usual one
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_json(path: Path, doc: Any) -> None:
    """Sorted, indented JSON (NaN is not JSON: callers pass null instead)."""
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
