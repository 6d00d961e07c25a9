"""Batch manifests: schema, reading through fsspec (local, memory://, S3), per-row validation, the generator CLI."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wan_dist.batch import (MANIFEST_SCHEMA, RESERVED_COLUMNS, ManifestError, derive_seed, frames_for_duration,
                            manifest_from_prompts, manifest_table, read_manifest, write_manifest)
from wan_dist.models.presets import PRESETS
from wan_dist.storage.objects import join, write_bytes_atomic

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "jobs" / "examples"
GOOD = {"id": "good", "model": "tiny", "prompt": "a lighthouse in a storm", "num_frames": 5}


def memory_uri(name: str = "m.parquet") -> str:
    return f"memory://manifest-test-{uuid.uuid4().hex}/{name}"


def roundtrip(rows: list[dict], default_model: str = "tiny"):
    uri = memory_uri()
    write_manifest(rows, uri)
    return read_manifest(uri, default_model=default_model)


def write_raw(table: pa.Table) -> str:
    """A Parquet file written by someone else's tool (pyarrow directly, any schema)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uri = memory_uri()
    write_bytes_atomic(uri, buffer.getvalue())
    return uri


def test_round_trip_keeps_every_value_and_builds_the_request(tmp_path):
    row = {"id": "fox-1", "model": "t2v-a14b", "prompt": "a fox", "negative_prompt": "blur", "width": 832,
           "height": 480, "num_frames": 33, "fps": 12, "num_inference_steps": 7, "guidance_scale": 2,
           "guidance_scale_2": 1.5, "boundary_ratio": 0.5, "shift": 4.0, "solver": "euler",
           "schedule": "reference", "seed": 123, "output_prefix": "campaign//spring/",
           "metadata": {"shot": 3, "tags": ["a"]}}
    uri = str(tmp_path / "m.parquet")
    write_manifest([row], uri)
    assert pq.read_table(uri).schema.names == MANIFEST_SCHEMA.names
    manifest = read_manifest(uri, default_model="tiny")
    assert manifest.invalid == [] and manifest.uri == uri and len(manifest) == 1
    (only,) = manifest.rows
    req, s = only.request, only.request.sampling
    assert (only.id, only.index, only.model, only.output_prefix) == ("fox-1", 0, "t2v-a14b", "campaign/spring")
    assert (req.name, req.prompt, req.negative_prompt, req.image) == ("fox-1", "a fox", "blur", None)
    assert (req.width, req.height, req.num_frames, req.fps, req.seed) == (832, 480, 33, 12, 123)
    assert (s.num_inference_steps, s.guidance_scale, s.guidance_scale_2, s.boundary_ratio, s.shift) == (
        7, 2.0, 1.5, 0.5, 4.0)
    assert (s.solver, s.schedule) == ("euler", "reference")
    assert req.metadata == {"shot": 3, "tags": ["a"]}
    assert only.settings["num_frames"] == 33 and only.settings["schedule"] == "reference"
    assert only.clip_prefix("s3://bucket/run") == "s3://bucket/run/campaign/spring/fox-1"


def test_nulls_take_the_variant_defaults():
    manifest = roundtrip([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "model": "tiny-ti2v"}])
    assert manifest.invalid == []
    for row in manifest.rows:
        d = PRESETS[row.model].defaults
        got = row.settings
        assert (got["width"], got["height"], got["num_frames"], got["fps"]) == (d.width, d.height, d.num_frames, d.fps)
        assert (got["num_inference_steps"], got["guidance_scale"]) == (d.num_inference_steps, d.guidance_scale)
        assert got["guidance_scale_2"] == d.guidance_scale_2 and got["boundary_ratio"] == d.boundary_ratio
        assert row.request.metadata == {} and row.output_prefix == "" and row.request.fps == d.fps
    assert [row.model for row in manifest.rows] == ["tiny", "tiny-ti2v"]


