"""The SQLite :class:`~wan_dist.serve.jobs.JobStore`, the default (the object-storage one is
``wan_dist.serve.object_job_store``); pick one with :func:`~wan_dist.serve.stores.open_store`.

``SQLiteJobStore``: one table, the job as JSON plus the columns that queries filter on. WAL mode,
``synchronous=FULL`` (a committed job survives a power cut, not only a crash), one connection per thread
(and per process: a forked child opens its own), every write a ``BEGIN IMMEDIATE`` transaction, so creates,
claims and updates are atomic across threads and processes on one machine. ``seq`` is the AUTOINCREMENT
row id: creation order, never reused after a delete, so cursor paging stays stable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from contextlib import contextmanager

from wan_dist.serve.jobs import (
    Job, JobExists, JobNotFound, JobStatus, JobStore, JobStoreError, apply_claim, apply_deadline, apply_release,
    check_page, clock, idempotency_conflict, kinds, statuses,
)

__all__ = ["SQLiteJobStore"]


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, model TEXT NOT NULL, kind TEXT NOT NULL,
    owner TEXT NOT NULL, status TEXT NOT NULL, cancel_requested INTEGER NOT NULL, deadline_at REAL,
    lease_until REAL, idempotency_key TEXT, version INTEGER NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(model, status, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
"""
_COLUMNS = ("id", "model", "kind", "owner", "status", "cancel_requested", "deadline_at", "lease_until",
            "idempotency_key", "version", "data")
_SELECT = "SELECT seq, version, data FROM jobs"
_INSERT = f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in _COLUMNS)} WHERE id = ?"


def _row_values(job: Job) -> tuple:
    # seq and version live in their columns; the JSON keeps everything else.
    data = {key: value for key, value in job.to_dict().items() if key not in ("seq", "version")}
    return (job.id, job.model, job.kind, job.owner, job.status, int(job.cancel_requested), job.deadline_at,
            job.lease_until, job.idempotency_key, job.version, json.dumps(data, separators=(",", ":")))


def _from_row(row) -> Job:
    seq, version, data = row
    return Job.from_dict({**json.loads(data), "seq": seq, "version": version})


