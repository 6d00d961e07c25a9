"""The object-storage :class:`~wan_dist.serve.jobs.JobStore` (any fsspec URL); pick a store with
:func:`~wan_dist.serve.stores.open_store`.

``ObjectJobStore``: ``{prefix}/jobs/{id}.json`` per job and ``{prefix}/idempotency/{owner}/{sha256(key)}.json``
per idempotency key. Object stores have no transactions; every mutation is a compare-and-swap
(``wan_dist.storage.conditional``: S3 conditional writes, ``If-Match`` / ``If-None-Match``; an ``fcntl`` lock
per folder on local paths): read the record and its version, change it, write it only if nobody wrote in
between, else read again. So any number of processes (the API, every renderer, the autoscaler) may create,
claim and update at once without losing a write, and a create never overwrites: an idempotency key is claimed
with a create-only write of its entry before the job is written (an entry whose job stays missing for 2 s, left
by a create that died in between, is taken over). On filesystems without conditional writes (a warning says
so) writes are plain, serialised only within the process: run one process that mutates there. Listing,
counting and claiming read every job object (O(jobs) requests): fine for thousands of jobs, not millions; prune
finished jobs with ``delete``. ``seq`` is a microsecond timestamp (ties across processes ordered by id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import threading
import time
from typing import Iterable

from wan_dist.serve.jobs import (
    Job, JobExists, JobNotFound, JobStatus, JobStore, JobStoreError, apply_claim, apply_deadline, apply_release,
    check_page, claimable, clock, deadline_passed, idempotency_conflict, kinds, lease_expired, statuses,
)
from wan_dist.storage import ObjectNotFoundError, delete, join, list_prefix, read_bytes, write_bytes_atomic
from wan_dist.storage.conditional import read_versioned, supports_conditional, write_if

__all__ = ["ObjectJobStore"]

log = logging.getLogger("wan_dist.serve")

_PREFIX_LOCKS: dict[str, threading.RLock] = {}
_PREFIX_LOCKS_GUARD = threading.Lock()
_SEQ_GUARD = threading.Lock()
_last_seq = 0
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CAS_ATTEMPTS = 50  # compare-and-swap rounds before a mutation gives up (each lost round: another writer won)
_DANGLING_CHECKS, _DANGLING_WAIT_S = 20, 0.1  # an idempotency entry whose job is missing for 2 s is taken over


def _prefix_lock(uri: str) -> threading.RLock:
    with _PREFIX_LOCKS_GUARD:
        return _PREFIX_LOCKS.setdefault(uri.rstrip("/"), threading.RLock())


def _next_seq() -> int:
    global _last_seq
    with _SEQ_GUARD:
        _last_seq = max(time.time_ns() // 1000, _last_seq + 1)
        return _last_seq


def _segment(owner: str) -> str:
    # Owners are key ids (hex) in practice; anything else is hashed so it cannot shape the key path.
    return owner if _SAFE_SEGMENT.fullmatch(owner) else "h-" + hashlib.sha256(owner.encode()).hexdigest()


class ObjectJobStore(JobStore):
    """Jobs as JSON objects under an fsspec prefix (see the module docstring: compare-and-swap where the
    filesystem has it, else one mutating process)."""

    def __init__(self, uri: str, *, storage_options: dict | None = None):
        self.uri = uri
        self._options = storage_options
        self._lock = _prefix_lock(uri)
        self.conditional = supports_conditional(uri, storage_options=storage_options)
        if not self.conditional:
            log.warning("job store %s: this filesystem has no conditional writes; run one process that mutates it",
                        uri)

    def __repr__(self) -> str:
        return f"ObjectJobStore({self.uri!r})"

    def _job_uri(self, job_id: str) -> str:
        if not _SAFE_SEGMENT.fullmatch(job_id):
            raise JobNotFound(f"no job {job_id!r}", job_id)
        return join(self.uri, "jobs", f"{job_id}.json")

    def _index_uri(self, owner: str, key: str) -> str:
        return join(self.uri, "idempotency", _segment(owner), hashlib.sha256(key.encode()).hexdigest() + ".json")

    def _read(self, job_id: str) -> Job:
        try:
            return Job.from_json(read_bytes(self._job_uri(job_id), storage_options=self._options))
        except ObjectNotFoundError as error:
            raise JobNotFound(f"no job {job_id!r}", job_id) from error

    def _read_versioned(self, job_id: str) -> tuple[Job, str | None]:
        if not self.conditional:
            return self._read(job_id), None
        try:
            data, version = read_versioned(self._job_uri(job_id), storage_options=self._options)
        except ObjectNotFoundError as error:
            raise JobNotFound(f"no job {job_id!r}", job_id) from error
        return Job.from_json(data), version

    def _write_if(self, uri: str, data: bytes, expected: str | None) -> bool:
        """Compare-and-swap (``expected`` None: create only); without conditional writes, a plain write."""
        if self.conditional:
            return write_if(uri, data, expected=expected, content_type="application/json",
                            storage_options=self._options)
        write_bytes_atomic(uri, data, content_type="application/json", storage_options=self._options)
        return True

    def _all(self) -> list[Job]:
        jobs = []
        for uri in list_prefix(join(self.uri, "jobs"), storage_options=self._options):
            if not uri.endswith(".json") or uri.rpartition("/")[2].startswith("."):  # .cas-* temporaries
                continue
            try:
                jobs.append(Job.from_json(read_bytes(uri, storage_options=self._options)))
            except ObjectNotFoundError:  # deleted between the listing and the read
                continue
        return sorted(jobs, key=lambda job: (job.seq, job.id))

    def _mutate(self, job_id: str, change) -> Job:
        """Apply ``change`` to the current record: read, change, write if nobody wrote in between, else again."""
        with self._lock:
            for attempt in range(_CAS_ATTEMPTS):
                job, version = self._read_versioned(job_id)
                changed = change(job)
                if changed is job:
                    return job
                if self._write_if(self._job_uri(job_id), changed.to_json().encode(), version):
                    return changed
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            raise JobStoreError(f"job {job_id}: {_CAS_ATTEMPTS} writers in a row got there first; try again")

    def _mutate_matching(self, predicate, change) -> list[Job]:
        changed = []
        for candidate in self._all():
            if not predicate(candidate):
                continue
            applied = {}

            def apply(job: Job) -> Job:  # the predicate again on the current record (another process may differ)
                applied["hit"] = predicate(job)
                return change(job) if applied["hit"] else job

            try:
                job = self._mutate(candidate.id, apply)
            except JobNotFound:
                continue
            if applied.get("hit"):
                changed.append(job)
        return changed

    def find_by_key(self, owner: str, idempotency_key: str) -> Job | None:
        try:
            entry = json.loads(read_bytes(self._index_uri(owner, idempotency_key), storage_options=self._options))
            return self._read(entry["job_id"])
        except (ObjectNotFoundError, JobNotFound):
            return None  # no entry, or one left by a create that died before writing its job

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            stored = dataclasses.replace(job, seq=_next_seq(), version=1)
            key = job.idempotency_key
            if key is not None:  # claim the key first: a crash in between leaves a dangling entry, never two jobs
                existing = self._claim_key(stored)
                if existing is not None:
                    if existing.body_hash != job.body_hash:
                        raise idempotency_conflict(existing, key)
                    return existing, False
            exists = not self.conditional and self._exists(job.id)
            if exists or not self._write_if(self._job_uri(job.id), stored.to_json().encode(), None):
                raise JobExists(f"job {job.id!r} already exists", job.id)
            return stored, True

    def _exists(self, job_id: str) -> bool:
        try:
            self._read(job_id)
            return True
        except JobNotFound:
            return False

    def _claim_key(self, stored: Job) -> Job | None:
        """Point the owner's idempotency entry at ``stored`` unless it names a job already: that job, or None
        once the entry is ours. An entry whose job does not appear within a few seconds (its create died
        between the two writes) is taken over."""
        uri = self._index_uri(stored.owner, stored.idempotency_key)
        entry = json.dumps({"job_id": stored.id, "body_hash": stored.body_hash, "created_at": stored.created_at})
        for _ in range(_CAS_ATTEMPTS):
            if not self.conditional:
                existing = self.find_by_key(stored.owner, stored.idempotency_key)
                if existing is None:
                    self._write_if(uri, entry.encode(), None)
                return existing
            if self._write_if(uri, entry.encode(), None):
                return None
            try:
                data, version = read_versioned(uri, storage_options=self._options)
            except ObjectNotFoundError:  # deleted meanwhile: try to create it again
                continue
            named = json.loads(data)["job_id"]
            for _wait in range(_DANGLING_CHECKS):  # its creator writes the job right after the entry
                try:
                    return self._read(named)
                except JobNotFound:
                    time.sleep(_DANGLING_WAIT_S)
            if self._write_if(uri, entry.encode(), version):
                return None
        raise JobStoreError(f"idempotency key of {stored.owner}: too many concurrent creates; try again")

    def get(self, job_id: str) -> Job:
        return self._read(job_id)

    @staticmethod
    def _matching(jobs: Iterable[Job], *, owner=None, model=None, kind=None, status=None) -> list[Job]:
        wanted, wanted_kinds = statuses(status), kinds(kind)
        return [job for job in jobs
                if (owner is None or job.owner == owner) and (model is None or job.model == model)
                and (wanted_kinds is None or job.kind in wanted_kinds) and (wanted is None or job.status in wanted)]

    def list(self, *, owner=None, model=None, kind=None, status=None, limit=20, after=None, order="desc"):
        check_page(limit, order)
        jobs = self._all()
        if after is not None:
            anchor = next((job for job in jobs if job.id == after), None)
            if anchor is None or (owner is not None and anchor.owner != owner):
                raise JobNotFound(f"no job {after!r} to page after", after)
            mark = (anchor.seq, anchor.id)
            jobs = [job for job in jobs if ((job.seq, job.id) < mark if order == "desc" else (job.seq, job.id) > mark)]
        jobs = self._matching(jobs, owner=owner, model=model, kind=kind, status=status)
        if order == "desc":
            jobs.reverse()
        return jobs[:limit], len(jobs) > limit

    def claim(self, model: str, *, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        now = clock(now)
        with self._lock:
            for candidate in self._all():
                if not claimable(candidate, model, now):
                    continue
                try:
                    fresh, version = self._read_versioned(candidate.id)
                except JobNotFound:
                    continue
                if fresh.version != candidate.version or not claimable(fresh, model, now):
                    continue  # changed since the listing (claimed, cancelled): the next one
                job = apply_claim(fresh, worker, lease_s, now)
                if self._write_if(self._job_uri(job.id), job.to_json().encode(), version):
                    return job
            return None

    def release_expired(self, now: float | None = None) -> list[Job]:
        now = clock(now)
        return self._mutate_matching(lambda job: lease_expired(job, now), lambda job: apply_release(job, now))

    def queue_position(self, job_id: str) -> int | None:
        job = self._read(job_id)
        if job.status != JobStatus.QUEUED:
            return None
        mark = (job.seq, job.id)
        return sum(1 for other in self._all()
                   if other.model == job.model and other.status == JobStatus.QUEUED and (other.seq, other.id) < mark)

    def count(self, *, model=None, status=None, owner=None) -> int:
        return len(self._matching(self._all(), owner=owner, model=model, status=status))

    def expire_deadlines(self, now: float | None = None) -> list[Job]:
        now = clock(now)
        return self._mutate_matching(lambda job: deadline_passed(job, now), lambda job: apply_deadline(job, now))

    def delete(self, job_id: str) -> Job:
        with self._lock:
            job = self._read(job_id)
            delete(self._job_uri(job_id), storage_options=self._options)
            if job.idempotency_key is not None:
                index = self._index_uri(job.owner, job.idempotency_key)
                try:
                    if json.loads(read_bytes(index, storage_options=self._options)).get("job_id") == job_id:
                        delete(index, storage_options=self._options)
                except ObjectNotFoundError:
                    pass
            return job
