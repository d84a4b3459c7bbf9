"""Results exactly once whatever happens between the bot and Discord: a crash between Discord's
answer and the record, 5xx answers (before and after Discord did the work), a full disk."""

from __future__ import annotations

import asyncio

import pytest

from tests.bot.db.fulldisk import FullDisk
from tests.bot.e2e import button, running_easel, status_id
from tests.fakediscord import FakeDiscord, fail_on_discord_errors

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def imagine(fd, member, **options):
    """Invoke /imagine; (the interaction handle, the generation id) once it is queued."""
    handle = await fd.invoke(member, "imagine", options)
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    return handle, status_id(status)


def results(fd, gen_id: int) -> list:
    """Every message (even deleted) that is the result of #gen_id."""
    return [
        m
        for m in fd.messages(include_deleted=True)
        if not m.ephemeral and any(e.get("title") == f"#{gen_id}" for e in m.embeds)
    ]


async def delivered(bot, gen_id: int, timeout: float = 30):
    """The generation once its delivery is recorded."""
    async with asyncio.timeout(timeout):
        while not (gen := await bot.repos.generations.get(gen_id)).delivered:
            await asyncio.sleep(0.05)
    return gen


async def post_then_die(fd, worker, tiny_model_dir, tmp_path, member):
    """First life: the result reaches the channel, then the bot dies before recording it
    (as `kill -9` right after Discord answered). Returns (gen id, result, status line)."""
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as first:
        posted = asyncio.Event()

        async def killed(*args, **kwargs):
            posted.set()
            raise asyncio.CancelledError  # the process is gone: nothing after this runs

        first.repos.generations.mark_delivered = killed
        handle, gen_id = await imagine(fd, member, prompt="a kite in a storm")
        await asyncio.wait_for(posted.wait(), 30)
        status = handle.original
    (result,) = results(fd, gen_id)
    assert not status.deleted and button(status, "Cancel")  # left behind by the crash
    return gen_id, result, status


async def test_result_posted_just_before_a_crash_is_found_not_posted_again(
    worker, tiny_model_dir, tmp_path
):
    """Restarted long after the crash (Discord has forgotten the nonce): the result is found
    in the channel, recorded, and its status line with the Cancel button is removed."""
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            member = fd.add_member("rosa")
            gen_id, result, status = await post_then_die(
                fd, worker, tiny_model_dir, tmp_path, member
            )
            fd.nonce_window = 0
            # Removing the status line fails once too (discord.py does not retry a 503 here).
            hiccup = fd.fail("DELETE", f"/channels/{fd.channel.id}/messages/{status.id}$", 503)
            async with running_easel(fd, worker, tmp_path, tiny_model_dir) as second:
                gen = await delivered(second, gen_id)
                await fd.wait_until(lambda: status.deleted, timeout=10)
            assert hiccup.served and gen.message_id == result.id
            assert results(fd, gen_id) == [result]


async def test_result_posted_just_before_a_crash_is_deduplicated_by_its_nonce(
    worker, tiny_model_dir, tmp_path
):
    """Restarted within Discord's nonce window, and the channel cannot be read: posting
    again with the job's nonce gets back the message that already exists."""
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            member = fd.add_member("sami")
            gen_id, result, status = await post_then_die(
                fd, worker, tiny_model_dir, tmp_path, member
            )
            no_history = fd.fail("GET", f"/channels/{fd.channel.id}/messages$", 403, times=50)
            async with running_easel(fd, worker, tmp_path, tiny_model_dir) as second:
                gen = await delivered(second, gen_id)
                await fd.wait_until(lambda: status.deleted, timeout=10)
            assert no_history.served  # it did look, and was refused
            assert gen.message_id == result.id
            assert results(fd, gen_id) == [result]


async def test_5xx_on_posts_and_edits_is_retried_and_the_result_posted_once(
    worker, tiny_model_dir, tmp_path
):
    """503 before the post, 500 and 503 after Discord made the message, 5xx on the status
    line's edit and deletion: one result, no status line stuck at "step n of n", no error
    logged."""
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(fd, worker, tmp_path, tiny_model_dir) as bot:
                bot.delivery.retry_delays = (0.05, 0.1)
                posts = f"/channels/{fd.channel.id}/messages$"
                faults = [
                    fd.fail("POST", posts, 503),
                    # discord.py retries a 500 itself; the retry is answered 503 after the work
                    fd.fail("POST", posts, 500, after_commit=True),
                    fd.fail("POST", posts, 503, after_commit=True),
                    # Status line edits and its deletion (discord.py retries these itself).
                    fd.fail("PATCH", "/messages/@original$", 503),
                    fd.fail("DELETE", "/messages/@original$", 502),
                ]
                handle, gen_id = await imagine(fd, fd.add_member("tove"), prompt="a lighthouse")
                status = handle.original
                gen = await delivered(bot, gen_id)
                await fd.wait_until(lambda: status.deleted, timeout=10)
            (result,) = results(fd, gen_id)
            assert gen.message_id == result.id and not result.deleted
            assert [f.times for f in faults] == [0] * len(faults), [f.served for f in faults]


async def test_disk_full_while_jobs_run_keeps_everything_and_delivers_it_once(
    worker, tiny_model_dir, tmp_path
):
    """The disk fills while a job runs: its image waits, the next job stays queued, members
    hear "disk full; try again later", moderators get a line; all is posted once when there
    is space again."""
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            modlog = fd.add_channel("mod-log")
            async with running_easel(
                fd, worker, tmp_path, tiny_model_dir, EASEL_DISCORD_LOG_CHANNEL_ID=str(modlog.id)
            ) as bot:
                bot.scheduler.disk_retry = (0.05, 0.2)
                alice, bob, carol = (fd.add_member(n) for n in ("alice", "bob", "carol"))
                await bot.scheduler.stop()  # both queued before anything runs
                first_handle, first = await imagine(fd, alice, prompt="first", steps=4)
                _, second = await imagine(fd, bob, prompt="second", steps=5)
                disk = FullDisk(bot.repos)
                disk.fill(database=False)  # the first job starts, then its image cannot be saved
                await bot.scheduler.start()
                await fd.wait_until(lambda: bot.scheduler.held_ids == [first], timeout=30)
                disk.fill()  # and now the database cannot grow either
                line = await fd.wait_for_message(
                    lambda m: "disk is full" in m.content, channel=modlog, timeout=10
                )
                assert "💾" in line.content
                await fd.wait_until(
                    lambda: "disk is full" in (first_handle.original.content or ""), timeout=10
                )
                refused = await fd.invoke(carol, "imagine", {"prompt": "third"})
                answer = (await refused.response()).message
                assert answer.ephemeral
                assert answer.content == "The server's disk is full; try again later."
                statuses = [(await bot.repos.generations.get(i)).status for i in (first, second)]
                # The worker took the second job as soon as it had answered the first, before the
                # disk was known to be full: it waits in the queue, or its result in memory.
                assert statuses[0] == "running" and statuses[1] in ("queued", "running")
                assert not results(fd, first) and not results(fd, second)

                disk.free()
                for gen_id in (first, second):
                    await delivered(bot, gen_id)
                await fd.wait_for_message(
                    lambda m: "space on the disk again" in m.content, channel=modlog, timeout=10
                )
            for gen_id in (first, second):
                assert len(results(fd, gen_id)) == 1
            assert len([m for m in fd.messages(modlog) if "disk is full" in m.content]) == 1
