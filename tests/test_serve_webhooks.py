"""Standard Webhooks signing and at-least-once delivery, checked with the official ``standardwebhooks``
package against a real receiver on 127.0.0.1 (started and stopped by each test)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from wan_dist.serve import webhooks
from wan_dist.serve.webhooks import (DeliveryState, WebhookDispatcher, WebhookSigner, event_payload,
                                     generate_secret, secret_from_env)


@pytest.fixture
def receiver():
    """``start(statuses) -> (url, requests)``: an HTTP server on 127.0.0.1 answering the i-th POST with
    ``statuses[i]`` (the last one repeats) and recording ``(headers, body)`` of each."""
    servers = []

    def start(statuses):
        requests: list[tuple[dict, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = statuses[min(len(requests), len(statuses)) - 1]
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/hooks", requests

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mock_client(handler, calls: list):
    def record(request: httpx.Request):
        calls.append(request)
        return handler(request)
    return httpx.AsyncClient(transport=httpx.MockTransport(record))


async def no_sleep(_seconds):
    return None


# ---- signing -------------------------------------------------------------------------------------------


def test_signatures_verify_with_standardwebhooks():
    secret = generate_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+=*", secret)
    signer = WebhookSigner(secret)
    body = event_payload("video.completed", {"id": "video_1", "status": "completed"}, created_at=1700000000.7)
    ts = int(time.time())
    headers = signer.headers("msg_abc", ts, body)
    assert headers["webhook-id"] == "msg_abc" and headers["webhook-timestamp"] == str(ts)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"] == Webhook(secret).sign("msg_abc", datetime.fromtimestamp(ts, timezone.utc),
                                                                body.decode())
    assert Webhook(secret).verify(body, headers) == {"type": "video.completed", "created_at": 1700000000,
                                                     "data": {"id": "video_1", "status": "completed"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"completed", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the timestamp is signed too
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": str(ts + 1)})


def test_bad_secrets_and_event_types():
    for bad in ("whsec_", "whsec_not base64!", ""):
        with pytest.raises(ValueError):
            WebhookSigner(bad)
    assert "whsec" not in repr(WebhookSigner(generate_secret()))
    for bad in ("completed", "Job.Completed", "job.", ""):
        with pytest.raises(ValueError):
            event_payload(bad, {}, 0)


def test_secret_from_env(monkeypatch, caplog):
    secret = generate_secret()
    assert secret_from_env({"WAN_DIST_WEBHOOK_SECRET": secret}) == secret
    with pytest.raises(ValueError):
        secret_from_env({"WAN_DIST_WEBHOOK_SECRET": "whsec_%%%"})
    monkeypatch.setattr(webhooks, "_generated_secret", None)
    with caplog.at_level(logging.WARNING, logger="wan_dist.serve.webhooks"):
        first, second = secret_from_env({}), secret_from_env({})
    assert first == second and first.startswith("whsec_")
    logged = [r for r in caplog.records if first in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING


# ---- delivery ------------------------------------------------------------------------------------------


def test_retry_after_500_delivers_on_second_attempt(receiver):
    url, requests = receiver([500, 200])
    secret = generate_secret()
    states: list[DeliveryState] = []

    async def main():
        dispatcher = WebhookDispatcher(WebhookSigner(secret), base_delay_s=0.01, allow_private=True,
                                       on_state=states.append)
        try:
            return await dispatcher.deliver(url, "job.completed", {"id": "job_1", "status": "completed"})
        finally:
            await dispatcher.aclose()

    state = asyncio.run(main())
    assert state.status == "delivered" and state.attempts == 2 and state.last_status_code == 200
    assert state.last_error is None and state.delivered_at is not None and state.msg_id.startswith("msg_")
    assert len(requests) == 2
    assert {h["webhook-id"] for h, _ in requests} == {state.msg_id}
    for headers, body in requests:
        assert Webhook(secret).verify(body, headers)["data"] == {"id": "job_1", "status": "completed"}
    assert requests[0][1] == requests[1][1]  # the same payload on every attempt
    assert [s.status for s in states] == ["pending", "delivered"]
    assert states[0].last_status_code == 500 and states[0].last_error == "HTTP 500"
    assert states[0].next_attempt_at is not None and states[0].attempts == 1
    assert set(state.to_dict()) == {"event", "msg_id", "attempts", "status", "last_status_code", "last_error",
                                    "next_attempt_at", "delivered_at"}
    assert DeliveryState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_always_failing_receiver_ends_failed(receiver):
    url, requests = receiver([503])
    states: list[DeliveryState] = []

    async def main():
        dispatcher = WebhookDispatcher(WebhookSigner(generate_secret()), max_attempts=3, base_delay_s=0.005,
                                       allow_private=True, on_state=states.append)
        try:
            return await dispatcher.deliver(url, "job.failed", {"id": "job_2"}, msg_id="msg_fixed")
        finally:
            await dispatcher.aclose()

    state = asyncio.run(main())
    assert state.status == "failed" and state.attempts == 3 and state.last_status_code == 503
    assert state.next_attempt_at is None and state.delivered_at is None
    assert len(requests) == 3 and {h["webhook-id"] for h, _ in requests} == {"msg_fixed"}
    assert [s.status for s in states] == ["pending", "pending", "failed"]


def test_backoff_is_exponential_with_full_jitter():
    calls, slept = [], []

    async def sleep(seconds):
        slept.append(seconds)

    def run(rand):
        slept.clear()
        client = mock_client(lambda r: httpx.Response(500), calls)
        d = WebhookDispatcher(WebhookSigner(generate_secret()), max_attempts=7, base_delay_s=1.0, max_delay_s=20,
                              client=client, sleep=sleep, rand=rand, resolver=lambda *a, **k: [])
        state = asyncio.run(d.deliver("http://93.184.215.14/h", "job.completed", {}))
        asyncio.run(client.aclose())
        assert state.status == "failed" and state.attempts == 7
        return list(slept)

    caps = [1, 2, 4, 8, 16, 20]  # base * 2**(n-1), capped at max_delay_s
    assert run(lambda: 1.0) == caps
    assert run(lambda: 0.5) == [c / 2 for c in caps]
    assert run(lambda: 0.0) == [0.0] * 6
    import random
    jittered = run(random.Random(0).random)
    assert all(0 <= d <= c for d, c in zip(jittered, caps)) and len(set(jittered)) == 6


def test_timeouts_and_connection_errors_are_retried():
    errors = iter([httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])

    def handler(request):
        exc = next(errors, None)
        if exc is not None:
            raise exc
        return httpx.Response(204)

    calls, states = [], []
    client = mock_client(handler, calls)
    d = WebhookDispatcher(WebhookSigner(generate_secret()), client=client, sleep=no_sleep, timeout_s=2,
                          on_state=states.append)
    state = asyncio.run(d.deliver("http://93.184.215.14/h", "job.progress", {"progress": 50}))
    asyncio.run(client.aclose())
    assert state.status == "delivered" and state.attempts == 3 and state.last_status_code == 204
    assert states[0].last_error.startswith("timeout") and states[0].last_status_code is None
    assert "ConnectError" in states[1].last_error


def test_private_url_is_refused_before_any_request():
    calls, states = [], []
    client = mock_client(lambda r: httpx.Response(200), calls)
    d = WebhookDispatcher(WebhookSigner(generate_secret()), client=client, on_state=states.append)
    state = asyncio.run(d.deliver("http://127.0.0.1:9/hook", "job.completed", {"id": "j"}))
    assert state.status == "failed" and state.attempts == 0 and calls == []
    assert "webhook_url" in state.last_error and "loopback" in state.last_error
    assert [s.status for s in states] == ["failed"]

    # DNS rebinding: public at the first attempt, private at the retry -> refused then
    answers = iter([["93.184.215.14"], ["10.0.0.7"]])

    def resolver(host, port, *args, **kwargs):
        return [(2, 1, 6, "", (a, port)) for a in next(answers)]

    calls2: list = []
    client2 = mock_client(lambda r: httpx.Response(500), calls2)
    d2 = WebhookDispatcher(WebhookSigner(generate_secret()), client=client2, sleep=no_sleep, resolver=resolver)
    state = asyncio.run(d2.deliver("http://hooks.example/h", "job.completed", {}))
    assert len(calls2) == 1 and state.status == "failed" and "private" in state.last_error
    asyncio.run(client.aclose())
    asyncio.run(client2.aclose())


def test_a_delivery_goes_to_the_address_that_was_checked_with_the_urls_host():
    """No second resolution between the check and the connection: the POST is sent to the checked address."""
    calls: list = []
    client = mock_client(lambda r: httpx.Response(204), calls)

    def resolver(host, port, *args, **kwargs):
        return [(2, 1, 6, "", ("93.184.215.14", port))] if host == "hooks.example" else []

    d = WebhookDispatcher(WebhookSigner(generate_secret()), client=client, sleep=no_sleep, resolver=resolver)
    state = asyncio.run(d.deliver("https://hooks.example:8443/h?x=1", "job.completed", {"id": "j"}))
    asyncio.run(client.aclose())
    assert state.status == "delivered" and len(calls) == 1
    sent = calls[0]
    assert (sent.url.host, sent.url.port, sent.url.path, sent.url.query) == ("93.184.215.14", 8443, "/h", b"x=1")
    assert sent.headers["host"] == "hooks.example:8443" and sent.extensions["sni_hostname"] == "hooks.example"


def test_schedule_from_coroutine_and_from_another_thread(receiver):
    url, requests = receiver([200])
    states: list[DeliveryState] = []
    d = WebhookDispatcher(WebhookSigner(generate_secret()), allow_private=True, on_state=states.append)

    async def in_loop():
        msg_id = d.schedule(url, "video.completed", {"id": "video_1"})
        assert d.pending == 1
        await asyncio.sleep(0)
        return msg_id

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        first = asyncio.run_coroutine_threadsafe(in_loop(), loop).result(5)
        second = d.schedule(url, "video.failed", {"id": "video_2"}, loop=loop)  # from this (non-loop) thread
        with pytest.raises(RuntimeError):
            d.schedule(url, "video.failed", {})  # no loop here and none given
        asyncio.run_coroutine_threadsafe(d.aclose(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert d.pending == 0
    assert sorted(h["webhook-id"] for h, _ in requests) == sorted([first, second])
    assert {s.msg_id: s.status for s in states} == {first: "delivered", second: "delivered"}
    with pytest.raises(RuntimeError, match="closed"):
        d.schedule(url, "job.completed", {}, loop=loop)


def test_aclose_cancels_deliveries_waiting_to_retry(receiver):
    url, requests = receiver([500])
    states: list[DeliveryState] = []

    async def main():
        d = WebhookDispatcher(WebhookSigner(generate_secret()), base_delay_s=60, allow_private=True,
                              rand=lambda: 1.0, on_state=states.append)
        d.schedule(url, "job.completed", {"id": "j"})
        while not states:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await d.aclose(timeout_s=0.1)
        return d, time.monotonic() - started

    d, took = asyncio.run(main())
    assert took < 30 and d.pending == 0 and len(requests) == 1  # not the 60 s retry delay, however loaded
    assert states[-1].status == "pending" and states[-1].next_attempt_at is not None  # resumable later
