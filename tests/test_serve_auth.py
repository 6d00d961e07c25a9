"""Bearer-key auth, rate limiting and the SSRF URL guard of the HTTP API (no network: resolvers are injected)."""

from __future__ import annotations

import hashlib
import socket

import pytest

from wan_dist.serve.auth import ANONYMOUS, ApiKeys, AuthError, RateLimiter, key_id, retry_after_headers
from wan_dist.serve.urls import IMAGE_SCHEMES, UnsafeURL, check_public_url

KEY_A, KEY_B = "sk-test-alpha-0123456789", "sk-test-bravo-9876543210"


def _id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# ---- ApiKeys -------------------------------------------------------------------------------------------


def test_valid_key_returns_its_id_never_the_key():
    keys = ApiKeys.from_sources([KEY_A, KEY_B], env=None)
    assert keys.authenticate(f"Bearer {KEY_A}") == _id(KEY_A) == key_id(KEY_A)
    assert keys.authenticate(f"bearer   {KEY_B} ") == _id(KEY_B)
    assert len(_id(KEY_A)) == 12 and KEY_A not in keys.authenticate(f"Bearer {KEY_A}")


@pytest.mark.parametrize("header, message", [
    (None, "missing bearer token"),
    ("", "missing bearer token"),
    ("Bearer", "missing bearer token"),
    ("Bearer   ", "missing bearer token"),
    (f"Basic {KEY_A}", "missing bearer token"),
    (KEY_A, "missing bearer token"),
    ("Bearer sk-test-wrong", "invalid API key"),
    (f"Bearer {KEY_A}x", "invalid API key"),
])
def test_rejections_are_401(header, message):
    keys = ApiKeys.from_sources([KEY_A], env=None)
    with pytest.raises(AuthError) as err:
        keys.authenticate(header)
    assert err.value.status == 401 and err.value.message == message
    assert KEY_A not in str(err.value)


def test_keys_from_env_and_config(monkeypatch):
    monkeypatch.setenv("WAN_DIST_API_KEYS", f" {KEY_B} ,, sk-env-2 ")
    keys = ApiKeys.from_sources([KEY_A])  # default: reads the environment at call time
    assert len(keys) == 3
    for key in (KEY_A, KEY_B, "sk-env-2"):
        assert keys.authenticate(f"Bearer {key}") == _id(key)
    assert sorted(keys.key_ids) == sorted(_id(k) for k in (KEY_A, KEY_B, "sk-env-2"))
    only_env = ApiKeys.from_sources([], env="sk-env-only")
    assert only_env.authenticate("Bearer sk-env-only") == _id("sk-env-only")
    with pytest.raises(AuthError):
        only_env.authenticate(f"Bearer {KEY_A}")


def test_only_digests_are_kept_in_memory():
    keys = ApiKeys.from_sources([KEY_A], env=KEY_B)
    dumped = repr(vars(keys)) + repr(keys) + str(keys.key_ids)
    for key in (KEY_A, KEY_B):
        assert key not in dumped and key.encode() not in repr(vars(keys)).encode()
        assert hashlib.sha256(key.encode()).digest() in vars(keys)["_digests"]
    for value in vars(keys).values():
        assert value not in (KEY_A, KEY_B)


def test_empty_key_set_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("WAN_DIST_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="no API keys"):
        ApiKeys.from_sources([])
    with pytest.raises(ValueError):
        ApiKeys.from_sources(["  "], env=" , ")
    anon = ApiKeys.from_sources([], allow_anonymous=True)
    assert anon.authenticate(None) == ANONYMOUS
    # allow_anonymous does not open an API that has keys
    with pytest.raises(AuthError):
        ApiKeys.from_sources([KEY_A], env=None, allow_anonymous=True).authenticate(None)


# ---- RateLimiter ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_rate_limiter_burst_then_wait_then_refill():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.check("k1") for _ in range(3)] == [None, None, None]
    wait = limiter.check("k1")
    assert wait == pytest.approx(0.5)
    clock.t += 0.25
    assert limiter.check("k1") == pytest.approx(0.25)  # a refused check takes nothing
    clock.t += 0.25
    assert limiter.check("k1") is None
    assert limiter.check("k1") == pytest.approx(0.5)
    clock.t += 100  # refill is capped at burst
    assert [limiter.check("k1") for _ in range(4)][-1] == pytest.approx(0.5)


def test_rate_limiter_keys_are_independent():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(1.0)
    assert limiter.check("b") is None
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=1, burst=0)


