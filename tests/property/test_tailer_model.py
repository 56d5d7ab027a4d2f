"""The tailer against a model: whatever is written, rotated, truncated, deleted or restarted.

A hypothesis state machine drives the real `Tailer` and `CheckpointStore` on a real
directory tree, playing the agent's part by hand (app.py's loop): a pass reads, a delivery
takes batches from the queue into a list standing for the sinks, an acknowledgement
settles a handover (in any order), a save writes the checkpoint file. The model is what
was written, per container restart and stream. At the end, after draining, the lines
delivered are exactly the model: after graceful restarts exactly once; after crashes
(unsettled handovers and the queue dropped, checkpoints reloaded from disk) at least once,
every repeat being a replay, with the same file identity and offset as the original.

Losses that are the nature of the operation, not of the agent, are kept out of the model
by preconditions: the kubelet compresses a rotated file only once the agent has it open or
has delivered it; copytruncate happens once the agent has read the file to its end and
noticed the truncation before the next write (what is written between copy and truncate is
the method's own loss); a restart happens once every line of a file gone from disk has
been delivered (an agent down while its source disappears has nothing to replay from).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from observer.agent.checkpoint import CheckpointStore, Handover
from observer.agent.tail import Batch, Tailer
from observer.config import PodLogsConfig
from observer.testing import CRI_PARTIAL_BYTES, ContainerLog, PodLogTree

settings.register_profile(
    "tailer-model",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

STREAMS = st.sampled_from(["stdout", "stderr"])
PICK = st.integers(min_value=0, max_value=7)
"""An index into whatever list a rule chooses from, taken modulo its length."""
FILLER = st.sampled_from([0, 0, 0, 30, 200, CRI_PARTIAL_BYTES - 40, 2 * CRI_PARTIAL_BYTES + 7])
"""Bytes of padding: most lines short, some split by the runtime into 2 or 3 partial parts."""
MAX_CONTAINERS = 3

StreamKey = tuple[str, str, int, str]
"""(pod, container, restart count, stream): the unit whose order the agent keeps."""


@dataclass(eq=False)
class FileModel:
    """The lines written to one file, in order; `gone`: removed from disk or truncated away."""

    messages: list[str] = field(default_factory=list)
    gone: bool = False


@dataclass(eq=False)
class ContainerModel:
    log: ContainerLog
    pod: str
    name: str
    writing: FileModel = field(default_factory=FileModel)
    """The file the runtime writes to: the live file, or the renamed one until it reopens."""
    rotated: list[tuple[Path, FileModel]] = field(default_factory=list)
    """Uncompressed rotations, oldest first."""
    renamed: bool = False
    """Rotated, and the runtime has not reopened the live file yet."""
    unfinished: dict[str, tuple[str, list[bytes]]] = field(default_factory=dict)
    """Per stream, a line whose first parts are written: its message and remaining parts."""
    files: list[FileModel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files.append(self.writing)

    def stream_key(self, stream: str) -> StreamKey:
        return (self.pod, self.name, self.log.restart, stream)


@dataclass(frozen=True, slots=True)
class Delivered:
    generation: int
    """Which run of the agent delivered it (0, then +1 at every restart)."""
    identity: tuple[str, int]
    """(file fingerprint, offset): what a replay must repeat exactly."""
    stream: StreamKey
    message: str


class Agent:
    """A tailer, its checkpoint store and queue: one run of the agent, driven by hand."""

    def __init__(self, config: PodLogsConfig, state_dir: Path) -> None:
        self.checkpoints = CheckpointStore(state_dir)
        self.checkpoints.load()
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()  # unbounded: a pass never waits
        self.tailer = Tailer(config, self.checkpoints, self.queue)
        self.in_flight: list[tuple[Handover, list[Delivered]]] = []

    async def poll(self, scan: bool) -> bool:
        """One turn of Tailer.run's loop; True if anything was read."""
        if scan:
            self.tailer.scan()
        progressed = await self.tailer.read_all()
        await self.tailer.close_finished(False)
        return progressed

    def save(self) -> None:
        """The agent's checkpoint timer: prune what is gone, write the file."""
        for key in self.tailer.stale_checkpoints():
            self.checkpoints.forget(key)
        self.checkpoints.save()

    def close_files(self) -> None:
        for tailed in list(self.tailer.files.values()):
            self.tailer._close(tailed)


class TailerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="tailer-model-"))
        self.tree = PodLogTree(self.directory / "pods")
        self.config = PodLogsConfig(root=self.tree.root, read_bytes=4096)
        self.loop = asyncio.new_event_loop()
        self.agent = Agent(self.config, self.directory / "state")
        self.containers: list[ContainerModel] = []
        self.model: dict[StreamKey, list[str]] = defaultdict(list)
        self.delivered: list[Delivered] = []
        self.delivered_messages: set[str] = set()
        self.generation = 0
        self.crashes: list[int] = []
        """The generations that began after a kill -9: only they may deliver a line again."""
        self.pods = 0
        self.lines = 0

    # --- the world: pods and their runtime ------------------------------------------------

    def _container(self, pick: int) -> ContainerModel:
        return self.containers[pick % len(self.containers)]

    def _message(self, container: ContainerModel, stream: str, filler: int) -> str:
        self.lines += 1
        return f"{container.pod}/{container.name} {stream} line {self.lines} " + "x" * filler

    def _wrote(self, container: ContainerModel, stream: str, message: str) -> None:
        container.writing.messages.append(message)
        self.model[container.stream_key(stream)].append(message)

    @initialize()
    def first_pod(self) -> None:
        self.new_pod()

    @precondition(lambda self: len(self.containers) < MAX_CONTAINERS)
    @rule()
    def new_pod(self) -> None:
        self.pods += 1
        pod = f"pod-{self.pods}"
        log = self.tree.container("ns", pod, "app", uid=f"uid-{self.pods}")
        self.containers.append(ContainerModel(log, pod, "app"))

    @rule(pick=PICK, stream=STREAMS, fillers=st.lists(FILLER, min_size=1, max_size=5))
    def write(self, pick: int, stream: str, fillers: list[int]) -> None:
        container = self._container(pick)
        if stream in container.unfinished:
            return  # the runtime finishes a line before starting the next one of its stream
        messages = [self._message(container, stream, filler) for filler in fillers]
        container.log.write(messages, stream)
        for message in messages:
            self._wrote(container, stream, message)

    @rule(pick=PICK)
    def write_interleaved(self, pick: int) -> None:
        """A long line on each stream, their partial parts alternating in the file."""
        container = self._container(pick)
        if container.unfinished:
            return
        out = self._message(container, "stdout", 2 * CRI_PARTIAL_BYTES)
        err = self._message(container, "stderr", CRI_PARTIAL_BYTES + 1)
        container.log.write_interleaved(out, err)
        self._wrote(container, "stdout", out)
        self._wrote(container, "stderr", err)

    @rule(pick=PICK, stream=STREAMS)
    def begin_long_line(self, pick: int, stream: str) -> None:
        """The first part of a long line is written; the rest comes later."""
        container = self._container(pick)
        if stream in container.unfinished:
            return
        message = self._message(container, stream, 2 * CRI_PARTIAL_BYTES)
        first, *rest = container.log.cri_lines(message, stream)
        container.log.write_raw(first)
        container.unfinished[stream] = (message, rest)
        self._wrote(container, stream, message)

    @rule(pick=PICK)
    def finish_long_lines(self, pick: int) -> None:
        container = self._container(pick)
        for _, rest in container.unfinished.values():
            container.log.write_raw(b"".join(rest))
        container.unfinished.clear()

    @rule(pick=PICK, reopen=st.booleans())
    def rotate(self, pick: int, reopen: bool) -> None:
        """The kubelet renames N.log; the runtime reopens at once, or writes on for a while."""
        container = self._container(pick)
        if container.renamed or container.unfinished:
            return  # (a line cut by a rotation is split between two files: not modelled)
        rotated = container.log.rotate(compress_older=False, reopen=reopen)
        container.rotated.append((rotated, container.writing))
        container.renamed = not reopen
        if reopen:
            self._reopened(container)

    def _reopened(self, container: ContainerModel) -> None:
        container.writing = FileModel()
        container.files.append(container.writing)

    @rule(pick=PICK)
    def reopen(self, pick: int) -> None:
        container = self._container(pick)
        if container.renamed and not container.unfinished:
            container.log.reopen()
            container.renamed = False
            self._reopened(container)

    @rule(pick=PICK)
    def compress(self, pick: int) -> None:
        """The kubelet gzips the oldest rotation but the newest, once the agent cannot miss it."""
        container = self._container(pick)
        if len(container.rotated) < 2:
            return
        path, file = container.rotated[0]
        info = path.stat()
        if (info.st_dev, info.st_ino) not in self.agent.tailer.files and not self._delivered(file):
            return  # compressing it now would lose it: the agent never opened it
        ContainerLog.compress(path)
        container.rotated.pop(0)
        file.gone = True

    @rule(pick=PICK)
    def copytruncate(self, pick: int) -> None:
        """logrotate's copytruncate, at a moment when it loses nothing (see the module docstring)."""
        container = self._container(pick)
        if container.renamed or container.unfinished:
            return
        self._read_everything()
        container.log.copytruncate()
        container.writing.gone = True
        self._reopened(container)
        self._run(self.agent.poll(scan=False))  # notices the truncation

    @rule(pick=PICK)
    def restart_container(self, pick: int) -> None:
        container = self._container(pick)
        if container.renamed or container.unfinished:
            return
        container.log.restart_container()
        self._reopened(container)

    @rule(pick=PICK)
    def delete_pod(self, pick: int) -> None:
        """The pod is deleted with its logs, once everything it wrote was delivered."""
        container = self._container(pick)
        if len(self.containers) == 1 or container.unfinished:
            return
        if not all(self._delivered(file) for file in container.files):
            return
        container.log.close()
        shutil.rmtree(container.log.directory.parent)
        for file in container.files:
            file.gone = True
        self.containers.remove(container)

    # --- the agent ---------------------------------------------------------------------------

    def _run(self, step: object) -> bool:
        return bool(self.loop.run_until_complete(step))  # type: ignore[arg-type]

    @rule(scan=st.booleans(), passes=st.integers(min_value=1, max_value=3))
    def poll(self, scan: bool, passes: int) -> None:
        """Passes of the tailer; without a scan, as when no inotify event came."""
        for _ in range(passes):
            self._run(self.agent.poll(scan))

    @rule(batches=st.integers(min_value=1, max_value=8))
    def deliver(self, batches: int) -> None:
        """The sinks take batches from the queue; their acknowledgements come later."""
        for _ in range(min(batches, self.agent.queue.qsize())):
            self._deliver(self.agent.queue.get_nowait())

    def _deliver(self, batch: Batch) -> None:
        documents = []
        for document in batch.documents:
            delivered = Delivered(
                self.generation,
                (batch.handover.key, document["log"]["offset"]),
                (
                    document["kubernetes"]["pod"]["name"],
                    document["kubernetes"]["container"]["name"],
                    document["container"]["restart_count"],
                    document["stream"],
                ),
                document["message"],
            )
            documents.append(delivered)
            self.delivered_messages.add(delivered.message)
        self.delivered += documents
        self.agent.in_flight.append((batch.handover, documents))

    @rule(pick=PICK, count=st.integers(min_value=1, max_value=4))
    def acknowledge(self, pick: int, count: int) -> None:
        """Every sink acknowledged some batches, not necessarily in the order they were sent."""
        for _ in range(min(count, len(self.agent.in_flight))):
            handover, _ = self.agent.in_flight.pop(pick % len(self.agent.in_flight))
            self.agent.checkpoints.settle(handover)

    @rule()
    def save_checkpoints(self) -> None:
        self.agent.save()

    @rule(crash=st.booleans())
    def restart_agent(self, crash: bool) -> None:
        """SIGTERM (deliver what was read, save) or kill -9 (keep only the checkpoint file)."""
        gone = [file for c in self.containers for file in c.files if file.gone]
        if not all(self._delivered(file) for file in gone):
            return  # a file gone from disk with lines undelivered would be lost by any restart
        if crash:
            self.crashes.append(self.generation + 1)
        else:
            self._settle_everything()
            self.agent.save()
        self.agent.close_files()
        self.generation += 1
        self.agent = Agent(self.config, self.directory / "state")

    # --- helpers -----------------------------------------------------------------------------

    def _delivered(self, file: FileModel) -> bool:
        return all(message in self.delivered_messages for message in file.messages)

    def _read_everything(self) -> None:
        for _ in range(1000):
            if not self._run(self.agent.poll(scan=True)):
                return
        raise AssertionError("the tailer never reached the end of its files")

    def _settle_everything(self) -> None:
        while not self.agent.queue.empty():
            self._deliver(self.agent.queue.get_nowait())
        for handover, _ in self.agent.in_flight:
            self.agent.checkpoints.settle(handover)
        self.agent.in_flight.clear()

    def _drain(self) -> None:
        for container in self.containers:
            self.finish_long_lines(self.containers.index(container))
            self.reopen(self.containers.index(container))
        for _ in range(1000):
            progressed = self._run(self.agent.poll(scan=True))
            self._settle_everything()
            if not progressed:
                return
        raise AssertionError("the agent never finished draining")

    # --- the property ------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._drain()
            self._check()
        finally:
            self.agent.close_files()
            self.tree.close()
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _check(self) -> None:
        first: dict[str, Delivered] = {}
        delivered: dict[StreamKey, list[str]] = defaultdict(list)
        for copy in self.delivered:
            original = first.setdefault(copy.message, copy)
            if original is copy:
                delivered[copy.stream].append(copy.message)
                continue
            assert (copy.identity, copy.stream) == (original.identity, original.stream), (
                f"{copy.message[:60]!r} was delivered again from another place"
            )
            assert any(
                original.generation < generation <= copy.generation for generation in self.crashes
            ), f"{copy.message[:60]!r} was delivered twice without a crash in between"
            original = first[copy.message] = copy  # a later replay is judged from this copy
        assert dict(delivered) == {key: lines for key, lines in self.model.items() if lines}


