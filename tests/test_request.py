"""One request, one path: every field of engine.request.REQUEST_FIELDS reaches the same RenderRequest through
every front door (Python's build_request, the CLI's config, a manifest row, an HTTP body), and a bad value is
refused at each door naming the same field.

The walk is driven by REQUEST_FIELDS itself: a field added there without a value here fails the walk, so a new
request field is shown to work everywhere the day it is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from wan_dist.batch.manifest import read_manifest, write_manifest
from wan_dist.controls import CameraPath
from wan_dist.engine.request import REQUEST_FIELDS, RenderRequest, RequestError, build_request
from wan_dist.models.presets import PRESETS
from wan_dist.serve.schemas import RequestError as HTTPError, validate_job_request

BASE = {"prompt": "a paper kite over the dunes", "seed": 5}
# one value per field that differs from its default (``variant``: where the field applies); width and height
# go together (their partner at its default), as the HTTP door asks
WALK: dict[str, tuple[str, object]] = {
    "prompt": ("tiny", "a red kite over the sea"),
    "negative_prompt": ("tiny", "blurry, dark"),
    "image": ("tiny-ti2v", "s3://frames/kite.png"),
    "width": ("tiny", 80),
    "height": ("tiny", 96),
    "num_frames": ("tiny", 13),
    "duration_s": ("tiny", 1.0),
    "fps": ("tiny", 8),
    "fps_mode": ("tiny", "playback"),  # with WALK's fps (at the native rate it is stored null)
    "num_inference_steps": ("tiny", 3),
    "guidance_scale": ("tiny", 2.5),
    "guidance_scale_2": ("tiny", 1.5),
    "boundary_ratio": ("tiny", 0.5),
    "shift": ("tiny", 7.0),
    "solver": ("tiny", "euler"),
    "schedule": ("tiny", "reference"),
    "cache": ("tiny", "teacache"),
    "cache_threshold": ("tiny", 0.3),  # with cache (as layers with camera)
    "cache_retention": ("tiny", 0.5),
    "recipe": ("tiny", "lightning"),
    "seed": ("tiny", 11),
    "name": ("tiny", "kite-walk"),
    "metadata": ("tiny", {"campaign": "walk"}),
    "camera": ("tiny", {"moves": [{"type": "pan", "amount": 12.5, "easing": "linear"},
                                  {"type": "zoom", "amount": 1.2, "start": 0.5}], "shake": {"intensity": 0.3}}),
    "layers": ("tiny", {"parallax": 3.0, "foreground_box": [0.2, 0.25, 0.8, 0.9]}),  # with WALK's camera
    "loras": ("tiny", [{"path": "s3://loras/style.safetensors", "scale": 0.8, "transformer": "both"},
                       {"path": "https://example.com/lightning-low.safetensors"}]),
    "renditions": ("tiny", ["tiktok", "youtube"]),
    "subject_box": ("tiny", [[0.1, 0.2, 0.4, 0.6], [0.5, 0.2, 0.8, 0.6]]),  # keyframes, with WALK's renditions
    "overlays": ("tiny", {"title": {"text": "Kites", "position": "top"}, "guides": True}),  # with WALK's renditions
    "style_lock": ("tiny-ti2v", 0.6),  # the number shorthand, with WALK's image
    "long": ("tiny", {"window": 5, "overlap": 1, "impose": 0.25}),
    "shots": ("tiny", [{"prompt": "a kite rises", "duration_s": 0.5},
                       {"prompt": "dunes at dusk", "duration_s": 0.5, "transition": "crossfade"}]),
}
# what a field needs beside it to take effect
COMPANIONS = {"layers": "camera", "overlays": "renditions", "fps_mode": "fps", "subject_box": "renditions"}
# what each door calls a field when it is not the field's own name
HTTP_NAMES = {"name": None}  # the job id names a job's folder: a client cannot
MANIFEST_NAMES = {"name": "id"}
_SAMPLING = {f.name for f in dataclasses.fields(type(RenderRequest(prompt="x").sampling))}
# the CLI's sampling group (conf/sampling/): the sampling fields and the recipe that fills them
_SAMPLING_GROUP = set(yaml.safe_load((Path(__file__).parents[1] / "conf" / "sampling" / "default.yaml").read_text()))


def test_the_walk_covers_every_request_field():
    assert set(WALK) == {f.name for f in REQUEST_FIELDS}


def _python(variant: str, fields: dict) -> RenderRequest:
    return build_request(fields, spec=PRESETS[variant], layout="diffusers").request


def _manifest(variant: str, fields: dict, tmp_path) -> RenderRequest:
    row = {MANIFEST_NAMES.get(k, k): v for k, v in fields.items()}
    row.setdefault("id", "walk")
    path = str(tmp_path / f"walk-{len(list(tmp_path.iterdir()))}.parquet")
    write_manifest([{**row, "model": variant}], path)
    manifest = read_manifest(path, default_model="tiny")
    assert not manifest.invalid, manifest.invalid
    return manifest.rows[0].request


def _http(variant: str, fields: dict) -> RenderRequest:
    body = {k: v for k, v in fields.items() if k != "name"}
    return validate_job_request(body, variant=variant, strict_sizes=False, name=fields.get("name")).request


@pytest.fixture(scope="module")
def cli():
    """The CLI door: conf/render.yaml composed with `key=value` overrides as `wan-dist render` composes them,
    then the request the command would render (built before any weights load)."""
    from hydra import compose, initialize_config_dir

    from wan_dist.cli.main import conf_dir, rewrite_overrides
    from wan_dist.cli.render import _request_from_config
    from wan_dist.engine.sources import resolve_source

    def request(variant: str, fields: dict) -> RenderRequest:
        overrides = [f"model={variant}"]
        for key, value in fields.items():
            if key in _SAMPLING_GROUP:
                key = f"sampling.{key}"
            overrides.append(f"{key}={_hydra(value)}")
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("render", overrides=rewrite_overrides(overrides))
        return _request_from_config(cfg, resolve_source(variant, layout="diffusers"))

    return request


def _hydra(value) -> str:
    """``value`` in Hydra's override grammar: mappings and lists nest, strings quoted as on a shell: key='a, b'."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_hydra(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return "null" if value is None else str(value)