def test_retry_after_headers():
    assert retry_after_headers(0.01) == {"Retry-After": "1", "x-should-retry": "true"}
    assert retry_after_headers(2.2)["Retry-After"] == "3"
    assert retry_after_headers(0)["Retry-After"] == "1"


# ---- check_public_url ----------------------------------------------------------------------------------


def fake_resolver(table: dict[str, list[str]]):
    def resolve(host, port, *args, **kwargs):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]]
    return resolve


RESOLVER = fake_resolver({
    "localhost": ["127.0.0.1", "::1"],
    "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "mixed.example": ["93.184.215.14", "10.1.2.3"],
    "internal.example": ["192.168.1.20"],
    "metadata.example": ["169.254.169.254"],
    "scoped.example": ["fe80::1%eth0"],
})


@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("https://localhost/hook", "loopback"),
    ("http://10.0.0.5/hook", "private"),
    ("http://172.16.3.4/hook", "private"),
    ("http://172.31.255.255/hook", "private"),
    ("http://192.168.0.1/hook", "private"),
    ("http://internal.example/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://metadata.example/", "link-local"),
    ("http://[::1]/hook", "loopback"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://scoped.example/hook", "link-local"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[2002:7f00:1::]/hook", "loopback"),  # 6to4 wrapping 127.0.0.1
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://100.64.0.1/hook", "non-public"),
    ("http://mixed.example/hook", "private"),  # one private answer is enough
])
def test_private_destinations_are_refused(url, kind):
    with pytest.raises(UnsafeURL) as err:
        check_public_url(url, resolver=RESOLVER)
    assert kind in err.value.reason
    assert str(err.value).startswith("webhook_url: ")
    assert isinstance(err.value, ValueError) and err.value.field == "webhook_url"


def test_public_destinations_pass():
    for url in ("https://public.example/hooks?x=1", "http://public.example:8443/h", "https://93.184.215.14/h",
                "https://[2606:4700:4700::1111]/h"):
        assert check_public_url(url, resolver=RESOLVER) == url


@pytest.mark.parametrize("url, reason", [
    ("ftp://public.example/x", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("gopher://public.example/", "not allowed"),
    ("public.example/hook", "no scheme"),
    ("http:///nohost", "no host"),
    ("", "empty"),
    ("http://public.example:99999/", "malformed"),
    ("http://nowhere.invalid/", "cannot resolve"),
    ("http://public.example/\r\nX-Injected: 1", "control characters"),
])
def test_malformed_or_unsupported_urls_are_refused(url, reason):
    with pytest.raises(UnsafeURL, match=reason):
        check_public_url(url, resolver=RESOLVER)


def test_field_name_schemes_and_allow_private():
    assert check_public_url("http://127.0.0.1:9/h", allow_private=True) == "http://127.0.0.1:9/h"
    assert check_public_url("http://internal.example/h", allow_private=True, resolver=RESOLVER)
    with pytest.raises(UnsafeURL, match="scheme"):  # allow_private does not allow other schemes
        check_public_url("file:///etc/passwd", allow_private=True)
    with pytest.raises(UnsafeURL, match=r"^image_url: .*s3"):
        check_public_url("s3://bucket/key.png", field="image_url")
    assert check_public_url("s3://bucket/key.png", schemes=IMAGE_SCHEMES) == "s3://bucket/key.png"
    assert check_public_url("data:image/png;base64,AAAA", schemes=IMAGE_SCHEMES).startswith("data:")
    with pytest.raises(UnsafeURL, match="^image_url: .*loopback"):
        check_public_url("http://localhost/cat.png", field="image_url", schemes=IMAGE_SCHEMES, resolver=RESOLVER)
