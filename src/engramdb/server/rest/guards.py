"""What keeps a web page in the operator's browser from driving the REST server.

A page on any site can make the browser send requests to a loopback server
(cross-site requests), and a hostile DNS name that first resolves to the
attacker and then to 127.0.0.1 makes those requests same-origin for the
browser (DNS rebinding). Both matter most where requests need no key (a
loopback development server) and wherever a browser sits next to a server
it can reach. Three rules close them, whatever the authentication:

- the ``Host`` header must name one of ``server.allowed_hosts`` (any port):
  a rebound DNS name is not on the list (421 ``host_not_allowed``);
- a request with an ``Origin`` header (browsers send one on every
  cross-site request and on every non-GET request) must come from a page
  on one of those hosts (403 ``origin_not_allowed``);
- JSON endpoints only read ``Content-Type: application/json`` bodies (415,
  in the app), a type no page can send cross-site without a CORS preflight,
  which this server never grants.

``/health`` and ``/ready`` skip the Host rule: probes (Kubernetes sends the
pod's IP as Host) must reach them, and they carry nothing a page could use.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from engramdb.config import ServerSettings, _host_names, is_loopback_host
from engramdb.errors import EngramError, HostNotAllowed, PermissionDenied

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Probe endpoints reachable by any Host name (see the module docstring).
PROBE_PATHS = frozenset({"/health", "/ready"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def allowed_hosts(srv: ServerSettings) -> list[str] | None:
    """The host names REST answers to; None when any ``Host`` is accepted.

    Unset ``server.allowed_hosts`` is derived from the bind address: on a
    loopback address (or with ``auth: disabled``, where every caller is an
    admin) only the loopback names and the bind address; elsewhere any host,
    because authentication is required there and a browser never adds an API
    key to a request by itself, so a rebound or cross-site request carries no
    credential.
    """
    if srv.allowed_hosts is not None:
        names = _host_names(srv.allowed_hosts) or []
        return None if "*" in names else names
    bind = srv.host.strip().lower().strip("[]")
    if is_loopback_host(bind) or srv.auth == "disabled":
        return [*LOOPBACK_NAMES, *([bind] if bind not in _WILDCARD_BINDS and bind not in LOOPBACK_NAMES else [])]
    return None


class HostMatcher:
    """Matches host names against a list of names, ``*.suffix`` wildcards included."""

    def __init__(self, names: list[str]):
        self.names = names
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # "*.a.b" -> ".a.b"

    def allows(self, name: str | None) -> bool:
        if not name:
            return False
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def host_name(value: str) -> str | None:
    """The host name of a ``Host`` header value (lower case, IPv6 without brackets, no port); None if malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        name, rest = v[1:end], v[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, sep, port = v.partition(":")
    if sep and not port.isdigit():
        return None  # a bare IPv6 address, or junk
    return name.rstrip(".")


def origin_host(value: str) -> str | None:
    """The host name of an ``Origin`` header (``scheme://host[:port]``); None for ``null`` or anything else."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.rstrip(".")


def check_request(matcher: HostMatcher, path: str, host: bytes | None, origin: bytes | None) -> EngramError | None:
    """The error to answer instead of serving this request, if any."""
    if path not in PROBE_PATHS:
        name = host_name(host.decode("latin-1")) if host is not None else None
        if not matcher.allows(name):
            # Neither the name nor the list is echoed: a rebound page can read this answer.
            return HostNotAllowed(
                "this server does not answer to the host name in the Host header; connect with a name the "
                "operator listed in server.allowed_hosts (by default localhost or 127.0.0.1 on a loopback address)"
            )
    if origin is not None and not matcher.allows(origin_host(origin.decode("latin-1"))):
        return PermissionDenied(
            "requests from web pages of other sites are refused; the operator can add the page's host to "
            "server.allowed_hosts",
            code="origin_not_allowed",
        )
    return None
