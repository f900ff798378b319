"""Property-based requests generated from the OpenAPI document (schemathesis) against a real
``algomint serve`` process on each backend, with an admin API token: no input may produce a
5xx, and every answer must match the document (status, content type, body schema). Valid
requests (positive) and requests that break the document (negative) are both sent."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.support.auth import ADMIN, ADMIN_PASSWORD, basic
from tests.support.server import run_server

# Examples per operation and mode (~50 operations): about 800 requests per backend.
# Invalid (negative) input must get a documented 4xx, in the documented error shape.
EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 6}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# URLs the fuzzer makes up (webhooks, service plugins) must only ever point at loopback
# (nothing listens there), whatever the server's outbound rules are.
LOOPBACK_HOOK = "http://127.0.0.1:9/hook"


def _config(workdir: Path, backend: str, registry_url: str | None) -> str:
    storage = f'[storage]\nbackend = "{backend}"\npath = "{workdir / "storage"}"\n'
    if registry_url:
        storage += f'url = "{registry_url}"\n'
    return (storage + f'[metadata]\npath = "{workdir / "metadata.db"}"\n'
            f'[auth]\nenabled = true\nadmin_password_file = "{workdir / "admin-password"}"\n')


def _admin_token(url: str) -> str:
    request = urllib.request.Request(url + "/api/v1/tokens", method="POST", data=json.dumps({"name": "fuzz"}).encode(),
                                     headers={"Content-Type": "application/json", **basic(ADMIN)})
    return json.loads(urllib.request.urlopen(request).read())["token"]


def _loopback_only(case: schemathesis.Case) -> None:
    body = case.body
    if isinstance(body, dict):
        for holder in (body, body.get("options")):
            if isinstance(holder, dict) and "url" in holder:
                holder["url"] = LOOPBACK_HOOK


@pytest.mark.parametrize("backend", ["filesystem", "registry"])
def test_generated_requests_get_documented_answers(tmp_path, backend, request):
    registry_url = request.getfixturevalue("distribution").url if backend == "registry" else None
    workdir = tmp_path / "srv"
    workdir.mkdir()
    (workdir / "admin-password").write_text(ADMIN_PASSWORD + "\n")
    with run_server(workdir, _config(workdir, backend, registry_url)) as server:
        headers = {"Authorization": f"Bearer {_admin_token(server.url)}"}
        schema = schemathesis.openapi.from_url(server.url + "/api/v1/openapi.json")
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 40
        for operation, mode in [(op, mode) for op in operations for mode in EXAMPLES]:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                _loopback_only(case)
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:  # noqa: BLE001 - a failure (group) of any check: collect them all
                    failures.append(f"{mode.value} {case.method} {case.formatted_path}: {str(exc)[:600]}")

            try:
                run()
            except Unsatisfiable:
                # An operation with nothing a request could break (no parameters, no body)
                # has no negative case to send; a positive case must always be possible.
                if mode is not GenerationMode.NEGATIVE:
                    raise
        assert server.process.poll() is None
        assert not failures, "\n\n".join(failures[:20])
