"""Batch manifests: one Parquet row per clip, read through fsspec, validated before anything renders.

A manifest is a Parquet file with the columns of :data:`MANIFEST_SCHEMA` (see jobs/examples/README.md for
the table of columns, defaults and meanings). :func:`read_manifest` reads one from any fsspec URL and
returns a :class:`Manifest`: the valid rows as :class:`ManifestRow` (each with its ``RenderRequest`` and
its resolved settings) and one :class:`RowError` per bad row (id, column, reason, and any further problems).
Bad rows never raise; problems of the whole file do (:class:`ManifestError`): an unknown or missing
required column, a column of the wrong type, duplicate ids.

Rules beyond the per-variant ones of ``resolve_settings``:

- ``seed`` null: :func:`derive_seed` of the id (a hash), so a rerun renders the same clip.
- ``duration_s`` (exclusive with ``num_frames``): ``num_frames = s * floor(duration_s * fps / s + 0.5) + 1``
  where ``s`` is the variant's temporal stride (4) and ``fps`` the row's fps or the variant's default:
  the ``4k+1`` frame count whose length ``(num_frames - 1) / fps`` is nearest to ``duration_s`` (ties up).
- ``fps`` null: the variant's default (recorded in the request, so every row says its fps).
- ``width``/``height`` null on an i2v variant: decided by the input image's aspect at render time
  (``settings`` then holds ``None`` for them).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wan_dist.config import SamplingConfig
from wan_dist.engine.render import RenderRequest
from wan_dist.engine.settings import frames_for_duration, resolve_settings
from wan_dist.models.presets import PRESETS
from wan_dist.storage.objects import join, read_bytes, write_bytes_atomic

__all__ = ["MANIFEST_SCHEMA", "REQUIRED_COLUMNS", "RESERVED_COLUMNS", "ManifestError", "RowError", "ManifestRow",
           "Manifest", "read_manifest", "manifest_from_table", "manifest_table", "write_manifest",
           "manifest_from_prompts", "derive_seed", "frames_for_duration"]

_STRING, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()
MANIFEST_SCHEMA = pa.schema([
    pa.field("id", _STRING, nullable=False), ("model", _STRING), pa.field("prompt", _STRING, nullable=False),
    ("negative_prompt", _STRING), ("image", _STRING), ("width", _INT), ("height", _INT), ("num_frames", _INT),
    ("duration_s", _FLOAT), ("fps", _INT), ("num_inference_steps", _INT), ("guidance_scale", _FLOAT),
    ("guidance_scale_2", _FLOAT), ("boundary_ratio", _FLOAT), ("shift", _FLOAT), ("solver", _STRING),
    ("schedule", _STRING), ("seed", _INT), ("output_prefix", _STRING), ("metadata", _STRING),
    # reserved for the creative controls to come: any non-null value is a row error for now
    ("camera", _STRING), ("safe_zone", _STRING), ("style", _STRING), ("layers", _STRING), ("lora", _STRING),
])
"""Columns of a manifest, in order. Only ``id`` and ``prompt`` are required; a missing optional column is null."""

REQUIRED_COLUMNS = ("id", "prompt")
# What a read table is conformed to: other writers may leave required columns nullable; nulls are row errors.
_READ_SCHEMA = pa.schema([field.with_nullable(True) for field in MANIFEST_SCHEMA])
RESERVED_COLUMNS = ("camera", "safe_zone", "style", "layers", "lora")
MAX_ID_LENGTH = 200
_MODEL_ALIAS_PREFIX = "wan2.2-"  # the HTTP API's model names (wan2.2-t2v-a14b) are accepted too
_RESOLVE_ARGS = ("negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
                 "guidance_scale_2", "boundary_ratio", "shift", "seed", "solver", "schedule")


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


def derive_seed(row_id: str) -> int:
    """The seed of a row whose ``seed`` is null: a hash of its id, in [0, 2^53) (exact in JSON everywhere)."""
    digest = hashlib.sha256(f"wan-dist/manifest-seed/{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 11


def read_manifest(uri: str, *, default_model: str, layout: str = "diffusers",
                  storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Read and validate the Parquet manifest at ``uri`` (a path or any fsspec URL).

    ``default_model`` is the variant of rows whose ``model`` is null; ``layout`` the checkpoint layout the run
    loads (it picks the default schedule). Raises :class:`ManifestError` for file-level problems and
    ``StorageError`` when the object cannot be read; bad rows are reported in ``Manifest.invalid``.
    """
    data = read_bytes(uri, storage_options=storage_options)
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise ManifestError(f"{uri}: not a readable Parquet file ({error})") from error
    return manifest_from_table(table, default_model=default_model, layout=layout, uri=uri)


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
    return name.removeprefix(_MODEL_ALIAS_PREFIX) if isinstance(name, str) else name


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
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if isinstance(parsed, dict):
        return parsed
    raise ValueError(f"must be a JSON object, got {type(parsed).__name__}")


