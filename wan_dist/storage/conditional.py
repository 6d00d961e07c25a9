"""Compare-and-swap of small objects: several processes may read-modify-write one object without losing a
write. ``read_versioned`` returns the bytes and an opaque version; ``write_if`` writes only while the object
is still at that version (or, with ``expected=None``, only while it does not exist) and says whether it did.

* S3 (and S3-compatible stores that implement conditional writes: MinIO, R2, ...): ``PutObject`` with
  ``If-Match: <ETag>`` / ``If-None-Match: *``; the store refuses a stale write with 412 (or 409 for two
  conditional writes racing). The version is the ETag.
* Local paths: an ``fcntl`` lock on the folder's ``.cas.lock`` serialises the compare and the write across the
  processes of one machine; the write is a temporary file renamed into place. The version is the file's
  inode, modification time and size, taken from the descriptor the bytes were read from.
* ``memory://``: one process by construction; a process-wide lock and the same version scheme on the bytes.

Other filesystems: :func:`supports_conditional` is False and ``write_if`` raises ``NotImplementedError``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from typing import Any, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from wan_dist.storage.objects import ObjectNotFoundError, StorageError, _describe, _is_s3, filesystem

__all__ = ["supports_conditional", "read_versioned", "write_if"]

_MEMORY_LOCK = threading.Lock()


def supports_conditional(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, _ = filesystem(uri, storage_options=storage_options)
    return _kind(fs) is not None


def _kind(fs: fsspec.AbstractFileSystem) -> str | None:
    if isinstance(fs, LocalFileSystem):
        return "local"
    if isinstance(fs, MemoryFileSystem):
        return "memory"
    if _is_s3(fs):
        return "s3"
    return None


def read_versioned(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> tuple[bytes, str]:
    """``(bytes, version)`` of the object; :class:`ObjectNotFoundError` if it does not exist."""
    fs, path = filesystem(uri, storage_options=storage_options)
    kind = _kind(fs)
    try:
        if kind == "local":
            with open(path, "rb") as handle:
                return handle.read(), _file_version(os.fstat(handle.fileno()))
        if kind == "memory":
            with _MEMORY_LOCK:
                data = fs.cat_file(path)
            return data, hashlib.sha256(data).hexdigest()
        if kind == "s3":
            return fsspec.asyn.sync(fs.loop, _s3_get, fs, path)
    except FileNotFoundError as error:
        raise ObjectNotFoundError(uri, "no such object") from error
    raise NotImplementedError(f"{uri}: conditional writes are not supported on this filesystem")


def write_if(uri: str, data: bytes, *, expected: str | None, content_type: str | None = None,
             storage_options: Mapping[str, Any] | None = None) -> bool:
    """Write ``data`` if the object is still at version ``expected`` (``None``: if it does not exist);
    False when another writer got there first. Raises :class:`StorageError` for anything else."""
    fs, path = filesystem(uri, storage_options=storage_options)
    kind = _kind(fs)
    if kind is None:
        raise NotImplementedError(f"{uri}: conditional writes are not supported on this filesystem")
    try:
        if kind == "local":
            return _local_write_if(path, bytes(data), expected)
        if kind == "memory":
            with _MEMORY_LOCK:
                current = _memory_version(fs, path)
                if current != expected:
                    return False
                fs.pipe_file(path, bytes(data))
                return True
        return fsspec.asyn.sync(fs.loop, _s3_put_if, fs, path, bytes(data), expected, content_type)
    except StorageError:
        raise
    except Exception as error:  # noqa: BLE001 - one error type for callers
        raise StorageError(uri, f"conditional write failed: {_describe(error)}") from error


# -- local files ---------------------------------------------------------------------------------------
def _file_version(stat: os.stat_result) -> str:
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


@contextmanager
def _folder_lock(folder: str):
    import fcntl

    os.makedirs(folder or ".", exist_ok=True)
    with open(os.path.join(folder or ".", ".cas.lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _local_write_if(path: str, data: bytes, expected: str | None) -> bool:
    folder = os.path.dirname(path)
    with _folder_lock(folder):
        try:
            current = _file_version(os.stat(path))
        except FileNotFoundError:
            current = None
        if current != expected:
            return False
        temporary = os.path.join(folder, f".cas-{os.getpid()}-{threading.get_ident()}-{os.path.basename(path)}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return True


def _memory_version(fs, path: str) -> str | None:
    try:
        return hashlib.sha256(fs.cat_file(path)).hexdigest()
    except FileNotFoundError:
        return None


# -- S3 ------------------------------------------------------------------------------------------------
async def _s3_get(fs, path: str) -> tuple[bytes, str]:
    bucket, key, _ = fs.split_path(path)
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return data, response["ETag"]


async def _s3_put_if(fs, path: str, data: bytes, expected: str | None, content_type: str | None) -> bool:
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
    extra = {"ContentType": content_type} if content_type else {}
    try:
        await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition, **extra)
    except FileNotFoundError:  # If-Match on an object deleted since it was read (404): the race is lost
        if expected is None:
            raise
        return False
    except Exception as error:  # noqa: BLE001 - a refused precondition is an answer, not a failure
        if _precondition_failed(error):
            return False
        raise
    fs.invalidate_cache(path)
    return True


def _precondition_failed(error: BaseException) -> bool:
    """412 PreconditionFailed (stale version, or exists for If-None-Match) or 409 ConditionalRequestConflict:
    the write lost a race. s3fs may wrap botocore's error."""
    for candidate in (error, error.__cause__, error.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
    text = str(error)
    return "PreconditionFailed" in text or "ConditionalRequestConflict" in text or "412" in text
