"""Batch manifests: one Parquet row per clip, read through fsspec, validated before anything renders.

A manifest is a Parquet file with the columns of :data:`MANIFEST_SCHEMA` (see jobs/examples/README.md for
the table of columns, defaults and meanings). :func:`read_manifest` reads one from any fsspec URL and
returns a :class:`Manifest`: the valid rows as :class:`ManifestRow` (each with its ``RenderRequest`` and
its resolved settings) and one :class:`RowError` per bad row (id, column, reason, and any further problems).
Bad rows never raise; problems of the whole file do (:class:`ManifestError`): an unknown or missing
required column, a column of the wrong type, duplicate ids.

The request columns are the fields of ``engine.request.REQUEST_FIELDS`` and are checked by its
``build_request`` (as every other front door's), with the row's ``id`` as the request's ``name``. Rules of
the manifest itself:

- ``seed`` null: :func:`derive_seed` of the id (a hash), so a rerun renders the same clip.
- ``duration_s``: see ``engine.request.frames_for_duration``; ``fps`` null: the variant's default (recorded
  in the request, so every row says its fps; another rate is converted to, see ``engine.request``); ``width``/``height`` null on an i2v variant: decided by the
  input image's aspect at render time (``settings`` then holds ``None`` for them).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wan_dist.engine.request import (MAX_PROMPT_CHARS, REQUEST_FIELDS, RenderRequest, RequestError, build_request,
                                     frames_for_duration)
from wan_dist.models.presets import PRESETS, variant_name
from wan_dist.storage.objects import join, read_bytes, write_bytes_atomic

__all__ = ["MANIFEST_SCHEMA", "REQUIRED_COLUMNS", "RESERVED_COLUMNS", "ManifestError", "RowError", "ManifestRow",
           "Manifest", "read_manifest", "manifest_from_table", "manifest_table", "write_manifest",
           "manifest_from_prompts", "derive_seed", "frames_for_duration"]

_STRING = pa.string()
# an object or list column holds JSON
_ARROW = {str: _STRING, int: pa.int64(), float: pa.float64(), dict: _STRING, list: _STRING}
# The request's own fields are its columns (engine.request.REQUEST_FIELDS; ``name`` is the row's ``id``), between
# the row's id and model and where its clip goes.
_REQUEST_COLUMNS = [f for f in REQUEST_FIELDS if f.name not in ("name", "metadata")]
RESERVED_COLUMNS = ("lora",)
_JSON_COLUMNS = {f.name for f in _REQUEST_COLUMNS if f.type in (dict, list)} | {"metadata"}  # JSON text in the file
_RESERVED_HINTS = {"lora": "use the loras column (a JSON list of {path, scale, transformer})"}
MANIFEST_SCHEMA = pa.schema([
    pa.field("id", _STRING, nullable=False), ("model", _STRING),
    *[pa.field(f.name, _ARROW[f.type], nullable=f.name != "prompt") for f in _REQUEST_COLUMNS],
    ("output_prefix", _STRING), ("metadata", _STRING),
    # `lora` is kept only to refuse it with a hint: the column is `loras`
    *[(name, _STRING) for name in RESERVED_COLUMNS],
])
"""Columns of a manifest, in order. Only ``id`` and ``prompt`` are required; a missing optional column is null."""

REQUIRED_COLUMNS = ("id", "prompt")
# What a read table is conformed to: other writers may leave required columns nullable; nulls are row errors.
_READ_SCHEMA = pa.schema([field.with_nullable(True) for field in MANIFEST_SCHEMA])
MAX_ID_LENGTH = 200


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unknown/missing/mistyped columns, duplicate ids, unreadable)."""


@dataclass(frozen=True)
class RowError:
    """A bad row: ``id`` (``row-<index>`` when the id itself is missing), its first problem's ``column`` and
    ``reason``, and its further problems in ``more`` as ``(column, reason)`` pairs."""

    id: str
    index: int
    column: str
    reason: str
    more: tuple[tuple[str, str], ...] = ()

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(self.column, self.reason), *self.more]

    def __str__(self) -> str:
        return f"row {self.index} (id {self.id!r}): " + "; ".join(f"{c}: {r}" for c, r in self.problems)