BAD_CASES = [
    ({"model": "t2v-b99"}, "model", "unknown variant"),
    ({"num_frames": 6}, "num_frames", "4k+1"),
    ({"num_frames": 5, "duration_s": 1.0}, "duration_s", "not both"),
    ({"num_frames": None, "duration_s": -2.0}, "duration_s", "positive"),
    ({"num_inference_steps": -3}, "num_inference_steps", "positive integer"),
    ({"model": "tiny-ti2v", "guidance_scale_2": 2.0}, "guidance_scale_2", "one expert"),
    ({"model": "tiny-ti2v", "boundary_ratio": 0.5}, "boundary_ratio", "one expert"),
    ({"boundary_ratio": 1.5}, "boundary_ratio", "must be in"),
    ({"model": "tiny-i2v"}, "image", "needs an input image"),
    ({"image": "s3://b/frame.png"}, "image", "takes no input image"),
    ({"width": 70}, "width", "multiple of 16"),
    ({"model": "tiny-ti2v", "height": 48}, "height", "multiple of 32"),
    ({"fps": 0}, "fps", "positive"),
    ({"guidance_scale": -1.0}, "guidance_scale", "must be in"),
    ({"shift": 0.0}, "shift", "must be a positive number"),
    ({"solver": "heun"}, "solver", "must be one of"),
    ({"schedule": "cosine"}, "schedule", "must be one of"),
    ({"seed": -5}, "seed", "[0, 2^63)"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"metadata": "{not json"}, "metadata", "not valid JSON"),
    ({"metadata": "[1, 2]"}, "metadata", "JSON object"),
    ({"id": "a/b"}, "id", "no '/'"),
    ({"id": "a\\b"}, "id", "no '/'"),
    ({"id": ".hidden"}, "id", "must not start with '.'"),
    ({"id": "new\nline"}, "id", "control characters"),
    ({"id": "x" * 201}, "id", "longer than 200"),
    ({"id": ""}, "id", "non-empty id"),
    ({"output_prefix": "../escape"}, "output_prefix", ".."),
    ({"output_prefix": "/abs/dir"}, "output_prefix", "leading '/'"),
    ({"output_prefix": "s3://other/bucket"}, "output_prefix", "URL"),
    ({"loras": "[{not json"}, "loras", "not valid JSON"),
    ({"loras": '[{"scale": 0.5}]'}, "loras[0].path", "required"),
    ({"loras": '[{"path": "a.safetensors", "transformer": "mid"}]'}, "loras[0].transformer", "must be one of"),
    ({"lora": "a.safetensors"}, "lora", "use the loras column"),
    ({"renditions": '["tiktok", "cinema"]'}, "renditions", "cinema"),
    ({"style_lock": "2.5"}, "style_lock", "must be in [0, 1]"),
]


