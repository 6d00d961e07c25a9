"""Object storage (local, ``file://``, ``memory://``, ``s3://``, any fsspec URL): atomic publish, reads, listings, presigned URLs."""

from wan_dist.storage.objects import (
    TEMPORARY_PREFIX,
    ObjectNotFoundError,
    StorageError,
    delete,
    exists,
    filesystem,
    join,
    list_prefix,
    presigned_url,
    read_bytes,
    write_bytes_atomic,
)

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