@dataclass(frozen=True)
class ManifestRow:
    """A valid row: render ``request`` with variant ``model``; the clip goes to ``{output}/{output_prefix}/{id}/``."""

    id: str
    index: int
    model: str
    request: RenderRequest
    output_prefix: str
    settings: dict  # resolved settings (RenderSettings.to_dict() + fps), as validation predicts them

    def clip_prefix(self, output_uri: str) -> str:
        """Folder of this row's ``clip.mp4`` + ``clip.json`` under the run's output URI."""
        return join(output_uri, self.output_prefix, self.id)


@dataclass(frozen=True)
class Manifest:
    uri: str
    rows: list[ManifestRow]  # valid rows, in manifest order
    invalid: list[RowError]  # one per bad row, in manifest order, with every problem found

    def __len__(self) -> int:
        return len(self.rows) + len(self.invalid)

    def of_models(self, models: Iterable[str]) -> "Manifest":
        """The valid rows of these variants (public names allowed), and every invalid row (it has no variant to
        go by). ValueError names a variant that is no preset."""
        wanted = {_model_name(name) for name in models}
        unknown = sorted(wanted - set(PRESETS))
        if unknown:
            raise ValueError(f"only_models: unknown variant(s) {unknown}; known: {sorted(PRESETS)}")
        return Manifest(uri=self.uri, rows=[row for row in self.rows if row.model in wanted], invalid=self.invalid)


