"""One guarded HTTP(S) fetcher for what a tenant names by URL (images, LoRA files, manifests).

Checking a URL when a request arrives is not enough: the name may resolve elsewhere when the renderer fetches it
(DNS rebinding), and a public server may answer with a redirect to an internal address. :func:`fetch_bytes`
therefore, for every hop:

1. resolves the host once and refuses it if any answer is not a public address (the rules of
   :func:`forbidden_reason`, unless the address is inside an operator's ``allow`` network),
2. connects to the checked address itself (the ``Host`` header and TLS server name stay the URL's host, so
   virtual hosting and certificate checks work as usual), never to a second resolution,
3. follows at most ``max_redirects`` redirects, each one checked again from step 1,
4. reads at most ``max_bytes`` (streaming: a larger body is cut off, not buffered) within ``timeout_s`` overall.

A refusal raises :class:`FetchRefused` naming the field and the rule that refused ("redirect to a loopback
address 127.0.0.1", "larger than 1048576 bytes", "no answer within 10 s"); the remote answer's body is never
quoted. Only the address rules live here (storage is a leaf); the front doors decide who may fetch what.

:func:`read_source` is what the renderer reads a request's image or LoRA file with: under a policy (a tenant's
request: the Serve renderer's groups carry one) an http(s) URL goes through :func:`fetch_bytes` at the moment it
is read, and any other scheme is refused unless the policy lists it; without one (the operator's own runs:
Python, ``wan-dist render``, ``ray job submit``) every path and fsspec URL is read as storage reads it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

__all__ = ["FetchPolicy", "FetchRefused", "PinnedTarget", "fetch_bytes", "forbidden_reason", "pin", "read_source",
           "under_prefix"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_PORTS = {"http": 80, "https": 443}


class FetchRefused(ValueError):
    """A fetch refused for ``field``; the message names the field and the rule."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason

    def __reduce__(self):  # the two-argument constructor through pickle (a rank's error crosses Ray)
        return (FetchRefused, (self.field, self.reason))


def _unwrap(ip: IPAddress) -> list[IPAddress]:
    """Any IPv4 address ``ip`` embeds (IPv4-mapped, 6to4, Teredo), then ``ip`` itself."""
    out: list[IPAddress] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return [ip.ipv4_mapped]
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
    return out + [ip]


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be contacted (e.g. ``"loopback address 127.0.0.1"``), or None if it is public."""
    for addr in _unwrap(ip):
        for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
            if getattr(addr, f"is_{kind}"):
                return f"{kind.replace('_', '-')} address {ip}"
        if not addr.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), 64:ff9b:1::/48
            return f"non-public address {ip}"
    return None


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may do. ``allow``: networks the operator trusts although they are not public (an internal
    mirror, or 127.0.0.1/32 in tests); ``allow_private``: trust every address (the operator's own fetches).
    ``prefixes``: storage the operator lets requests name (its upload folder, ``s3://bucket/shared``): a path or
    URL under one is read as storage reads it, with the server's credentials (:func:`read_source`)."""

    schemes: tuple[str, ...] = ("http", "https")
    allow: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    allow_private: bool = False
    max_bytes: int = 64 * 2**20
    max_redirects: int = 3
    timeout_s: float = 30.0
    resolver: Callable = field(default=socket.getaddrinfo, compare=False, repr=False)

    def permits(self, ip: IPAddress) -> str | None:
        """None if ``ip`` may be contacted, else the rule that refuses it."""
        if self.allow_private or any(ip in ipaddress.ip_network(net, strict=False) for net in self.allow):
            return None
        return forbidden_reason(ip)


