"""Property-based API testing: schemathesis generates valid and invalid requests from /openapi.json.

Every generated request must get a documented status (never a 5xx), a JSON
body matching the documented schema, and invalid requests must be rejected
with a 4xx. Path parameters naming a collection are pinned to a real one so
requests reach the engine instead of stopping at "collection not found".
Bounded by ``MAX_EXAMPLES`` per operation and mode (well under a minute).

``positive_data_acceptance`` is not checked on purpose: a request that is
valid for the schema can still be refused by the engine (a vector of the wrong
dimension, a cursor from nowhere), which is correct behaviour.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, unique_name

schemathesis = pytest.importorskip("schemathesis")

import requests  # noqa: E402  (a dependency of schemathesis)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Small by default to keep the run bounded; raise it for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("ENGRAMDB_TEST_FUZZ_EXAMPLES", "5"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _ensure_collection(server: ServerProcess, name: str) -> None:
    with server.client() as c:
        # A fuzzed alter_collection may have changed its settings: any 3-d collection of that name will do.
        if c.get(f"/v1/collections/{name}").status_code == 404:
            r = c.post("/v1/collections", json={"name": name, "dimension": 3})
            assert r.status_code == 201, r.text
        c.post(
            f"/v1/collections/{name}/records",
            json={"records": [{"id": "a", "vector": [1, 0, 0], "text": "alpha"}, {"id": "b", "vector": [0, 1, 0]}]},
        ).raise_for_status()


NEGATIVE = GenerationMode.NEGATIVE


def _components(case: Any) -> list[tuple[Any, Any]]:
    meta = getattr(case, "meta", None)
    return list(getattr(meta, "components", {}).items()) if meta is not None else []


def _fuzz(server: ServerProcess, session: requests.Session, strategy: Any, label: str, failures: list[str]) -> None:
    """Run one operation's generated cases in one generation mode, collecting failures."""
    headers_auth = {"Authorization": f"Bearer {server.admin_key}"}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        checks = CHECKS
        negated = {str(getattr(loc, "value", loc)) for loc, info in _components(case) if info.mode is NEGATIVE}
        if negated == {"header"} and "Authorization" not in (case.headers or {}):
            # The negation dropped the Authorization header, which this harness puts back: what is sent
            # is a valid request, so its acceptance says nothing.
            checks = [c for c in CHECKS if c is not negative_data_rejection]
        if case.query:
            # requests leaves out parameters whose value is None or an empty list; send them, empty.
            case.query = {k: "" if v is None or v == [] else v for k, v in case.query.items()}
        headers = {**(case.headers or {}), **headers_auth}
        response = case.call(base_url=server.base_url, session=session, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except Exception as e:  # schemathesis' FailureGroup lists every failed check
            failures.append(f"{label}: {e}\n{case.as_curl_command()}")

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to negate (an operation without parameters or body)
    except Exception as e:
        failures.append(f"{label}: {type(e).__name__}: {e}")


def test_api_conforms_to_its_openapi_document(server: ServerProcess) -> None:
    coll = unique_name("fuzz")
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 27
    failures: list[str] = []
    session = requests.Session()  # keep-alive: the run measures the API, not TCP set-up
    for op in operations:
        _ensure_collection(server, coll)  # a fuzzed delete_collection may have removed it
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            kw: dict[str, Any] = {}
            if "{coll}" in op.path:
                kw["path_parameters"] = {"coll": coll}
            _fuzz(server, session, op.as_strategy(mode, **kw), f"{op.label} [{mode.value}]", failures)
    assert not failures, "\n\n".join(failures[:10])
    # The server survived the whole run.
    assert httpx.get(server.base_url + "/health").status_code == 200
