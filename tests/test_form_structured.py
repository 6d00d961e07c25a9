"""Form bodies carry the structured request fields (camera, layers, loras, metadata) as JSON text, as a manifest's
columns do: a multipart job with an uploaded image and a camera path is the job its JSON twin is (issue 14)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from wan_dist.serve.app import create_app
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings
from wan_dist.serve.stores import open_store

CAMERA = {"moves": [{"type": "pan", "amount": 12.5, "easing": "linear"}], "shake": {"intensity": 0.3}}
LAYERS = {"parallax": 2.0}
FIELDS = {"prompt": "a red square drifts", "num_frames": 5, "num_inference_steps": 2, "seed": 4}


@pytest.fixture
def client(tmp_path):
    settings = ServeSettings(models=("tiny-ti2v",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=("k1",)), limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "="))
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as c:
        c.store_uri = settings.store
        yield c


def _png() -> bytes:
    sink = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(sink, format="PNG")
    return sink.getvalue()


def _request(client, job_id: str) -> dict:
    with open_store(client.store_uri) as store:
        return store.get(job_id).request["render"]  # the RenderRequest's loose form


def test_a_multipart_job_carries_a_camera_path_and_layers_as_its_json_twin_does(client):
    form = {**{k: str(v) for k, v in FIELDS.items()}, "camera": json.dumps(CAMERA), "layers": json.dumps(LAYERS),
            "metadata": json.dumps({"campaign": "spring"})}
    multipart = client.post("/v1/models/tiny-ti2v/jobs", data=form, files={"image": ("a.png", _png(), "image/png")})
    assert multipart.status_code == 202, multipart.text
    twin = client.post("/v1/models/tiny-ti2v/jobs", json={**FIELDS, "camera": CAMERA, "layers": LAYERS,
                                                          "metadata": {"campaign": "spring"},
                                                          "image": "s3://frames/a.png"})
    assert twin.status_code == 202, twin.text
    ours, theirs = _request(client, multipart.json()["id"]), _request(client, twin.json()["id"])
    for name in ("camera", "layers", "metadata"):
        assert ours[name] == theirs[name] and ours[name], name
    assert ours["camera"]["moves"][0]["amount"] == 12.5


@pytest.mark.parametrize(("field", "value", "reason"), [("camera", "{moves: [", "not valid JSON"),
                                                        ("camera", '{"moves": [{"type": "spin", "amount": 1}]}',
                                                         "spin"),
                                                        ("loras", "[1, 2", "not valid JSON")])
def test_bad_structured_form_values_are_refused_naming_the_field(client, field, value, reason):
    form = {**{k: str(v) for k, v in FIELDS.items()}, field: value}
    response = client.post("/v1/models/tiny-ti2v/jobs", data=form, files={"image": ("a.png", _png(), "image/png")})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"].split(".")[0].split("[")[0] == field and reason in error["message"], error