def _checked_address(url: str, policy: FetchPolicy, field_name: str, hop: str) -> tuple[str, IPAddress, int]:
    """(host, the address to connect to, port) of ``url`` once every address the host resolves to is permitted."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise FetchRefused(field_name, f"{hop}scheme {scheme or '(none)'!r} is not allowed "
                                       f"(allowed: {', '.join(policy.schemes)})")
    if not parts.hostname:
        raise FetchRefused(field_name, f"{hop}URL has no host")
    try:
        port = parts.port or _PORTS[scheme]
    except ValueError:
        raise FetchRefused(field_name, f"{hop}malformed port") from None
    try:
        addresses = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        try:
            infos = policy.resolver(parts.hostname, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise FetchRefused(field_name, f"{hop}cannot resolve host {parts.hostname!r}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise FetchRefused(field_name, f"{hop}host {parts.hostname!r} resolves to no address")
    for address in addresses:
        reason = policy.permits(address)
        if reason is not None:
            raise FetchRefused(field_name, f"{hop}host {parts.hostname!r} resolves to a {reason}")
    return parts.hostname, addresses[0], port


@dataclass(frozen=True)
class PinnedTarget:
    """Where to send a request for a checked URL: ``url`` names the checked address, ``headers`` carry the URL's
    Host, ``extensions`` its TLS server name (httpx's ``sni_hostname``), so certificates are checked as usual."""

    url: str
    headers: dict
    extensions: dict


def pin(url: str, *, policy: FetchPolicy, field: str) -> PinnedTarget:
    """The checked address of ``url`` under ``policy`` (FetchRefused naming ``field`` otherwise), for a request
    that must go there and nowhere a second resolution could point (webhook deliveries)."""
    host, address, port = _checked_address(url, policy, field, "")
    default_port = _PORTS[urlsplit(url).scheme.lower()]
    return PinnedTarget(url=_pinned(url, address, port),
                        headers={"Host": host if port == default_port else f"{host}:{port}"},
                        extensions={"sni_hostname": host})


def _pinned(url: str, address: IPAddress, port: int) -> str:
    """``url`` with its host replaced by ``address`` (what the connection goes to)."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))


def fetch_bytes(url: str, *, policy: FetchPolicy = FetchPolicy(), field: str = "url") -> bytes:
    """The body of ``url`` under ``policy`` (see the module doc); FetchRefused naming ``field`` otherwise."""
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    hop = ""
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=policy.timeout_s) as client:
        for redirects in range(policy.max_redirects + 1):
            host, address, port = _checked_address(url, policy, field, hop)
            default_port = _PORTS[urlsplit(url).scheme.lower()]
            headers = {"Host": host if port == default_port else f"{host}:{port}",
                       "Accept-Encoding": "identity"}  # the size limit counts the bytes as they will be used
            try:
                with client.stream("GET", _pinned(url, address, port), headers=headers,
                                   extensions={"sni_hostname": host}) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url, hop = urljoin(url, location), "redirect: "
                        continue
                    if response.status_code != 200:
                        raise FetchRefused(field, f"{hop}the server answered HTTP {response.status_code}")
                    return _read_bounded(response, policy, field, deadline)
            except httpx.TimeoutException:
                raise FetchRefused(field, f"no answer within {policy.timeout_s:g} s") from None
            except httpx.HTTPError as error:
                raise FetchRefused(field, f"{hop}download failed ({type(error).__name__})") from None
    raise FetchRefused(field, f"more than {policy.max_redirects} redirects")


def _read_bounded(response, policy: FetchPolicy, field: str, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchRefused(field, f"larger than {policy.max_bytes} bytes")
    chunks, size = [], 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchRefused(field, f"larger than {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchRefused(field, f"no answer within {policy.timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def read_source(uri: str, *, policy: FetchPolicy | None, field: str, max_bytes: int | None = None,
                storage_options=None) -> bytes:
    """The bytes of a file a request names (module docstring). ``max_bytes`` replaces the policy's bound
    (a LoRA file may be larger than an image). FetchRefused names ``field``; storage errors pass through."""
    from dataclasses import replace

    from wan_dist.storage.objects import read_bytes

    if policy is None or under_prefix(uri, policy.prefixes):
        return read_bytes(uri, storage_options=storage_options)
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else "file"
    if scheme not in policy.schemes:
        raise FetchRefused(field, f"{scheme}: URLs are not allowed here; allowed: {', '.join(policy.schemes)}"
                                  f"{' and files under the allowed storage prefixes' if policy.prefixes else ''}")
    if max_bytes is not None:
        policy = replace(policy, max_bytes=max_bytes)
    return fetch_bytes(uri, policy=policy, field=field)


def under_prefix(uri: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``uri`` lies under one of ``prefixes``: local paths compared after resolving ``..`` and symbolic
    links; URLs by their text, any ``.`` or ``..`` segment refused."""
    import os

    local = "://" not in uri or uri.startswith("file://")
    if local:
        path = os.path.realpath(uri.removeprefix("file://"))
        return any(path.startswith(os.path.realpath(p.removeprefix("file://")).rstrip("/") + "/")
                   for p in prefixes if "://" not in p or p.startswith("file://"))
    if any(segment in (".", "..") for segment in urlsplit(uri).path.split("/")):
        return False
    return any(uri.startswith(p.rstrip("/") + "/") for p in prefixes if "://" in p and not p.startswith("file://"))
