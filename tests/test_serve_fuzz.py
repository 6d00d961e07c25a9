"""Schemathesis fuzz of the HTTP API's OpenAPI schema, in-process over ASGI (no Ray, no renderer).

Every operation gets positive and negative examples (fixed seed, bounded count) with a valid bearer key;
each answer must not be a 5xx and must match the schema: a documented status code, a documented content
type and a body that validates against the documented schema (OpenAI's error shape for every 4xx).
Path ids and ``after`` are drawn partly from jobs seeded in every state (queued, in progress, completed
with a clip, failed, cancelled; jobs and videos; one of another key), and half of the create bodies are
nearly valid, so the routes past the 404 and the 422 run too. Headers outside the schema (keys, Wan-Version,
Idempotency-Key) and bodies no schema-shaped generator makes (1000-level nesting, multipart without a
boundary, > 1000 form fields, unknown routes) have tests of their own below.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from wan_dist.serve.app import ServeState, create_app
from wan_dist.serve.jobs import Job, JobStatus
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings

KEY, OTHER_KEY = "sk-fuzz", "sk-other"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# store and output are per-test (the fixture below); the app reads only models/layout/poll settings itself
SETTINGS = ServeSettings(models=("tiny",), store="sqlite:///unused.db", output="unused",
                         auth=AuthSettings(api_keys=(KEY, OTHER_KEY)),
                         limits=LimitSettings(rate_per_s=1e6, burst=10**6, max_active_per_key=10**6,
                                              max_queue_per_model=10**6),
                         webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "="))
STATE: dict[str, ServeState] = {}
SEEDED: dict[str, list[str]] = {"all": [], "terminal": []}

app = create_app(SETTINGS, state=lambda: STATE["state"])
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def _seed(state: ServeState, output) -> None:
    """Jobs in every state, of both kinds, for the fuzzed key, and one job of another key."""
    owner = state.keys.authenticate(f"Bearer {KEY}")
    other = state.keys.authenticate(f"Bearer {OTHER_KEY}")
    now = time.time()
    request = {"prompt": "a lighthouse", "size": "64x64", "seconds": 0.3,
               "render": {"prompt": "a lighthouse", "image": "data:image/png;base64,AAAA"}}
    SEEDED["all"].clear()
    SEEDED["terminal"].clear()
    for kind in ("job", "video"):
        base = Job.new(model="tiny", owner=owner, kind=kind, request=request, metadata={"k": "v"},
                       webhook_url="https://example.com/hook")
        clip = output / base.id / "clip.mp4"
        clip.parent.mkdir(parents=True)
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a clip")
        variants = {
            JobStatus.QUEUED: {},
            JobStatus.IN_PROGRESS: {"started_at": now, "progress": 40, "attempts": 1, "lease_owner": "w",
                                    "lease_until": now + 600},
            JobStatus.COMPLETED: {"started_at": now, "completed_at": now, "progress": 100,
                                  "result": {"clip_uri": str(clip), "sidecar_uri": str(clip.with_suffix(".json")),
                                             "seed": 7, "renditions": [{"profile": "youtube", "uri": str(clip),
                                                                        "guides_uri": str(clip)}]},
                                  "timings": {"generate_s": 1.5}},
            JobStatus.FAILED: {"completed_at": now, "error": {"code": "render_failed", "message": "boom"}},
            JobStatus.CANCELLED: {"completed_at": now, "cancel_requested": True},
        }
        for i, (status, fields) in enumerate(variants.items()):
            job_id = base.id if i == 0 else f"{base.id}_{status}"
            job, _ = state.store.create(dataclasses.replace(base, id=job_id, status=status, **fields))
            SEEDED["all"].append(job.id)
            if status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
                SEEDED["terminal"].append(job.id)
        if kind == "video":
            foreign, _ = state.store.create(Job.new(model="tiny", owner=other, kind=kind, request=request))
            SEEDED["all"].append(foreign.id)
            SEEDED["terminal"].append(foreign.id)  # answers 404 before any stream starts


@pytest.fixture(autouse=True)
def serve_state(tmp_path):
    """A fresh store per operation (DELETE and cancel change the seeded jobs), seeded, no webhook thread."""
    settings = dataclasses.replace(SETTINGS, store=f"sqlite:///{tmp_path / 'jobs.db'}", output=str(tmp_path / "out"))
    STATE["state"] = state = ServeState(settings, notify=False)
    _seed(state, tmp_path / "out")
    yield state
    STATE.pop("state", None)
    state.close()


PNG = "data:image/png;base64,iVBORw0KGgo="  # the API checks the data URI and its size, not the pixels
_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
_JOB_FIELDS = {
    "negative_prompt": _TEXT, "size": st.sampled_from(["64x64", "96x64", "64x96", "1280x720"]),
    "num_frames": st.sampled_from([1, 5, 9, 13, 6]), "num_inference_steps": st.integers(1, 4),
    "seed": st.integers(0, 2**63 - 1), "guidance_scale": st.floats(0, 20), "shift": st.floats(0.5, 20),
    "fps": st.integers(1, 120), "seconds": st.floats(0.05, 4), "solver": st.sampled_from(["unipc", "dpm++", "euler"]),
    "schedule": st.sampled_from(["reference", "diffusers"]), "deadline_s": st.floats(1, 86400),
    "metadata": st.dictionaries(st.text(min_size=1, max_size=8), _TEXT, max_size=3),
    "progress_webhooks": st.booleans(), "webhook_url": st.just("https://93.184.216.34/hook"),  # an IP: no DNS
    "image": st.just(PNG),
}
VALID_JOB = st.fixed_dictionaries({"prompt": st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)},
                                  optional=_JOB_FIELDS)
VALID_VIDEO = st.fixed_dictionaries(
    {"prompt": st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)},
    optional={**{k: v for k, v in _JOB_FIELDS.items() if k != "image"}, "model": st.sampled_from(["tiny", "tiny-i2v"]),
              "input_reference": st.sampled_from([PNG, {"image_url": PNG}])})


@schema.hook
def flatmap_body(context, body):
    """Half of the create bodies are mostly valid (generated ones rarely are: sizes, frames, models must agree)."""
    valid = VALID_VIDEO if context.operation.path == "/v1/videos" else VALID_JOB
    return st.one_of(valid, st.just(body))


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Half of the ids are seeded jobs; an event stream only for terminal ones (a live job streams until done).
    Half of the model names are ones this server runs (or a released one it does not), half of the rendition
    profiles one the seeded jobs made."""
    if "model" in (path_parameters or {}):
        return st.one_of(st.sampled_from(["tiny", "tiny-i2v", "wan2.2-t2v-a14b"]).map(
            lambda model: {**path_parameters, "model": model}), st.just(path_parameters))
    name = next((n for n in ("job_id", "video_id", "batch_id") if n in (path_parameters or {})), None)
    if name is None:
        return st.just(path_parameters)
    pool = "terminal" if context.operation.path.endswith("/events") else "all"
    seeded = st.sampled_from(range(16)).map(lambda i: {**path_parameters, name: SEEDED[pool][i % len(SEEDED[pool])]})
    ids = st.one_of(seeded, st.just(path_parameters))
    if "profile" in path_parameters:  # the seeded completed jobs made a youtube rendition (with guides)
        return ids.flatmap(lambda given: st.sampled_from([given, {**given, "profile": "youtube"}]))
    return ids


