"""Which :class:`~wan_dist.serve.jobs.JobStore` backend a URI names (see :mod:`wan_dist.serve.jobs`).

Apart from ``jobs.py`` because both backends import the job model and its rules from there: the module
that chooses between them sits above all three, so nothing imports in a circle.
"""

from __future__ import annotations

from wan_dist.serve.job_stores import SQLiteJobStore
from wan_dist.serve.jobs import JobStore
from wan_dist.serve.object_job_store import ObjectJobStore

__all__ = ["open_store", "sqlite_path"]


def open_store(uri: str, **options) -> JobStore:
    """The store at ``uri`` (see :mod:`wan_dist.serve.jobs`); ``options`` go to the backend's constructor."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"open_store: uri must be a non-empty string, got {uri!r}")
    if uri.startswith("sqlite:"):
        return SQLiteJobStore(sqlite_path(uri), **options)
    if "://" not in uri and uri.endswith(".db"):
        return SQLiteJobStore(uri, **options)
    return ObjectJobStore(uri, **options)


def sqlite_path(uri: str) -> str:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/jobs.db`` -> ``/abs/jobs.db`` (as SQLAlchemy)."""
    rest = uri[len("sqlite:"):]
    path = rest[3:] if rest.startswith("///") else ""
    if not path or path.startswith(":memory:") or "?" in path:
        raise ValueError(f"{uri!r}: expected sqlite:///relative/jobs.db or sqlite:////absolute/jobs.db "
                         "(a file: an in-memory database is not durable and not shared between threads)")
    return path
