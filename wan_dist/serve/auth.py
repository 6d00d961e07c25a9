"""Bearer-key authentication and per-key rate limiting for the HTTP API.

Keys come from config and from ``WAN_DIST_API_KEYS`` (comma-separated, see INTERFACES.md). Only their
SHA-256 digests are kept in memory; a request's key is hashed and compared with ``hmac.compare_digest``
against every stored digest (no early exit), so neither the key nor its position leaks through timing.
A key is identified in logs, quotas and job records by its *key id*: the first 12 hex characters of its
digest, never the key itself.

``RateLimiter`` is a thread-safe token bucket per key id; a refusal carries the seconds to wait, which the
ingress turns into a 429 with ``retry_after_headers`` (``Retry-After`` and ``x-should-retry: true``, the
headers the openai SDK honours).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from typing import Callable, Iterable

__all__ = ["ANONYMOUS", "AuthError", "ApiKeys", "RateLimiter", "key_id", "retry_after_headers"]

ENV_VAR = "WAN_DIST_API_KEYS"
ANONYMOUS = "anonymous"
_FROM_ENV = object()  # sentinel: read the environment when from_sources is called, not at import


class AuthError(Exception):
    """A request that may not proceed; ``status`` is the HTTP status, ``message`` safe to show the client."""

    def __init__(self, *, status: int = 401, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str) -> str:
    """The public identifier of ``key``: the first 12 hex characters of its SHA-256 digest."""
    return _digest(key).hex()[:12]


class ApiKeys:
    """The accepted bearer keys, held as SHA-256 digests only.

    An empty key set is a configuration error (``ValueError``) unless ``allow_anonymous=True``, in which
    case every request authenticates as ``ANONYMOUS``.
    """

    def __init__(self, digests: Iterable[bytes], *, allow_anonymous: bool = False):
        self._digests: tuple[bytes, ...] = tuple(dict.fromkeys(digests))  # de-duplicated, order kept
        if any(len(d) != 32 for d in self._digests):
            raise ValueError("ApiKeys takes SHA-256 digests (32 bytes each)")
        if not self._digests and not allow_anonymous:
            raise ValueError(f"no API keys configured: set {ENV_VAR} or serve.api_keys "
                             "(or allow anonymous access explicitly)")
        self.allow_anonymous = allow_anonymous and not self._digests

    @classmethod
    def from_sources(cls, config_keys: Iterable[str] | None = (),
                     env: str | None = _FROM_ENV,  # type: ignore[assignment]
                     *, allow_anonymous: bool = False) -> "ApiKeys":
        """Keys from config plus the comma-separated ``env`` string (default: ``$WAN_DIST_API_KEYS``;
        pass ``None`` to ignore the environment). Blank entries and surrounding whitespace are dropped."""
        if env is _FROM_ENV:
            env = os.environ.get(ENV_VAR)
        raw = [str(k) for k in (config_keys or ())] + (env.split(",") if env else [])
        return cls((_digest(k.strip()) for k in raw if k and k.strip()), allow_anonymous=allow_anonymous)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys, allow_anonymous={self.allow_anonymous})"

    @property
    def key_ids(self) -> list[str]:
        return [d.hex()[:12] for d in self._digests]

    def authenticate(self, authorization_header: str | None) -> str:
        """The key id for an ``Authorization: Bearer <key>`` header, or ``AuthError`` (401)."""
        if self.allow_anonymous:
            return ANONYMOUS
        scheme, _, token = (authorization_header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(status=401, message="missing bearer token")
        presented = _digest(token)
        match = False
        for stored in self._digests:  # every digest is compared: no early exit
            match |= hmac.compare_digest(presented, stored)
        if not match:
            raise AuthError(status=401, message="invalid API key")
        return presented.hex()[:12]


class RateLimiter:
    """A token bucket per key id: ``burst`` requests at once, refilled at ``rate_per_s``.

    ``check(key_id)`` takes a token and returns ``None``, or returns the seconds until one is available
    (nothing is taken then). Thread-safe; ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic):
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if int(burst) < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, time of last update)

    def check(self, key_id: str) -> float | None:
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return None
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Headers for a 429/503: ``Retry-After`` in whole seconds (at least 1) and ``x-should-retry: true``."""
    wait = 1 if not math.isfinite(seconds) else max(1, math.ceil(seconds))
    return {"Retry-After": str(wait), "x-should-retry": "true"}