TailerMachine.TestCase.settings = settings.get_profile("tailer-model")
TestTailerModel = TailerMachine.TestCase


def test_resuming_inside_the_other_streams_partial_line() -> None:
    """After a restart, the last parts of a line already delivered are not delivered as a line of their own.

    stdout's long line starts, stderr's long line starts, both finish; the agent stops with
    stdout's line delivered and stderr's pending. The checkpoint is stderr's first part,
    which lies inside stdout's line: the next run must skip stdout's last parts there.
    """
    state = TailerMachine()
    try:
        state.first_pod()
        (container,) = state.containers
        for stream in ("stdout", "stderr"):
            message = state._message(container, stream, 2 * CRI_PARTIAL_BYTES)
            first, *rest = container.log.cri_lines(message, stream)
            container.log.write_raw(first)
            container.unfinished[stream] = (message, rest)
            state._wrote(container, stream, message)
        state.finish_long_lines(pick=0)
        state.poll(scan=True, passes=3)  # stdout's line and stderr's first part are read
        state.restart_agent(crash=False)
        state._drain()
        written = {m for lines in state.model.values() for m in lines}
        assert [d.message[:50] for d in state.delivered if d.message not in written] == []
    finally:
        state.agent.close_files()
        state.tree.close()
        state.loop.close()
        shutil.rmtree(state.directory, ignore_errors=True)


def test_checkpoint_survives_a_rename_before_the_file_is_reopened() -> None:
    """A file renamed by rotation after a restart, before the agent reopened it under its
    new name, keeps its checkpoint through a save: its lines are not read again."""
    state = TailerMachine()
    try:
        state.first_pod()
        state.write(fillers=[0], pick=0, stream="stdout")
        state._read_everything()
        state.restart_agent(crash=False)
        state.rotate(pick=0, reopen=False)
        state.save_checkpoints()
        state._drain()
        state._check()
    finally:
        state.agent.close_files()
        state.tree.close()
        state.loop.close()
        shutil.rmtree(state.directory, ignore_errors=True)
