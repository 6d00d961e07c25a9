"""The durable job store of the HTTP API: every accepted job is persisted before the response.

A :class:`Job` is one record (JSON-serializable with ``to_dict``/``from_dict``). A :class:`JobStore` keeps
them; :func:`wan_dist.serve.stores.open_store` picks the backend from a URI (``job_stores.py``,
``object_job_store.py``; the backends import this module, so the choice between them lives apart from it):

- ``sqlite:///relative/jobs.db``, ``sqlite:////absolute/jobs.db`` (SQLAlchemy's spelling) or a plain path
  ending in ``.db``: :class:`~wan_dist.serve.job_stores.SQLiteJobStore`, the default. Embedded, WAL mode,
  every write one ``BEGIN IMMEDIATE`` transaction: safe for many threads and many processes on one machine.
- any other fsspec URL or a plain folder (``s3://bucket/prefix``, ``file:///...``, ``memory://...``):
  :class:`~wan_dist.serve.object_job_store.ObjectJobStore`, one JSON object per job. Every mutation is a
  compare-and-swap on S3-compatible stores and local paths (any number of processes); elsewhere it is
  serialised within one process only: run one mutating process there.

Lifecycle: ``queued`` -> (``claim``) ``in_progress`` -> ``completed`` | ``failed`` | ``cancelled``. A renderer
holds a lease (``claim``/``renew``); ``release_expired`` requeues the job of a renderer that stopped renewing
(or fails it with ``worker_lost`` after ``max_attempts``). Terminal statuses never change again.
The transition rules live here as pure functions so both backends share them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

__all__ = [
    "ACTIVE_STATUSES", "JOB_KINDS", "TERMINAL_STATUSES", "IdempotencyConflict", "InvalidTransition", "Job",
    "JobExists", "JobNotFound", "JobStatus", "JobStore", "JobStoreError", "LeaseLost", "VersionConflict",
    "body_hash", "new_job_id",
]


class JobStatus:
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ALL = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)
# batch: a manifest run by a renderer (wan_dist.serve.batches); batch_part: one model's rows of a mixed batch
# (wan_dist.serve.batch_parts), never shown by the API
JOB_KINDS = ("job", "video", "batch", "batch_part")
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_STORE_MANAGED = frozenset({"id", "seq", "version"})


def new_job_id() -> str:
    """``job_`` + 24 lowercase base32 characters (120 random bits)."""
    return "job_" + base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()


def body_hash(body: Any) -> str:
    """SHA-256 hex of a request body: bytes as they are, anything else as canonical JSON (sorted keys)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return hashlib.sha256(bytes(body)).hexdigest()


class JobStoreError(Exception):
    """Base of the store's errors. Each keeps its constructor arguments so it pickles (Ray ships exceptions)."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id

    def __reduce__(self):
        return (type(self), (str(self), self.job_id))


class JobNotFound(JobStoreError, LookupError):
    """No job with that id (or, for ``list(after=...)``, none visible to that owner)."""


class JobExists(JobStoreError):
    """``create`` got an id that is already stored."""


class IdempotencyConflict(JobStoreError):
    """The owner's idempotency key already names job ``job_id``, created from a different body (HTTP 409)."""


class VersionConflict(JobStoreError):
    """``update(expected_version=...)`` found another version: someone else changed the job first."""


class InvalidTransition(JobStoreError):
    """A terminal job's status may not change."""


class LeaseLost(JobStoreError):
    """``renew`` by a worker that no longer holds the job (requeued, claimed by another, or finished)."""


