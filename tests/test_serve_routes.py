"""The FastAPI app after the round trip Serve gives it: ``serve.ingress`` pickles the app and the ingress replica
unpickles it in another process. Every router's routes must answer there as they do in the process that built
the app (no Ray cluster here: the same pickling, then a fresh Python process with a TestClient)."""

from __future__ import annotations

import json
import subprocess
import sys

from wan_dist.serve.app import create_app
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings

BODY = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}

# Calls on every router, in order; "{id}" is the id the previous create answered. Run by both processes.
SCRIPT = r"""
import json, sys

from fastapi.testclient import TestClient

def calls(app, body):
    with TestClient(app, headers={"Authorization": "Bearer k1"}) as client:
        statuses, last = [], None
        for method, path, payload in (
                ("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/v1/models", None),
                ("POST", "/v1/models/tiny/jobs", body), ("GET", "/v1/jobs/{id}", None),
                ("GET", "/v1/jobs/{id}/content", None), ("GET", "/v1/jobs/{id}/preview", None),
                ("POST", "/v1/jobs/{id}/cancel", None), ("GET", "/v1/jobs?limit=5", None),
                ("GET", "/v1/jobs/nope", None), ("POST", "/v1/videos", {**body, "model": "tiny"}),
                ("GET", "/v1/videos/{id}", None), ("GET", "/v1/videos?order=asc", None),
                ("DELETE", "/v1/videos/{id}", None), ("GET", "/v1/batches", None),
                ("GET", "/v1/batches/nope/results", None), ("GET", "/v1/jobs?limit=0", None),
                ("GET", "/", None), ("GET", "/static/app.js", None), ("GET", "/static/nope.js", None)):
            response = client.request(method, path.replace("{id}", str(last)), json=payload)
            if method == "POST" and response.status_code in (200, 202):
                last = response.json()["id"]
            statuses.append([method, path, response.status_code])
        return statuses

if __name__ == "__main__":
    from ray import cloudpickle
    from ray.serve._private.utils import ensure_serialization_context

    ensure_serialization_context()
    with open(sys.argv[1], "rb") as file:
        app = cloudpickle.loads(file.read())
    print(json.dumps(calls(app, json.loads(sys.argv[2]))))
"""


def test_every_router_answers_in_the_process_that_unpickles_the_app(tmp_path):
    from ray._common.serialization import pickle_dumps
    from ray.serve._private.utils import ensure_serialization_context

    def settings(name: str) -> ServeSettings:
        return ServeSettings(models=("tiny",), store=str(tmp_path / f"{name}.db"), output=str(tmp_path / name),
                             auth=AuthSettings(api_keys=("k1",)), limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "="))

    ensure_serialization_context()
    pickled = tmp_path / "app.pkl"
    pickled.write_bytes(pickle_dumps(create_app(settings("replica")), error_msg="the app does not pickle"))
    script = tmp_path / "calls.py"
    script.write_text(SCRIPT)
    process = subprocess.run([sys.executable, str(script), str(pickled), json.dumps(BODY)], capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    replica = json.loads(process.stdout.strip().splitlines()[-1])

    namespace: dict = {}
    exec(compile(SCRIPT, "calls", "exec"), namespace)  # the same calls on the app as built here
    app = create_app(settings("local"))
    try:
        local = namespace["calls"](app, BODY)
    finally:
        app.state.get_state().close()
    assert replica == local
    codes = {f"{method} {path}": status for method, path, status in replica}
    assert codes["GET /readyz"] == 200 and codes["GET /v1/models"] == 200
    assert codes["POST /v1/models/tiny/jobs"] == 202 and codes["GET /v1/jobs/{id}/content"] == 409
    assert codes["GET /v1/jobs/nope"] == 404 and codes["GET /v1/jobs?limit=0"] == 422
    assert codes["GET /"] == codes["GET /static/app.js"] == 200 and codes["GET /static/nope.js"] == 404


def test_the_web_page_and_its_files_are_open_and_nothing_else_is(tmp_path):
    """The page holds no secret (its API calls carry the key its user pastes): / and /static/* answer without a
    key, the shipped files only, each with a policy that lets the page reach nothing but this origin."""
    import re

    from fastapi.testclient import TestClient

    app = create_app(ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                                   auth=AuthSettings(api_keys=("k1",)),
                                   webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "=")))
    try:
        with TestClient(app) as client:
            page = client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "connect-src 'self'" in page.headers["content-security-policy"]
            shipped = re.findall(r'(?:src|href)="/static/([\w.-]+)"', page.text)
            assert "app.js" in shipped and "style.css" in shipped
            for name in shipped + ["api.js", "form.js", "jobs.js", "batches.js"]:  # app.js imports the rest
                response = client.get(f"/static/{name}")
                assert response.status_code == 200 and response.content, name
                assert response.headers["x-content-type-options"] == "nosniff"
                assert not re.search(r"""(from|import\(|url\()\s*["']?(https?:)?//""", response.text), name
            assert "http://" not in page.text and "https://" not in page.text  # no CDN: nothing from the network
            for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/.hidden.js", "/static/page.py"):
                response = client.get(path)
                assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
            for path in ("/v1/models", "/v1/jobs", "/favicon.ico", "/staticx"):  # the API still needs a key
                assert client.get(path).status_code == 401, path
    finally:
        app.state.get_state().close()
