"""Webhook delivery, signed the Standard Webhooks way (as OpenAI and Replicate sign them).

Each delivery is a POST of ``{"type", "created_at", "data"}`` with the headers ``webhook-id`` (the same on
every retry, so receivers can de-duplicate), ``webhook-timestamp`` (set per attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded
``whsec_`` secret; receivers verify with the ``standardwebhooks`` package. Delivery is at least once: a 2xx
within ``timeout_s`` counts as delivered; anything else is retried with exponential backoff and full jitter
up to ``max_attempts``. The target URL is re-checked by ``check_public_url`` before every attempt (DNS
rebinding) and redirects are never followed. After every attempt the ``DeliveryState`` goes to ``on_state``
so the caller can persist it on the job (a delivery interrupted by shutdown stays ``pending`` there).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import inspect
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from typing import Any, Callable, Mapping

import httpx

from wan_dist.storage.fetch import FetchRefused

from .urls import UnsafeURL, check_public_url

__all__ = ["EVENT_TYPES", "DeliveryState", "WebhookDispatcher", "WebhookSigner", "event_payload",
           "generate_secret", "new_msg_id", "secret_from_env"]

log = logging.getLogger(__name__)

SECRET_ENV = "WAN_DIST_WEBHOOK_SECRET"
SECRET_PREFIX = "whsec_"
EVENT_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled", "job.progress",
                         "video.completed", "video.failed", "video.cancelled", "video.progress"})
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_.]*$")
_generated_secret: str | None = None


def generate_secret() -> str:
    """A fresh ``whsec_<base64 of 32 random bytes>`` secret."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def secret_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """``$WAN_DIST_WEBHOOK_SECRET``, or a secret generated once per process and logged once (warning),
    so the operator can hand it to receivers. A malformed secret is a ``ValueError``."""
    global _generated_secret
    secret = environ.get(SECRET_ENV, "").strip()
    if secret:
        WebhookSigner(secret)  # validate now, not at the first delivery
        return secret
    if _generated_secret is None:
        _generated_secret = generate_secret()
        log.warning("%s is not set; webhooks are signed with this generated secret (set it to keep it "
                    "across restarts): %s", SECRET_ENV, _generated_secret)
    return _generated_secret


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class WebhookSigner:
    """Signs payloads with a ``whsec_<base64>`` secret (the prefix is optional on input)."""

    def __init__(self, secret: str):
        raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
        try:
            self._key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except ValueError:
            raise ValueError("webhook secret must be whsec_<base64>") from None
        if not self._key:
            raise ValueError("webhook secret may not be empty")

    def __repr__(self) -> str:
        return "WebhookSigner(<secret>)"

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        to_sign = f"{msg_id}.{int(timestamp)}.".encode() + body
        return "v1," + base64.b64encode(hmac.new(self._key, to_sign, hashlib.sha256).digest()).decode("ascii")

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp)),
                "webhook-signature": self.sign(msg_id, timestamp, body), "content-type": "application/json"}


def event_payload(event_type: str, data: dict, created_at: float) -> bytes:
    """The JSON body ``{"type", "created_at" (int seconds), "data"}`` of one event."""
    if not _EVENT_RE.match(event_type):
        raise ValueError(f"malformed webhook event type {event_type!r} (expected e.g. 'job.completed')")
    return json.dumps({"type": event_type, "created_at": int(created_at), "data": data},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclasses.dataclass
class DeliveryState:
    """Where one event's delivery stands; ``to_dict()`` is what the job record carries."""

    event: str
    msg_id: str
    attempts: int = 0  # HTTP requests sent so far
    status: str = "pending"  # pending | delivered | failed
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None  # unix seconds; None when no retry is planned
    delivered_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeliveryState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class WebhookDispatcher:
    """Delivers signed events with retries; see the module docstring.

    ``sleep``, ``rand`` (uniform in [0, 1)), ``clock`` (unix seconds) and ``resolver`` are injectable for
    tests. Without ``client`` one ``httpx.AsyncClient`` is created on first use and closed by ``aclose``.
    """

    def __init__(self, signer: WebhookSigner, *, max_attempts: int = 8, base_delay_s: float = 1.0,
                 max_delay_s: float = 300.0, timeout_s: float = 15.0, client: httpx.AsyncClient | None = None,
                 allow_private: bool = False, on_state: Callable[[DeliveryState], Any] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time, resolver: Callable = socket.getaddrinfo):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.signer = signer
        self.max_attempts = int(max_attempts)
        self.base_delay_s = float(base_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.timeout_s = float(timeout_s)
        self.allow_private = allow_private
        self.on_state = on_state
        self._client = client
        self._own_client = client is None
        self._sleep, self._rand, self._clock, self._resolver = sleep, rand, clock, resolver
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter, uniform in
        [0, min(max_delay_s, base_delay_s * 2**(attempt-1))]."""
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return self._rand() * cap

    async def _report(self, state: DeliveryState) -> None:
        if self.on_state is None:
            return
        try:
            result = self.on_state(dataclasses.replace(state))  # a copy: later attempts don't mutate it
            if inspect.isawaitable(result):
                await result
        except Exception:  # persisting the state must not stop the delivery
            log.exception("webhook on_state callback failed for %s", state.msg_id)

    def _pin(self, url: str):
        """The checked address of ``url`` (storage.fetch.pin), after the webhook URL's own rules (schemes, userinfo)."""
        from wan_dist.storage.fetch import FetchPolicy, pin

        answers: dict = {}

        def once(host, port, *args, **kwargs):  # one resolution per attempt: the answer checked is the one used
            if (host, port) not in answers:
                answers[host, port] = self._resolver(host, port, *args, **kwargs)
            return answers[host, port]

        check_public_url(url, allow_private=self.allow_private, field="webhook_url", resolver=once)
        return pin(url, policy=FetchPolicy(allow_private=self.allow_private, resolver=once), field="webhook_url")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False,
                                             headers={"user-agent": "wan-dist-webhooks/1"})
        return self._client

    async def _attempt(self, target, headers: dict[str, str], body: bytes) -> tuple[int | None, str | None]:
        """(status code, error) of one POST to ``target`` (storage.fetch.PinnedTarget: the checked address, the
        URL's Host and TLS name); error is None exactly when the receiver answered 2xx."""
        try:
            resp = await self._http().post(target.url, content=body, headers={**headers, **target.headers},
                                           timeout=self.timeout_s, follow_redirects=False,
                                           extensions=target.extensions)
        except httpx.TimeoutException:
            return None, f"timeout after {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return resp.status_code, None
        return resp.status_code, f"HTTP {resp.status_code}"

    async def deliver(self, url: str, event_type: str, data: dict, *, msg_id: str | None = None,
                      created_at: float | None = None) -> DeliveryState:
        """Deliver one event (same ``webhook-id`` and body on every attempt) and return its final state."""
        body = event_payload(event_type, data, self._clock() if created_at is None else created_at)
        state = DeliveryState(event=event_type, msg_id=msg_id or new_msg_id())
        while True:
            try:  # re-checked every attempt (the name may have been re-pointed), then sent to that very address
                target = await asyncio.to_thread(self._pin, url)
            except (UnsafeURL, FetchRefused) as exc:
                state.status, state.last_error, state.next_attempt_at = "failed", str(exc), None
                log.warning("webhook %s (%s) refused: %s", state.msg_id, event_type, exc)
                await self._report(state)
                return state
            state.attempts += 1
            headers = self.signer.headers(state.msg_id, int(self._clock()), body)
            state.last_status_code, state.last_error = await self._attempt(target, headers, body)
            if state.last_error is None:
                state.status, state.delivered_at, state.next_attempt_at = "delivered", self._clock(), None
                await self._report(state)
                return state
            if state.attempts >= self.max_attempts:
                state.status, state.next_attempt_at = "failed", None
                log.warning("webhook %s (%s) failed after %d attempts: %s", state.msg_id, event_type,
                            state.attempts, state.last_error)
                await self._report(state)
                return state
            delay = self.backoff_delay(state.attempts)
            state.next_attempt_at = self._clock() + delay
            await self._report(state)
            await self._sleep(delay)

    def schedule(self, url: str, event_type: str, data: dict, *, msg_id: str | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> str:
        """Start ``deliver`` as a background task and return its ``webhook-id`` at once.

        Call it from a coroutine on the loop (``loop`` may then be omitted) or from any thread with the
        loop that should run the delivery (e.g. the Serve ingress's). Tasks are kept until they finish.
        """
        if self._closed:
            raise RuntimeError("WebhookDispatcher is closed")
        msg_id = msg_id or new_msg_id()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        target = loop or running
        if target is None:
            raise RuntimeError("schedule() needs an event loop: pass loop= or call it from a coroutine")
        if target is running:
            self._spawn(url, event_type, data, msg_id)
        else:
            target.call_soon_threadsafe(self._spawn, url, event_type, data, msg_id)
        return msg_id

    def _spawn(self, url: str, event_type: str, data: dict, msg_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(url, event_type, data, msg_id=msg_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` for scheduled deliveries, cancel the rest (their persisted state stays
        ``pending``, to be resumed), and close the client this dispatcher created."""
        self._closed = True
        tasks = list(self._tasks)
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout_s)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
