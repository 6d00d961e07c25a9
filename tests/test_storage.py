"""wan_dist.storage against a local directory, file:// URLs, memory:// and a real S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import os
import urllib.request
import uuid

import pytest

from wan_dist.storage import (
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

BACKENDS = ["local", "file", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path):
    """A fresh, empty prefix on each backend."""
    if request.param == "local":
        yield str(tmp_path / "out")
    elif request.param == "file":
        yield (tmp_path / "out").as_uri()
    elif request.param == "memory":
        prefix = f"memory://storage-test-{uuid.uuid4().hex}"
        yield prefix
        delete(prefix, recursive=True)
    else:
        yield request.getfixturevalue("s3_server").uri("out")


def failing_producer(first_chunk: bytes, check=None):
    yield first_chunk
    if check is not None:
        check()
    raise RuntimeError("producer exploded")


def test_join_is_url_aware():
    assert join("s3://bucket/runs", "r1", "clip.mp4") == "s3://bucket/runs/r1/clip.mp4"
    assert join("s3://bucket/runs/", "/r1/", "a//b") == "s3://bucket/runs/r1/a/b"
    assert join("memory://", "x", "y") == "memory://x/y"
    assert join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert join("/tmp/a", "b", "") == "/tmp/a/b"
    assert join("s3://bucket") == "s3://bucket"
    with pytest.raises(ValueError, match=r"\.\."):
        join("s3://bucket/a", "../b")
    with pytest.raises(ValueError):
        join("", "a")


def test_write_read_list_delete_round_trip(root):
    first = join(root, "run 1", "clip.mp4")
    second = join(root, "run 1", "nested", "clip.json")
    sibling = join(root, "run 10", "clip.mp4")  # shares the string prefix "run 1" but is another folder
    write_bytes_atomic(first, b"\x00video\xff")
    write_bytes_atomic(second, '{"prompt": "ü"}'.encode())
    write_bytes_atomic(sibling, b"other")

    assert read_bytes(first) == b"\x00video\xff"
    assert exists(first) and exists(second) and exists(join(root, "run 1"))
    assert list_prefix(join(root, "run 1")) == sorted([first, second])
    assert list_prefix(join(root, "run 1") + "/") == sorted([first, second])
    assert list_prefix(join(root, "run 1"), include_temporary=True) == sorted([first, second])
    assert list_prefix(root) == sorted([first, second, sibling])
    assert list_prefix(join(root, "nothing here")) == []

    write_bytes_atomic(first, b"replaced")  # publishing over an existing key replaces it
    assert read_bytes(first) == b"replaced"
    assert list_prefix(join(root, "run 1"), include_temporary=True) == sorted([first, second])

    delete(first)
    assert not exists(first)
    delete(first)  # idempotent
    with pytest.raises(ObjectNotFoundError) as raised:
        delete(first, missing_ok=False)
    assert first in str(raised.value)
    with pytest.raises(ObjectNotFoundError) as raised:
        read_bytes(first)
    assert isinstance(raised.value, FileNotFoundError) and first in str(raised.value)

    delete(root, recursive=True)
    assert list_prefix(root) == []


def test_failed_write_leaves_no_final_key_and_no_temporary(root):
    target = join(root, "clip.mp4")
    seen_during_write = {}

    def check_mid_write():
        seen_during_write["final"] = exists(target)

    with pytest.raises(StorageError) as raised:
        write_bytes_atomic(target, failing_producer(b"partial bytes", check_mid_write))
    assert target in str(raised.value) and "producer exploded" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert seen_during_write == {"final": False}
    assert not exists(target)
    assert list_prefix(root, include_temporary=True) == []


def test_failed_write_keeps_previous_version(root):
    target = join(root, "clip.json")
    write_bytes_atomic(target, b"version 1")
    with pytest.raises(StorageError):
        write_bytes_atomic(target, failing_producer(b"version 2, half"))
    assert read_bytes(target) == b"version 1"
    assert list_prefix(root, include_temporary=True) == [target]


def test_streamed_write_uses_a_temporary_beside_the_final_key(tmp_path):
    target = tmp_path / "runs" / "clip.mp4"
    observed = {}

    def chunks():
        yield b"abc"
        observed["names"] = sorted(os.listdir(tmp_path / "runs"))
        yield b"def"

    write_bytes_atomic(str(target), chunks())
    assert target.read_bytes() == b"abcdef"
    (temporary_name,) = observed["names"]  # only the temporary existed mid-write, in the same folder
    assert temporary_name.startswith(TEMPORARY_PREFIX) and temporary_name.endswith("-clip.mp4")
    assert os.listdir(tmp_path / "runs") == ["clip.mp4"]


def test_unpublishable_local_target_leaves_no_temporary(tmp_path):
    target = tmp_path / "clip.mp4"
    target.mkdir()  # a directory where the object should go: the rename must fail
    (target / "keep.txt").write_bytes(b"untouched")
    with pytest.raises(StorageError) as raised:
        write_bytes_atomic(str(target), b"data")
    assert str(target) in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]
    assert (target / "keep.txt").read_bytes() == b"untouched"


def test_unwritable_local_parent_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(StorageError) as raised:
        write_bytes_atomic(str(blocker / "clip.mp4"), b"data")
    assert "clip.mp4" in str(raised.value)
    assert os.listdir(tmp_path) == ["file"]


def test_s3_content_type_and_presigned_url(s3_server):
    import boto3

    target = s3_server.uri("runs", "r1", "clip.mp4")
    payload = os.urandom(4096)
    write_bytes_atomic(target, payload, content_type="video/mp4")

    client = boto3.client("s3")  # configured only by the standard AWS variables the fixture set
    head = client.head_object(Bucket=s3_server.bucket, Key="runs/r1/clip.mp4")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == len(payload)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    assert keys == ["runs/r1/clip.mp4"]  # no temporary left behind

    url = presigned_url(target, expires_s=600)
    assert url.startswith(s3_server.endpoint_url + "/") and "X-Amz-Signature=" in url  # SigV4
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == payload
        assert response.headers["Content-Type"] == "video/mp4"
    with pytest.raises(ValueError, match="at most"):
        presigned_url(target, expires_s=8 * 24 * 3600)


def test_s3_streamed_failure_removes_uploaded_temporary(s3_server):
    import boto3

    target = s3_server.uri("clip.mp4")
    with pytest.raises(StorageError):
        write_bytes_atomic(target, failing_producer(b"x" * 1024), content_type="video/mp4")
    listing = boto3.client("s3").list_objects_v2(Bucket=s3_server.bucket)
    assert listing.get("KeyCount", 0) == 0


def test_s3_missing_bucket_is_a_storage_error(s3_server):
    target = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/clip.mp4"
    with pytest.raises(StorageError) as raised:
        write_bytes_atomic(target, b"data")
    assert target in str(raised.value)
    with pytest.raises(ObjectNotFoundError):
        read_bytes(s3_server.uri("absent.json"))


def test_presigned_url_local_and_memory(tmp_path):
    local = str(tmp_path / "a b" / "clip.mp4")
    write_bytes_atomic(local, b"local bytes")
    url = presigned_url(local)
    assert url.startswith("file://")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"local bytes"
    assert presigned_url(f"memory://presign-{uuid.uuid4().hex}/clip.mp4") is None
    with pytest.raises(ValueError):
        presigned_url(local, expires_s=0)


def test_filesystem_resolution_and_errors(tmp_path):
    fs, path = filesystem(f"memory://resolve-{uuid.uuid4().hex}/k")
    assert "memory" in fs.protocol and path.endswith("/k")
    fs, path = filesystem((tmp_path / "x").as_uri())
    assert path == str(tmp_path / "x")
    with pytest.raises(StorageError, match="nosuchproto://bucket/key"):
        filesystem("nosuchproto://bucket/key")
    with pytest.raises(StorageError, match="names no object"):
        write_bytes_atomic(f"memory://dir-{uuid.uuid4().hex}/", b"x")
    with pytest.raises(TypeError):
        write_bytes_atomic(str(tmp_path / "s.txt"), "not bytes")


def test_s3_listing_and_exists_see_objects_written_by_another_client(s3_server):
    import boto3

    prefix = s3_server.uri("fresh")
    assert list_prefix(prefix) == [] and not exists(f"{prefix}/a.bin")  # s3fs would cache these answers
    boto3.client("s3").put_object(Bucket=s3_server.bucket, Key="fresh/a.bin", Body=b"x")
    assert list_prefix(prefix) == [f"{prefix}/a.bin"] and exists(f"{prefix}/a.bin")
