"""wan_dist.storage.fetch: a tenant's URL is fetched only from checked addresses, on every redirect, within size and
time limits. A server on 127.0.0.1 stands in for the internet: the operator's ``allow`` list trusts 127.0.0.1 alone,
so every other loopback or private address is what an attacker would aim at. Nothing leaves the machine."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler

import pytest

from serve_fixtures import loopback_server
from wan_dist.storage.fetch import FetchPolicy, FetchRefused, fetch_bytes

BIG = 2 * 2**20
LIMIT = 2**20


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        server = self.server
        server.hits.append((self.path, self.headers.get("Host")))
        port = server.server_address[1]
        if self.path == "/small":
            self._send(200, b"0123456789")
        elif self.path == "/host":
            self._send(200, self.headers.get("Host", "").encode())
        elif self.path == "/secret-404":
            self._send(404, b"internal details that must not be echoed")
        elif self.path == "/big":
            self._send(200, b"x" * BIG)
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(BIG // 65536):
                self.wfile.write(b"10000\r\n" + b"y" * 65536 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.startswith("/to/"):  # /to/<url>: a redirect there
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):].replace("PORT", str(port)))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/hold":  # answers nothing until the test ends
            server.release.wait(60)
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    with loopback_server(_Handler, hits=[]) as httpd:
        yield httpd


def _resolver(*answers: str):
    """A getaddrinfo stand-in answering ``answers`` for every name (no DNS is asked)."""
    def resolve(host, port, type=socket.SOCK_STREAM):  # noqa: A002 - getaddrinfo's keyword
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in answers]
    return resolve


def _trusting(**kwargs) -> FetchPolicy:
    return FetchPolicy(allow=("127.0.0.1/32",), max_bytes=LIMIT, **kwargs)


def test_a_private_address_is_refused_before_any_connection(server):
    port = server.server_address[1]
    with pytest.raises(FetchRefused, match=r"^image: host '127.0.0.1' resolves to a loopback address 127.0.0.1$"):
        fetch_bytes(f"http://127.0.0.1:{port}/small", field="image")
    # a name with one private answer among public ones is refused as a whole
    policy = FetchPolicy(resolver=_resolver("93.184.215.14", "10.0.0.7"))
    with pytest.raises(FetchRefused, match="resolves to a private address 10.0.0.7"):
        fetch_bytes(f"http://files.example:{port}/small", policy=policy, field="image")
    with pytest.raises(FetchRefused, match="scheme 'file' is not allowed"):
        fetch_bytes("file:///etc/passwd", policy=_trusting(), field="image")
    assert server.hits == []  # refused without connecting


def test_the_checked_address_is_the_one_connected_to_with_the_urls_host_kept(server):
    port = server.server_address[1]
    assert fetch_bytes(f"http://127.0.0.1:{port}/small", policy=_trusting()) == b"0123456789"
    # the name is resolved once, by the policy's resolver, and the connection goes to that answer
    policy = _trusting(resolver=_resolver("127.0.0.1"))
    assert fetch_bytes(f"http://files.example:{port}/host", policy=policy) == f"files.example:{port}".encode()


def test_every_redirect_is_checked_again(server):
    port = server.server_address[1]
    assert fetch_bytes(f"http://127.0.0.1:{port}/to/http://127.0.0.1:PORT/small", policy=_trusting()) == b"0123456789"
    for target, reason in (("http://127.0.0.2:PORT/small", "loopback address 127.0.0.2"),
                           ("http://169.254.169.254/latest/meta-data", "link-local address 169.254.169.254"),
                           ("http://[::1]:PORT/small", "loopback address ::1")):
        with pytest.raises(FetchRefused, match=f"^lora: redirect: host .* resolves to a {reason}$"):
            fetch_bytes(f"http://127.0.0.1:{port}/to/{target}", policy=_trusting(), field="lora")
    with pytest.raises(FetchRefused, match="redirect: scheme 'file' is not allowed"):
        fetch_bytes(f"http://127.0.0.1:{port}/to/file:///etc/passwd", policy=_trusting())
    with pytest.raises(FetchRefused, match="more than 3 redirects"):
        fetch_bytes(f"http://127.0.0.1:{port}/loop", policy=_trusting())
    assert [path for path, _ in server.hits].count("/loop") == 4  # the first answer and three redirects, no more


def test_size_and_time_limits_and_no_remote_text_in_errors(server):
    port = server.server_address[1]
    for path in ("/big", "/big-chunked"):  # declared or not, a body past the limit is refused
        with pytest.raises(FetchRefused, match=f"^manifest: larger than {LIMIT} bytes$"):
            fetch_bytes(f"http://127.0.0.1:{port}{path}", policy=_trusting(), field="manifest")
    with pytest.raises(FetchRefused) as refused:
        fetch_bytes(f"http://127.0.0.1:{port}/secret-404", policy=_trusting())
    assert str(refused.value) == "url: the server answered HTTP 404"  # the body is never quoted
    # the server holds this answer until the test ends, so only the time limit can end the fetch
    with pytest.raises(FetchRefused, match=r"^url: no answer within 0.5 s$"):
        fetch_bytes(f"http://127.0.0.1:{port}/hold", policy=_trusting(timeout_s=0.5))
