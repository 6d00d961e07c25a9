"""Issue 20: the manifest a tenant names for ``POST /v1/batches`` is read under the URL rules when the batch is
created, never from another bucket or a server path; the copy the batch runs is the one that was checked.
``validate_batch`` is what the route calls; a server on 127.0.0.1 stands in for the internet (``allow_private``
plays the operator's allowance for it)."""

from __future__ import annotations

import dataclasses
import io
from http.server import BaseHTTPRequestHandler

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve_fixtures import loopback_server
from wan_dist.batch import read_manifest
from wan_dist.serve.batch_parts import new_batch
from wan_dist.serve.batches import batch_view, validate_batch
from wan_dist.serve.schemas import RequestError

ROWS = [{"id": "a", "prompt": "a red kite", "model": "tiny"}, {"id": "b", "prompt": "a blue kite", "model": "tiny"}]


def _parquet(rows) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        if self.path == "/m.parquet":
            body = self.server.manifest
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:  # a redirect to an internal address
            self.send_response(302)
            self.send_header("Location", f"http://10.0.0.7:{port}/m.parquet")
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def server():
    with loopback_server(_Handler, manifest=_parquet(ROWS)) as httpd:
        yield httpd


def _validate(uri, tmp_path, **kwargs):
    options = {"allow_private": False, "source_prefixes": (), **kwargs}
    return validate_batch({"manifest_uri": uri}, served=("tiny",), output_root=str(tmp_path / "out"),
                          layout="diffusers", uploaded=None, **options)


def test_an_https_manifest_is_fetched_once_under_the_rules_into_the_tenants_uploads(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/m.parquet"
    with pytest.raises(RequestError, match=r"manifest_uri: .*loopback address 127\.0\.0\.1") as refused:
        _validate(url, tmp_path)
    assert refused.value.status == 422 and refused.value.param == "manifest_uri"
    spec = _validate(url, tmp_path, allow_private=True)  # the operator's allowance (tests' stand-in internet)
    assert spec.rows == 2 and spec.manifest_uri.startswith(str(tmp_path / "out" / "_uploads") + "/")
    server.manifest = _parquet(ROWS[:1])  # the server changes its answer: the batch runs the copy it checked

    assert len(read_manifest(spec.manifest_uri, default_model="tiny")) == 2
    # the batch's view shows the URL the tenant gave, not where the server keeps its copy
    assert spec.manifest_given == url
    root = str(tmp_path / "out")
    request = {"manifest_uri": spec.manifest_uri, "manifest_given": spec.manifest_given, "output": None,
               "rows": spec.rows, "invalid_rows": spec.invalid_rows}
    job = new_batch(rows_by_model=spec.rows_by_model, default_model="tiny", owner="k", output_root=root,
                    request=request)
    assert batch_view(job, output_root=root)["manifest_uri"] == url
    older = dataclasses.replace(job, request={k: v for k, v in job.request.items() if k != "manifest_given"})
    assert batch_view(older, output_root=root)["manifest_uri"].startswith("_uploads/")  # made before it was kept


def test_other_buckets_and_server_paths_are_refused_before_reading_and_allowed_prefixes_read_as_named(tmp_path):
    local = tmp_path / "operator" / "m.parquet"
    local.parent.mkdir()
    local.write_bytes(_parquet(ROWS))
    for uri, rule in ((str(local), "file: URLs are not allowed"), ("s3://other-bucket/m.parquet", "s3: URLs are not"),
                      (str(tmp_path / "nothing.parquet"), "file: URLs are not allowed")):  # missing: the same answer
        with pytest.raises(RequestError, match=f"manifest_uri: {rule}") as refused:
            _validate(uri, tmp_path, allow_private=True)
        assert refused.value.code == "unsafe_url" and "source_prefixes" in str(refused.value)
    spec = _validate(str(local), tmp_path, source_prefixes=(str(tmp_path / "operator"),))
    assert spec.manifest_uri == str(local) and spec.rows == 2
    escape = str(tmp_path / "operator" / ".." / "operator-secrets" / "m.parquet")
    with pytest.raises(RequestError, match="manifest_uri: file: URLs are not allowed"):
        _validate(escape, tmp_path, source_prefixes=(str(tmp_path / "operator"),))


def test_a_manifest_too_large_once_decoded_is_refused_before_decompressing(tmp_path):
    """A few KB of Parquet whose prompt column decodes to 8 MB (the issue's 300 MiB prompt in 10 KB, scaled down)."""
    uploads = tmp_path / "out" / "_uploads"
    uploads.mkdir(parents=True)
    bomb = uploads / "bomb.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "prompt": "x" * (8 * 2**20), "model": "tiny"}]), bomb,
                   compression="zstd")
    assert bomb.stat().st_size < 64 * 1024
    kwargs = dict(served=("tiny",), output_root=str(tmp_path / "out"), layout="diffusers", allow_private=False)
    with pytest.raises(RequestError, match=r"manifest: .* decode to \d+ bytes; at most 1048576") as refused:
        validate_batch({}, uploaded=str(bomb), max_decoded_bytes=2**20, **kwargs)
    assert refused.value.status == 422 and refused.value.param == "manifest"
    many = uploads / "many.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"r{i}", "prompt": "a kite"} for i in range(50)]), many)
    with pytest.raises(RequestError, match=r"manifest: .* 50 rows; at most 10 in one manifest"):
        validate_batch({}, uploaded=str(many), max_rows=10, **kwargs)
    assert validate_batch({}, uploaded=str(many), max_rows=50, **kwargs).rows == 50