def _validate_row(index: int, r: dict, *, default_model: str, layout: str
                  ) -> tuple[ManifestRow | None, RowError | None]:
    errors: list[tuple[str, str]] = []

    def fail(column: str, reason: str) -> None:
        errors.append((column, reason))

    def checked(column: str, check, fallback=None):
        try:
            return check(r[column])
        except ValueError as error:
            fail(column, str(error))
            return fallback

    checked("id", _row_id)
    row_id = r["id"] if r["id"] and r["id"].strip() else f"row-{index}"
    spec = PRESETS.get(_model_name(r["model"]) if r["model"] is not None else default_model)
    if spec is None:
        fail("model", f"unknown variant {r['model']!r}; known: {', '.join(sorted(PRESETS))}")
    prompt = r["prompt"]
    if prompt is None or not prompt.strip():
        fail("prompt", "must be a non-empty string")
    for column in RESERVED_COLUMNS:
        if r[column] is not None:
            fail(column, "reserved for a feature to come, not supported yet (leave it null)")
    metadata = checked("metadata", _metadata, {})
    output_prefix = checked("output_prefix", _output_prefix, "")
    image = r["image"]
    if image is not None and not image.strip():
        fail("image", "must be a path or URL, or null")
    if r["num_frames"] is not None and r["duration_s"] is not None:
        fail("duration_s", "give num_frames or duration_s, not both")
    if r["fps"] is not None and r["fps"] < 1:
        fail("fps", f"must be a positive integer, got {r['fps']}")
    duration = r["duration_s"]
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        fail("duration_s", f"must be a positive number of seconds, got {duration}")
        duration = None

    if spec is not None:
        fps = r["fps"] if r["fps"] is not None and r["fps"] >= 1 else spec.defaults.fps
        if spec.task == "t2v" and image is not None:
            fail("image", f"the t2v variant {spec.name} takes no input image")
        args = {name: r[name] for name in _RESOLVE_ARGS}
        if args["seed"] is None:
            args["seed"] = derive_seed(row_id)
        from_duration = args["num_frames"] is None and duration is not None
        if from_duration:
            args["num_frames"] = frames_for_duration(duration, fps, spec.vae.temporal_stride)
        settings, resolve_errors = _resolve(spec, args, layout=layout, has_image=image is not None,
                                            prompt=prompt or "-")
        for column, reason in resolve_errors:
            fail("duration_s" if from_duration and column == "num_frames" else column, reason)
    if errors:
        (column, reason), *more = errors
        return None, RowError(id=row_id, index=index, column=column, reason=reason, more=tuple(more))

    sampling = SamplingConfig(solver=args["solver"] or "unipc", schedule=args["schedule"],
                              num_inference_steps=args["num_inference_steps"], shift=args["shift"],
                              guidance_scale=args["guidance_scale"], guidance_scale_2=args["guidance_scale_2"],
                              boundary_ratio=args["boundary_ratio"])
    request = RenderRequest(prompt=prompt, negative_prompt=args["negative_prompt"], image=image,
                            height=args["height"], width=args["width"], num_frames=args["num_frames"], fps=fps,
                            seed=args["seed"], sampling=sampling, name=row_id, metadata=metadata)
    resolved = settings.to_dict()
    resolved.pop("checkpoint_id")  # a placeholder here: the run's checkpoint is not known yet
    if spec.task == "i2v" and (args["height"] is None or args["width"] is None):
        resolved["height"] = resolved["width"] = None  # decided by the image's aspect when rendering
    resolved["fps"] = fps
    return ManifestRow(id=row_id, index=index, model=spec.name, request=request, output_prefix=output_prefix,
                       settings=resolved), None


def _resolve(spec, args: dict, *, layout: str, has_image: bool, prompt: str):
    """resolve_settings on ``args``; after an error, retry with that field at its default to find the next."""
    errors: list[tuple[str, str]] = []
    args = dict(args)
    for _ in range(len(_RESOLVE_ARGS) + 2):
        try:
            settings = resolve_settings(spec, layout=layout, prompt=prompt, prompt_embeds=None,
                                        checkpoint_id="manifest", output_type="np", has_image=has_image, **args)
        except ValueError as error:
            column, _, reason = str(error).partition(": ")
            errors.append((column, reason))
            if column == "image" and not has_image:
                has_image = True
            elif column == "seed" and args["seed"] != 0:
                args["seed"] = 0
            elif column in args and args[column] is not None and column != "seed":
                args[column] = None
            else:
                break
        else:
            return (None if errors else settings), errors
    return None, errors


def manifest_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """An Arrow table with MANIFEST_SCHEMA from row dicts (missing keys: null; a dict ``metadata`` is JSON-encoded)."""
    rows = list(rows)
    unknown = sorted({key for row in rows for key in row} - set(MANIFEST_SCHEMA.names))
    if unknown:
        raise ManifestError(f"unknown column(s) {unknown}; known columns: {MANIFEST_SCHEMA.names}")
    arrays = []
    for target in MANIFEST_SCHEMA:
        values = [row.get(target.name) for row in rows]
        if target.name == "metadata":
            values = [json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in values]
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
