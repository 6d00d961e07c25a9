"""Object storage through fsspec: local paths, ``file://``, ``memory://``, ``s3://`` and any fsspec URL.

Outputs are published with :func:`write_bytes_atomic`: the bytes go to a temporary key beside the
final one (``.tmp-<uuid>-<name>``) and are then published, so a reader sees the final key either
absent or complete. Credentials and endpoints for S3 come from the standard AWS configuration
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_DEFAULT_REGION``, profiles, ...), resolved by
botocore; this module reads no environment variables of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "TEMPORARY_PREFIX",
    "ObjectNotFoundError",
    "StorageError",
    "delete",
    "exists",
    "filesystem",
    "join",
    "list_prefix",
    "presigned_url",
    "read_bytes",
    "write_bytes_atomic",
]

TEMPORARY_PREFIX = ".tmp-"
"""Name prefix of the temporary keys written by :func:`write_bytes_atomic`."""

_S3_PROTOCOLS = frozenset({"s3", "s3a"})
_SIGV4_MAX_EXPIRES_S = 7 * 24 * 3600

Data = bytes | bytearray | memoryview | Iterable[bytes]


class StorageError(OSError):
    """A storage operation failed. ``uri`` names the object, ``reason`` says why; the lower error is ``__cause__``."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason

    def __reduce__(self):  # keep the two-argument constructor picklable (Ray ships exceptions)
        return (type(self), (self.uri, self.reason))


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object does not exist."""


def join(uri: str, *parts: str) -> str:
    """Append ``parts`` to ``uri`` with ``/``, keeping the scheme (``s3://b/k`` + ``a``, ``b/c`` -> ``s3://b/k/a/b/c``).

    Empty segments are dropped; ``.`` and ``..`` segments are refused so a key cannot climb out of its prefix.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"join: uri must be a non-empty string, got {uri!r}")
    result = uri
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"join: parts must be strings, got {type(part).__name__} {part!r}")
        segments = [segment for segment in part.split("/") if segment]
        if any(segment in (".", "..") for segment in segments):
            raise ValueError(f"join: relative segment in {part!r} (joining onto {uri!r})")
        if not segments:
            continue
        if result.endswith("://"):
            result = result + "/".join(segments)
        else:
            result = result.rstrip("/") + "/" + "/".join(segments)
    return result