@schema.hook
def flatmap_query(context, query):
    """Paging after a seeded job, some of the time (and after unknown ids, from the generator)."""
    if not isinstance(query, dict) or "after" not in query:
        return st.just(query)
    return st.one_of(st.sampled_from(range(16)).map(
        lambda i: {**query, "after": SEEDED["all"][i % len(SEEDED["all"])]}), st.just(query))


def test_every_create_is_fuzzed_as_json_and_as_a_form():
    """Schemathesis builds a body only where the schema resolves: each create must offer both media types."""
    bodies = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "POST" and not operation.path.endswith("/cancel"):
            bodies[operation.path] = sorted(body.media_type for body in operation.body)
    both = ["application/json", "multipart/form-data"]
    assert bodies == {"/v1/batches": both, "/v1/models/{model}/jobs": both, "/v1/videos": both}


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_5xx_and_match_the_schema(case):
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@pytest.mark.parametrize("headers", [
    {},  # no key
    {"Authorization": "Bearer sk-wrong"},
    {"Authorization": "Basic c2stZnV6ejo="},
    {"Authorization": "Bearer"},
    {**AUTH, "Wan-Version": "1999-01-01"},
    {**AUTH, "Idempotency-Key": "fuzz-key"},
])
def test_header_variants_answer_documented_errors(headers):
    """Auth, Wan-Version and Idempotency-Key are headers outside the generated cases: every operation answers
    them with a documented status and body. An Idempotency-Key reused with another body is a documented 409."""
    seen = set()
    for operation in schema.get_all_operations():
        op = operation.ok()
        # ids: a seeded job (another kind's ids answer 404); the seeded completed jobs made a youtube rendition
        values = {"model": "tiny", "row_id": "row-0", "profile": "youtube"}
        params = {name: values.get(name, SEEDED["terminal"][0])
                  for name in ("model", "job_id", "video_id", "batch_id", "row_id", "profile")
                  if "{" + name + "}" in op.path}
        for prompt in ("first body", "second body"):
            body = {"prompt": prompt, "size": "64x64", "num_frames": 5, "num_inference_steps": 1}
            has_body = bool(op.body)
            extra = {"body": body, "media_type": "application/json"} if has_body else {}
            case = op.Case(path_parameters=params or None, **extra)
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
            seen.add(response.status_code)
    if "Authorization" not in headers or headers["Authorization"] != AUTH["Authorization"]:
        assert 401 in seen
    elif "Wan-Version" in headers:
        assert 400 in seen
    else:
        assert 409 in seen  # the second body under the same key


