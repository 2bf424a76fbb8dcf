"""Which ``Host`` headers the dashboard answers: the guard against DNS rebinding.

A page on ``http://evil.example:PORT/`` whose name an attacker re-points at 127.0.0.1 is,
to the browser, its own origin: it may read the dashboard's page (with its session token)
and open its websocket, and its ``Origin`` equals its ``Host``, so an Origin check passes.
What differs is the name: the server answers only requests whose ``Host`` is an address it
serves (the bound address and port; for a loopback address also ``localhost``, and ``[::1]``
where IPv6 loopback is bound; for a wildcard bind, any IP literal and this machine's name), or a name the
user allowed (``allow_hosts``: behind a proxy). Everything else gets a 403 before any
handler runs: no page, no token, no websocket.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from attnlens.formats.errors import SelectionError

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_NAME = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address (IPv6 with or without brackets), or None for a name."""
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None


def _canonical(host: str) -> str:
    """A host the way a browser writes it in ``Host``: lower case, IPv6 in brackets."""
    ip = _ip(host)
    if ip is None:
        return host.lower()
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def split_host(text: str) -> tuple[str, int | None]:
    """``'name:8080'`` -> ``('name', 8080)``, ``'[::1]:80'`` -> ``('[::1]', 80)``, ``'name'`` -> ``('name', None)``.
    Raises ``ValueError`` for anything that is not a host name or IP address with an optional port."""
    host, port_text = text.strip(), None
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else "?"
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPv6 address]:port")
        host, port_text = host[:end + 1], (rest[1:] if rest else None)
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"port {port_text!r} is not a number in 1-65535")
        port = int(port_text)
    if _ip(host) is None and not _NAME.match(host.lower()):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if ":" in host and not host.startswith("["):  # a bare IPv6 address
        host = f"[{host}]"
    return _canonical(host), port


def parse_allow_hosts(values: Iterable[str] | None) -> list[tuple[str, int | None]]:
    """Each ``HOST[:PORT]`` of ``allow_hosts`` parsed, or a :class:`SelectionError` naming the bad one."""
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values or ():
        if not isinstance(value, str):
            raise SelectionError(f"allow_hosts: expected HOST[:PORT] strings, got {type(value).__name__} {value!r}")
        try:
            out.append(split_host(value))
        except ValueError as err:
            raise SelectionError(f"allow_hosts: {value!r} is not HOST[:PORT] ({err})") from None
    return out


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` values a server on ``port`` answers: ``names`` with exactly that port,
    ``any_port`` names with any port or none, and (a wildcard bind) any IP literal on the port."""

    port: int
    names: frozenset[str]
    any_port: frozenset[str] = frozenset()
    any_ip: bool = False

    @classmethod
    def serving(cls, address: str, port: int, allow_hosts: Iterable[str] | None = None) -> HostPolicy:
        names: set[str] = set()
        any_port: set[str] = set()
        ip = _ip(address)
        wildcard = address in ("", "0.0.0.0", "::", "[::]")
        # the loopback names that reach the bound sockets: 127.0.0.1 and ::1 are different sockets
        if wildcard or address.lower() == "localhost":
            names.update(LOOPBACK)
        elif ip is not None and ip.is_loopback:
            names.update(("localhost", "[::1]") if ip.version == 6 else ("localhost", "127.0.0.1"))
        if wildcard:
            for name in {socket.gethostname(), socket.getfqdn()}:
                if name:
                    names.add(name.lower())
        elif address:
            names.add(_canonical(address if ip is None or ip.version == 4 else f"[{ip.compressed}]"))
        for host, allowed_port in parse_allow_hosts(allow_hosts):
            if allowed_port is None:
                any_port.add(host)
            elif allowed_port == port:
                names.add(host)
            else:  # the proxy forwards to a port of its own: allow exactly that pair
                any_port.add(f"{host}:{allowed_port}")
        return cls(port=port, names=frozenset(names), any_port=frozenset(any_port), any_ip=wildcard)

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered (no header: not a browser, allowed)."""
        if host_header is None:
            return True
        try:
            host, port = split_host(host_header)
        except ValueError:
            return False
        if host in self.any_port or (port is not None and f"{host}:{port}" in self.any_port):
            return True
        if (port if port is not None else 80) != self.port:
            return False
        return host in self.names or (self.any_ip and _ip(host) is not None)

    def origins(self) -> list[str]:
        """The ``Origin`` host:port values whose pages may open the websocket (Bokeh's allowlist:
        a name without a port matches any port)."""
        return sorted({f"{n}:{self.port}" for n in self.names} | set(self.any_port))

    def describe(self) -> str:
        shown = sorted(f"{n}:{self.port}" for n in self.names) + sorted(self.any_port)
        return ", ".join(shown) + (f" or any IP address on port {self.port}" if self.any_ip else "")


def guard(application, policy: HostPolicy) -> None:
    """Route every request whose ``Host`` ``policy`` does not allow to a 403, ahead of all of
    ``application``'s handlers (pages, static files, the websocket upgrade)."""
    from tornado.routing import Matcher, Rule
    from tornado.web import RequestHandler

    class ForeignHost(Matcher):
        def match(self, request):
            return None if policy.allows(request.headers.get("Host")) else {}

    class Refused(RequestHandler):
        SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

        def prepare(self) -> None:
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.set_header("X-Content-Type-Options", "nosniff")
            self.finish(f"403: this dashboard does not answer to host {self.request.headers.get('Host')!r}; "
                        f"it serves {policy.describe()} (lens dashboard --allow-host adds a name)\n")

    router = application.default_router
    router.rules.insert(0, router.process_rule(Rule(ForeignHost(), Refused)))