@pytest.mark.parametrize(("change", "column", "reason"), BAD_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_a_bad_value_is_reported_with_id_column_and_reason(change, column, reason):
    bad = {**GOOD, "id": "bad-row", **change}
    manifest = roundtrip([GOOD, bad, {**GOOD, "id": "after"}])
    assert [row.id for row in manifest.rows] == ["good", "after"]
    assert [row.index for row in manifest.rows] == [0, 2]
    (error,) = manifest.invalid
    expected_id = bad["id"] if bad["id"] else "row-1"
    assert (error.id, error.index, error.column, error.more) == (expected_id, 1, column, ())
    assert reason in error.reason, error.reason
    assert str(error) == f"row 1 (id {expected_id!r}): {column}: {error.reason}"
    assert len(manifest) == 3


def test_every_problem_of_a_row_is_reported():
    bad = {**GOOD, "id": "many", "num_frames": 6, "solver": "heun", "lora": "x", "metadata": "3", "fps": -1}
    manifest = roundtrip([GOOD, bad])
    assert [row.id for row in manifest.rows] == ["good"]
    (error,) = manifest.invalid
    assert (error.id, error.index) == ("many", 1)
    assert sorted(column for column, _ in error.problems) == ["fps", "lora", "metadata", "num_frames", "solver"]
    assert all(f"{column}: {reason}" in str(error) for column, reason in error.problems)


def test_a_null_id_is_a_row_error_named_by_its_index():
    table = pa.table({"id": pa.array(["a", None, "c"]), "prompt": ["x", "y", "z"]})
    manifest = read_manifest(write_raw(table), default_model="tiny")
    assert [row.id for row in manifest.rows] == ["a", "c"]
    assert [(e.id, e.index, e.column) for e in manifest.invalid] == [("row-1", 1, "id")]


def test_duplicate_ids_fail_the_whole_manifest_and_are_listed():
    rows = [{**GOOD, "id": name} for name in ("a", "dup-1", "b", "dup-2", "dup-1", "dup-2", "dup-2")]
    with pytest.raises(ManifestError) as caught:
        roundtrip(rows)
    message = str(caught.value)
    assert "duplicate ids" in message and "'dup-1'" in message and "'dup-2'" in message
    assert "'a'" not in message and "'b'" not in message


@pytest.mark.parametrize(("columns", "needle"), [
    ({"id": ["a"], "prompt": ["x"], "aspect": ["16:9"]}, "unknown column(s) ['aspect']"),
    ({"id": ["a"], "caption": ["x"]}, "missing required column(s) ['prompt']"),
    ({"prompt": ["x"]}, "missing required column(s) ['id']"),
    ({"id": ["a"], "prompt": ["x"], "num_frames": ["5"]}, "num_frames: has type string"),
    ({"id": ["a"], "prompt": ["x"], "guidance_scale": ["high"], "seed": [1.5]}, "guidance_scale: has type string"),
    ({"id": ["a"], "prompt": ["x"], "seed": [1.5]}, "seed: cannot be read as int64"),
    ({"id": [1], "prompt": ["x"]}, "id: has type int64"),
    ({"id": ["a"], "prompt": ["x"], "metadata": [True]}, "metadata: has type bool"),
])
def test_file_level_problems_raise_naming_the_column(columns, needle):
    with pytest.raises(ManifestError) as caught:
        read_manifest(write_raw(pa.table(columns)), default_model="tiny")
    assert needle in str(caught.value)


def test_lenient_types_and_missing_optional_columns():
    """Ints in float columns, whole floats in int columns (pandas' nullable ints), all-null and dictionary columns."""
    table = pa.table({"id": pa.array(["a", "b"]).dictionary_encode(),
                      "prompt": pa.array(["x", "y"], pa.large_string()),
                      "guidance_scale": pa.array([3, None], pa.int32()),
                      "num_frames": pa.array([9.0, None], pa.float64()), "image": pa.nulls(2)})
    manifest = read_manifest(write_raw(table), default_model="tiny")
    assert manifest.invalid == []
    a, b = manifest.rows
    assert a.request.sampling.guidance_scale == 3.0 and a.request.num_frames == 9
    assert b.settings["guidance_scale"] == PRESETS["tiny"].defaults.guidance_scale


def brute_force_frames(duration: float, fps: int, stride: int) -> int:
    candidates = [stride * k + 1 for k in range(0, 400)]
    return min(candidates, key=lambda frames: (abs((frames - 1) / fps - duration), -frames))


@pytest.mark.parametrize(("model", "duration", "fps"), [("tiny", 5.0, 16), ("tiny", 0.3, None), ("tiny-ti2v", 1.1, 24),
                                                        ("tiny", 2.0, 7), ("t2v-a14b", 0.01, 30)])
def test_duration_gives_the_nearest_4k_plus_1_frames(model, duration, fps):
    """The frames the model renders, at its own rate whatever the clip's fps (the publisher converts)."""
    row = {"id": "d", "model": model, "prompt": "x", "duration_s": duration, "fps": fps}
    (only,) = roundtrip([row]).rows
    native = PRESETS[model].defaults.fps
    expected = brute_force_frames(duration, native, PRESETS[model].vae.temporal_stride)
    assert only.request.num_frames == only.settings["num_frames"] == expected
    assert only.request.fps == (fps or native) and only.settings["render_fps"] == native
    assert frames_for_duration(duration, native) == expected


def test_seed_derived_from_the_id_is_stable_and_differs_between_ids():
    ids = [f"clip-{i}" for i in range(50)]
    first = roundtrip([{"id": name, "prompt": "x"} for name in ids])
    again = roundtrip([{"id": name, "prompt": "another prompt"} for name in reversed(ids)])
    seeds = {row.id: row.request.seed for row in first.rows}
    assert seeds == {row.id: row.request.seed for row in again.rows}
    assert len(set(seeds.values())) == len(ids) and all(0 <= s < 2**53 for s in seeds.values())
    assert seeds == {row.id: row.settings["seed"] for row in first.rows}
    # Not Python's salted hash(): a fresh interpreter with another hash seed derives the same values.
    code = ("import json, sys; from wan_dist.batch import derive_seed; "
            "print(json.dumps([derive_seed(i) for i in sys.argv[1:]]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, *ids[:5]], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [seeds[name] for name in ids[:5]]
    assert derive_seed("clip-0") != derive_seed("clip-0 ")


def test_mixed_variants_in_one_manifest():
    rows = [{"id": "t", "model": "tiny", "prompt": "x"}, {"id": "ti", "model": "tiny-ti2v", "prompt": "x"},
            {"id": "i", "model": "tiny-i2v", "prompt": "x", "image": "memory://img/first.png"},
            {"id": "big", "model": "wan2.2-t2v-a14b", "prompt": "x"}, {"id": "default", "prompt": "x"}]
    manifest = roundtrip(rows, default_model="tiny-ti2v")
    assert manifest.invalid == []
    models = {row.id: row.model for row in manifest.rows}
    assert models == {"t": "tiny", "ti": "tiny-ti2v", "i": "tiny-i2v", "big": "t2v-a14b", "default": "tiny-ti2v"}
    for row in manifest.rows:
        spec = PRESETS[row.model]
        assert row.settings["variant"] == spec.name and row.settings["task"] == spec.task
        assert (row.settings["guidance_scale_2"] is None) == (not spec.two_experts)
    i2v = next(row for row in manifest.rows if row.id == "i")
    assert i2v.settings["width"] is None and i2v.request.image == "memory://img/first.png"
    with pytest.raises(ManifestError, match="default_model"):
        roundtrip(rows, default_model="nope")


def test_reads_from_s3(s3_server):
    uri = s3_server.uri("manifests", "run.parquet")
    write_manifest([GOOD, {**GOOD, "id": "bad", "num_frames": 4}], uri)
    manifest = read_manifest(uri, default_model="tiny")
    assert [row.id for row in manifest.rows] == ["good"]
    assert [(e.id, e.column) for e in manifest.invalid] == [("bad", "num_frames")]


def test_reads_from_memory_and_file_urls(tmp_path):
    uri = memory_uri()
    write_manifest([GOOD], uri)
    assert [row.id for row in read_manifest(uri, default_model="tiny").rows] == ["good"]
    write_manifest([GOOD], str(tmp_path / "m.parquet"))
    assert [row.id for row in read_manifest((tmp_path / "m.parquet").as_uri(), default_model="tiny").rows] == ["good"]
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        write_bytes_atomic(join(str(tmp_path), "x.parquet"), b"not parquet")
        read_manifest(str(tmp_path / "x.parquet"), default_model="tiny")


def test_write_refuses_what_the_schema_cannot_hold():
    with pytest.raises(ManifestError, match=r"unknown column\(s\) \['colour'\]"):
        write_manifest([{**GOOD, "colour": "red"}], memory_uri())
    with pytest.raises(ManifestError, match="id: required, but null in row"):
        write_manifest([GOOD, {"prompt": "no id"}], memory_uri())
    with pytest.raises(ManifestError, match="num_frames"):
        write_manifest([{**GOOD, "num_frames": "five"}], memory_uri())


def test_manifest_from_prompts():
    lines = ["# a comment", "first prompt", "", "   ", "  second prompt  ", "#another", "third"]
    rows = manifest_from_prompts(lines, model="tiny", id_prefix="job", num_frames=5, fps=8)
    assert [row["prompt"] for row in rows] == ["first prompt", "second prompt", "third"]
    assert [row["id"] for row in rows] == ["job-00001", "job-00002", "job-00003"]
    assert [row["seed"] for row in rows] == [derive_seed(row["id"]) for row in rows]
    assert all((row["model"], row["num_frames"], row["fps"]) == ("tiny", 5, 8) for row in rows)
    assert [row["seed"] for row in manifest_from_prompts(lines, model="tiny", seed=10)] == [10, 11, 12]
    with pytest.raises(ManifestError, match="colour"):
        manifest_from_prompts(lines, model="tiny", colour="red")


def prompt_rows() -> list[dict]:
    text = (EXAMPLES / "tiny-prompts.txt").read_text()
    return manifest_from_prompts(text.splitlines(), model="tiny", num_frames=5, num_inference_steps=4)


def test_committed_examples_equal_what_the_generators_produce():
    assert pq.read_table(EXAMPLES / "tiny.parquet").equals(manifest_table(prompt_rows()))
    toy_rows = manifest_from_prompts((EXAMPLES / "toy-prompts.txt").read_text().splitlines(), model="toy")
    assert pq.read_table(EXAMPLES / "toy.parquet").equals(manifest_table(toy_rows))
    toy = read_manifest(str(EXAMPLES / "toy.parquet"), default_model="toy")
    assert len(toy.rows) == 8 and toy.invalid == [] and {row.model for row in toy.rows} == {"toy"}
    mixed_rows = [json.loads(line) for line in (EXAMPLES / "mixed.jsonl").read_text().splitlines() if line.strip()]
    assert pq.read_table(EXAMPLES / "mixed.parquet").equals(manifest_table(mixed_rows))
    tiny = read_manifest(str(EXAMPLES / "tiny.parquet"), default_model="tiny")
    assert len(tiny.rows) == 8 and tiny.invalid == []
    mixed = read_manifest(str(EXAMPLES / "mixed.parquet"), default_model="tiny")
    assert {row.model for row in mixed.rows} == {"tiny", "tiny-ti2v"}
    invalid_ids = {error.id for error in mixed.invalid}
    assert invalid_ids == {row["id"] for row in mixed_rows if row["id"].startswith("bad-")}
    readme = (EXAMPLES / "README.md").read_text()
    assert all(f"`{row_id}`" in readme for row_id in invalid_ids)


def test_readme_documents_every_column():
    readme = (EXAMPLES / "README.md").read_text()
    table_rows = [line for line in readme.splitlines() if line.startswith("| `")]
    documented = {name for line in table_rows for name in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])}
    assert set(MANIFEST_SCHEMA.names) <= documented


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "manifest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_regenerates_the_committed_example_and_refuses_invalid_rows(tmp_path):
    out = tmp_path / "out" / "tiny.parquet"
    done = run_cli(f"prompts={EXAMPLES / 'tiny-prompts.txt'}", f"out={out}", "model=tiny", "num_frames=5",
                   "num_inference_steps=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout and "8 rows" in done.stdout
    assert pq.read_table(out).equals(pq.read_table(EXAMPLES / "tiny.parquet"))
    refused = tmp_path / "refused.parquet"
    done = run_cli(f"prompts={EXAMPLES / 'tiny-prompts.txt'}", f"out={refused}", "model=tiny-ti2v",
                   "num_frames=6", "guidance_scale_2=2", cwd=tmp_path)
    assert done.returncode != 0 and not refused.exists()
    assert "clip-00008" in done.stderr and "num_frames" in done.stderr and "guidance_scale_2" in done.stderr
    shared = tmp_path / "shared.parquet"
    done = run_cli(f"prompts={EXAMPLES / 'tiny-prompts.txt'}", f"out={shared}", "model=tiny-ti2v", "seed=40",
                   "id_prefix=spring", "metadata={campaign: spring, take: 2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_manifest(str(shared), default_model="tiny").rows
    assert [row.request.seed for row in rows] == list(range(40, 48)) and rows[0].id == "spring-00001"
    assert all(row.model == "tiny-ti2v" and row.request.metadata == {"campaign": "spring", "take": 2} for row in rows)
