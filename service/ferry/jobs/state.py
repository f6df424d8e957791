"""A job's document and every transition it can make, as pure functions.

Both stores keep the same JSON document and differ only in how they index and swap it
(compare-and-set on a version number), so the rules below are written once and the contract
tests hold for SQLite and Redis alike.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

# A job's statuses are part of the HTTP protocol: clients wait for the same terminal ones.
from ferry_client.protocol import TERMINAL_JOB_STATUSES as TERMINAL
from ferry_client.protocol import JobStatus as Status

CallbackStatus = Literal["pending", "delivered", "dead_letter"]

Doc = dict[str, Any]


@dataclass(frozen=True)
class Index:
    """Where a document sits in the store's indexes after a write (None: not in that index).

    ``run_at``: when a runner may take it (a queued job's start time, a running job's lease end:
    a job whose runner died becomes takeable again when its lease runs out).
    ``queued_since``: submission time while queued (queue depth and oldest age).
    ``callback_at``: when a deliverer may take its callback (due time, or a delivery lease end).
    ``expires_at``: when the store may purge it (finished jobs only).
    """

    run_at: float | None = None
    queued_since: float | None = None
    callback_at: float | None = None
    expires_at: float | None = None


def new_job(
    *,
    now: float,
    records: int,
    callback_url: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    request_hash: str,
    request_id: str,
    model: dict[str, str],
) -> Doc:
    job_id = uuid.uuid4().hex
    return {
        "id": job_id,
        "status": "queued",
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "expires_at": None,
        "records": records,
        "attempts": 0,
        "runner": None,
        "result": None,
        "error": None,
        "metadata": metadata or {},
        "model": model,
        "request_id": request_id,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "callback": None
        if callback_url is None
        else {
            "url": callback_url,
            "webhook_id": f"msg_{job_id}",
            "status": None,
            "attempts": 0,
            "last_status_code": None,
            "last_error": None,
            "last_attempt_at": None,
            "next_attempt_at": None,
            "delivered_at": None,
            "redeliveries": 0,
        },
        "history": [{"status": "queued", "at": now}],
    }


def index_of(doc: Doc) -> Index:
    """The indexes a document belongs in, derived from the document alone."""
    status = doc["status"]
    callback = doc.get("callback") or {}
    return Index(
        run_at=doc["_available_at"] if status == "queued" else doc["_lease_until"] if status == "running" else None,
        queued_since=doc["created_at"] if status == "queued" else None,
        callback_at=callback.get("_due_at") if callback.get("status") == "pending" else None,
        expires_at=doc["expires_at"] if status in TERMINAL else None,
    )


def with_internal(doc: Doc, now: float) -> Doc:
    """Internal scheduling fields of a fresh document (stripped from what clients see)."""
    doc["_available_at"] = now
    doc["_lease_until"] = None
    return doc


def _copy(doc: Doc) -> Doc:
    return copy.deepcopy(doc)


def _mark(doc: Doc, status: str, now: float, **extra: Any) -> None:
    doc["status"] = status
    doc["history"].append({"status": status, "at": now, **extra})


def claim(
    doc: Doc, *, owner: str, now: float, lease_s: float, max_attempts: int, ttl_s: float
) -> tuple[Doc, str] | None:
    """A runner takes the job: queued and due, or running with an expired lease (its runner died).

    Returns the new document and the kind of run ('first', 'retry', 'reclaim'), or None when the
    job is not takeable. A reclaimed job that used all its attempts fails instead of running.
    """
    status = doc["status"]
    if status == "queued" and doc["_available_at"] <= now:
        kind = "first" if doc["attempts"] == 0 else "retry"
    elif status == "running" and (doc["_lease_until"] or 0) <= now:
        kind = "reclaim"
    else:
        return None
    new = _copy(doc)
    if kind == "reclaim":
        new["history"].append({"status": "lost", "at": now, "runner": doc["runner"]})
        if doc["attempts"] >= max_attempts:
            return finish(
                new,
                now=now,
                status="failed",
                error={"code": "attempts_exhausted", "message": f"runners were lost {max_attempts} times"},
                ttl_s=ttl_s,
            ), kind
    new["attempts"] += 1
    new["runner"] = owner
    new["started_at"] = now
    new["_lease_until"] = now + lease_s
    _mark(new, "running", now, runner=owner, attempt=new["attempts"])
    return new, kind


def renew(doc: Doc, *, owner: str, now: float, lease_s: float) -> Doc | None:
    if doc["status"] != "running" or doc["runner"] != owner:
        return None
    new = _copy(doc)
    new["_lease_until"] = now + lease_s
    return new


def finish(
    doc: Doc,
    *,
    now: float,
    status: Status,
    result: Any = None,
    error: dict[str, str] | None = None,
    ttl_s: float,
) -> Doc:
    """The one way into a terminal state (on a copy the caller owns); schedules the callback."""
    new = doc
    new["result"] = result
    new["error"] = error
    new["finished_at"] = now
    new["_lease_until"] = None
    new["expires_at"] = now + ttl_s
    _mark(new, status, now, **({"code": error["code"]} if error else {}))
    callback = new.get("callback")
    if callback is not None:
        callback.update(status="pending", _due_at=now, next_attempt_at=now)
    return new


def complete(
    doc: Doc,
    *,
    owner: str,
    now: float,
    status: Status,
    ttl_s: float,
    result: Any = None,
    error: dict[str, str] | None = None,
) -> Doc | None:
    """The runner holding the lease records the outcome; a runner that lost its lease cannot."""
    if doc["status"] != "running" or doc["runner"] != owner:
        return None
    return finish(_copy(doc), now=now, status=status, result=result, error=error, ttl_s=ttl_s)


def requeue(doc: Doc, *, owner: str, now: float, delay_s: float, reason: dict[str, str]) -> Doc | None:
    """Give the job back (model unavailable for the whole run); it runs again later."""
    if doc["status"] != "running" or doc["runner"] != owner:
        return None
    new = _copy(doc)
    new["_lease_until"] = None
    new["_available_at"] = now + delay_s
    new["runner"] = None
    _mark(new, "queued", now, code=reason["code"])
    return new


def release(doc: Doc, *, owner: str, now: float) -> Doc | None:
    """A runner stopping gracefully gives its job back at once; the cut-short run does not count."""
    if doc["status"] != "running" or doc["runner"] != owner:
        return None
    new = _copy(doc)
    new["_lease_until"] = None
    new["_available_at"] = now
    new["runner"] = None
    new["attempts"] = max(0, new["attempts"] - 1)
    _mark(new, "queued", now, code="runner_stopped")
    return new


def cancel(doc: Doc, *, now: float, ttl_s: float) -> Doc | None:
    if doc["status"] != "queued":
        return None
    return finish(
        _copy(doc),
        now=now,
        status="canceled",
        error={"code": "canceled", "message": "canceled by the client"},
        ttl_s=ttl_s,
    )


def claim_callback(doc: Doc, *, now: float, lease_s: float) -> Doc | None:
    callback = doc.get("callback")
    if not callback or callback.get("status") != "pending" or callback.get("_due_at", now + 1) > now:
        return None
    new = _copy(doc)
    new["callback"]["_due_at"] = now + lease_s  # a deliverer that dies leaves it due again after this
    return new


def callback_attempted(
    doc: Doc,
    *,
    now: float,
    outcome: str,
    status_code: int | None,
    error: str | None,
    next_at: float | None,
) -> Doc:
    """Record one delivery attempt: delivered, retried at ``next_at``, or dead-lettered (next_at None)."""
    new = _copy(doc)
    callback = new["callback"]
    callback["attempts"] += 1
    callback.update(last_status_code=status_code, last_error=error, last_attempt_at=now)
    if outcome == "delivered":
        callback.update(status="delivered", delivered_at=now, next_attempt_at=None)
        callback.pop("_due_at", None)
    elif next_at is not None:
        callback.update(status="pending", next_attempt_at=next_at, _due_at=next_at)
    else:
        callback.update(status="dead_letter", next_attempt_at=None)
        callback.pop("_due_at", None)
    return new


def redeliver(doc: Doc, *, now: float, ttl_s: float) -> Doc | None:
    """Deliver again (an operator's decision): same webhook-id, fresh attempt budget."""
    callback = doc.get("callback")
    if not callback or doc["status"] not in TERMINAL or callback.get("status") == "pending":
        return None
    new = _copy(doc)
    new["callback"].update(
        status="pending", attempts=0, next_attempt_at=now, _due_at=now, redeliveries=callback["redeliveries"] + 1
    )
    new["expires_at"] = max(new["expires_at"] or 0, now + ttl_s)  # keep the job until delivery can finish
    return new


def public(doc: Doc) -> Doc:
    """What clients see: no internal fields, times as RFC 3339 UTC strings."""
    out = {k: v for k, v in doc.items() if not k.startswith("_") and k != "request_hash"}
    for key in ("created_at", "started_at", "finished_at", "expires_at"):
        out[key] = iso(out.get(key))
    out["history"] = [{**h, "at": iso(h["at"])} for h in doc["history"]]
    if doc.get("callback"):
        cb = {k: v for k, v in doc["callback"].items() if not k.startswith("_")}
        for key in ("last_attempt_at", "next_attempt_at", "delivered_at"):
            cb[key] = iso(cb.get(key))
        out["callback"] = cb
    return out


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