@dataclass(frozen=True)
class Job:
    """One job record. Times are unix seconds. ``seq`` (insertion order) and ``version`` are set by the store."""

    id: str
    model: str
    kind: str = "job"
    owner: str = ""
    status: str = JobStatus.QUEUED
    request: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    progress: int = 0
    attempts: int = 0
    max_attempts: int = 3
    lease_owner: str | None = None
    lease_until: float | None = None
    retry_after: float | None = None  # a job requeued after a failed attempt is claimed no earlier (its backoff)
    cancel_requested: bool = False
    error: dict | None = None
    result: dict | None = None
    preview: dict | None = None  # the latest preview frame while rendering: {"step", "total", "uri", "updated_at"}
    window: dict | None = None  # a long clip's window rendering now: {"index", "count", "shot", "shots"} (1-based)
    timings: dict = field(default_factory=dict)
    webhook_url: str | None = None
    webhook: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    idempotency_key: str | None = None
    body_hash: str | None = None
    seq: int = 0
    version: int = 0

    def __post_init__(self):
        if not isinstance(self.id, str) or not _ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"Job.id must match {_ID_PATTERN.pattern}, got {self.id!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"Job.model must be a non-empty string, got {self.model!r}")
        if self.kind not in JOB_KINDS:
            raise ValueError(f"Job.kind must be one of {JOB_KINDS}, got {self.kind!r}")
        if self.status not in JobStatus.ALL:
            raise ValueError(f"Job.status must be one of {JobStatus.ALL}, got {self.status!r}")
        if not isinstance(self.owner, str):
            raise ValueError(f"Job.owner must be a string, got {self.owner!r}")
        for name in ("progress", "attempts", "max_attempts", "seq", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Job.{name} must be a non-negative int, got {value!r}")
        if self.progress > 100 or self.max_attempts < 1:
            raise ValueError(f"Job.progress must be 0-100 and max_attempts >= 1, "
                             f"got {self.progress}, {self.max_attempts}")
        for name in ("request", "timings", "webhook", "metadata"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"Job.{name} must be a dict, got {getattr(self, name)!r}")
        if self.error is not None and not (isinstance(self.error, dict) and {"code", "message"} <= self.error.keys()):
            raise ValueError(f"Job.error must be None or a dict with code and message, got {self.error!r}")
        for name in ("result", "preview", "window"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"Job.{name} must be None or a dict, got {getattr(self, name)!r}")

    @classmethod
    def new(cls, *, model: str, owner: str = "", request: Mapping | None = None, kind: str = "job",
            deadline_s: float | None = None, now: float | None = None, **fields) -> "Job":
        """A fresh queued job with a random id; ``deadline_s`` is relative to ``now`` (default: the clock)."""
        now = time.time() if now is None else now
        deadline_at = None if deadline_s is None else now + deadline_s
        return cls(id=new_job_id(), model=model, owner=owner, request=dict(request or {}), kind=kind,
                   created_at=now, updated_at=now, deadline_at=deadline_at, **fields)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Job":
        """Inverse of ``to_dict``; unknown keys (from a newer writer) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        return cls.from_dict(json.loads(text))


# ---- transition rules, shared by the backends (pure: job in, job out) ----

def idempotency_conflict(existing: Job, key: str) -> IdempotencyConflict:
    """The error of a create that reuses ``key`` with another body (``existing`` was made with the first)."""
    message = f"Idempotency-Key {key!r} was already used with a different body (job {existing.id})"
    return IdempotencyConflict(message, existing.id)


def _bump(job: Job, now: float, **changes) -> Job:
    changes.setdefault("updated_at", now)
    return dataclasses.replace(job, version=job.version + 1, **changes)


def apply_update(job: Job, fields: Mapping[str, Any], *, expected_version: int | None, now: float) -> Job:
    """``update``'s rule: optimistic version check, no status change out of a terminal status."""
    bad = set(fields) & _STORE_MANAGED
    if bad:
        raise ValueError(f"update: {sorted(bad)} are managed by the store")
    unknown = set(fields) - {f.name for f in dataclasses.fields(Job)}
    if unknown:
        raise ValueError(f"update: unknown Job fields {sorted(unknown)}")
    if expected_version is not None and job.version != expected_version:
        raise VersionConflict(f"job {job.id} is at version {job.version}, expected {expected_version}", job.id)
    status = fields.get("status", job.status)
    if job.terminal and status != job.status:
        raise InvalidTransition(f"job {job.id} is {job.status}; it cannot become {status}", job.id)
    return _bump(job, now, **fields)


def claimable(job: Job, model: str, now: float) -> bool:
    """Whether ``claim`` may hand out ``job``: queued, not cancelled, deadline (if any) not yet passed, its retry's
    backoff (if any) over."""
    return (job.model == model and job.status == JobStatus.QUEUED and not job.cancel_requested
            and (job.deadline_at is None or job.deadline_at > now)
            and (job.retry_after is None or job.retry_after <= now))


def apply_claim(job: Job, worker: str, lease_s: float, now: float) -> Job:
    return _bump(job, now, status=JobStatus.IN_PROGRESS, attempts=job.attempts + 1, lease_owner=worker,
                 lease_until=now + lease_s, retry_after=None,
                 started_at=job.started_at if job.started_at is not None else now)


def apply_renew(job: Job, worker: str, lease_s: float, now: float) -> Job:
    if job.status != JobStatus.IN_PROGRESS or job.lease_owner != worker:
        raise LeaseLost(f"job {job.id} is {job.status}, leased to {job.lease_owner!r}, not {worker!r}", job.id)
    return _bump(job, now, lease_until=now + lease_s)


def lease_expired(job: Job, now: float) -> bool:
    return job.status == JobStatus.IN_PROGRESS and job.lease_until is not None and job.lease_until <= now


def apply_release(job: Job, now: float) -> Job:
    """An expired lease: cancelled if a cancel was asked, failed after ``max_attempts``, else queued again."""
    if job.cancel_requested:
        return _bump(job, now, status=JobStatus.CANCELLED, completed_at=now, lease_until=None)
    if job.attempts >= job.max_attempts:
        error = {"code": "worker_lost",
                 "message": f"the renderer stopped renewing its lease; gave up after {job.attempts} attempts"}
        return _bump(job, now, status=JobStatus.FAILED, completed_at=now, lease_until=None, error=error)
    return _bump(job, now, status=JobStatus.QUEUED, lease_owner=None, lease_until=None, progress=0, preview=None,
                 window=None)


def apply_hand_back(job: Job, worker: str, now: float) -> Job:
    """``hand_back``'s rule: the lease holder gives its job up (it is going away), so the attempt is not
    counted; a cancel asked meanwhile ends it cancelled. ``job`` itself when ``worker`` does not hold it."""
    if job.status != JobStatus.IN_PROGRESS or job.lease_owner != worker:
        return job
    if job.cancel_requested:
        return _bump(job, now, status=JobStatus.CANCELLED, completed_at=now, lease_owner=None, lease_until=None)
    return _bump(job, now, status=JobStatus.QUEUED, lease_owner=None, lease_until=None, progress=0, preview=None,
                 window=None, attempts=max(0, job.attempts - 1))


def apply_finish(job: Job, worker: str, fields: Mapping[str, Any], now: float) -> Job:
    """``finish``'s rule: only the holder of an in_progress job's lease records how its attempt ended."""
    if job.status != JobStatus.IN_PROGRESS or job.lease_owner != worker:
        raise LeaseLost(f"job {job.id} is {job.status}, leased to {job.lease_owner!r}, not {worker!r}: "
                        "its attempt's outcome is not recorded", job.id)
    return apply_update(job, {"lease_owner": None, "lease_until": None, **fields}, expected_version=None, now=now)


def apply_cancel(job: Job, now: float) -> Job:
    """``request_cancel``'s rule; returns ``job`` itself when nothing changes (idempotent)."""
    if job.status == JobStatus.QUEUED:
        return _bump(job, now, status=JobStatus.CANCELLED, completed_at=now, error=None, cancel_requested=True)
    if job.status == JobStatus.IN_PROGRESS and not job.cancel_requested:
        return _bump(job, now, cancel_requested=True)
    return job


def deadline_passed(job: Job, now: float) -> bool:
    return not job.terminal and job.deadline_at is not None and job.deadline_at <= now


def apply_deadline(job: Job, now: float) -> Job:
    error = {"code": "timeout", "message": f"the job passed its deadline ({job.deadline_at:.3f}) before finishing"}
    return _bump(job, now, status=JobStatus.FAILED, completed_at=now, error=error, lease_until=None,
                 cancel_requested=job.cancel_requested or job.status == JobStatus.IN_PROGRESS)


def statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Normalize a status filter (one status or several) and refuse unknown values."""
    if status is None:
        return None
    values = (status,) if isinstance(status, str) else tuple(status)
    unknown = [value for value in values if value not in JobStatus.ALL]
    if unknown or not values:
        raise ValueError(f"unknown status filter {status!r}; statuses are {JobStatus.ALL}")
    return values


def kinds(kind: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Normalize a kind filter (one kind or several) and refuse unknown values."""
    if kind is None:
        return None
    values = (kind,) if isinstance(kind, str) else tuple(kind)
    unknown = [value for value in values if value not in JOB_KINDS]
    if unknown or not values:
        raise ValueError(f"unknown kind filter {kind!r}; kinds are {JOB_KINDS}")
    return values


def check_page(limit: int, order: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"list: limit must be a positive int, got {limit!r}")
    if order not in ("asc", "desc"):
        raise ValueError(f"list: order must be 'asc' or 'desc', got {order!r}")


class JobStore(ABC):
    """Durable jobs. Every method is atomic for its backend's scope (see the module docstring)."""

    @abstractmethod
    def create(self, job: Job) -> tuple[Job, bool]:
        """Persist ``job`` (its ``seq`` and ``version`` are assigned here) -> ``(stored, True)``.

        With ``job.idempotency_key``: an earlier job of the same owner and key with the same ``body_hash``
        is returned as ``(existing, False)``; a different ``body_hash`` raises :class:`IdempotencyConflict`.
        """

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """The job, or :class:`JobNotFound`."""

    @abstractmethod
    def find_by_key(self, owner: str, idempotency_key: str) -> Job | None:
        """The owner's job created with ``idempotency_key``, or None (a lookup by the store's key index)."""

    @abstractmethod
    def list(self, *, owner: str | None = None, model: str | None = None, kind: str | Iterable[str] | None = None,
             status: str | Iterable[str] | None = None, limit: int = 20, after: str | None = None,
             order: str = "desc") -> tuple[list[Job], bool]:
        """One page of matching jobs in creation order (``desc``: newest first) and whether more follow.

        ``after`` is the id of the last job of the previous page; an unknown id (or another owner's,
        when ``owner`` is given) raises :class:`JobNotFound`.
        """

    @abstractmethod
    def _mutate(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Replace the record with ``change(record)`` atomically for the backend's scope (``change`` returns
        its argument itself for "no change"); returns the record now stored. :class:`JobNotFound` if absent.
        The single-record rules below (update, renew, hand_back, request_cancel) all go through it."""

    def update(self, job_id: str, *, expected_version: int | None = None, **fields) -> Job:
        """Set ``fields`` (``updated_at`` defaults to now, ``version`` + 1). Raises :class:`VersionConflict`
        when ``expected_version`` is given and differs, :class:`InvalidTransition` when a terminal status
        would change (other fields of a terminal job, e.g. webhook state, may still change)."""
        now = time.time()
        return self._mutate(job_id, lambda job: apply_update(job, fields, expected_version=expected_version, now=now))

    @abstractmethod
    def claim(self, model: str, *, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the oldest claimable job of ``model`` (see :func:`claimable`): in_progress, attempts + 1,
        leased to ``worker`` until ``now + lease_s``. ``None`` when there is none."""

    def renew(self, job_id: str, worker: str, lease_s: float, *, now: float | None = None) -> Job:
        """Extend the lease; raises :class:`LeaseLost` unless ``worker`` still holds the in_progress job.
        The returned job tells the renderer whether ``cancel_requested`` was set meanwhile."""
        now = clock(now)
        return self._mutate(job_id, lambda job: apply_renew(job, worker, lease_s, now))

    @abstractmethod
    def release_expired(self, now: float | None = None) -> list[Job]:
        """In-progress jobs whose lease ran out: queued again, or failed (``worker_lost``) once
        ``attempts >= max_attempts``, or cancelled when a cancel was requested. Returns the changed jobs."""

    def finish(self, job_id: str, worker: str, **fields) -> Job:
        """Record the outcome of ``worker``'s attempt (a terminal status, or queued for a retry) and end its
        lease, only while ``worker`` holds the in_progress job: raises :class:`LeaseLost` when the job was handed
        back, requeued after its lease, or ended meanwhile (deadline, cancel of a queued job), so a render
        that outlived its lease never overwrites the job's current attempt."""
        now = time.time()
        return self._mutate(job_id, lambda job: apply_finish(job, worker, fields, now))

    def hand_back(self, job_id: str, worker: str, *, now: float | None = None) -> Job:
        """``worker`` gives up the job it holds (shutting down): queued again at once, the attempt not
        counted, so another worker resumes it without waiting for the lease. Unchanged if not its holder."""
        now = clock(now)
        return self._mutate(job_id, lambda job: apply_hand_back(job, worker, now))

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """0-based place among the claimable-in-principle queued jobs of its model; ``None`` unless queued."""

    @abstractmethod
    def count(self, *, model: str | None = None, status: str | Iterable[str] | None = None,
              owner: str | None = None) -> int:
        """How many jobs match (for the bounded queue per model and per-key concurrency quotas)."""

    def request_cancel(self, job_id: str, *, now: float | None = None) -> Job:
        """Idempotent cancel: queued -> cancelled now; in_progress -> ``cancel_requested`` (the renderer
        stops between denoising steps, then marks it cancelled); terminal -> unchanged."""
        now = clock(now)
        return self._mutate(job_id, lambda job: apply_cancel(job, now))

    @abstractmethod
    def expire_deadlines(self, now: float | None = None) -> list[Job]:
        """Non-terminal jobs past ``deadline_at`` -> failed with code ``timeout`` (an in_progress one also gets
        ``cancel_requested`` so its renderer stops). Returns the changed jobs."""

    @abstractmethod
    def delete(self, job_id: str) -> Job:
        """Remove the record (and its idempotency entry); returns it. :class:`JobNotFound` if absent."""

    def close(self) -> None:
        """Release what the store holds open (SQLite connections); the data stays."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clock(now: float | None) -> float:
    """``now`` if given (tests, replays), else the wall clock."""
    return time.time() if now is None else float(now)
