"""How setup reads Elasticsearch's answers to the ILM policy (a stub transport: no test node
has ILM; the policy itself is checked by Elasticsearch's classes in the integration tests)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from observer.config import ElasticsearchSinkConfig
from observer.sinks.elasticsearch import setup

SETTINGS = ElasticsearchSinkConfig.model_validate({"hosts": ["http://127.0.0.1:9200"]})


class Answers:
    """A transport whose PUT _ilm/policy gets `status` and `body`."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    async def perform_request(self, method: str, target: str, **_: Any) -> Any:
        assert (method, target) == ("PUT", "/_ilm/policy/observer-logs")
        return SimpleNamespace(meta=SimpleNamespace(status=self.status, headers={}), body=self.body)


async def install_policy(status: int, body: Any) -> str | None:
    return await setup._install_ilm_policy(Answers(status, body), SETTINGS)  # type: ignore[arg-type]


async def test_a_cluster_without_ilm_is_a_warning_and_no_lifecycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_handler = {"error": "no handler found for uri [/_ilm/policy/observer-logs] and method [PUT]"}

    assert await install_policy(400, no_handler) is None
    assert await install_policy(410, {"error": "gone"}) is None
    assert "no index lifecycle management" in caplog.text


async def test_a_policy_refused_by_ilm_is_an_error_naming_why_not_a_missing_ilm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = {
        "error": {
            "type": "action_request_validation_exception",
            "reason": "Validation Failed: 1: invalid action [delete] defined in phase [hot];",
        }
    }

    assert await install_policy(400, refused) is None
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "refused the ILM policy" in record.getMessage()
    assert "invalid action [delete]" in record.__dict__["error"]
    assert "no index lifecycle management" not in caplog.text


async def test_an_accepted_policy_is_named_in_the_templates() -> None:
    name = await install_policy(200, {"acknowledged": True})

    assert name == "observer-logs"
    for template in setup.index_templates(SETTINGS, name).values():
        assert template["template"]["settings"]["index.lifecycle.name"] == "observer-logs"


async def test_a_refusal_that_may_pass_is_raised_for_setup_to_retry() -> None:
    with pytest.raises(setup.RefusedError):
        await install_policy(503, {"error": "unavailable"})