@pytest.mark.parametrize("name", list(WALK))
def test_each_field_has_the_same_effect_through_every_door(name, cli, tmp_path):
    variant, value = WALK[name]
    base = {**BASE, **({"image": WALK["image"][1]} if variant == "tiny-ti2v" else {}),
            **({COMPANIONS[name]: WALK[COMPANIONS[name]][1]} if name in COMPANIONS else {}),
            **({"cache": "magcache"} if name.startswith("cache_") else {})}  # a step cache's settings need one
    fields = {**base, name: value}
    if name in ("width", "height"):
        fields.setdefault("height" if name == "width" else "width", 64)
    if name == "duration_s":  # exclusive with num_frames; 1 s at the tiny preset's 16 fps: 17 frames
        fields.pop("num_frames", None)
    python = _python(variant, fields)
    before = _python(variant, {k: v for k, v in base.items() if k != name} | ({"prompt": BASE["prompt"]}))
    assert python.to_dict() != before.to_dict(), f"{name} changed nothing"  # the field has an effect
    doors = {"cli": cli(variant, fields), "manifest": _manifest(variant, fields, tmp_path)}
    if HTTP_NAMES.get(name, name) is not None:
        doors["http"] = _http(variant, fields)
    for door, request in doors.items():
        got, want = request.to_dict(), python.to_dict()
        if door == "manifest" and name != "name":
            want["name"] = "walk"  # a manifest row always has an id
        assert got == want, (door, name)
        assert RenderRequest.from_dict(got) == request  # one serialisation, both ways


@pytest.mark.parametrize(("name", "bad"), [("num_frames", 6), ("fps", 0), ("fps", 65), ("fps_mode", "slowmo"),
                                           ("solver", "rk45"), ("shift", -1.0),
                                           ("cache", "fastcache"), ("cache_threshold", 0.0),
                                           ("width", 70), ("guidance_scale", "high"),
                                           ("camera", {"moves": [{"type": "spin", "amount": 1}]}),
                                           ("camera", {"moves": [{"type": "pan", "amount": 5, "start": 0.8,
                                                                  "end": 0.2}]}),
                                           ("camera", {"shake": {"intensity": 1.5}}),
                                           ("renditions", ["tiktok", "vine"]), ("style_lock", 1.5),
                                           ("subject_box", [0.5, 0.1, 0.4, 0.3]),
                                           ("style_lock", {"strength": 0.5, "lut": "warm"})])
def test_a_bad_value_is_refused_at_every_door_naming_the_field(name, bad, cli, tmp_path):
    fields = {**BASE, name: bad, **({"height": 64} if name == "width" else {})}
    with pytest.raises(RequestError) as python:
        _python("tiny", fields)
    assert python.value.field == name
    with pytest.raises(HTTPError) as http:
        _http("tiny", fields)
    assert http.value.param == name and http.value.status == 422
    if not isinstance(bad, str) or name == "solver":  # a manifest column is typed: a string in a number column
        path = str(tmp_path / "bad.parquet")                           # fails the whole file, not the row
        write_manifest([{"id": "bad", **fields}], path)
        (error,) = read_manifest(path, default_model="tiny").invalid
        assert error.column == name
    with pytest.raises(SystemExit, match=f"^wan-dist render: {name}: "):
        cli("tiny", fields)


