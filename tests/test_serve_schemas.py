"""HTTP request/response layer: field validation (each bad field named), RenderRequest mapping, form parsing,
OpenAI Video objects checked against the installed openai SDK (its model, and its real multipart client)."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx2
import openai
import pytest
from openai._models import construct_type
from openai.types import Video
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from wan_dist.engine.request import MAX_LONG_FRAMES
from wan_dist.engine.settings import frames_for_duration
from wan_dist.models.presets import PRESETS
from wan_dist.serve import schemas
from wan_dist.serve.forms import MAX_DEPTH, coerce_scalars, parse_form, pop_files
from wan_dist.serve.schemas import (MODEL_NAMES, RequestError, VideoCreate, error_body, job_view, render_request,
                                    resolve_model, size_for_resolution, validate_job_request,
                                    validate_video_request, video_object)

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
RELEASED = ("t2v-a14b", "i2v-a14b", "ti2v-5b")
TINY = ("tiny", "tiny-i2v", "tiny-ti2v")


def refused(body, variant="tiny", **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        validate_job_request(body, variant=variant, **kwargs)
    return info.value


def base(variant: str) -> dict:
    """The smallest good body for ``variant`` (an image where the variant needs one)."""
    return {"prompt": "a lighthouse in a storm", **({"image": PNG} if PRESETS[variant].task == "i2v" else {})}


def test_model_names_cover_released_variants_and_presets():
    assert {MODEL_NAMES[f"wan2.2-{v}"] for v in RELEASED} == set(RELEASED)
    assert all(MODEL_NAMES[name] == name for name in PRESETS)  # path form and preset names
    assert resolve_model("wan2.2-t2v-a14b", ["t2v-a14b"]) == "t2v-a14b"
    assert resolve_model("t2v-a14b", ["t2v-a14b"]) == "t2v-a14b"
    assert resolve_model("tiny", ["tiny", "tiny-i2v"]) == "tiny"
    for name, served in (("sora-2", ["tiny"]), ("wan2.2-i2v-a14b", ["tiny"]), (None, ["tiny"]), (7, ["tiny"])):
        with pytest.raises(RequestError) as info:
            resolve_model(name, served)
        assert (info.value.status, info.value.param, info.value.code) == (404, "model", "model_not_found")
        assert "tiny" in info.value.message  # says what the server runs


def test_error_body_is_the_openai_shape():
    assert error_body(RequestError(422, "seed: bad", param="seed", code="invalid_value")) == {"error": {
        "message": "seed: bad", "type": "invalid_request_error", "param": "seed", "code": "invalid_value"}}


BAD = [
    ("tiny", {"num_frames": 10}, "num_frames"),  # not 4k+1
    ("tiny", {"num_frames": MAX_LONG_FRAMES + 4}, "num_frames"),  # past an hour at 24 fps, even window by window
    ("t2v-a14b", {"size": "1024x576"}, "size"),  # a multiple of 16, but not a size of the variant
    ("ti2v-5b", {"size": "1280x720"}, "size"),  # an A14B size, not a 5B one
    ("tiny", {"width": 96, "height": 96}, "width"), ("tiny", {"size": "big"}, "size"),
    ("tiny", {"size": "64x64", "width": 64, "height": 64}, "size"),
    ("tiny", {"size": "64x64", "resolution": "720p"}, "resolution"), ("tiny", {"width": 64}, "height"),
    ("tiny", {"aspect_ratio": "4:3"}, "aspect_ratio"),
    ("tiny", {"aspect_ratio": "16:9"}, "aspect_ratio"),  # tiny has no 16:9 size
    ("ti2v-5b", {"resolution": "480p"}, "resolution"),  # the 5B model renders 720p only
    ("tiny", {"num_inference_steps": -1}, "num_inference_steps"),
    ("tiny", {"num_inference_steps": 0}, "num_inference_steps"),
    ("tiny", {"num_inference_steps": 201}, "num_inference_steps"), ("tiny", {"seed": -1}, "seed"),
    ("tiny", {"seed": 2**63}, "seed"), ("tiny", {"seed": 1.5}, "seed"),
    ("ti2v-5b", {"guidance_scale_2": 3.0}, "guidance_scale_2"),  # one expert
    ("tiny-ti2v", {"boundary_ratio": 0.5}, "boundary_ratio"), ("tiny", {"boundary_ratio": 1.5}, "boundary_ratio"),
    ("tiny", {"guidance_scale": -1}, "guidance_scale"), ("tiny", {"guidance_scale": float("nan")}, "guidance_scale"),
    ("tiny", {"shift": 0}, "shift"), ("tiny", {"solver": "ddim"}, "solver"),
    ("tiny", {"schedule": "karras"}, "schedule"), ("tiny", {"fps": 0}, "fps"),
    ("tiny", {"num_frames": 9, "seconds": 1}, "seconds"), ("tiny", {"seconds": 1, "duration": 1}, "duration"),
    ("tiny", {"seconds": 0}, "seconds"), ("tiny", {"duration": 4000}, "duration"),
    ("tiny", {"seconds": 4000}, "seconds"),  # past the schema's hour
    ("tiny", {"seconds": 60, "long": {"overlap": 3}}, "long"),  # tiny's 9-frame windows hold 3 latent frames
    ("i2v-a14b", {"image": None}, "image"), ("tiny-i2v", {"image": None}, "image"),  # i2v needs an image
    ("tiny", {"image": PNG}, "image"),  # t2v takes none
    ("tiny-ti2v", {"image": "/etc/passwd"}, "image"),  # never a local path from a client
    ("tiny-ti2v", {"image": "file:///etc/passwd"}, "image"), ("tiny", {"webhook_url": "ftp://h/x"}, "webhook_url"),
    ("tiny-ti2v", {"image": "data:image/png;base64,@"}, "image"),
    ("tiny", {"metadata": {f"k{i}": i for i in range(schemas.METADATA_MAX_KEYS + 1)}}, "metadata"),
    ("tiny", {"metadata": {"k" * 65: "v"}}, "metadata"), ("tiny", {"metadata": {"c": "x" * 513}}, "metadata.c"),
    ("tiny", {"metadata": {"campaign": {"nested": 1}}}, "metadata.campaign"),
    ("tiny", {"metadata": {"campaign": None}}, "metadata.campaign"), ("tiny", {"metadata": ["a"]}, "metadata"),
    ("tiny", {"deadline_s": 0}, "deadline_s"), ("tiny", {"progress_webhooks": "perhaps"}, "progress_webhooks"),
    ("tiny", {"prompt": ""}, "prompt"), ("tiny", {"prompt": "   "}, "prompt"),
    ("tiny", {"prompt": "x" * 10_001}, "prompt"), ("tiny", {"prompt": 5}, "prompt"),
    ("tiny", {"num_inference_step": 4}, "num_inference_step"),  # a misspelt field is unknown, not ignored
    ("tiny", {"model": "tiny"}, "model"),  # no model field on /v1/models/{model}/jobs
]


@pytest.mark.parametrize("variant,fields,param", BAD, ids=[f"{p}-{i}" for i, (_, _, p) in enumerate(BAD)])
def test_every_bad_field_is_a_422_naming_it(variant, fields, param):
    body = {k: v for k, v in {**base(variant), **fields}.items() if v is not None}
    err = refused(body, variant)
    assert (err.status, err.param) == (422, param), err.message
    assert err.message.startswith(f"{param}: ")
    assert error_body(err)["error"]["param"] == param


def test_error_codes():
    assert refused({"prompt": "x", "foo": 1}).code == "unknown_parameter"
    assert refused({"negative_prompt": "x"}).code == "missing_required_parameter"
    assert refused({"prompt": "x", "size": "96x96"}).code == "unsupported_size"
    assert refused({"prompt": "x", "num_frames": 10}).code == "invalid_value"
    for body in ([], "prompt", None):
        err = refused(body)
        assert (err.status, err.param, err.code) == (400, None, "invalid_body")


def test_oversized_data_uri_image(monkeypatch):
    monkeypatch.setattr(schemas, "MAX_IMAGE_BYTES", 16)
    err = refused({"prompt": "x", "image": "data:image/png;base64," + "A" * 64}, "tiny-i2v")
    assert (err.status, err.param, err.code) == (422, "image", "image_too_large")


@pytest.mark.parametrize("variant", RELEASED + TINY)
@pytest.mark.parametrize("layout", ["diffusers", "reference"])
def test_defaults_come_from_the_preset(variant, layout):
    spec, d = PRESETS[variant], PRESETS[variant].defaults
    v = validate_job_request(base(variant), variant=variant, layout=layout, default_seed=11, name="job_1")
    r, s = v.request, v.request.sampling
    by_image = spec.task == "i2v"  # no size given: the input image's aspect decides at render time
    assert (r.width, r.height) == ((None, None) if by_image else (d.width, d.height))
    assert v.size == (None if by_image else f"{d.width}x{d.height}")
    assert (r.num_frames, r.fps, r.seed, r.name) == (d.num_frames, d.fps, 11, "job_1")
    assert v.seconds == f"{(d.num_frames - 1) / d.fps:g}"
    assert (s.num_inference_steps, s.guidance_scale, s.schedule, s.solver) == (
        d.num_inference_steps, d.guidance_scale, layout, "unipc")
    assert s.shift == (d.shift if layout == "reference" else d.diffusers_shift)
    assert (s.guidance_scale_2, s.boundary_ratio) == ((d.guidance_scale_2, d.boundary_ratio) if spec.two_experts
                                                      else (None, None))
    assert r.image == (PNG if by_image else None) and r.negative_prompt is None
    assert v.settings["fps"] == d.fps and "checkpoint_id" not in v.settings and v.variant == variant


def test_explicit_fields_reach_the_render_request():
    body = {"prompt": "p", "negative_prompt": "n", "size": "96x64", "num_frames": 13, "fps": 8,
            "num_inference_steps": 3, "guidance_scale": 2.5, "guidance_scale_2": 1.5, "boundary_ratio": 0.5,
            "shift": 2.0, "seed": 2**63 - 1, "solver": "euler", "schedule": "reference",
            "webhook_url": "https://hooks.example.com/x", "metadata": {"a": "b", "n": 2, "f": 0.5, "t": True},
            "progress_webhooks": True, "deadline_s": 60}
    v = validate_job_request(body, variant="tiny", default_seed=1)
    r, s = v.request, v.request.sampling
    assert (r.prompt, r.negative_prompt, r.width, r.height, r.num_frames, r.fps, r.seed) == (
        "p", "n", 96, 64, 13, 8, 2**63 - 1)
    assert (s.num_inference_steps, s.guidance_scale, s.guidance_scale_2, s.boundary_ratio, s.shift, s.solver,
            s.schedule) == (3, 2.5, 1.5, 0.5, 2.0, "euler", "reference")
    assert r.metadata == v.metadata == body["metadata"]
    # 13 frames rendered at tiny's 16 fps: 0.75 s, published at 8 fps
    assert (v.webhook_url, v.progress_webhooks, v.deadline_s, v.seconds, v.size) == (
        body["webhook_url"], True, 60, "0.75", "96x64")
    assert render_request(v.record()) == r  # the job record rebuilds the request after a restart
    assert {k: v.record()[k] for k in ("prompt", "seconds", "size")} == {"prompt": "p", "seconds": "0.75",
                                                                         "size": "96x64"}


def test_missing_seed_is_drawn_once_and_kept():
    seeds = {validate_job_request({"prompt": "x"}, variant="tiny").request.seed for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= seed < 2**53 for seed in seeds)


@pytest.mark.parametrize("variant", RELEASED + TINY)
def test_seconds_become_frames_at_the_model_rate(variant):
    """The model renders the seconds at its own rate; another fps is converted to afterwards."""
    spec, d = PRESETS[variant], PRESETS[variant].defaults
    default_seconds = (d.num_frames - 1) / d.fps
    for name in ("seconds", "duration"):
        v = validate_job_request({**base(variant), name: default_seconds}, variant=variant)
        assert v.request.num_frames == d.num_frames
    for seconds, fps in ((2, None), (2.2, 24), (0.1, 16)):
        v = validate_job_request({**base(variant), "seconds": seconds, "fps": fps}, variant=variant)
        assert v.request.num_frames == frames_for_duration(seconds, d.fps, spec.vae.temporal_stride)
        assert v.request.fps == (fps or d.fps)
        played = validate_job_request({**base(variant), "seconds": seconds, "fps": fps, "fps_mode": "playback"},
                                      variant=variant)
        assert played.request.num_frames == frames_for_duration(seconds, fps or d.fps, spec.vae.temporal_stride)


@pytest.mark.parametrize("variant", RELEASED + TINY)
def test_every_supported_size_is_accepted_in_both_spellings(variant):
    for w, h in PRESETS[variant].defaults.sizes:
        for fields in ({"size": f"{w}x{h}"}, {"width": w, "height": h}):
            v = validate_job_request({**base(variant), **fields}, variant=variant)
            assert (v.request.width, v.request.height, v.size) == (w, h, f"{w}x{h}")


@pytest.mark.parametrize("variant,resolution,aspect,expected", [
    ("t2v-a14b", "720p", "16:9", (1280, 720)), ("t2v-a14b", "720p", "9:16", (720, 1280)),
    ("i2v-a14b", "480p", "16:9", (832, 480)), ("t2v-a14b", "480p", "9:16", (480, 832)),
    ("t2v-a14b", "480p", None, (832, 480)), ("t2v-a14b", None, "9:16", (720, 1280)),
    ("ti2v-5b", "720p", "16:9", (1280, 704)), ("ti2v-5b", None, "9:16", (704, 1280)),
    ("tiny", None, "1:1", (64, 64)),
])
def test_resolution_and_aspect_ratio_pick_a_supported_size(variant, resolution, aspect, expected):
    assert expected in PRESETS[variant].defaults.sizes
    assert size_for_resolution(PRESETS[variant], resolution, aspect) == expected
    fields = {k: v for k, v in (("resolution", resolution), ("aspect_ratio", aspect)) if v}
    v = validate_job_request({**base(variant), **fields}, variant=variant)
    assert (v.request.width, v.request.height) == expected


def test_non_strict_sizes_take_any_multiple():
    v = validate_job_request({"prompt": "x", "size": "128x80"}, variant="tiny", strict_sizes=False)
    assert (v.request.width, v.request.height) == (128, 80)
    err = refused({"prompt": "x", "size": "72x64"}, strict_sizes=False)  # not a multiple of 16
    assert (err.param, "multiple of 16" in err.message) == ("size", True)
    assert refused({"prompt": "x", "width": 72, "height": 64}, strict_sizes=False).param == "width"
    assert refused({"prompt": "x", "width": 64, "height": 8192}, strict_sizes=False).param == "height"  # the bad one


def test_uploaded_image_is_trusted_but_not_with_a_url_too():
    v = validate_job_request({"prompt": "x"}, variant="tiny-i2v", uploaded_image="/srv/uploads/a.png")
    assert v.request.image == "/srv/uploads/a.png"
    assert refused({"prompt": "x", "image": PNG}, "tiny-i2v", uploaded_image="/srv/a.png").param == "image"
    v = validate_job_request({"prompt": "x", "image": "s3://bucket/in.png"}, variant="tiny-ti2v")
    assert v.request.image == "s3://bucket/in.png"


def test_video_request_model_selection_and_extras():
    v = validate_video_request({"prompt": "x", "model": "wan2.2-t2v-a14b", "seconds": "4", "size": "1280x720",
                                "seed": 3, "num_inference_steps": 8}, served=["t2v-a14b", "tiny"])
    assert (v.variant, v.seconds, v.size, v.request.seed, v.request.sampling.num_inference_steps) == (
        "t2v-a14b", "4", "1280x720", 3, 8)
    assert validate_video_request({"prompt": "x"}, served=["tiny"]).variant == "tiny"  # the one model
    assert validate_video_request({"prompt": "x"}, served=["tiny", "t2v-a14b"], default_model="tiny").variant == "tiny"
    for body, served, status, param in (
            ({"prompt": "x"}, ["tiny", "t2v-a14b"], 422, "model"),
            ({"prompt": "x", "model": "sora-2"}, ["tiny"], 404, "model"),
            ({"prompt": "x", "unknown": 1}, ["tiny"], 422, "unknown"),
            ({"prompt": "x", "input_reference": {"file_id": "file_1"}}, ["tiny-i2v"], 422, "input_reference.file_id"),
            ({"prompt": "x", "input_reference": 5}, ["tiny-i2v"], 422, "input_reference"),
            ({"prompt": "x", "input_reference": PNG, "image": PNG}, ["tiny-i2v"], 422, "image"),
            ({"prompt": "x", "input_reference": "/etc/passwd"}, ["tiny-i2v"], 422, "input_reference"),
            ({"prompt": "x"}, ["tiny-i2v"], 422, "input_reference")):
        with pytest.raises(RequestError) as info:
            validate_video_request(body, served=served)
        assert (info.value.status, info.value.param) == (status, param), info.value.message
    for reference in (PNG, {"image_url": PNG}):
        assert validate_video_request({"prompt": "x", "input_reference": reference},
                                      served=["tiny-i2v"]).request.image == PNG


def job(status: str, **fields) -> dict:
    v = validate_job_request({"prompt": "a cat", "size": "1280x720"}, variant="t2v-a14b", default_seed=5)
    return {"id": "job_abc", "model": "t2v-a14b", "kind": "video", "owner": "k1", "status": status,
            "request": v.record(), "created_at": 1_700_000_000.7, "progress": 42, "error": None,
            "lease_owner": "w", "idempotency_key": "idem", "body_hash": "h", **fields}


STATUSES = ["queued", "in_progress", "completed", "failed", "cancelled"]


@pytest.mark.parametrize("status", STATUSES)
def test_video_object_validates_with_the_sdk_model(status):
    done = status in ("completed", "failed", "cancelled")
    error = {"code": "timeout", "message": "past its deadline"} if status == "failed" else None
    obj = video_object(job(status, completed_at=1_700_000_100.2 if done else None, error=error,
                           expires_at=1_700_086_400 if status == "completed" else None))
    video = Video.model_validate(obj)  # strict: every field has the SDK's type (Literals included)
    assert video.model_dump(exclude_unset=True) == obj  # nothing needed coercing
    assert (video.object, video.model, video.seconds, video.size, video.prompt) == (
        "video", "wan2.2-t2v-a14b", "5", "1280x720", "a cat")
    assert isinstance(obj["created_at"], int) and isinstance(obj["progress"], int)
    assert video.progress == (100 if status == "completed" else 42)
    assert video.status == ("failed" if status == "cancelled" else status)
    if status == "cancelled":
        assert video.error.code == "cancelled"
    elif status == "failed":
        assert (video.error.code, video.error.message) == ("timeout", "past its deadline")
    else:
        assert video.error is None


def test_video_object_sizes_outside_the_sdk_literal():
    """The SDK's VideoSize Literal lists Sora's four sizes; the default (non-strict) client takes any string."""
    obj = video_object(job("queued", request={"prompt": "p", "seconds": "0.5", "size": "96x64"}))
    with pytest.raises(ValidationError) as info:
        Video.model_validate(obj)
    assert [e["loc"] for e in info.value.errors()] == [("size",)]
    assert construct_type(type_=Video, value=obj).size == "96x64"
    assert video_object(job("queued", request={"prompt": "p", "seconds": "5", "size": None}))["size"] == "auto"
    with pytest.raises(ValueError):
        video_object(job("paused"))


def test_job_view():
    view = job_view(job("queued", metadata={"a": "b"}, webhook={"state": "pending", "attempts": 0}),
                    queue_position=3)
    assert (view["status"], view["queue_position"], view["progress"], view["metadata"]) == (
        "queued", 3, 42, {"a": "b"})
    assert view["webhook"] == {"state": "pending", "attempts": 0} and view["model"] == "wan2.2-t2v-a14b"
    assert not {"owner", "lease_owner", "idempotency_key", "body_hash"} & set(view)
    assert job_view(job("in_progress"), queue_position=3)["queue_position"] is None
    retry = job_view(job("queued", attempts=1, retry_after=1_700_000_050.0), queue_position=0)
    assert (retry["attempts"], retry["retry_after"]) == (1, 1_700_000_050.0)  # a failed render's retry, waiting
    assert job_view(job("in_progress", attempts=2, retry_after=1.0), queue_position=None)["retry_after"] is None
    cancelled = job_view(job("cancelled"), queue_position=None)
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    i2v = validate_job_request({"prompt": "x", "image": PNG}, variant="tiny-i2v")
    view = job_view(job("queued", request=i2v.record()), queue_position=0)
    assert view["request"]["render"]["image"] == "data:(inline image)"  # no megabytes in every poll


def test_parse_form_nests_brackets_and_lists():
    upload = UploadFile(io.BytesIO(b"png"), filename="a.png")
    body = parse_form([("prompt", "p"), ("metadata[campaign]", "spring"), ("a[b][c]", "1"), ("a[b][d]", "2"),
                       ("tags[]", "x"), ("tags[]", "y"), ("a[l][]", "z"), ("input_reference", upload)])
    assert body == {"prompt": "p", "metadata": {"campaign": "spring"}, "a": {"b": {"c": "1", "d": "2"}, "l": ["z"]},
                    "tags": ["x", "y"], "input_reference": upload}
    assert pop_files(body) == {"input_reference": upload} and "input_reference" not in body


@pytest.mark.parametrize("items,param", [
    ([("a", "1"), ("a[b]", "2")], "a"), ([("a[b]", "2"), ("a", "1")], "a"), ([("a", "1"), ("a", "2")], "a"),
    ([("a[b]", "1"), ("a[b][c]", "2")], "a.b"), ([("t[]", "x"), ("t", "y")], "t"), ([("t", "y"), ("t[]", "x")], "t"),
    ([("a[b", "1")], "a"), ([("a]", "1")], "a]"), ([("a[][b]", "1")], "a.b"),
    ([("a" + "[x]" * MAX_DEPTH, "1")], "a"),
])
def test_parse_form_conflicts_name_the_field(items, param):
    with pytest.raises(RequestError) as info:
        parse_form(items)
    assert (info.value.status, info.value.param) == (422, param), info.value.message


def test_coerce_scalars_follows_the_model():
    body = {"prompt": "123", "seed": "42", "seconds": "4", "num_frames": "81", "guidance_scale": "4.5",
            "width": "1e3", "height": "64.0", "progress_webhooks": "true", "fps": "", "size": "64x64",
            "metadata": {"n": "2"}, "unknown": "7", "input_reference": {"image_url": "https://x/y.png"}}
    out = coerce_scalars(body, VideoCreate)
    assert out == {**body, "seed": 42, "seconds": 4.0, "num_frames": 81, "guidance_scale": 4.5, "width": 1000,
                   "height": 64, "progress_webhooks": True, "fps": None}
    assert coerce_scalars({"progress_webhooks": "OFF"}, VideoCreate) == {"progress_webhooks": False}
    assert coerce_scalars({"seed": str(2**63 - 1)}, VideoCreate) == {"seed": 2**63 - 1}  # exact, not via float


@pytest.mark.parametrize("field,value", [("seed", "abc"), ("num_frames", "4.5"), ("guidance_scale", "nan"),
                                         ("shift", "inf"), ("progress_webhooks", "maybe"), ("seed", "0x10")])
def test_coerce_scalars_refuses_bad_numbers(field, value):
    with pytest.raises(RequestError) as info:
        coerce_scalars({"prompt": "p", field: value}, VideoCreate)
    assert (info.value.status, info.value.param) == (422, field) and value in info.value.message


def sdk_client(served: list[str]):
    """An openai client (strict response validation) whose transport runs our form parsing and validation."""
    seen = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        scope = {"type": "http", "method": "POST", "path": "/v1/videos", "query_string": b"",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def form():
            return (await Request(scope, receive).form()).multi_items()

        try:
            fields = parse_form(asyncio.run(form()))
            files = pop_files(fields)
            uploaded = "memory://uploads/a.png" if "input_reference" in files else None
            v = validate_video_request(coerce_scalars(fields, VideoCreate), served=served, uploaded_image=uploaded)
        except RequestError as err:
            return httpx2.Response(err.status, json=error_body(err), headers={"x-should-retry": "false"})
        seen["validated"] = v
        created = {"id": "job_1", "model": v.variant, "status": "queued", "created_at": 1.0, "request": v.record()}
        return httpx2.Response(200, json=video_object(created))

    client = openai.OpenAI(api_key="k", base_url="http://wan.test/v1", _strict_response_validation=True,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    return client, seen


@pytest.mark.filterwarnings("ignore")
def test_openai_sdk_multipart_round_trip():
    client, seen = sdk_client(["i2v-a14b"])
    video = client.videos.create(
        model="wan2.2-i2v-a14b", prompt="a kite", seconds="4", size="1280x720",
        input_reference=("a.png", b"\x89PNG", "image/png"),
        extra_body={"seed": 9, "num_inference_steps": 6, "guidance_scale_2": 2.5, "progress_webhooks": True,
                    "metadata": {"campaign": "spring", "n": 2}})
    assert (video.status, video.model, video.seconds, video.size) == ("queued", "wan2.2-i2v-a14b", "4", "1280x720")
    v = seen["validated"]
    assert (v.request.seed, v.request.sampling.num_inference_steps, v.request.sampling.guidance_scale_2) == (9, 6, 2.5)
    assert (v.request.image, v.metadata, v.progress_webhooks) == (
        "memory://uploads/a.png", {"campaign": "spring", "n": "2"}, True)
    assert v.request.num_frames == frames_for_duration(4, PRESETS["i2v-a14b"].defaults.fps)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.videos.create(model="wan2.2-i2v-a14b", prompt="a kite", input_reference=("a.png", b"x"),
                             extra_body={"num_frames": 10})
    assert (info.value.param, info.value.code) == ("num_frames", "invalid_value")
    with pytest.raises(openai.NotFoundError) as info:
        client.videos.create(model="sora-2", prompt="a kite")
    assert info.value.param == "model"


@pytest.mark.parametrize(("fields", "param"), [
    ({"num_frames": 21, "long": {"window": 9, "overlap": 1}}, "long"),
    ({"shots": [{"prompt": "a kite", "duration_s": 0.5}, {"prompt": "dunes", "duration_s": 0.5,
                                                           "transition": "crossfade"}]}, "shots"),
])
def test_a_server_whose_groups_cannot_render_windows_refuses_a_windowed_clip_by_field(fields, param):
    """A clip beyond one window renders on colocated groups without a data degree: a server with data-parallel or
    disaggregated groups answers 422 at the door instead of failing the job after it was accepted; one window is
    taken everywhere."""
    from wan_dist.config import GroupSpec, ParallelConfig
    from wan_dist.engine.request import build_request
    from wan_dist.serve.routes.common import check_group_takes
    from wan_dist.serve.settings import RendererSettings, ServeSettings

    def server(**parallel) -> ServeSettings:
        return ServeSettings(models=("tiny",), renderer=RendererSettings(
            group=GroupSpec(parallel=ParallelConfig(**parallel))))

    windowed = build_request({"prompt": "a kite", "num_inference_steps": 2, **fields}, spec=PRESETS["tiny"]).request
    one = build_request({"prompt": "a kite", "num_frames": 9}, spec=PRESETS["tiny"]).request
    for layout in ({}, {"ulysses": 2}, {"ulysses": 2, "cfg": 2}):
        check_group_takes(server(**layout), windowed, "tiny")
    for layout, word in (({"data": 2}, "data degree"), ({"placement": "disaggregated"}, "disaggregated")):
        check_group_takes(server(**layout), one, "tiny")
        with pytest.raises(RequestError) as refused:
            check_group_takes(server(**layout), windowed, "tiny")
        assert refused.value.status == 422 and refused.value.param == param and word in str(refused.value)
