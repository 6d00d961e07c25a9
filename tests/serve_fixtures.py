"""Helpers for tests against servers on 127.0.0.1: a running Serve app (tests/test_serve_*.py, test_web_page.py)
and plain HTTP servers standing in for the internet (test_fetch*.py, test_tenant_sources.py).

* :class:`ServeApp`: the ``wan`` Serve application (``wan_dist.serve.deploy.application``) on a Serve
  proxy bound to 127.0.0.1; ``start(settings)`` deploys and waits for ``/readyz``, ``stop()`` deletes it.
* :func:`served_app`: Serve started on 127.0.0.1 with that app deployed, shut down on exit (a module's ``app``).
* :func:`api_client` / :func:`settle_app`: a test's API client, and afterwards nothing held, queued or running.
* :func:`loopback_server`: a threaded HTTP server on 127.0.0.1 for a handler class, stopped on exit.
* :class:`WebhookReceiver`: a local Standard Webhooks receiver that verifies every delivery with the
  ``standardwebhooks`` package and answers 500 to the first delivery of each ``webhook-id``, 200 after.
* :func:`read_sse`: the events of a ``text/event-stream`` response, parsed.
* :func:`wait_for`: poll a condition with a deadline (a hang shows as a failure, never as a stuck suite).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import httpx

__all__ = ["APP_NAME", "ServeApp", "WebhookReceiver", "api_client", "free_port", "loopback_server", "read_sse",
           "served_app", "settle", "settle_app", "wait_for"]

APP_NAME = "wan"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout_s: float, *, interval_s: float = 0.1, what: str = "a condition"):
    """``check()``'s first truthy value, polled every ``interval_s``; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval_s)


def settle(store, holds, timeout_s: float) -> None:
    """After a test: every hold released, every job still queued or running cancelled, the renderer idle."""
    from wan_dist.serve.jobs import ACTIVE_STATUSES

    holds.release_all()
    jobs, _ = store.list(status=ACTIVE_STATUSES, limit=1000)
    for job in jobs:
        store.request_cancel(job.id)
    wait_for(lambda: store.count(status=ACTIVE_STATUSES) == 0, timeout_s, what="an idle renderer")


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler], **state) -> Iterator[ThreadingHTTPServer]:
    """A ``ThreadingHTTPServer`` for ``handler`` on 127.0.0.1 (a free port: ``server_address[1]``), serving on a
    daemon thread. ``state`` becomes attributes of the server, which the handler reads as ``self.server.<name>``;
    ``release``, a threading.Event set on exit, lets a handler that holds a request go. On exit the server is
    stopped and closed and its thread joined."""
    httpd = ThreadingHTTPServer((HOST, 0), handler)
    httpd.daemon_threads = True
    httpd.release = threading.Event()
    for name, value in state.items():
        setattr(httpd, name, value)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@contextlib.contextmanager
def served_app(settings, *, timeout_s: float = 120.0) -> Iterator[ServeApp]:
    """Serve started on 127.0.0.1 (a free port) with the ``wan`` app of ``settings`` deployed and ready; Serve is
    shut down on exit, also when the app never got ready. Ray itself is the caller's (``ray_local``)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    try:
        yield ServeApp(port).start(settings, timeout_s=timeout_s)
    finally:
        serve.shutdown()


def settle_app(app: ServeApp, holds, timeout_s: float = 120.0) -> None:
    """:func:`settle` on ``app``'s job store, opened for it and closed after."""
    from wan_dist.serve.stores import open_store

    with open_store(app.settings.store) as store:
        settle(store, holds, timeout_s)


@contextlib.contextmanager
def api_client(app: ServeApp, holds, key: str = "k1", *, timeout_s: float = 120.0) -> Iterator[httpx.Client]:
    """``app.client(key)`` for one test; after it, every hold released and every job left queued or running
    cancelled and ended (:func:`settle_app`), so the next test starts on an idle renderer."""
    try:
        with app.client(key) as client:
            yield client
    finally:
        settle_app(app, holds, timeout_s)


class ServeApp:
    """The Serve application ``wan`` at ``http://127.0.0.1:{port}``; Serve itself is started by the caller
    (``serve.start(http_options={"host": "127.0.0.1", "port": port})``)."""

    def __init__(self, port: int):
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.settings = None

    def start(self, settings, *, timeout_s: float = 120.0) -> "ServeApp":
        from ray import serve

        from wan_dist.serve.deploy import application

        serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        self.settings = settings
        with httpx.Client(base_url=self.base_url, timeout=10, trust_env=False) as client:
            wait_for(lambda: _status(client, "/readyz") == 200, timeout_s, interval_s=0.25, what="GET /readyz")
        return self

    def stop(self) -> None:
        from ray import serve

        serve.delete(APP_NAME)
        self.settings = None

    def client(self, key: str | None = "k1", **headers) -> httpx.Client:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, trust_env=False)


def _status(client: httpx.Client, path: str) -> int | None:
    try:
        return client.get(path).status_code
    except httpx.HTTPError:
        return None


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1. Every request is verified with ``standardwebhooks`` (failures land in
    ``errors``); the first delivery of each ``webhook-id`` is answered 500, later ones 200. ``requests``
    holds ``(webhook-id, status answered, payload)`` in arrival order."""

    def __init__(self, secret: str):
        from standardwebhooks.webhooks import Webhook

        self._webhook = Webhook(secret)
        self.requests: list[tuple[str, int, dict]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                code = receiver._receive(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self.url = f"http://{HOST}:{self._server.server_address[1]}/hooks"

    def _receive(self, body: bytes, headers: dict) -> int:
        try:
            payload = self._webhook.verify(body, headers)
        except Exception as error:  # noqa: BLE001 - recorded, answered 400
            with self._lock:
                self.errors.append(f"{type(error).__name__}: {error}")
            return 400
        msg_id = headers["webhook-id"]
        with self._lock:
            code = 200 if any(seen == msg_id for seen, _, _ in self.requests) else 500
            self.requests.append((msg_id, code, payload))
        return code

    def events(self, job_id: str) -> list[tuple[str, int, str]]:
        """(webhook-id, status answered, event type) of the deliveries about ``job_id``."""
        with self._lock:
            return [(m, c, p["type"]) for m, c, p in self.requests if p["data"]["id"] == job_id]

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def read_sse(client: httpx.Client, path: str, *, timeout_s: float = 60.0,
             on_event: Callable[[list], None] | None = None) -> list[tuple[str, dict]]:
    """``(event, data)`` of every server-sent event of ``GET path`` until the server ends the stream;
    ``on_event(events so far)`` after each one (e.g. to release a held render once an event was read)."""
    events: list[tuple[str, dict]] = []
    event, data = None, []
    with client.stream("GET", path, timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
            elif line == "" and data:
                events.append((event or "message", json.loads("\n".join(data))))
                event, data = None, []
                if on_event is not None:
                    on_event(events)
    return events
