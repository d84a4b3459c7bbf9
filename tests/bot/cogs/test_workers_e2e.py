"""Two workers end to end: the real bot and the fake Discord over a pool of two CPU worker
processes. Status lines say which worker runs the job, /queue shows every worker's state, and
a worker that dies shows in the moderators' log channel while its job still gets done."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from inference.backend import WorkerState
from inference.engine import EngineConfig
from inference.pool import LocalPool
from tests.bot.e2e import running_easel
from tests.fakediscord import FakeDiscord, fail_on_discord_errors

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(tiny_model_dir):
    config = EngineConfig(
        model=tiny_model_dir, device="cpu", preview_interval=0.2, extra={"step_delay": 0.05}
    )
    async with LocalPool(config, ["cpu", "cpu"], restart_delay=0.5) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def world(pool, tiny_model_dir, tmp_path):
    for _ in range(2400):
        if all(s.state == WorkerState.IDLE for s in pool.statuses()):
            break
        await asyncio.sleep(0.05)
    async with FakeDiscord() as fd:
        log_channel = fd.add_channel("mod-log")
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(
                fd,
                pool,
                tmp_path,
                tiny_model_dir,
                EASEL_DISCORD_LOG_CHANNEL_ID=str(log_channel.id),
            ) as bot:
                yield fd, bot, log_channel


async def imagine(fd, member, prompt: str, steps: int):
    handle = await fd.invoke(member, "imagine", {"prompt": prompt, "steps": steps})
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    return status, int(status.content.split("**#")[1].split("**")[0])


def result_of(gen_id: int):
    def find(message):
        return any(e.get("title") == f"#{gen_id}" for e in message.embeds) and not message.ephemeral

    return find


def said(status) -> list[str]:
    return [h.get("content") or "" for h in status.history] + [status.content or ""]


async def test_status_lines_name_the_worker_and_queue_shows_each_one(world):
    """Two members' jobs run at once, each status line says on which worker, and /queue
    lists both workers running their jobs."""
    fd, bot, _ = world
    ada, bo = fd.add_member("ada"), fd.add_member("bo")
    status_a, a = await imagine(fd, ada, "a lighthouse", 30)
    status_b, b = await imagine(fd, bo, "a harbour", 30)
    await fd.wait_until(
        lambda: bot.scheduler.running_ids == {a, b}, timeout=60, what="both jobs running"
    )
    listing = (await (await fd.invoke(ada, "queue", {})).response()).message.content
    assert "**Workers:**" in listing
    assert f"`cpu#1` running #{min(a, b)}" in listing or f"`cpu#2` running #{min(a, b)}" in listing
    assert "running #" in listing.split("`cpu#1`")[1] and "running #" in listing.split("`cpu#2`")[1]
    for gen_id in (a, b):
        await fd.wait_for_message(result_of(gen_id), timeout=60)
    lines = said(status_a) + said(status_b)
    assert any(" on cpu#1" in line for line in lines) and any(" on cpu#2" in line for line in lines)


async def test_a_dead_worker_shows_in_the_log_channel_and_its_job_still_gets_done(world):
    """SIGKILL the worker running a job: the log channel says it stopped and is back, with
    every worker's state; the job is retried and posted once."""
    fd, bot, log_channel = world
    cy = fd.add_member("cy")
    _, gen_id = await imagine(fd, cy, "a windmill", 30)
    await fd.wait_until(
        lambda: bot.scheduler.worker_of(gen_id) is not None, timeout=60, what="the job running"
    )
    name = bot.scheduler.worker_of(gen_id).name
    slot = next(s for s in bot.scheduler.workers.slots if s.name == name)
    await asyncio.sleep(0.3)  # a few steps in
    os.kill(slot.worker.pid, signal.SIGKILL)
    result = await fd.wait_for_message(result_of(gen_id), timeout=120)
    assert f"<@{cy.id}>" in result.content
    gen = await bot.repos.generations.get(gen_id)
    assert gen.status == "done" and gen.attempts == 2

    def log_text() -> str:
        return "\n".join(m.content for m in fd.messages(log_channel))

    await fd.wait_until(lambda: "is ready" in log_text(), timeout=120, what="the worker back")
    text = log_text()
    assert f"🔄 Image worker `{name}` stopped (it crashed); restarting it. Workers:" in text
    assert f"✅ Image worker `{name}` is ready" in text
    assert "`cpu#1`" in text and "`cpu#2`" in text
    assert len([m for m in fd.messages() if result_of(gen_id)(m)]) == 1
