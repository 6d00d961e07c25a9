"""Issue 20: a tenant's image and LoRA URLs are checked when the renderer reads them, not only when submitted.

A pipeline with a fetch policy (what the Serve renderers' groups carry) reads http(s) URLs through
storage.fetch.fetch_bytes: every hop's address is checked, so a URL that passed the submit-time check and then
redirects to another loopback or private address is refused as it is read, naming the field; other schemes are
refused. Without a policy (the operator's own runs) the same URLs are read as storage reads them. A server on
127.0.0.1 stands in for the internet; the policy's ``allow`` list trusts 127.0.0.1 alone (127.0.0.2 is the
"internal" address an attacker aims at). Nothing leaves the machine."""

from __future__ import annotations

import io
import pickle
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import torch

from serve_fixtures import loopback_server
from wan_dist.engine.request import build_request
from wan_dist.models.lora import LoraError
from wan_dist.storage.fetch import FetchPolicy, FetchRefused

TRUSTING = FetchPolicy(allow=("127.0.0.1/32",))


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        files, port = self.server.files, self.server.server_address[1]
        self.server.hits.append(self.path)
        if self.path in files:
            body = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/inside/"):  # a redirect to an internal address serving the same file
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{port}/{self.path[len('/inside/'):]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def server(checkpoint_factory):
    from PIL import Image
    from safetensors.torch import save

    from lora_files import diffusers_lora
    from wan_dist.models.presets import get_preset

    image = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8)).save(image, format="PNG")
    files = {"/img.png": image.getvalue(),
             "/lora.safetensors": save(diffusers_lora(get_preset("tiny-ti2v").dit, seed=1, bias=False))}
    with loopback_server(_Handler, hits=[], files=files) as httpd:
        yield httpd


@pytest.fixture(scope="module")
def pipe(checkpoint_factory):
    from wan_dist.engine.loading import load_pipeline

    return load_pipeline(str(checkpoint_factory("tiny-ti2v", "diffusers")), dtype=torch.float32)


def _render(pipe, policy, **fields):
    from wan_dist.engine.render import generate_for

    pipe.fetch_policy = policy
    try:
        request = build_request({"prompt": "a red square", "height": 32, "width": 32, "num_frames": 5,
                                 "num_inference_steps": 1, "seed": 0, **fields}, spec=pipe.spec).request
        return generate_for(pipe, request).frames
    finally:
        pipe.fetch_policy = None


def _url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_an_image_url_is_read_under_the_policy_and_a_redirect_inside_is_refused_as_it_is_read(pipe, server):
    frames = _render(pipe, TRUSTING, image=_url(server, "/img.png"))
    assert frames.shape[-3:] == (32, 32, 3)
    with pytest.raises(FetchRefused, match=r"^image: redirect: .*loopback address 127\.0\.0\.2") as refused:
        _render(pipe, TRUSTING, image=_url(server, "/inside/img.png"))
    assert refused.value.field == "image"
    again = pickle.loads(pickle.dumps(refused.value))  # a rank's error reaches the driver through Ray (pickle)
    assert (type(again), again.field, str(again)) == (FetchRefused, "image", str(refused.value))
    with pytest.raises(FetchRefused, match=r"^image: .*loopback address 127\.0\.0\.1"):
        _render(pipe, FetchPolicy(), image=_url(server, "/img.png"))  # no operator allowance: not even the first hop
    with pytest.raises(FetchRefused, match=r"^image: file: URLs are not allowed here"):
        _render(pipe, TRUSTING, image="/etc/hostname")
    operator = _render(pipe, None, image=_url(server, "/img.png"))  # the operator's run: read as storage reads it
    np.testing.assert_array_equal(operator, frames)


def test_a_lora_url_is_read_under_the_policy_and_a_redirect_inside_is_refused_naming_the_lora(pipe, server):
    with_lora = _render(pipe, TRUSTING, image=_url(server, "/img.png"),
                        loras=[{"path": _url(server, "/lora.safetensors")}])
    assert with_lora.shape[-3:] == (32, 32, 3)
    hits = len(server.hits)
    with pytest.raises(LoraError, match=r"^loras\[0\]\.path: redirect: .*loopback address 127\.0\.0\.2"):
        _render(pipe, TRUSTING, image=_url(server, "/img.png"), loras=[{"path": _url(server, "/inside/l.st")}])
    assert server.hits[hits:] == ["/img.png", "/inside/l.st"]  # the internal address was never contacted
    with pytest.raises(LoraError, match=r"^loras\[0\]\.path: s3: URLs are not allowed here"):
        _render(pipe, TRUSTING, image=_url(server, "/img.png"), loras=[{"path": "s3://other-bucket/l.safetensors"}])
