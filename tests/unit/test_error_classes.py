"""Every error the servers can send is a class of engramdb.errors that a client rebuilds exactly.

The REST layer's own errors (payload too large, method not allowed, unsupported
media type, host not allowed, and the 408/431/503 answers of the HTTP transport)
used to be defined in the server modules, so a client could only rebuild them as
a generic ``EngramError``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import orjson
import pytest

import engramdb
from engramdb import errors
from engramdb.errors import (
    EngramError,
    HeadersTooLarge,
    InvalidArgument,
    RequestTimeout,
    Unavailable,
    error_from_dict,
)

SRC = Path(engramdb.__file__).resolve().parent
# Optional extras whose modules cannot be imported without them.
_OPTIONAL = ("engramdb.integrations.", "engramdb.embed.local")


def _all_subclasses(cls: type[EngramError]) -> set[type[EngramError]]:
    out = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _all_subclasses(sub)
    return out


def _import_package() -> None:
    for mod in pkgutil.walk_packages([str(SRC)], "engramdb."):
        if not mod.name.startswith(_OPTIONAL):
            importlib.import_module(mod.name)


def test_every_error_class_is_defined_in_errors_py() -> None:
    """A class of EngramError anywhere else could reach the wire and not come back as itself."""
    defined_elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                    for b in node.bases
                }
                if bases & {c.__name__ for c in errors._ALL}:
                    defined_elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert defined_elsewhere == []


def test_every_error_class_is_rebuilt_by_the_client() -> None:
    _import_package()  # so that a subclass defined in any module is counted
    classes = _all_subclasses(EngramError) | {EngramError}
    classes = {c for c in classes if c.__module__.startswith("engramdb")}
    assert classes <= set(errors._ALL), "add the class to errors._ALL"
    for cls in classes:
        err = (
            cls("what to do", details={"x": 1}) if cls is not errors.RateLimited else cls("slow down", retry_after=2.0)
        )
        wire = orjson.loads(orjson.dumps({"error": err.to_dict()}))["error"]
        back = error_from_dict(wire, cls.http_status)
        assert type(back) is cls and back.code == cls.code and back.message == err.message, cls
        # A finer code inside the class (e.g. invalid_k inside InvalidArgument) keeps both.
        fine = error_from_dict({**wire, "code": "some_finer_code"}, cls.http_status)
        assert type(fine) is cls and fine.code == "some_finer_code", cls


def test_codes_are_unique() -> None:
    codes = [c.code for c in errors._ALL]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("PayloadTooLarge", 413),
        ("MethodNotAllowed", 405),
        ("UnsupportedMediaType", 415),
        ("HostNotAllowed", 421),
        ("RequestTimeout", 408),
        ("HeadersTooLarge", 431),
    ],
)
def test_rest_layer_errors_live_in_errors_py(name: str, status: int) -> None:
    cls = getattr(errors, name)
    assert cls in errors._ALL and cls.http_status == status
    # A status alone (an older server without "kind") still finds the class.
    assert type(error_from_dict({"code": cls.code, "message": "m"}, status)) is cls


def test_transport_answers_rebuild_as_their_classes() -> None:
    """What the HTTP transport writes itself (before any route runs) is rebuilt like any other error."""
    from engramdb.server.rest.transport import error_bytes

    for err, status in (
        (RequestTimeout("the request head did not arrive within 10s"), 408),
        (HeadersTooLarge("the request line and headers exceed 32 KB"), 431),
        (Unavailable("too many open connections", code="too_many_connections"), 503),
        (InvalidArgument("the request is not valid HTTP/1.1", code="bad_request"), 400),
    ):
        raw = error_bytes(err, (b"retry-after: 1",))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        back = error_from_dict(orjson.loads(body)["error"], status)
        assert type(back) is type(err) and back.code == err.code and back.message == err.message
    # Clients that catch InvalidArgument keep catching the transport's 408 and 431.
    assert issubclass(RequestTimeout, InvalidArgument) and issubclass(HeadersTooLarge, InvalidArgument)
