"""The worker process that owns the GPU, and its asyncio-side supervisor.

A CUDA error poisons the process's CUDA context and only a new process recovers, so the engine
lives in its own (spawned) process. `Worker` talks to it over two one-way pipes; a reader thread
turns the child's messages into callbacks on the event loop, so inference never blocks the bot.
If the child dies mid-batch, the supervisor starts a new one and retries the batch once; a second
crash fails the batch's jobs with a clear error and the fresh worker serves the next one.

The bot need not wait for the model: `launch()` starts the process and returns; `readiness()`
says how far loading (or a first download) has got, and `run()` waits until the model is ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import queue
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .engine import EngineConfig, ModelLoadError
from .request import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)


class JobProgress(Protocol):
    """`on_progress(job_id, step, total)`, with `preview=` PNG bytes when one is ready."""

    def __call__(
        self, job_id: str, step: int, total: int, preview: bytes | None = None
    ) -> None: ...


# --- the pipe protocol: parent → child ---------------------------------------------------------


@dataclass(frozen=True)
class RunBatch:
    batch_id: int
    batch: list[GenerationRequest]


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class ScreenImages:
    """Run the safety checker on images (PNG bytes), e.g. an upload before any work on it."""

    screen_id: int
    pngs: list[bytes]


@dataclass(frozen=True)
class Stop:
    pass


ToWorker = RunBatch | CancelJob | ScreenImages | Stop


# --- child → parent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loading:
    """How far loading has got: `phase` is starting, downloading, loading or warming up."""

    phase: str
    downloaded_bytes: int = 0
    native_size: int | None = None  # known from the model's config before its weights load


@dataclass(frozen=True)
class Ready:
    info: dict[str, Any]


@dataclass(frozen=True)
class LoadFailed:
    message: str


@dataclass(frozen=True)
class Progress:
    batch_id: int
    step: int
    total: int
    previews: dict[int, bytes] = field(default_factory=dict)  # by request index in the batch


@dataclass(frozen=True)
class BatchDone:
    batch_id: int
    results: list[GenerationResult]
    stats: dict[str, float | None]


@dataclass(frozen=True)
class BatchFailed:
    batch_id: int
    error: str


@dataclass(frozen=True)
class Screened:
    screen_id: int
    flags: list[bool]


@dataclass(frozen=True)
class ScreenFailed:
    screen_id: int
    error: str


FromWorker = (
    Loading | Ready | LoadFailed | Progress | BatchDone | BatchFailed | Screened | ScreenFailed
)


@dataclass(frozen=True)
class Readiness:
    """What the bot tells members while the model loads."""

    ready: bool
    # starting, downloading, loading, warming up; "ready" when ready, "down" when none can be
    phase: str = "starting"
    downloaded_bytes: int = 0
    seconds_left: float | None = None  # None while downloading (the total is not known)

    def describe(self) -> str:
        """'the model is loading, about 20 s' (empty once it is ready)."""
        if self.ready:
            return ""
        if self.phase == "down":
            return "no image worker is running (the log says why)"
        if self.phase == "downloading":
            done = self.downloaded_bytes
            amount = f"{done / 1e9:.1f} GB" if done >= 1e9 else f"{done / 1e6:.0f} MB"
            return f"the model is downloading ({amount} so far; a first start only)"
        left = f", about {self.seconds_left:.0f} s" if self.seconds_left is not None else ""
        return f"the model is {self.phase if self.phase != 'starting' else 'loading'}{left}"


READY = Readiness(True, "ready")
# Until a model has been loaded once here, this is the guess of how long loading takes.
FIRST_LOAD_GUESS_SECONDS = 30.0
# Seconds between two progress messages from the worker (the bot edits far less often).
PROGRESS_EVERY = 0.05

CRASHED_TWICE = (
    "The image worker crashed twice while making this image, so it was skipped; "
    "try again, perhaps with a smaller size or fewer images."
)


class WorkerCrashed(RuntimeError):
    """The worker process died before it answered."""


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_peak_mb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # pragma: no cover - informational only
        return None
    return None


def model_native_size(model: str) -> int | None:
    """The model's native square size from its config files alone (a few KB, read before the
    weights), so requests that arrive while it loads get the right aspect sizes. Only a folder
    or the local hub cache is read: asking an unreachable hub would only add retries."""
    try:
        parts = ("unet", "vae")
        paths: list[Any]
        if os.path.isdir(model):
            paths = [os.path.join(model, part, "config.json") for part in parts]
        else:
            from huggingface_hub import try_to_load_from_cache

            paths = [try_to_load_from_cache(model, f"{part}/config.json") for part in parts]
            if not all(isinstance(path, str) for path in paths):
                return None
        unet, vae = (json.loads(Path(path).read_text(encoding="utf-8")) for path in paths)
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        return int(unet["sample_size"]) * int(scale)
    except Exception:  # not a UNet pipeline: the Ready message will say
        return None


def hub_cache_bytes(model: str) -> int:
    """Bytes of `model` in the Hugging Face cache so far (finished and partial files)."""
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + model.replace("/", "--"), "blobs")
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


def _watch_download(
    model: str, send: Callable[[Loading], None], done: threading.Event, every: float = 1.0
) -> None:
    """While the model loads, report (and log) bytes arriving in the hub cache: a first start
    downloads several GB."""
    start_bytes = last = hub_cache_bytes(model)
    while not done.wait(every):
        now = hub_cache_bytes(model)
        if now != last:
            last = now
            log.info("Downloading %s: %.2f GB so far", model, (now - start_bytes) / 1e9)
            send(Loading("downloading", now - start_bytes))


def load_engine(
    config: EngineConfig, send: Callable[[Loading], None] | None = None
) -> tuple[Engine | None, Ready | LoadFailed]:
    """Load the engine once; the message says how it went (shared by process and Ray actor).
    `send` hears how far loading has got (and a first download's bytes)."""
    from .engine import Engine

    report: Callable[[Loading], None] = send or (lambda _message: None)
    started = time.perf_counter()
    report(Loading("loading", native_size=model_native_size(config.model)))
    loaded = threading.Event()
    if send is not None and not os.path.isdir(config.model):
        every = float(config.extra.get("download_poll", 1.0))
        threading.Thread(
            target=_watch_download,
            args=(config.model, send, loaded, every),
            name="easel-download-watch",
            daemon=True,
        ).start()
    time.sleep(float(config.extra.get("load_delay", 0.0)))  # test hook: a slow-loading worker
    try:
        engine = Engine(config).load(on_phase=lambda phase: report(Loading(phase)))
    except ModelLoadError as error:
        return None, LoadFailed(str(error))
    finally:
        loaded.set()
    info = {
        "native_size": engine.native_size,
        "device": engine.device,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "model": config.model,
        "load_seconds": time.perf_counter() - started,
        "compile_seconds": engine.compile_seconds,
        "compiled_graphs": engine.compiled_graphs,
        "peak_rss_mb": _peak_rss_mb(),
        "lab": engine.lab.info() if engine.lab is not None else {},
    }
    return engine, Ready(info)


def execute(
    engine: Engine,
    run: RunBatch,
    send: Callable[[FromWorker], None],
    cancelled: set[str],
    stopping: threading.Event | None = None,
) -> BatchDone | BatchFailed:
    """Run one batch, sending `Progress` messages on the way; the answer is the last message.
    Once `stopping` is set, every job of the batch counts as cancelled (it stops at its next
    step and runs again at the next start).

    Shared by the worker process and the Ray actor, so both speak the same messages.
    """
    everyone = {request.job_id for request in run.batch}

    def stopped() -> set[str]:
        return cancelled | everyone if stopping is not None and stopping.is_set() else cancelled

    previews: dict[int, bytes] = {}
    step_delay = float(engine.config.extra.get("step_delay", 0.0))
    last_sent = 0.0

    def progress(step: int, total: int) -> None:
        nonlocal last_sent
        if step_delay:
            time.sleep(step_delay)  # test hook: leaves time to cancel or kill mid-run
        now = time.monotonic()
        # The bot shows a step at most every progress interval: fewer messages, fewer
        # wake-ups of its event loop while the GPU works. Previews and the last step go.
        if not previews and step < total and now - last_sent < PROGRESS_EVERY:
            return
        last_sent = now
        send(Progress(run.batch_id, step, total, dict(previews)))
        previews.clear()

    started_at = time.time()  # wall clock: comparable across workers (overlap measurements)
    try:
        results = engine.run(
            run.batch,
            on_progress=progress,
            cancelled=stopped,
            on_preview=previews.__setitem__,
        )
    except Exception as error:  # a bug or a bad request must not kill the worker
        log.exception("Batch %s failed", run.batch_id)
        return BatchFailed(run.batch_id, f"{type(error).__name__}: {error}")
    finally:
        for request in run.batch:
            cancelled.discard(request.job_id)
    stats = {
        "peak_rss_mb": _peak_rss_mb(),
        "gpu_peak_mb": _gpu_peak_mb(),
        "started_at": started_at,
        "finished_at": time.time(),
    }
    return BatchDone(run.batch_id, results, stats)


def screen(engine: Engine, message: ScreenImages) -> Screened | ScreenFailed:
    """The safety checker's verdict on uploaded images (shared by process and Ray actor)."""
    try:
        return Screened(message.screen_id, engine.screen(message.pngs))
    except Exception as error:  # an unreadable image must not kill the worker
        log.exception("Screening %s failed", message.screen_id)
        return ScreenFailed(message.screen_id, f"{type(error).__name__}: {error}")


def _exit_with_parent() -> None:
    """End this process when the bot is gone, even mid-load (nothing may be left behind)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="easel-worker-parent", daemon=True).start()


def _quiet_hub_logging() -> None:
    """huggingface_hub adds its own log handler on import: with the worker's own one each of
    its lines would print twice."""
    import logging as child_logging

    import huggingface_hub  # noqa: F401

    hub = child_logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)


def _child_main(config: EngineConfig, inbox: Connection, outbox: Connection) -> None:
    """Entry point of the worker process: load once, then run batches until told to stop."""
    import logging as child_logging

    _exit_with_parent()
    child_logging.basicConfig(
        level=child_logging.INFO, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s"
    )
    _quiet_hub_logging()
    send_lock = threading.Lock()  # the download watcher sends too

    def send(message: FromWorker) -> None:
        with send_lock:
            outbox.send(message)

    engine, loaded = load_engine(config, send)
    send(loaded)
    if engine is None:
        return

    # Batches and screenings, in the order they came: one thing on the GPU at a time.
    jobs: queue.Queue[RunBatch | ScreenImages | None] = queue.Queue()
    cancelled: set[str] = set()
    stopping = threading.Event()  # Stop cancels the running batch at its next step

    def listen() -> None:
        while True:
            try:
                message: ToWorker = inbox.recv()
            except (EOFError, OSError):
                jobs.put(None)  # the parent is gone: stop
                return
            match message:
                case CancelJob(job_id):
                    cancelled.add(job_id)
                case RunBatch() | ScreenImages():
                    jobs.put(message)
                case Stop():
                    stopping.set()
                    jobs.put(None)
                    return

    threading.Thread(target=listen, name="easel-worker-inbox", daemon=True).start()
    while (run := jobs.get()) is not None and not stopping.is_set():
        if isinstance(run, ScreenImages):
            send(screen(engine, run))
        else:
            send(execute(engine, run, send, cancelled, stopping))


def deliver_progress(message: Progress, job_ids: list[str], on_progress: JobProgress) -> None:
    """Hand a batch's `Progress` to the caller, per job (with its preview when there is one)."""
    for index, job_id in enumerate(job_ids):
        try:
            if index in message.previews:
                on_progress(job_id, message.step, message.total, preview=message.previews[index])
            else:  # callers that take no previews need not accept the keyword
                on_progress(job_id, message.step, message.total)
        except Exception:
            log.exception("Progress callback failed")


@dataclass(frozen=True)
class BatchSpan:
    """When a worker ran a batch, by its own wall clock."""

    job_ids: tuple[str, ...]
    started_at: float
    finished_at: float


@dataclass
class _Pending:
    """A batch sent to the child, waiting for its answer."""

    future: asyncio.Future[list[GenerationResult]]
    job_ids: list[str]
    on_progress: JobProgress | None


class Worker:
    """Runs batches in a supervised worker process: `await worker.run(batch, on_progress=…)`."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        start_timeout: float = 600.0,
        expected_load_seconds: float | None = None,
    ):
        self.config = config
        self.start_timeout = start_timeout
        # How long loading took last time (the bot remembers it), for "about N s".
        self.expected_load_seconds = expected_load_seconds
        self.info: dict[str, Any] = {}
        self._loading = Loading("starting")
        self._early_native: int | None = None
        self._launched_at = time.monotonic()
        self.stats: dict[str, Any] = {}
        self.restarts = 0
        self._process: multiprocessing.process.BaseProcess | None = None
        self._inbox: Connection | None = None
        self._outbox: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._pending: dict[int, _Pending] = {}
        self._screens: dict[int, asyncio.Future[list[bool]]] = {}
        self._ids = itertools.count(1)
        self._run_lock = asyncio.Lock()
        self._cancelled: set[str] = set()
        self._stopping = False
        # The last batches as the child timed them (wall clock): who ran what, when.
        self.timeline: collections.deque[BatchSpan] = collections.deque(maxlen=200)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def native_size(self) -> int:
        return int(self.info.get("native_size") or self._early_native or 512)

    @property
    def ready(self) -> bool:
        return self._ready is not None and self._ready.done() and not self._ready.exception()

    def readiness(self) -> Readiness:
        """Ready, or how far loading has got and about how long it will still take."""
        if self.ready:
            return READY
        phase = self._loading.phase
        if phase == "downloading":
            return Readiness(False, phase, self._loading.downloaded_bytes)
        expected = self.expected_load_seconds or FIRST_LOAD_GUESS_SECONDS
        left = max(5.0, expected - (time.monotonic() - self._launched_at))
        return Readiness(False, phase, self._loading.downloaded_bytes, left)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    async def start(self) -> None:
        """Start the process and wait until the model is loaded."""
        self.launch()
        await self.wait_ready()

    def launch(self) -> None:
        """Start the process and return at once; `wait_ready()` (or `run()`) waits for it."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        # Known at once for a folder or a cached model (two small files).
        self._early_native = self._early_native or model_native_size(self.config.model)
        context = multiprocessing.get_context("spawn")
        child_inbox, self._inbox = context.Pipe(duplex=False)
        self._outbox, child_outbox = context.Pipe(duplex=False)
        self._ready = self._loop.create_future()
        # A load that fails with no one waiting (a stop mid-load) is not an unretrieved error.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._loading = Loading("starting")
        self._launched_at = time.monotonic()
        self._process = context.Process(
            target=_child_main,
            args=(self.config, child_inbox, child_outbox),
            name="easel-inference",
            daemon=True,
        )
        self._process.start()
        child_inbox.close()
        child_outbox.close()
        threading.Thread(
            target=self._read,
            args=(self._outbox, self._ready),
            name="easel-worker-reader",
            daemon=True,
        ).start()

    async def wait_ready(self) -> None:
        """Wait until the launched process has loaded the model; raise `ModelLoadError` if it
        cannot (or does not within `start_timeout` seconds of its launch)."""
        ready = self._ready
        if ready is None:
            raise ModelLoadError("The worker was never launched.")
        if ready.done():
            ready.result()  # raises the load error, if any
            return
        left = self.start_timeout - (time.monotonic() - self._launched_at)
        try:
            await asyncio.wait_for(asyncio.shield(ready), max(0.0, left))
        except TimeoutError:
            await self._kill()
            error = ModelLoadError(f"The model did not load within {self.start_timeout:.0f} s.")
            if not ready.done():
                ready.set_exception(error)
                ready.exception()  # retrieved: raised here
            raise error from None
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self._kill()
            raise

    async def _ready_or_restarted(self) -> None:
        """Wait for the model; a process that failed to load (a restart) is started anew."""
        ready = self._ready
        failed = ready is not None and ready.done() and ready.exception() is not None
        if failed and not self.alive:
            await self._restart()
        else:
            await self.wait_ready()

    def _log_ready(self) -> None:
        log.info(
            "Worker %s ready in %.1f s: %s on %s",
            self.pid,
            self.info["start_seconds"],
            self.info.get("model"),
            self.info.get("device"),
        )

    def _read(self, outbox: Connection, ready: asyncio.Future[dict[str, Any]]) -> None:
        """Reader thread: hand every message from the child to the event loop."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message: FromWorker = outbox.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: report it as a crash
                log.exception("Bad message from the worker")
                break
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(self._on_message, message, ready)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, ready)

    def _on_message(self, message: FromWorker, ready: asyncio.Future[dict[str, Any]]) -> None:
        match message:
            case Loading(phase, downloaded, native):
                if ready is self._ready:
                    self._loading = message
                    self._early_native = native or self._early_native
                    log.debug("Worker: %s (%d bytes)", phase, downloaded)
            case Ready(info):
                if not ready.done():
                    info["start_seconds"] = time.monotonic() - self._launched_at
                    self.info = info
                    ready.set_result(info)
                    self._log_ready()
            case LoadFailed(text):
                if not ready.done():
                    ready.set_exception(ModelLoadError(text))
            case Progress(batch_id):
                pending = self._pending.get(batch_id)
                if pending is not None and pending.on_progress is not None:
                    deliver_progress(message, pending.job_ids, pending.on_progress)
            case BatchDone(batch_id, results, stats):
                done = self._pending.pop(batch_id, None)
                if done is not None and not done.future.done():
                    self.stats.update({k: v for k, v in stats.items() if v is not None})
                    if stats.get("started_at") is not None and stats.get("finished_at"):
                        self.timeline.append(
                            BatchSpan(
                                tuple(done.job_ids),
                                float(stats["started_at"] or 0),
                                float(stats["finished_at"] or 0),
                            )
                        )
                    done.future.set_result(results)
            case BatchFailed(batch_id, error):
                failed = self._pending.pop(batch_id, None)
                if failed is not None and not failed.future.done():
                    failed.future.set_exception(RuntimeError(error))
            case Screened(screen_id, flags):
                screened = self._screens.pop(screen_id, None)
                if screened is not None and not screened.done():
                    screened.set_result(list(flags))
            case ScreenFailed(screen_id, error):
                unscreened = self._screens.pop(screen_id, None)
                if unscreened is not None and not unscreened.done():
                    unscreened.set_exception(RuntimeError(error))

    def _on_exit(self, ready: asyncio.Future[dict[str, Any]]) -> None:
        if not ready.done():
            ready.set_exception(
                ModelLoadError("The worker process exited while loading the model.")
            )
        if ready is not self._ready:
            return  # an old process's reader, already replaced
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(WorkerCrashed("The worker process died."))
        screens, self._screens = self._screens, {}
        for future in screens.values():
            if not future.done():
                future.set_exception(WorkerCrashed("The worker process died."))

    async def run(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        """Run a batch; one result per request, in order. Never raises for a worker crash:
        the process is restarted and the batch retried once, then failed. Waits for the
        model if it is still loading (a load that fails raises ModelLoadError)."""
        async with self._run_lock:
            await self._ready_or_restarted()
            for attempt in (1, 2):
                if not self.alive:
                    await self._restart()
                try:
                    results = await self.run_once(batch, on_progress)
                except WorkerCrashed:
                    log.error(
                        "Worker crashed running jobs %s (attempt %d)",
                        [r.job_id for r in batch],
                        attempt,
                    )
                    await self._restart()
                    continue
                for result in results:
                    result.attempts = attempt
                return results
            self._cancelled.difference_update(r.job_id for r in batch)
            return [
                GenerationResult(job_id=r.job_id, error=CRASHED_TWICE, attempts=2) for r in batch
            ]

    async def run_once(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None = None
    ) -> list[GenerationResult]:
        """One attempt: the results, or `WorkerCrashed` if the process died (it is not
        restarted; the pool decides where the batch goes next). A job cancelled before the
        attempt is not run."""
        try:
            results = await self._run_once(batch, on_progress)
        except WorkerCrashed:
            raise
        except RuntimeError as error:  # the child reported the batch failed
            results = [GenerationResult(job_id=r.job_id, error=str(error)) for r in batch]
        for result in results:
            if result.job_id in self._cancelled:
                result.cancelled = True
        self._cancelled.difference_update(r.job_id for r in batch)
        return results

    async def _run_once(
        self, batch: list[GenerationRequest], on_progress: JobProgress | None
    ) -> list[GenerationResult]:
        # A job cancelled before a retry is not run again.
        cancelled_now = [r for r in batch if r.job_id in self._cancelled]
        if cancelled_now and len(cancelled_now) == len(batch):
            return [GenerationResult(job_id=r.job_id, cancelled=True) for r in batch]
        if not self.alive or self._loop is None or self._inbox is None:
            raise WorkerCrashed("The worker process is not running.")
        batch_id = next(self._ids)
        future: asyncio.Future[list[GenerationResult]] = self._loop.create_future()
        self._pending[batch_id] = _Pending(future, [r.job_id for r in batch], on_progress)
        try:
            self._inbox.send(RunBatch(batch_id, batch))
            for request in cancelled_now:
                self._inbox.send(CancelJob(request.job_id))
        except (BrokenPipeError, OSError):
            self._pending.pop(batch_id, None)
            raise WorkerCrashed("The worker process is gone.") from None
        try:
            return await future
        finally:
            self._pending.pop(batch_id, None)

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        """The safety checker's verdict on each image (PNG bytes), from the worker that owns
        the checker: after the batch running now, before the next one. A crash restarts the
        worker and asks once more; a second one raises WorkerCrashed, a bad image RuntimeError."""
        async with self._run_lock:
            await self._ready_or_restarted()
            for _attempt in (1, 2):
                if not self.alive:
                    await self._restart()
                assert self._loop is not None and self._inbox is not None
                screen_id = next(self._ids)
                future: asyncio.Future[list[bool]] = self._loop.create_future()
                self._screens[screen_id] = future
                try:
                    self._inbox.send(ScreenImages(screen_id, list(pngs)))
                    return await future
                except (BrokenPipeError, OSError, WorkerCrashed):
                    self._screens.pop(screen_id, None)
                    log.error("Worker crashed screening %d image(s)", len(pngs))
                    await self._restart()
            raise WorkerCrashed("The image worker crashed twice while checking the image.")

    def forget_cancels(self, job_ids: list[str]) -> None:
        """Drop remembered cancels of jobs that will not come back here (retried elsewhere)."""
        self._cancelled.difference_update(job_ids)

    def cancel(self, job_id: str) -> None:
        """Stop a running job between steps; its result comes back with `cancelled=True`."""
        self._cancelled.add(job_id)
        if self._inbox is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._inbox.send(CancelJob(job_id))

    async def restart(self) -> None:
        """Kill the process (if it lives) and start a new one; waits until it is loaded."""
        await self._restart()

    async def _restart(self) -> None:
        if self._stopping:
            raise WorkerCrashed("The worker is shutting down.")
        await self._kill()
        self.restarts += 1
        log.warning("Starting a new worker process (restart %d)", self.restarts)
        await self.start()

    async def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 10)
        for connection in (self._inbox, self._outbox):
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
        self._process = None

    async def stop(self, *, grace: float = 10.0) -> None:
        """Ask the process to finish (a running batch stops at its next step) and wait up to
        `grace` seconds for it; then kill it."""
        self._stopping = True
        process = self._process
        if process is None:
            return
        if self._inbox is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._inbox.send(Stop())
        await asyncio.to_thread(process.join, grace)
        await self._kill()