DEEP_OBJECT = b'{"prompt": "a", "metadata": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}"


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b"[" * 100_000),  # json.loads raised RecursionError: was a 500
    ("application/json", DEEP_OBJECT),  # parses, then json.dumps (the Idempotency hash) or pydantic recursed: was a 500
    ("multipart/form-data", b"prompt=a"),  # no boundary: Starlette's 400 {"detail": ...}, not OpenAI's shape
    ("application/x-www-form-urlencoded", "&".join(f"metadata[k{i}]=v" for i in range(1001)).encode()),  # > 1000 fields
], ids=["deep-list", "deep-object", "no-boundary", "too-many-fields"])
def test_malformed_bodies_are_documented_4xx_in_openai_shape(content_type, body):
    """Bodies the generator cannot produce (schema-shaped data never nests 1000 levels or lacks a boundary)."""
    from fastapi.testclient import TestClient

    from wan_dist.serve.openapi import ErrorResponse

    documented = app.openapi()["paths"]
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/v1/models/tiny/jobs", "/v1/videos"):
            response = client.post(path, content=body, headers={**AUTH, "Content-Type": content_type})
            assert response.status_code in (400, 422), (path, response.status_code, response.text[:200])
            assert str(response.status_code) in documented[path.replace("tiny", "{model}")]["post"]["responses"]
            ErrorResponse.model_validate(response.json())


def test_unknown_routes_and_methods_answer_in_openai_shape():
    from fastapi.testclient import TestClient

    from wan_dist.serve.openapi import ErrorResponse

    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path, status in (("GET", "/v1/nothing", 404), ("PUT", "/v1/jobs", 405), ("PATCH", "/healthz", 405)):
            response = client.request(method, path, headers=AUTH)
            assert response.status_code == status
            assert ErrorResponse.model_validate(response.json()).error.code in ("not_found", "method_not_allowed")
        assert "GET" in client.put("/v1/jobs", headers=AUTH).headers["allow"]  # 405 keeps its Allow header
