"""Online while the model loads: the bot answers at once, jobs queue, and run when it is
ready (the real bot, the fake Discord, a real worker that loads slowly on purpose)."""

from __future__ import annotations

import pytest

from inference.engine import EngineConfig
from inference.worker import Worker
from tests.bot.e2e import running_easel
from tests.fakediscord import FakeDiscord, fail_on_discord_errors


async def test_jobs_queue_while_the_model_loads_and_run_when_ready(tiny_model_dir, tmp_path):
    """/imagine during loading says the model is loading (about N s) and is posted once it
    is; /queue says so too."""
    config = EngineConfig(model=tiny_model_dir, device="cpu", extra={"load_delay": 4.0})
    worker = Worker(config, expected_load_seconds=30)
    worker.launch()
    try:
        async with FakeDiscord() as fd:
            with fail_on_discord_errors("discord", "fakediscord", "bot"):
                async with running_easel(fd, worker, tmp_path, tiny_model_dir) as bot:
                    assert not worker.ready  # online before the model
                    member = fd.add_member("early")
                    handle = await fd.invoke(member, "imagine", {"prompt": "a kite", "seed": 3})
                    first = await handle.response()
                    assert first.elapsed < 3.0
                    status = first.message.content
                    assert "position 1 of 1 (the model is loading, about " in status
                    queue = await (await fd.invoke(member, "queue", {})).response()
                    assert "Starting up: the model is loading, about" in queue.message.content
                    assert "position 1" in queue.message.content
                    gen_id = int(status.split("**#")[1].split("**")[0])
                    result = await fd.wait_for_message(
                        lambda m: (
                            any(e.get("title") == f"#{gen_id}" for e in m.embeds)
                            and not m.ephemeral
                        ),
                        timeout=60,
                    )
                    assert result.attachments and worker.ready
                    again = await (await fd.invoke(member, "queue", {})).response()
                    assert "Starting up" not in again.message.content
                    assert bot.scheduler.readiness().ready
    finally:
        await worker.stop()


@pytest.mark.parametrize("phase", ["downloading"])
def test_readiness_wording(phase):
    """What members read while a first start downloads the model."""
    from inference.worker import Readiness

    assert Readiness(False, phase, 2_500_000_000).describe() == (
        "the model is downloading (2.5 GB so far; a first start only)"
    )
    assert Readiness(True, "ready").describe() == ""
    assert Readiness(False, "down").describe() == "no image worker is running (the log says why)"
