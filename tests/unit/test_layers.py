"""The layer order of the package, executable.

Every module of ``src/engramdb`` belongs to one layer, and imports only from its own layer or
from layers below it::

    errors, types, api, filters, validation, _version the vocabulary and the declared surface: pure, no I/O
    storage, index, embed, client, openai_http        adapters to disk, indexes, models and the network
    grpc_codec                                        the generated gRPC messages and their codec, shared by
                                                      the clients and the server
    transfer                                          export/import files; written against the api Protocols
                                                      alone, so it serves the engine and the clients alike
    tracing                                           OpenTelemetry spans for every layer above (no-op when off)
    config, extract                                   settings; the extraction language model
    engine                                            the embedded database
    engramdb (the package root)                       re-exports the engine, the clients and the types
    cluster                                           etcd control plane, shards; the coordinator sits between
                                                      the service and the engine
    service                                           one operation catalogue, auth, limits
    server, integrations                              REST/gRPC fronts; LangGraph/LangChain adapters
    cli

Every import counts: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:`` (a type-only import still means the lower layer knows the upper one; a
lower layer that needs something of an upper one declares a narrow Protocol instead, as
``index.payload.Deadline`` and ``embed.profiles.EmbedderProfile`` do). And no module may reach
itself through its imports, even within one layer: an import loop, even a lazy or type-only
one, means two modules are one module split in the wrong place.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "engramdb"

# Bottom first. An entry names a module or a subpackage (with everything under it); the package
# root "engramdb" names only its own __init__.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "engramdb.errors",
        "engramdb.types",
        "engramdb.api",
        "engramdb.filters",
        "engramdb.validation",
        "engramdb._version",
    ),
    (
        "engramdb.storage",
        "engramdb.index",
        "engramdb.embed",
        "engramdb.client",
        "engramdb.grpc_codec",
        "engramdb.openai_http",
        "engramdb.transfer",
        "engramdb.tracing",
    ),
    ("engramdb.config", "engramdb.extract"),
    ("engramdb.engine",),
    ("engramdb",),
    ("engramdb.cluster",),
    ("engramdb.service",),
    ("engramdb.server", "engramdb.integrations"),
    ("engramdb.cli",),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (``from pkg import name`` targets pkg.name when that is a module)
    line: int
    kind: str  # "module", "function" or "type_checking"

    def __str__(self) -> str:
        where = {"module": "", "function": " (inside a function)", "type_checking": " (under TYPE_CHECKING)"}
        return f"{self.source}:{self.line} imports {self.target}{where[self.kind]}"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, source: str, *, is_package: bool, known: frozenset[str]) -> Iterator[Import]:
    """Every import of the package's own modules in ``source`` (module ``name``), wherever it is written."""
    package = name if is_package else name.rpartition(".")[0]

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def walk(node: ast.AST, kind: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, "type_checking")
                for stmt in child.orelse:
                    yield from walk_one(stmt, kind)
            else:
                yield from walk_one(child, kind)

    def walk_one(node: ast.AST, kind: str) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield Import(name, alias.name, node.lineno, kind)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            if base.split(".")[0] == PACKAGE:
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    yield Import(name, sub if sub in known else base, node.lineno, kind)
        else:
            if kind == "module" and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                kind = "function"
            yield from walk(node, kind)

    yield from walk(ast.parse(source), "module")


def import_graph(src: Path = SRC) -> dict[str, list[Import]]:
    found = modules(src)
    known = frozenset(found)
    return {
        name: list(
            imports_of(name, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py", known=known)
        )
        for name, path in found.items()
    }


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (layer, length of the entry): the longest entry wins
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if covers and (best is None or len(entry) > best[1]):
                best = (layer, len(entry))
    return None if best is None else best[0]


def cycles(graph: Mapping[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    adj = {m: sorted({i.target for i in imps if i.target != m}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return found


def upward(graph: Mapping[str, list[Import]]) -> list[str]:
    """Every import of a module from a higher layer than its own."""
    return sorted(
        {
            f"{imp}: layer {layer_of(imp.source)} -> layer {layer_of(imp.target)}"
            for imps in graph.values()
            for imp in imps
            if (layer_of(imp.target) or 0) > (layer_of(imp.source) or 0)
        }
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph()


def test_every_module_has_a_layer(graph: dict[str, list[Import]]) -> None:
    homeless = sorted(m for m in graph if layer_of(m) is None)
    assert not homeless, f"add these modules to LAYERS in {__file__}: {homeless}"


def test_every_layer_entry_exists(graph: dict[str, list[Import]]) -> None:
    stale = [e for entries in LAYERS for e in entries if e not in graph]
    assert not stale, f"LAYERS names modules that no longer exist: {stale}"


def test_no_import_runs_up_the_layers(graph: dict[str, list[Import]]) -> None:
    up = upward(graph)
    assert not up, "imports that run up the layer order:\n" + "\n".join(up)


def test_no_import_loops(graph: dict[str, list[Import]]) -> None:
    loops = cycles(graph)
    detail = sorted(
        {str(imp) for loop in loops for m in loop for imp in graph[m] if imp.target in loop and imp.target != m}
    )
    assert not loops, f"import loops: {loops}\n" + "\n".join(detail)


# The checks above are only as good as the parser: it must see every way an import is written.


def test_parser_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import typing
from typing import TYPE_CHECKING
import engramdb.errors
from . import b
from .c import thing
from .. import top
if TYPE_CHECKING:
    from engramdb.engine.collection import Collection
if typing.TYPE_CHECKING:
    import engramdb.service
else:
    from .d import other
def f():
    from engramdb.cli import main
class K:
    def m(self):
        if True:
            import engramdb.server
    lam = lambda: __import__("x")
"""
    known = frozenset({"engramdb.pkg.b", "engramdb.pkg.c", "engramdb.top"})
    got = {(i.target, i.kind) for i in imports_of("engramdb.pkg.a", source, is_package=False, known=known)}
    assert got == {
        ("engramdb.errors", "module"),
        ("engramdb.pkg.b", "module"),
        ("engramdb.pkg.c", "module"),
        ("engramdb.top", "module"),
        ("engramdb.engine.collection", "type_checking"),
        ("engramdb.service", "type_checking"),
        ("engramdb.pkg.d", "module"),
        ("engramdb.cli", "function"),
        ("engramdb.server", "function"),
    }
    # Relative imports in a package's __init__ resolve against the package itself.
    init = {i.target for i in imports_of("engramdb.pkg", "from .x import y\n", is_package=True, known=known)}
    assert init == {"engramdb.pkg.x"}


def test_checks_catch_an_upward_import_and_a_loop() -> None:
    graph = {
        "engramdb.index.payload": [Import("engramdb.index.payload", "engramdb.engine.budget", 3, "type_checking")],
        "engramdb.engine.budget": [Import("engramdb.engine.budget", "engramdb.engine.search", 1, "function")],
        "engramdb.engine.search": [Import("engramdb.engine.search", "engramdb.engine.budget", 1, "module")],
    }
    assert upward(graph) == [
        "engramdb.index.payload:3 imports engramdb.engine.budget (under TYPE_CHECKING): layer 1 -> layer 3"
    ]
    assert layer_of("engramdb.nothing_like_this") is None
    assert layer_of("engramdb") == LAYERS.index(("engramdb",))
    assert cycles(graph) == [["engramdb.engine.budget", "engramdb.engine.search"]]