def test_the_loose_form_round_trips_and_reads_records_that_nest_sampling():
    request = _python("tiny", {**BASE, "num_inference_steps": 3, "metadata": {"a": 1}, "name": "n"})
    loose = request.to_dict()
    assert RenderRequest.from_dict(loose) == request
    nested = {k: v for k, v in loose.items() if k not in _SAMPLING} | {"sampling": {k: loose[k] for k in _SAMPLING}}
    assert RenderRequest.from_dict(nested) == request  # job records and sidecars of earlier versions
    with pytest.raises(RequestError, match="colour: unknown field"):
        RenderRequest.from_dict({**loose, "colour": "red"})
    assert request.digest() == RenderRequest.from_dict(loose).digest()
    assert request.digest() != dataclasses.replace(request, seed=6).digest()
    # a field added later counts only when set: clips published before it existed are still recognised
    before = {k: v for k, v in loose.items() if k not in ("camera", "layers", "loras", "renditions", "subject_box",
                                                         "overlays", "style_lock", "fps_mode", "cache",
                                                         "cache_threshold", "cache_retention", "long", "shots")}
    assert request.digest() == hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
                                              ).hexdigest()[:32]
    assert request.digest() != dataclasses.replace(request, camera=CameraPath().to_dict()).digest()
    assert request.digest() != dataclasses.replace(request, fps=8, fps_mode="playback").digest()
    lora = {"path": "s3://l/a.safetensors", "scale": 1.0, "transformer": "high"}
    assert request.digest() != dataclasses.replace(request, loras=[lora]).digest()
    cached = dataclasses.replace(request.sampling, cache="magcache", cache_threshold=0.1, cache_retention=0.2)
    assert request.digest() != dataclasses.replace(request, sampling=cached).digest()


def test_every_problem_of_a_request_is_reported_at_once():
    with pytest.raises(RequestError) as caught:
        build_request({"prompt": " ", "num_frames": 6, "fps": 0, "colour": "red"}, spec=PRESETS["tiny"])
    fields = [field for field, _ in caught.value.problems]
    assert set(fields) == {"prompt", "num_frames", "fps", "colour"}, caught.value.problems


@pytest.mark.parametrize(("item", "field"), [
    ({"path": "s3://l/a.safetensors", "scale": 99.0}, "loras[0].scale"),
    ({"path": "s3://l/a.safetensors", "transformer": "middle"}, "loras[0].transformer"),
    ({"scale": 0.5}, "loras[0].path"),
])
def test_a_bad_lora_is_refused_at_every_door_naming_its_part(item, field, cli, tmp_path):
    fields = {**BASE, "loras": [item]}
    with pytest.raises(RequestError) as python:
        _python("tiny", fields)
    assert python.value.field == field
    with pytest.raises(HTTPError) as http:
        _http("tiny", fields)
    assert http.value.param == field and http.value.status == 422
    path = str(tmp_path / "bad.parquet")
    write_manifest([{"id": "bad", **fields}], path)
    (error,) = read_manifest(path, default_model="tiny").invalid
    assert error.column == field
    with pytest.raises(SystemExit, match=f"^wan-dist render: {re.escape(field)}: "):
        cli("tiny", fields)


def test_lora_transformer_low_needs_two_experts_and_http_takes_urls_only():
    with pytest.raises(RequestError) as caught:
        _python("tiny-ti2v", {**BASE, "image": "s3://f/a.png", "loras": [{"path": "a.safetensors", "transformer": "low"}]})
    assert caught.value.field == "loras[0].transformer"
    with pytest.raises(HTTPError) as http:  # a client names URLs, never files of the server
        _http("tiny", {**BASE, "loras": [{"path": "/etc/passwd"}]})
    assert http.value.param == "loras[0].path"


def test_a_refused_prompt_is_reported_once_with_its_reason():
    with pytest.raises(RequestError) as refused:
        _python("tiny", {**BASE, "prompt": "x" * 10_001})
    assert [field for field, _ in refused.value.problems] == ["prompt"]
    assert "at most 10000 characters" in refused.value.reason
    with pytest.raises(RequestError, match="prompt: required"):
        _python("tiny", {"seed": 1})
