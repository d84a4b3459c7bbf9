"""The worker process and its supervisor: crashes, retries, cancellation."""

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from inference.engine import EngineConfig, ModelLoadError
from inference.request import GenerationRequest
from inference.worker import CRASHED_TWICE, Worker

# One worker process for the module: starting one costs seconds (torch import).
pytestmark = pytest.mark.asyncio(loop_scope="module")


def request(job_id: str, **overrides) -> GenerationRequest:
    values = dict(prompt="a red fox", seed=1, steps=4, width=64, height=64, job_id=job_id)
    values.update(overrides)
    return GenerationRequest(**values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir):
    # A short pause per step leaves time to kill or cancel the process mid-job.
    async with Worker(
        EngineConfig(model=tiny_model_dir, device="cpu", extra={"step_delay": 0.05})
    ) as running:
        yield running


async def test_runs_a_batch_and_reports_progress(worker):
    """A batch runs in the child; progress arrives per job and step on the event loop."""
    assert worker.native_size == 64 and worker.info["device"] == "cpu"
    progress = []
    results = await worker.run(
        [request("a"), request("b", seed=2)],
        on_progress=lambda job, step, total: progress.append((job, step)),
    )
    assert [r.ok for r in results] == [True, True]
    assert ("a", 4) in progress and ("b", 4) in progress
    assert worker.stats["peak_rss_mb"] > 0


async def test_event_loop_stays_free_while_generating(worker):
    """The loop keeps ticking during a long job."""
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await worker.run([request("slow", steps=10)])
    task.cancel()
    assert ticks > 20


async def test_killed_worker_is_restarted_and_job_retried_once(worker):
    """SIGKILL mid-job: a new process starts and the job completes on the retry."""
    first_pid = worker.pid
    killed = []

    def kill_once(job, step, total):
        if not killed:
            killed.append(step)
            os.kill(worker.pid, signal.SIGKILL)

    (result,) = await worker.run([request("k")], on_progress=kill_once)
    assert result.ok and len(result.images) == 1
    assert result.attempts == 2
    assert worker.restarts == 1 and worker.pid != first_pid

    # A second crash on the retry fails the job with a clear error...
    def kill_always(job, step, total):
        os.kill(worker.pid, signal.SIGKILL)

    (failed,) = await worker.run([request("k2")], on_progress=kill_always)
    assert failed.error == CRASHED_TWICE and not failed.images
    # ...and a fresh worker serves the next job.
    (after,) = await worker.run([request("k3")])
    assert after.ok


async def test_cancel_a_running_job(worker):
    """cancel(job_id) stops the job between steps with no image."""
    steps = []
    task = asyncio.create_task(
        worker.run([request("c", steps=40)], on_progress=lambda j, s, t: steps.append(s))
    )
    while not steps:
        await asyncio.sleep(0.01)
    worker.cancel("c")
    (result,) = await task
    assert result.cancelled and not result.images
    assert max(steps) < 40


async def test_bad_model_fails_start_with_clear_error(tmp_path):
    """A worker with a missing model folder raises ModelLoadError from start()."""
    with pytest.raises(ModelLoadError, match="does not exist"):
        await Worker(EngineConfig(model=str(tmp_path / "missing"), device="cpu")).start()


def _png(colour=(90, 140, 200)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_screen_waits_for_the_running_batch_and_answers(worker):
    """A screening sent while a batch runs is answered after it, by the worker's checker."""
    batch = asyncio.create_task(worker.run([request("s1")]))
    await asyncio.sleep(0.05)
    flags = await worker.screen([_png(), _png((0, 0, 0))])
    assert flags == [False, False] and batch.done()  # the batch went first
    assert (await batch)[0].ok


async def test_screen_of_a_broken_image_raises_and_the_worker_lives(worker):
    """Bytes that are not an image fail that screening only."""
    with pytest.raises(RuntimeError, match="UnidentifiedImageError|cannot identify"):
        await worker.screen([b"not a png"])
    assert await worker.screen([_png()]) == [False]


async def test_screen_survives_a_crash(worker):
    """A worker that died is restarted for the screening."""
    os.kill(worker.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert await worker.screen([_png()]) == [False]
    assert worker.alive


async def test_worker_exits_when_the_bot_is_killed(tiny_model_dir, tmp_path):
    """`kill -9` of the bot while the model loads: the worker goes too (nothing left behind)."""
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from inference.engine import EngineConfig
        from inference.worker import Worker

        async def main():
            worker = Worker(EngineConfig(model={tiny_model_dir!r}, device="cpu"))
            task = asyncio.ensure_future(worker.start())
            while worker.pid is None:
                await asyncio.sleep(0.01)
            print(worker.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(bot.communicate(), 60)
    child = int(out.split()[0])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while alive(child) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(child), "the worker outlived the bot"


def alive(pid: int) -> bool:
    """A live process (not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_launch_returns_at_once_and_run_waits_for_the_model(tiny_model_dir):
    """launch() does not wait for the model; readiness says it is loading (about N s, from
    the last load time); a batch sent meanwhile runs once the model is ready."""
    config = EngineConfig(model=tiny_model_dir, device="cpu", extra={"load_delay": 1.5})
    worker = Worker(config, expected_load_seconds=40)
    worker.launch()
    try:
        readiness = worker.readiness()
        assert not readiness.ready and readiness.seconds_left is not None
        assert 30 < readiness.seconds_left <= 40
        assert readiness.describe().startswith("the model is loading, about ")
        while worker.native_size != 64:  # read from the config files before the weights
            await asyncio.sleep(0.05)
        assert not worker.ready
        (result,) = await worker.run([request("early")])
        assert result.ok and worker.ready and worker.readiness().describe() == ""
    finally:
        await worker.stop()


async def test_a_first_download_reports_its_progress(tmp_path, monkeypatch, capfd):
    """While a hub model loads, bytes arriving in the hub cache are reported to the bot and
    logged; a model that cannot be fetched still fails with one clear line."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    blobs = tmp_path / "models--someone--uncached-model" / "blobs"
    config = EngineConfig(
        model="someone/uncached-model",
        device="cpu",
        extra={"load_delay": 3.0, "download_poll": 0.1},
    )
    worker = Worker(config)
    worker.launch()
    try:
        await asyncio.sleep(1.0)  # the watcher has taken its first look
        blobs.mkdir(parents=True)
        partial = tmp_path / "partial"
        partial.write_bytes(b"\0" * 25_000_000)
        partial.rename(blobs / "abc.incomplete")  # all at once, as far as the watcher sees
        while worker.readiness().phase != "downloading":
            await asyncio.sleep(0.05)
        readiness = worker.readiness()
        assert readiness.downloaded_bytes == 25_000_000 and readiness.seconds_left is None
        assert readiness.describe() == (
            "the model is downloading (25 MB so far; a first start only)"
        )
        with pytest.raises(ModelLoadError, match="cannot be reached"):
            await worker.wait_ready()
    finally:
        await worker.stop()
    assert "Downloading someone/uncached-model: 0.03 GB so far" in capfd.readouterr().err