def filesystem(
    uri: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``uri`` to ``(filesystem, path inside it)``.

    S3 listings are not cached (``use_listings_cache=False`` unless given): outputs are published
    by other processes, and a stale listing would hide them from :func:`exists`. S3 requests and
    presigned URLs use SigV4 unless ``config_kwargs`` says otherwise.
    """
    if not isinstance(uri, str) or not uri:
        raise StorageError(repr(uri), "the uri must be a non-empty string")
    options = dict(storage_options or {})
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol in _S3_PROTOCOLS:
        options.setdefault("use_listings_cache", False)
        # botocore presigns S3 URLs with SigV2 unless told otherwise; SigV4 is what every region and
        # S3-compatible store (MinIO, R2, GCS interop) accepts.
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("signature_version", "s3v4")
        options["config_kwargs"] = config
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except Exception as error:  # unknown protocol, missing backend package, bad options
        raise StorageError(uri, f"cannot open a filesystem: {_describe(error)}") from error


def write_bytes_atomic(
    uri: str,
    data: Data,
    *,
    content_type: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write ``data`` to ``uri`` so that the object is either absent (or its old version) or complete.

    ``data`` is bytes-like, or an iterable of bytes chunks streamed to the temporary key.
    ``content_type`` is recorded as the S3 ``ContentType``; other filesystems ignore it.
    On any failure the temporary is removed, the final key is left untouched, and
    :class:`StorageError` is raised.
    """
    if isinstance(data, str):
        raise TypeError(f"write_bytes_atomic({uri!r}): data must be bytes, not str (encode it first)")
    fs, path = filesystem(uri, storage_options=storage_options)
    if not path or path.endswith("/") or uri.endswith("/"):
        raise StorageError(uri, "the uri names no object (empty final path segment)")
    folder, separator, name = path.rpartition("/")
    temporary = f"{folder}{separator}{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}"
    try:
        if isinstance(fs, LocalFileSystem):
            _write_local(temporary, path, data)
        else:
            extra = {"ContentType": content_type} if content_type and _is_s3(fs) else {}
            _write_remote(fs, temporary, data, extra)
            # Object stores have no rename; a server-side copy publishes the key in one step.
            fs.cp_file(temporary, path)
            fs.rm_file(temporary)
    except BaseException as error:
        _remove_quietly(fs, temporary)
        if isinstance(error, Exception):
            raise StorageError(uri, f"atomic write failed: {_describe(error)}") from error
        raise


def read_bytes(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Return the whole object. Raises :class:`ObjectNotFoundError` if it does not exist."""
    fs, path = filesystem(uri, storage_options=storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as error:
        raise ObjectNotFoundError(uri, "no such object") from error
    except Exception as error:
        raise StorageError(uri, f"read failed: {_describe(error)}") from error


def exists(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether an object (or a non-empty prefix / directory) exists at ``uri``."""
    fs, path = filesystem(uri, storage_options=storage_options)
    try:
        fs.invalidate_cache(path)  # s3fs caches listings: answer what is there now
        return bool(fs.exists(path))
    except Exception as error:
        raise StorageError(uri, f"existence check failed: {_describe(error)}") from error


def delete(
    uri: str,
    *,
    missing_ok: bool = True,
    recursive: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Delete the object at ``uri`` (everything under it when ``recursive``). Idempotent unless ``missing_ok=False``."""
    fs, path = filesystem(uri, storage_options=storage_options)
    try:
        if recursive:
            fs.rm(path, recursive=True)
        else:
            # S3 DeleteObject succeeds on a missing key, so ask first when the caller wants to know.
            if not missing_ok and not fs.exists(path):
                raise FileNotFoundError(path)
            fs.rm_file(path)
    except FileNotFoundError as error:
        if not missing_ok:
            raise ObjectNotFoundError(uri, "no such object") from error
    except Exception as error:
        raise StorageError(uri, f"delete failed: {_describe(error)}") from error


def list_prefix(
    uri: str,
    *,
    include_temporary: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every object under ``uri`` (recursively, directory semantics), as sorted URIs spelled like ``uri``.

    Temporary keys of writes in flight (or of writers that died) are left out unless ``include_temporary``.
    A missing prefix lists as ``[]``.
    """
    fs, path = filesystem(uri, storage_options=storage_options)
    base = path.rstrip("/")
    try:
        fs.invalidate_cache(base)  # s3fs caches listings: list what is there now
        found = fs.find(base)
    except FileNotFoundError:
        return []
    except Exception as error:
        raise StorageError(uri, f"listing failed: {_describe(error)}") from error
    uris = []
    for entry in found:
        entry = entry.rstrip("/")
        if entry == base:
            uris.append(uri)
            continue
        if not entry.startswith(base + "/") and base:
            continue  # never expected; guards against a backend answering outside the prefix
        relative = entry[len(base) :].lstrip("/")
        if not include_temporary and relative.rpartition("/")[2].startswith(TEMPORARY_PREFIX):
            continue
        uris.append(join(uri, relative))
    return sorted(uris)


def presigned_url(
    uri: str, *, expires_s: int = 3600, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """A URL that fetches the object without credentials, valid for ``expires_s`` seconds.

    S3: a presigned GET URL (on the configured endpoint). Local files: a ``file://`` URL.
    http(s): the URL itself. Filesystems that cannot sign (``memory://``): ``None``.
    """
    if isinstance(expires_s, bool) or not isinstance(expires_s, int) or expires_s <= 0:
        raise ValueError(f"presigned_url({uri!r}): expires_s must be a positive int, got {expires_s!r}")
    fs, path = filesystem(uri, storage_options=storage_options)
    protocols = _protocols(fs)
    if _is_s3(fs) and expires_s > _SIGV4_MAX_EXPIRES_S:
        raise ValueError(
            f"presigned_url({uri!r}): S3 (SigV4) URLs last at most {_SIGV4_MAX_EXPIRES_S} s, got {expires_s}"
        )
    try:
        if isinstance(fs, LocalFileSystem):
            return Path(path).absolute().as_uri()
        if _is_s3(fs):
            return fs.url(path, expires=expires_s)
        if protocols & {"http", "https"}:
            return uri
        if protocols & {"memory"}:
            return None
        try:
            return fs.sign(path, expiration=expires_s)
        except NotImplementedError:
            return None
    except Exception as error:
        raise StorageError(uri, f"cannot presign: {_describe(error)}") from error


def _write_local(temporary: str, final: str, data: Data) -> None:
    os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
    with open(temporary, "wb") as handle:
        for chunk in _chunks(data):
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)


def _write_remote(fs: fsspec.AbstractFileSystem, temporary: str, data: Data, extra: dict) -> None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        fs.pipe_file(temporary, bytes(data), **extra)
        return
    with fs.open(temporary, "wb", **extra) as handle:
        for chunk in _chunks(data):
            handle.write(chunk)


def _chunks(data: Data) -> Iterable[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield data
        return
    for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"data chunks must be bytes-like, got {type(chunk).__name__}")
        yield chunk


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Best effort: the original error matters more than a failed clean-up, and a leftover
    # temporary is invisible to list_prefix and to readers of the final key.
    try:
        if isinstance(fs, LocalFileSystem):
            os.remove(path)
        else:
            fs.rm_file(path)
    except Exception:
        pass


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(_protocols(fs) & _S3_PROTOCOLS)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
