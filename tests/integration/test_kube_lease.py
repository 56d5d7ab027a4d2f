"""Leader election through a real Lease: one leader, hand-over, take-over after a crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from observer.config import KubernetesConfig
from observer.kube.client import KubeApi
from observer.kube.lease import LeaderElection
from tests.services.kubernetes import KubeCluster

LEASE_DURATION = 3.0
RENEW_INTERVAL = 0.5


class Candidate:
    """An agent's election, its own connection, and a record of what its work saw."""

    def __init__(self, api: KubeApi, namespace: str, identity: str) -> None:
        self.election = LeaderElection(
            api, namespace, "events", identity, LEASE_DURATION, RENEW_INTERVAL
        )
        self.handed: list[dict[str, str]] = []
        self.working = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def work(self, annotations: dict[str, str]) -> None:
        self.handed.append(annotations)
        self.working.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.working.clear()

    def start(self) -> None:
        self.task = asyncio.create_task(self.election.run(self.work))

    async def stop(self) -> None:
        """A graceful stop: cancelled, it releases the Lease."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def connections(kube: KubeCluster) -> AsyncIterator[list[KubeApi]]:
    made = [KubeApi.connect(KubernetesConfig(kubeconfig=kube.kubeconfig)) for _ in range(3)]
    yield made
    for connection in made:
        await connection.close()


async def leaders(candidates: list[Candidate]) -> list[Candidate]:
    return [candidate for candidate in candidates if candidate.working.is_set()]


async def until_one_leads(candidates: list[Candidate], within: float) -> Candidate:
    async with asyncio.timeout(within):
        while True:
            leading = await leaders(candidates)
            if leading:
                return leading[0]
            await asyncio.sleep(0.05)


async def lease(api: KubeApi, namespace: str) -> dict[str, Any]:
    return await api.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/events")


async def test_one_of_three_leads_and_a_graceful_stop_hands_over_at_once(
    connections: list[KubeApi], kube_namespace: str
) -> None:
    """Three candidates: exactly one works; stopped gracefully, another takes over within a
    look (not after the lease duration), given the annotations the first one left."""
    candidates = [Candidate(api, kube_namespace, f"agent-{n}") for n, api in enumerate(connections)]
    for candidate in candidates:
        candidate.start()
    try:
        first = await until_one_leads(candidates, within=10)
        await asyncio.sleep(LEASE_DURATION + 1)  # followers see it renewed, never expired
        assert await leaders(candidates) == [first]
        assert first.election.transitions == 1
        stored = await lease(connections[0], kube_namespace)
        assert stored["spec"]["holderIdentity"] == first.election.identity

        first.election.annotations["observer.dev/resume"] = "12345"
        await asyncio.sleep(RENEW_INTERVAL * 2)  # renewed with the annotation
        handed_over_at = asyncio.get_running_loop().time()
        await first.stop()
        released = await lease(connections[0], kube_namespace)
        assert released["spec"]["holderIdentity"] in ("", None) or (
            released["spec"]["holderIdentity"] != first.election.identity
        )
        others = [candidate for candidate in candidates if candidate is not first]
        second = await until_one_leads(others, within=LEASE_DURATION)
        waited = asyncio.get_running_loop().time() - handed_over_at
        assert waited < LEASE_DURATION, "a released lease is taken at the next look"
        assert second.handed[-1]["observer.dev/resume"] == "12345"
        stored = await lease(connections[0], kube_namespace)
        assert stored["spec"]["holderIdentity"] == second.election.identity
        assert stored["spec"]["leaseTransitions"] >= 1
        assert await leaders(candidates) == [second]
    finally:
        for candidate in candidates:
            await candidate.stop()


async def test_a_crashed_leader_is_replaced_after_the_lease_expires_and_not_before(
    connections: list[KubeApi], kube_namespace: str
) -> None:
    """A leader that stops renewing without releasing (a kill -9) keeps the lease for its
    duration, then one other candidate takes it."""
    first = Candidate(connections[0], kube_namespace, "agent-a")
    first.start()
    await until_one_leads([first], within=10)
    # The crash: the task is gone, and nothing released the lease.
    assert first.task is not None
    first.election._release = _nothing  # type: ignore[method-assign]
    await first.stop()

    crashed_at = asyncio.get_running_loop().time()
    others = [Candidate(api, kube_namespace, f"agent-{n}") for n, api in enumerate(connections[1:])]
    for candidate in others:
        candidate.start()
    try:
        await asyncio.sleep(LEASE_DURATION * 0.7)
        assert await leaders(others) == [], "taken over before the lease expired"
        second = await until_one_leads(others, within=LEASE_DURATION * 2 + RENEW_INTERVAL * 3)
        waited = asyncio.get_running_loop().time() - crashed_at
        assert waited >= LEASE_DURATION * 0.9
        await asyncio.sleep(RENEW_INTERVAL * 3)
        assert await leaders(others) == [second]
    finally:
        for candidate in others:
            await candidate.stop()


async def test_a_leader_that_cannot_renew_stops_working_before_another_may_take_over(
    connections: list[KubeApi], kube_namespace: str, kube: KubeCluster
) -> None:
    """Its connection gone, the leader stops its work within lease_duration - renew_interval,
    before a follower could consider the lease expired: never two leaders at once."""
    first = Candidate(connections[0], kube_namespace, "agent-a")
    first.start()
    try:
        await until_one_leads([first], within=10)
        # Cut this candidate off: its requests go to a port nothing listens on.
        first.election.api = KubeApi.connect(KubernetesConfig(kubeconfig=kube.kubeconfig))
        first.election.api.http.base_url = "https://127.0.0.1:9"  # type: ignore[assignment]
        cut_at = asyncio.get_running_loop().time()
        async with asyncio.timeout(LEASE_DURATION + 2):
            while first.working.is_set():
                await asyncio.sleep(0.05)
        stopped_after = asyncio.get_running_loop().time() - cut_at
        assert stopped_after < LEASE_DURATION, "a follower could have led at the same time"
        assert not first.election.leading
    finally:
        await first.stop()
        await first.election.api.close()


async def _nothing() -> None:
    return None
