"""AsyncEngine: the engine's interface for servers, in the shape of Ray Serve LLM's LLMEngine.

A daemon thread drives :meth:`GenerationEngine.step` while there is work (and sleeps on
an event when there is none); callers on an event loop use ``generate`` (an async
iterator of deltas), ``add_adapter`` / ``remove_adapter``, ``check_health`` and
``stats``. Closing or cancelling a ``generate`` iterator before its last delta aborts
the request, by the id the engine gave it: its rows leave the batch at the next step.
There is no abort by request id: a client's id (``x-request-id``) is whatever the
client sent, so it could name another client's request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ouro.engine.core import GenerationEngine
from ouro.engine.types import (
    EngineStats,
    EngineStoppedError,
    GenerationRequest,
    StreamDelta,
)

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5
"""How long the idle loop sleeps between checks that it should still run."""

INLINE_PROMPT_CHARS = 4096
"""Conversations up to this many characters are formatted and tokenized on the event loop
(well under a millisecond); longer ones in a worker thread, so the loop keeps serving."""


class AsyncEngine:
    """Runs a GenerationEngine's step loop in a thread; async methods for an event loop."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop_error: BaseException | None = None
        self._mailbox_of_loop: _Mailbox | None = None

    @classmethod
    def from_settings(cls, settings) -> AsyncEngine:
        return cls(GenerationEngine.from_settings(settings))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the step loop (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="ouro-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop after its current step."""
        self._stopping.set()
        self.engine.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def check_health(self) -> None:
        """Raise EngineStoppedError unless the step loop is running."""
        if self._thread is None or not self._thread.is_alive():
            reason = f": {self._loop_error}" if self._loop_error else ""
            raise EngineStoppedError(f"the engine loop is not running{reason}")

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stopping.is_set():
                if engine.wait_for_work(_IDLE_WAIT_S):
                    mailbox = self._mailbox_of_loop
                    with mailbox.holding() if mailbox is not None else nullcontext():
                        engine.step()
        except BaseException as error:  # noqa: BLE001 - recorded for check_health, then raised
            self._loop_error = error
            logger.exception("the engine loop stopped")
            raise

    # -- requests ------------------------------------------------------------------------------
    async def generate(
        self, request: GenerationRequest, stream: bool = True
    ) -> AsyncIterator[StreamDelta]:
        """The request's deltas as the engine produces them (several steps' worth of one
        choice merged when the consumer is slower than the engine; ``delta.index`` says
        which of the ``n`` choices); with ``stream=False`` one delta per choice, the whole
        answer, so the event loop is not woken at every step. Raises the engine's error
        for a request it refuses (before the first delta) or that fails; leaving the
        loop early aborts the request."""
        self.check_health()
        sink = _LoopSink(self._mailbox(), stream, request.params.n)
        if _conversation_chars(request.messages) <= INLINE_PROMPT_CHARS:
            prompt = self.engine.prompt_ids(request)  # a thread hop would cost more
        else:
            prompt = await asyncio.to_thread(self.engine.prompt_ids, request)
        seq_id = self.engine.add_request(request, sink, prompt)
        unfinished = request.params.n
        try:
            while unfinished:
                for delta in await sink.next():
                    unfinished -= delta.finish_reason is not None
                    yield delta
        finally:
            if unfinished:
                self.engine.abort(seq_id)

    def _mailbox(self) -> _Mailbox:
        """The running loop's mailbox (one kept: a server's requests share one loop)."""
        loop = asyncio.get_running_loop()
        if self._mailbox_of_loop is None or self._mailbox_of_loop.loop is not loop:
            self._mailbox_of_loop = _Mailbox(loop)
        return self._mailbox_of_loop

    # -- adapters ------------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        return self.engine.adapter_names()

    async def add_adapter(self, name: str, path: Path) -> None:
        """Load an adapter between two steps (the load runs in a worker thread)."""
        await asyncio.to_thread(self.engine.add_adapter, name, path)

    async def remove_adapter(self, name: str) -> None:
        """Unload an adapter between two steps; requests still on it are aborted."""
        await asyncio.to_thread(self.engine.remove_adapter, name)


def _conversation_chars(messages) -> int:
    """About how long the conversation is: every field of every message, as text."""
    return sum(len(str(value)) for message in messages for value in message.values())


class _Mailbox:
    """Hands deltas from the engine thread to the sinks of one event loop: one wake-up of
    the loop per engine step for every request's deltas (held while the step runs, so a
    loop that runs between two rows' posts does not wake once per row), and one for
    everything else posted before the loop runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._posted: list[tuple[_LoopSink, list]] = []
        self._holding = False
        self._wake_pending = False

    # engine thread (and any thread that fails a request)
    def post(self, sink: _LoopSink, items: list) -> None:
        with self._lock:
            self._posted.append((sink, items))
            if self._holding or self._wake_pending:
                return  # delivered when the step ends, or by the wake-up on its way
            self._wake_pending = True
        self.loop.call_soon_threadsafe(self._deliver)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Within the block (one engine step) posts wait; they go in one wake-up after."""
        with self._lock:
            self._holding = True
        try:
            yield
        finally:
            with self._lock:
                self._holding = False
                wake = bool(self._posted) and not self._wake_pending
                self._wake_pending = self._wake_pending or wake
            if wake:
                self.loop.call_soon_threadsafe(self._deliver)

    # event loop
    def _deliver(self) -> None:
        with self._lock:
            posted, self._posted = self._posted, []
            self._wake_pending = False
        for sink, items in posted:
            sink.deliver(items)


class _LoopSink:
    """One request's deltas, from the engine thread to its consumer on an event loop."""

    def __init__(self, mailbox: _Mailbox, stream: bool, choices: int) -> None:
        self._mailbox = mailbox
        self._stream = stream
        self._held: list[StreamDelta] = []
        """Deltas kept on the engine thread until every choice's last one (``stream=False``)."""
        self._unfinished = choices
        self._items: list = []
        self._ready = asyncio.Event()

    # engine thread
    def put(self, delta: StreamDelta) -> None:
        if self._stream:
            self._mailbox.post(self, [delta])
            return
        self._held.append(delta)
        self._unfinished -= delta.finish_reason is not None
        if not self._unfinished:  # all at once: ``next`` merges them into one per choice
            self._mailbox.post(self, self._held)

    def fail(self, error: BaseException) -> None:
        self._mailbox.post(self, [error])

    # event loop
    def deliver(self, items: list) -> None:
        self._items.extend(items)
        self._ready.set()

    async def next(self) -> list[StreamDelta]:
        """Everything delivered since the last call, merged into one delta per choice."""
        await self._ready.wait()
        items, self._items = self._items, []
        self._ready.clear()
        for item in items:
            if isinstance(item, BaseException):
                raise item
        by_choice: dict[int, list[StreamDelta]] = {}
        for item in items:
            by_choice.setdefault(item.index, []).append(item)
        return [merge_deltas(deltas) for deltas in by_choice.values()]


def merge_deltas(deltas: list[StreamDelta]) -> StreamDelta:
    """One delta with the text and logprobs of several consecutive ones of one choice."""
    if len(deltas) == 1:
        return deltas[0]
    return dataclasses.replace(
        deltas[-1],
        text="".join(delta.text for delta in deltas),
        logprobs=tuple(entry for delta in deltas for entry in delta.logprobs),
    )