def derive_seed(row_id: str) -> int:
    """The seed of a row whose ``seed`` is null: a hash of its id, in [0, 2^53) (exact in JSON everywhere)."""
    digest = hashlib.sha256(f"wan-dist/manifest-seed/{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 11


def read_manifest(uri: str, *, default_model: str, layout: str = "diffusers",
                  storage_options: Mapping[str, Any] | None = None, max_rows: int | None = None,
                  max_decoded_bytes: int | None = None) -> Manifest:
    """Read and validate the Parquet manifest at ``uri`` (a path or any fsspec URL).

    ``default_model`` is the variant of rows whose ``model`` is null; ``layout`` the checkpoint layout the run
    loads (it picks the default schedule). ``max_rows`` / ``max_decoded_bytes``: refuse a file with more rows, or
    whose columns decode to more bytes, before any column is decompressed (the sizes the Parquet footer declares;
    a file that lies about them fails to decode). Raises :class:`ManifestError` for file-level problems and
    ``StorageError`` when the object cannot be read; bad rows are reported in ``Manifest.invalid``.
    """
    data = read_bytes(uri, storage_options=storage_options)
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        _check_size(parquet.metadata, uri, max_rows, max_decoded_bytes)
        table = parquet.read()
    except (pa.ArrowException, OSError) as error:
        raise ManifestError(f"{uri}: not a readable Parquet file ({error})") from error
    return manifest_from_table(table, default_model=default_model, layout=layout, uri=uri)


def _check_size(metadata, uri: str, max_rows: int | None, max_decoded_bytes: int | None) -> None:
    if max_rows is not None and metadata.num_rows > max_rows:
        raise ManifestError(f"{uri}: {metadata.num_rows} rows; at most {max_rows} in one manifest (split it)")
    if max_decoded_bytes is not None:
        decoded = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
        if decoded > max_decoded_bytes:
            raise ManifestError(f"{uri}: its columns decode to {decoded} bytes; at most {max_decoded_bytes} "
                                f"(prompts are at most {MAX_PROMPT_CHARS} characters)")


def manifest_from_table(table: pa.Table, *, default_model: str, layout: str = "diffusers",
                        uri: str = "<table>") -> Manifest:
    """Validate an Arrow table of manifest rows (what :func:`read_manifest` does after reading)."""
    default_model = _model_name(default_model)
    if default_model not in PRESETS:
        raise ManifestError(f"default_model: unknown variant {default_model!r}; known: {sorted(PRESETS)}")
    table = _conform(table, uri)
    ids = [value for value in table.column("id").to_pylist() if value]
    duplicated = sorted(name for name, count in Counter(ids).items() if count > 1)
    if duplicated:
        shown = ", ".join(repr(name) for name in duplicated[:20])
        more = f" and {len(duplicated) - 20} more" if len(duplicated) > 20 else ""
        raise ManifestError(f"{uri}: duplicate ids: {shown}{more}")
    rows, invalid = [], []
    for index, record in enumerate(table.to_pylist()):
        row, error = _validate_row(index, record, default_model=default_model, layout=layout)
        if error is not None:
            invalid.append(error)
        else:
            rows.append(row)
    return Manifest(uri=uri, rows=rows, invalid=invalid)


def _conform(table: pa.Table, uri: str) -> pa.Table:
    """Check the columns of ``table`` and cast it to MANIFEST_SCHEMA (missing optional columns: null)."""
    names = table.column_names
    unknown = [name for name in names if MANIFEST_SCHEMA.get_field_index(name) < 0]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    problems = ([f"missing required column(s) {missing}"] if missing else []) + (
        [f"column(s) appear more than once: {repeated}"] if repeated else []) + (
        [f"unknown column(s) {unknown}; known columns: {MANIFEST_SCHEMA.names}"] if unknown else [])
    if problems:
        raise ManifestError(f"{uri}: " + "; ".join(problems))
    columns, problems = [], []
    for target in MANIFEST_SCHEMA:
        try:
            columns.append(_cast_column(table.column(target.name), target.type) if target.name in names
                           else pa.nulls(table.num_rows, target.type))
        except (pa.ArrowException, TypeError, ValueError) as error:
            problems.append(f"{target.name}: {error}")
    if problems:
        raise ManifestError(f"{uri}: column(s) of the wrong type: " + "; ".join(problems))
    return pa.Table.from_arrays(columns, schema=_READ_SCHEMA)


def _cast_column(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    source = column.type
    if pa.types.is_dictionary(source):
        source = source.value_type
    if pa.types.is_null(source):
        return column.cast(target)
    if pa.types.is_string(target):
        ok = pa.types.is_string(source) or pa.types.is_large_string(source) or pa.types.is_string_view(source)
    else:  # ints in float columns; whole floats in int columns (pandas writes nullable ints as float64)
        ok = pa.types.is_integer(source) or pa.types.is_floating(source)
    if not ok:
        raise TypeError(f"has type {column.type}, expected {target}")
    try:
        return column.cast(target, safe=True)
    except pa.ArrowInvalid as error:
        raise ValueError(f"cannot be read as {target} ({error})") from None


def _model_name(name):
    return variant_name(name) if isinstance(name, str) else name


def _row_id(value) -> str:
    """The id, checked; raises ValueError with the reason."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("missing: every row needs a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"longer than {MAX_ID_LENGTH} characters ({len(value)})")
    if "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"must be a folder name: no '/' or '\\', must not start with '.', got {value!r}")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"must not contain control characters, got {value!r}")
    return value


def _output_prefix(value) -> str:
    """The normalized prefix ('' for null); raises ValueError with the reason."""
    if value is None:
        return ""
    if value.startswith("/") or "\\" in value or "://" in value:
        raise ValueError(f"must be a relative folder (no leading '/', no '\\', no URL), got {value!r}")
    segments = [segment for segment in value.split("/") if segment]
    if any(segment.startswith(".") for segment in segments):
        raise ValueError(f"segments must not be '..' or start with '.', got {value!r}")
    if any(ord(char) < 32 for char in value):
        raise ValueError(f"must not contain control characters, got {value!r}")
    return "/".join(segments)


def _metadata(value) -> dict:
    if value is None:
        return {}
    return _json_object(value)


def _json_object(value) -> dict | None:
    """An object column's JSON text parsed (null stays None); ValueError unless it is a JSON object."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if isinstance(parsed, dict):
        return parsed
    raise ValueError(f"must be a JSON object, got {type(parsed).__name__}")


def _json_value(value):
    """A structured column's value: JSON text (null: absent)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None


def _validate_row(index: int, r: dict, *, default_model: str, layout: str
                  ) -> tuple[ManifestRow | None, RowError | None]:
    errors: list[tuple[str, str]] = []

    def checked(column: str, check, fallback=None):
        try:
            return check(r[column])
        except ValueError as error:
            errors.append((column, str(error)))
            return fallback

    id_ok = checked("id", _row_id) is not None
    row_id = r["id"] if r["id"] and r["id"].strip() else f"row-{index}"
    spec = PRESETS.get(_model_name(r["model"]) if r["model"] is not None else default_model)
    if spec is None:
        errors.append(("model", f"unknown variant {r['model']!r}; known: {', '.join(sorted(PRESETS))}"))
    for column in RESERVED_COLUMNS:
        if r[column] is not None:
            errors.append((column, _RESERVED_HINTS.get(column, "reserved for a feature to come, not supported yet "
                                                                "(leave it null)")))
    metadata = checked("metadata", _metadata, {})
    output_prefix = checked("output_prefix", _output_prefix, "")
    built = None
    if spec is not None:
        fields = {f.name: r[f.name] for f in _REQUEST_COLUMNS if f.name not in _JSON_COLUMNS}
        fields.update({f.name: checked(f.name, _json_object if f.type is dict and f.shorthand is None
                               else _json_value)
                       for f in _REQUEST_COLUMNS if f.name in _JSON_COLUMNS})
        try:
            name = {"name": row_id} if id_ok else {}  # a bad id is reported once, above
            built = build_request({**fields, **name, "metadata": metadata}, spec=spec, layout=layout,
                                  default_seed=lambda: derive_seed(row_id))
        except RequestError as error:
            errors += [("id" if column == "name" else column, reason) for column, reason in error.problems]
    if errors:
        (column, reason), *more = errors
        return None, RowError(id=row_id, index=index, column=column, reason=reason, more=tuple(more))
    return ManifestRow(id=row_id, index=index, model=spec.name, request=built.request, output_prefix=output_prefix,
                       settings=built.settings), None


def manifest_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """An Arrow table with MANIFEST_SCHEMA from row dicts (missing keys: null; a dict ``metadata`` is JSON-encoded)."""
    rows = list(rows)
    unknown = sorted({key for row in rows for key in row} - set(MANIFEST_SCHEMA.names))
    if unknown:
        raise ManifestError(f"unknown column(s) {unknown}; known columns: {MANIFEST_SCHEMA.names}")
    arrays = []
    for target in MANIFEST_SCHEMA:
        values = [row.get(target.name) for row in rows]
        if target.name in _JSON_COLUMNS:  # objects, lists and a style_lock's number shorthand
            values = [v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values]
        try:
            arrays.append(pa.array(values, type=target.type))
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise ManifestError(f"{target.name}: values cannot be stored as {target.type} ({error})") from None
        if not target.nullable and arrays[-1].null_count:
            missing = [i for i, value in enumerate(values) if value is None][:20]
            raise ManifestError(f"{target.name}: required, but null in row(s) {missing}")
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def write_manifest(rows: Iterable[Mapping[str, Any]], uri: str, *,
                   storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``rows`` as a Parquet manifest at ``uri``, atomically; returns ``uri``. Rows are not validated."""
    buffer = io.BytesIO()
    pq.write_table(manifest_table(rows), buffer)
    write_bytes_atomic(uri, buffer.getvalue(), content_type="application/vnd.apache.parquet",
                       storage_options=storage_options)
    return uri


def manifest_from_prompts(lines: Iterable[str], *, model: str, seed: int | None = None, id_prefix: str = "clip",
                          **defaults: Any) -> list[dict]:
    """Manifest rows from prompts, one per line (blank lines and lines starting with '#' are skipped).

    Ids are ``{id_prefix}-00001``, ``{id_prefix}-00002``, ...; ``seed`` None writes each row's
    :func:`derive_seed`, an int writes ``seed + i``. ``defaults`` are column values shared by every row.
    """
    unknown = sorted(set(defaults) - set(MANIFEST_SCHEMA.names))
    fixed = sorted(set(defaults) & {"id", "prompt", "model", "seed"})
    if unknown or fixed:
        raise ManifestError(f"manifest_from_prompts: not a shared column: {unknown + fixed}")
    prompts = [line.strip() for line in lines]
    prompts = [text for text in prompts if text and not text.startswith("#")]
    rows = []
    for i, prompt in enumerate(prompts):
        row_id = f"{id_prefix}-{i + 1:05d}"
        row_seed = derive_seed(row_id) if seed is None else int(seed) + i
        rows.append({"id": row_id, "model": model, "prompt": prompt, "seed": row_seed, **defaults})
    return rows
