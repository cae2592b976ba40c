"""Request records through a pod log: a load Job prints them, the target reads them back.

One record becomes one compact JSON object: the send time as a float (exact through JSON),
chunk arrival times as integer microseconds after the send (first offset, then gaps:
small numbers that compress well), token counts, status and error. The records of a run
are JSON lines, gzipped, base64-encoded and cut into ``DATA`` lines of at most 8,000
characters (container runtimes split longer lines); a ``HEAD`` line carries the run's
figures and a SHA-256 of the payload, and ``END`` closes it::

    PDSLO-LOADJOB/1 DATA 0 3 H4sIAAAAA...
    PDSLO-LOADJOB/1 HEAD {"records": 640, "sha256": "...", "duration_s": 41.2, ...}
    PDSLO-LOADJOB/1 END

A failed run prints ``PDSLO-LOADJOB/1 ERROR {"message": ...}``. Other log lines are
ignored, so the load generator may log freely. The kubelet keeps about 10 MiB of a
container's log (``containerLogMaxSize``); a payload past that loses its first parts,
which the reader reports instead of returning a partial run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import TargetError
from ..records import RequestRecord
from ..targets import RunOutcome

MAGIC = "PDSLO-LOADJOB/1"
PART_CHARS = 8000


def record_to_wire(r: RequestRecord) -> dict[str, Any]:
    """One record as a compact JSON-able dict (chunk times to the microsecond)."""
    send = float(r.send_time)
    offsets = [int(round((float(c) - send) * 1e6)) for c in r.chunk_times]
    gaps = offsets[:1] + [b - a for a, b in zip(offsets, offsets[1:])]
    out: dict[str, Any] = {"t": send, "c": gaps, "p": int(r.prompt_tokens), "o": int(r.completion_tokens),
                           "ok": bool(r.ok), "s": int(r.status)}
    if len(r.chunk_tokens):
        out["k"] = [int(k) for k in r.chunk_tokens]
    if r.error:
        out["e"] = str(r.error)
    if r.warmup:
        out["w"] = True
    return out


def record_from_wire(d: dict[str, Any]) -> RequestRecord:
    send = float(d["t"])
    times: list[float] = []
    acc = 0
    for gap in d.get("c", ()):
        acc += int(gap)
        times.append(send + acc / 1e6)
    return RequestRecord(send_time=send, chunk_times=times, chunk_tokens=[int(k) for k in d.get("k", ())],
                         prompt_tokens=int(d.get("p", 0)), completion_tokens=int(d.get("o", 0)),
                         ok=bool(d.get("ok", False)), status=int(d.get("s", 0)), error=str(d.get("e", "")),
                         warmup=bool(d.get("w", False)))


def encode_outcome(outcome: RunOutcome) -> list[str]:
    """The log lines of a finished run (records, then the head, then the end mark)."""
    payload = "".join(json.dumps(record_to_wire(r), separators=(",", ":")) + "\n" for r in outcome.records)
    packed = base64.b64encode(gzip.compress(payload.encode("utf-8"), mtime=0)).decode("ascii")
    parts = [packed[i:i + PART_CHARS] for i in range(0, len(packed), PART_CHARS)] or [""]
    head = {
        "records": len(outcome.records),
        "parts": len(parts),
        "sha256": hashlib.sha256(packed.encode("ascii")).hexdigest(),
        "bytes": len(packed),
        "gpus": outcome.gpus,
        "simulated": outcome.simulated,
        "duration_s": outcome.duration_s,
        "diagnostics": _jsonable(outcome.diagnostics),
        "notes": list(outcome.notes),
    }
    lines = [f"{MAGIC} DATA {i} {len(parts)} {p}" for i, p in enumerate(parts)]
    lines.append(f"{MAGIC} HEAD {json.dumps(head, separators=(',', ':'), sort_keys=True)}")
    lines.append(f"{MAGIC} END")
    return lines


def encode_error(message: str) -> str:
    return f"{MAGIC} ERROR {json.dumps({'message': message})}"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _lines(log: str | Iterable[str]) -> Iterator[str]:
    if isinstance(log, str):
        yield from log.splitlines()
    else:
        for chunk in log:
            yield from chunk.splitlines()


def decode_outcome(log: str | Iterable[str], *, where: str = "the load job") -> RunOutcome:
    """The run a load Job printed; ``TargetError`` naming ``where`` if it failed or lost lines."""
    parts: dict[int, str] = {}
    total: int | None = None
    head: dict[str, Any] | None = None
    ended = False
    for line in _lines(log):
        line = line.strip()
        if not line.startswith(MAGIC + " "):
            continue
        kind, _, rest = line[len(MAGIC) + 1:].partition(" ")
        if kind == "ERROR":
            try:
                message = json.loads(rest)["message"]
            except (ValueError, KeyError, TypeError):
                message = rest
            raise TargetError(f"{where} failed: {message}")
        if kind == "DATA":
            fields = rest.split(" ", 2)
            if len(fields) < 2:
                raise TargetError(f"{where}: malformed record line")
            idx, n = int(fields[0]), int(fields[1])
            parts[idx] = fields[2] if len(fields) > 2 else ""
            total = n
        elif kind == "HEAD":
            head = json.loads(rest)
        elif kind == "END":
            ended = True
    if head is None or not ended:
        raise TargetError(f"{where} printed no complete result (did it run to the end? see its pod log)")
    n_parts = int(head["parts"])
    missing = [i for i in range(n_parts) if i not in parts]
    if missing or (total is not None and total != n_parts):
        raise TargetError(
            f"{where}: {len(missing)} of {n_parts} record parts are missing from the pod log "
            f"({head.get('bytes', 0) / 2**20:.1f} MiB); the kubelet rotates container logs past containerLogMaxSize "
            "(default 10 MiB): raise it, or run fewer requests per item")
    packed = "".join(parts[i] for i in range(n_parts))
    if hashlib.sha256(packed.encode("ascii")).hexdigest() != head["sha256"]:
        raise TargetError(f"{where}: the records in the pod log are corrupt (checksum mismatch)")
    payload = gzip.decompress(base64.b64decode(packed)).decode("utf-8") if packed else ""
    records = [record_from_wire(json.loads(ln)) for ln in payload.splitlines() if ln]
    if len(records) != int(head["records"]):
        raise TargetError(f"{where}: expected {head['records']} records, decoded {len(records)}")
    return RunOutcome(records=records, gpus=int(head.get("gpus", 0)), simulated=bool(head.get("simulated", False)),
                      duration_s=head.get("duration_s"), diagnostics=dict(head.get("diagnostics") or {}),
                      notes=list(head.get("notes") or []))


def roundtrip(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Encode and decode ``records`` (for tests and sanity checks)."""
    return decode_outcome(encode_outcome(RunOutcome(records=list(records), gpus=1, simulated=False))).records