class SQLiteJobStore(JobStore):
    """Jobs in an SQLite file (see the module docstring). ``busy_timeout_s``: how long a writer waits for another."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 30.0, synchronous: str = "FULL"):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._connections: list[tuple[int, sqlite3.Connection]] = []  # (opening pid, connection)
        self._guard = threading.Lock()
        self._closed = False
        self._connection().execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
        with self._transaction() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)

    def __repr__(self) -> str:
        return f"SQLiteJobStore({self.path!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise JobStoreError(f"{self!r} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._guard:
                self._connections.append((os.getpid(), conn))
        return conn

    @contextmanager
    def _transaction(self):
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no read-then-upgrade deadlocks
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_row(conn: sqlite3.Connection, job: Job) -> None:
        conn.execute(_UPDATE, (*_row_values(job), job.id))

    def _fetch(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}", job_id)
        return _from_row(row)

    def _mutate(self, job_id: str, change) -> Job:
        with self._transaction() as conn:
            job = self._fetch(conn, job_id)
            changed = change(job)
            if changed is not job:
                self._write_row(conn, changed)
            return changed

    def _mutate_where(self, where: str, params: tuple, change) -> list[Job]:
        with self._transaction() as conn:
            changed = [change(_from_row(row)) for row in conn.execute(f"{_SELECT} WHERE {where} ORDER BY seq", params)]
            for job in changed:
                self._write_row(conn, job)
            return changed

    @staticmethod
    def _by_key(conn, owner: str, key: str) -> Job | None:
        row = conn.execute(f"{_SELECT} WHERE owner = ? AND idempotency_key = ?", (owner, key)).fetchone()
        return None if row is None else _from_row(row)

    def find_by_key(self, owner: str, idempotency_key: str) -> Job | None:
        return self._by_key(self._connection(), owner, idempotency_key)

    def create(self, job: Job) -> tuple[Job, bool]:
        with self._transaction() as conn:
            if job.idempotency_key is not None:
                existing = self._by_key(conn, job.owner, job.idempotency_key)
                if existing is not None:
                    if existing.body_hash != job.body_hash:
                        raise idempotency_conflict(existing, job.idempotency_key)
                    return existing, False
            stored = dataclasses.replace(job, version=1, seq=0)
            try:
                cursor = conn.execute(_INSERT, _row_values(stored))
            except sqlite3.IntegrityError as error:
                raise JobExists(f"job {job.id!r} already exists", job.id) from error
            return dataclasses.replace(stored, seq=cursor.lastrowid), True

    def get(self, job_id: str) -> Job:
        return self._fetch(self._connection(), job_id)

    @staticmethod
    def _filters(*, owner=None, model=None, kind=None, status=None) -> tuple[list[str], list]:
        where, params = [], []
        for name, value in (("owner", owner), ("model", model)):
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        wanted_kinds = kinds(kind)
        if wanted_kinds is not None:
            where.append(f"kind IN ({', '.join('?' * len(wanted_kinds))})")
            params.extend(wanted_kinds)
        wanted = statuses(status)
        if wanted is not None:
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        return where, params

    def list(self, *, owner=None, model=None, kind=None, status=None, limit=20, after=None, order="desc"):
        check_page(limit, order)
        conn = self._connection()
        where, params = self._filters(owner=owner, model=model, kind=kind, status=status)
        if after is not None:
            row = conn.execute("SELECT seq, owner FROM jobs WHERE id = ?", (after,)).fetchone()
            if row is None or (owner is not None and row[1] != owner):
                raise JobNotFound(f"no job {after!r} to page after", after)
            where.append("seq < ?" if order == "desc" else "seq > ?")
            params.append(row[0])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = conn.execute(f"{_SELECT}{clause} ORDER BY seq {order.upper()} LIMIT ?", (*params, limit + 1)).fetchall()
        return [_from_row(row) for row in rows[:limit]], len(rows) > limit

    def claim(self, model: str, *, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        now = clock(now)
        with self._transaction() as conn:
            row = conn.execute(f"{_SELECT} WHERE model = ? AND status = ? AND cancel_requested = 0 "
                               "AND (deadline_at IS NULL OR deadline_at > ?) "
                               "AND coalesce(json_extract(data, '$.retry_after'), 0) <= ? ORDER BY seq LIMIT 1",
                               (model, JobStatus.QUEUED, now, now)).fetchone()
            if row is None:
                return None
            job = apply_claim(_from_row(row), worker, lease_s, now)
            self._write_row(conn, job)
            return job

    def release_expired(self, now: float | None = None) -> list[Job]:
        now = clock(now)
        return self._mutate_where("status = ? AND lease_until <= ?", (JobStatus.IN_PROGRESS, now),
                                  lambda job: apply_release(job, now))

    def queue_position(self, job_id: str) -> int | None:
        row = self._connection().execute(
            "SELECT j.status, (SELECT COUNT(*) FROM jobs q WHERE q.model = j.model AND q.status = ? AND q.seq < j.seq) "
            "FROM jobs j WHERE j.id = ?", (JobStatus.QUEUED, job_id)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}", job_id)
        return row[1] if row[0] == JobStatus.QUEUED else None

    def count(self, *, model=None, status=None, owner=None) -> int:
        where, params = self._filters(owner=owner, model=model, status=status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._connection().execute(f"SELECT COUNT(*) FROM jobs{clause}", params).fetchone()[0]

    def expire_deadlines(self, now: float | None = None) -> list[Job]:
        now = clock(now)
        return self._mutate_where("status IN (?, ?) AND deadline_at <= ?",
                                  (JobStatus.QUEUED, JobStatus.IN_PROGRESS, now), lambda job: apply_deadline(job, now))

    def delete(self, job_id: str) -> Job:
        with self._transaction() as conn:
            job = self._fetch(conn, job_id)
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return job

    def close(self) -> None:
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections, []
        for pid, conn in connections:
            if pid == os.getpid():  # a forked child must not close (and checkpoint through) its parent's connections
                conn.close()
