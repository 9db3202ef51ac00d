"""Who may talk to the studio: an ASGI middleware in front of every Gradio route.

A browser's same-origin rule does not protect a server on localhost:
  - DNS rebinding: a page on attacker.example re-resolves its own name to 127.0.0.1, and its requests reach
    the studio with `Host: attacker.example`. Only the host names the studio serves are accepted.
  - Any page the user has open (another localhost port included) may POST to the studio; Gradio's CORS
    layer only decides whether the page may *read* the answer, the handler has run by then. A request that
    carries an `Origin` header must come from the studio's own page (same scheme-less host and port), and
    a state-changing request without one must not be marked cross-site by the browser (Sec-Fetch-Site).
Scripts and curl send neither header: they pass the origin check, never the Host check.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SAME_PAGE_SITES = ("same-origin", "none")  # Sec-Fetch-Site values of the page itself and of typed URLs


def host_name(host: str | None) -> str | None:
    """'LocalHost:7860' -> 'localhost', '[::1]:7860' -> '::1'; None for a malformed Host header."""
    if not host:
        return None
    try:
        name = urlsplit("//" + host.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class ServedHosts:
    """The host names requests may carry. `any_ip`: with --listen, an address typed as numbers is fine
    (a rebinding attack needs a name the attacker controls; an IP literal never is one)."""
    names: set[str] = field(default_factory=lambda: set(LOCAL_NAMES))
    any_ip: bool = False

    @classmethod
    def for_launch(cls, listen: bool, extra: list[str] | None = None) -> "ServedHosts":
        hosts = cls()
        if listen:  # reached by this machine's names (its mDNS one too) or its addresses from the network
            hosts.any_ip = True
            name = socket.gethostname().lower()
            hosts.names |= {name, f"{name}.local", socket.getfqdn().lower()}
        for name in extra or []:
            hosts.add(name)
        return hosts

    def add(self, host_or_url: str) -> None:
        """A name, host:port or URL (e.g. the --share link once Gradio has it)."""
        text = host_or_url if "://" in host_or_url else "//" + host_or_url
        name = host_name(urlsplit(text).netloc)
        if name:
            self.names.add(name.lower())

    def allows(self, host: str | None) -> bool:
        name = host_name(host)
        return bool(name) and (name in self.names or (self.any_ip and _is_ip(name)))


def refusal(headers: dict[str, str], method: str, hosts: ServedHosts) -> str | None:
    """Why a request is refused, or None. `headers`: lower-cased names."""
    host = headers.get("host")
    if not hosts.allows(host):
        return f"host {host!r} is not one this studio serves (start it with --allow-host NAME to serve one)"
    origin = headers.get("origin")
    if origin is not None:
        if urlsplit(origin).netloc.lower() != (host or "").lower():
            return f"requests from the page {origin!r} are refused: only the studio's own page may call it"
    elif method not in SAFE_METHODS and headers.get("sec-fetch-site", "none") not in SAME_PAGE_SITES:
        return "a cross-site request without an Origin header is refused"
    return None


class HostOriginGuard:
    """ASGI middleware answering 403 (with the reason as text) to requests refusal() refuses."""

    def __init__(self, app, hosts: ServedHosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        why = refusal(headers, scope.get("method", "GET"), self.hosts)
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = f"Forbidden: {why}\n".encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
