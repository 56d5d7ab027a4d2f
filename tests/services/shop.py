"""A small shop of real services that send real spans: frontend → checkout → payments.

Each service is its own Python process with the OpenTelemetry SDK, the aiohttp server and
client instrumentation and the OTLP/gRPC exporter, serving `GET /?order=N` on 127.0.0.1.
Payments fails every `fail_every`-th order (500); checkout answers its caller all the
same (the order is recorded as unpaid), so a failure belongs to the checkout → payments
edge alone. Each service exports to the OTLP/gRPC endpoint it is given: a collector's
receiver, or an agent's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.services.process import free_port

SERVICES = ("frontend", "checkout", "payments")
DOWNSTREAM = {"frontend": "checkout", "checkout": "payments"}
SPANS_PER_ORDER = 5
"""frontend server and client, checkout server and client, payments server."""

SERVICE_PROGRAM = """
import asyncio, os, signal

from aiohttp import ClientSession, web
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

name = os.environ["SERVICE"]
downstream = os.environ.get("DOWNSTREAM", "")
fail_every = int(os.environ.get("FAIL_EVERY", "0"))

provider = TracerProvider(resource=Resource.create({"service.name": name}))
provider.add_span_processor(
    BatchSpanProcessor(
        OTLPSpanExporter(endpoint=os.environ["COLLECTOR"], insecure=True),
        schedule_delay_millis=100,
    )
)
AioHttpServerInstrumentor().instrument(tracer_provider=provider)
AioHttpClientInstrumentor().instrument(tracer_provider=provider)


async def handle(request):
    order = int(request.query["order"])
    if fail_every and order % fail_every == 0:
        return web.json_response({"error": "card declined"}, status=500)
    if not downstream:
        return web.json_response({"paid": True})
    async with request.app["client"].get(downstream, params={"order": order}) as answer:
        await answer.read()
        # checkout records an unpaid order and answers its caller all the same
        return web.json_response({"order": order, "paid": answer.status == 200})


async def main():
    app = web.Application()
    app.router.add_get("/", handle)
    app["client"] = ClientSession()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(os.environ["PORT"])).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await app["client"].close()
    await runner.cleanup()
    provider.shutdown()  # exports every span still buffered


asyncio.run(main())
"""


async def start_service(
    program: Path, name: str, port: int, collector: str, **env: str
) -> asyncio.subprocess.Process:
    """One service process, returned once it listens; its spans go to `collector`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(program),
        env={
            **os.environ,
            "SERVICE": name,
            "PORT": str(port),
            "COLLECTOR": collector,
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line == b"ready\n", f"{name} did not start"
    return process


@dataclass
class Shop:
    ports: dict[str, int]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def frontend(self) -> str:
        return f"http://127.0.0.1:{self.ports['frontend']}/"

    async def order(self, user: aiohttp.ClientSession, order: int) -> int:
        """Place one order through the frontend; the frontend's HTTP status."""
        async with user.get(self.frontend, params={"order": order}) as answer:
            await answer.read()
            return answer.status

    async def stop(self) -> None:
        """SIGTERM every service; each exports its buffered spans as it stops."""
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            await asyncio.wait_for(process.wait(), 30)


async def start_shop(directory: Path, exporters: Mapping[str, str], fail_every: int) -> Shop:
    """Start the three services, callees first; `exporters` maps each service to the
    OTLP/gRPC endpoint (host:port) its spans are sent to."""
    program = directory / "shop_service.py"
    program.write_text(SERVICE_PROGRAM)
    shop = Shop({name: free_port() for name in SERVICES})
    try:
        for name in reversed(SERVICES):
            env = {"FAIL_EVERY": str(fail_every)} if name == "payments" else {}
            if name in DOWNSTREAM:
                env["DOWNSTREAM"] = f"http://127.0.0.1:{shop.ports[DOWNSTREAM[name]]}/"
            shop.processes.append(
                await start_service(program, name, shop.ports[name], exporters[name], **env)
            )
    except BaseException:
        await shop.stop()
        raise
    return shop
