"""SSRF guard for user-supplied URLs (webhook targets, input images).

``check_public_url`` accepts a URL only if its scheme is allowed and, for http/https, its host resolves
exclusively to public addresses: one loopback, private, link-local, multicast, reserved, unspecified or
otherwise non-global address among the answers is enough to refuse it (IPv4-mapped, 6to4 and Teredo IPv6
forms are unwrapped first; the rules are ``wan_dist.storage.fetch.forbidden_reason``, which the fetcher applies
at fetch time). The operator can lift this with ``allow_private`` (Hydra
``serve.allow_private_urls=true``). Webhook delivery calls it again before every attempt, so a name that is
re-pointed at a private address after acceptance (DNS rebinding) is still refused.

``s3://`` and ``data:`` URLs (allowed for images through ``schemes``) are not fetched from a user-chosen
host, so they are not resolved.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable
from urllib.parse import urlsplit

from wan_dist.storage.fetch import IPAddress, forbidden_reason

__all__ = ["IMAGE_SCHEMES", "WEBHOOK_SCHEMES", "UnsafeURL", "check_public_url", "forbidden_reason"]

WEBHOOK_SCHEMES = ("http", "https")
IMAGE_SCHEMES = ("http", "https", "s3", "data")
_RESOLVED_SCHEMES = {"http": 80, "https": 443}


class UnsafeURL(ValueError):
    """A URL refused for ``field``; the message names the field and the reason."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _resolve(host: str, port: int, resolver: Callable) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]  # an IP literal needs no lookup
    except ValueError:
        pass
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise LookupError(f"cannot resolve host {host!r}: {exc}") from None
    addrs: list[IPAddress] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id ("fe80::1%eth0")
        try:
            addrs.append(ipaddress.ip_address(raw))
        except ValueError:
            raise LookupError(f"host {host!r} resolved to an unparseable address {raw!r}") from None
    if not addrs:
        raise LookupError(f"host {host!r} resolved to no address")
    return addrs


def check_public_url(url: str, *, allow_private: bool = False, field: str = "webhook_url",
                     resolver: Callable = socket.getaddrinfo,
                     schemes: Iterable[str] = WEBHOOK_SCHEMES) -> str:
    """Return ``url`` unchanged if it is safe to fetch/post to, else raise ``UnsafeURL(field, reason)``.

    ``resolver`` has ``socket.getaddrinfo``'s signature (injectable so tests need no network).
    """
    allowed = tuple(s.lower() for s in schemes)
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL(field, "URL is empty")
    if any(c in url for c in "\r\n\t\x00") or url != url.strip():
        raise UnsafeURL(field, "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(field, f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        what = f"scheme {scheme!r} is not allowed" if scheme else "URL has no scheme"
        raise UnsafeURL(field, f"{what} (allowed: {', '.join(allowed)})")
    if scheme == "data":
        return url
    host = parts.hostname
    if not host:
        raise UnsafeURL(field, "URL has no host")
    if scheme not in _RESOLVED_SCHEMES or allow_private:
        return url
    try:
        addrs = _resolve(host, port or _RESOLVED_SCHEMES[scheme], resolver)
    except LookupError as exc:
        raise UnsafeURL(field, str(exc)) from None
    for ip in addrs:
        reason = forbidden_reason(ip)
        if reason is not None:
            raise UnsafeURL(field, f"host {host!r} resolves to a {reason}; private URLs are not allowed")
    return url
