"""/imagine end to end: the real bot, the fake Discord, the tiny model in a real worker."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
import pytest_asyncio
from PIL import Image

from inference.engine import read_png_recipe
from tests.bot.e2e import button, running_easel, status_id
from tests.fakediscord import DiscordErrorWatcher, FakeDiscord, fail_on_discord_errors

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def world(worker, tiny_model_dir, tmp_path):
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(fd, worker, tmp_path, tiny_model_dir) as bot:
                yield fd, bot


def result_of(fd, gen_id: int):
    def find(message):
        return any(e.get("title") == f"#{gen_id}" for e in message.embeds) and not message.ephemeral

    return find


async def test_startup_syncs_commands_with_options(world):
    """Commands are synced to the guild with the options, bounds and choices expected."""
    fd, bot = world
    names = {c["name"] for c in fd.commands(fd.guild)}
    assert {"imagine", "queue", "cancel"} <= names
    imagine = fd.command("imagine", fd.guild)
    assert imagine.get("contexts") == [0]  # servers only, not DMs
    options = {o["name"]: o for o in imagine["options"]}
    assert list(options) == [
        "prompt",
        "negative",
        "seed",
        "steps",
        "guidance",
        "aspect",
        "count",
        "sampler",
        "image",
        "strength",
    ]
    assert options["prompt"]["required"] is True
    assert options["image"]["type"] == 11  # an attachment
    assert (options["strength"]["min_value"], options["strength"]["max_value"]) == (0.05, 1.0)
    assert options["steps"]["max_value"] == bot.settings.generation.max_steps
    assert options["count"]["max_value"] == 4
    assert [c["value"] for c in options["aspect"]["choices"]] == [
        "square",
        "portrait",
        "landscape",
        "wide",
        "tall",
    ]
    assert [c["value"] for c in options["sampler"]["choices"]] == list(
        bot.settings.generation.samplers
    )


async def test_imagine_posts_result_with_images_embed_and_buttons(world):
    """An answer within the deadline, then a channel message with PNGs, recipe and buttons."""
    fd, _bot = world
    alice = fd.add_member("alice")
    # Enough steps (about a second here) for progress edits and a preview, which come one
    # progress interval (0.2 s in these tests) after the job starts.
    handle = await fd.invoke(
        alice,
        "imagine",
        {"prompt": "a red fox", "seed": 1234, "count": 2, "aspect": "wide", "steps": 50},
    )
    first = await handle.response()
    assert first.elapsed < 3.0
    status = await handle.wait_for_message(lambda m: "#" in (m.content or ""))
    assert not status.ephemeral and "a red fox" in status.content and "position" in status.content
    gen_id = int(status.content.split("**#")[1].split("**")[0])
    result = await fd.wait_for_message(result_of(fd, gen_id), timeout=30)
    assert f"<@{alice.id}>" in result.content
    assert result.pings.users == {alice.id} and not result.pings.everyone
    assert len(result.attachments) == 2
    for attachment in result.attachments:
        png = await fd.fetch_attachment(attachment)
        assert Image.open(io.BytesIO(png)).size == (80, 48)
    recipe = read_png_recipe(result.attachments[0].data)
    assert recipe["seed"] == 1234 and recipe["prompt"] == "a red fox"
    fields = {f["name"]: f["value"] for f in result.embed["fields"]}
    assert fields["Seeds"] == "1234, 1235"
    assert result.embed["title"] == f"#{gen_id}"
    for name in ("🎲", "✏️", "ℹ️", "🗑️", "V1", "V2", "U1", "U2"):
        assert button(result, name)
    # The public status line showed progress, then made way for the result.
    await fd.wait_until(lambda: status.deleted, timeout=10)
    contents = [h.get("content") or "" for h in status.history]
    assert any("step" in c for c in contents)
    assert not any("step 50 of 50" in c for c in contents)  # the result says that
    # ...with a rough preview of the image attached along the way.
    assert any(h.get("attachments") for h in status.history)


async def test_bad_options_are_refused_and_logged(world):
    """steps 999, empty or huge prompts get one ephemeral sentence; nothing is queued."""
    fd, bot = world
    bob = fd.add_member("bob")
    cases = [
        ({"prompt": "a fox", "steps": 999}, "steps must be between"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 5000}, "keep it under"),
    ]
    for options, message in cases:
        handle = await fd.invoke(bob, "imagine", options, client_checks=False)
        response = await handle.response()
        assert response.message.ephemeral and message in response.message.content
    assert bot.scheduler.waiting_count == 0
    refused = await bot.repos.history.moderation_log(user_id=bob.id)
    assert len(refused) == 3 and {g.status for g in refused} == {"blocked"}


async def test_mentions_in_prompts_are_refused_and_nothing_pings(world):
    """@everyone, @here and role mentions in a prompt are refused (logged); no message pings."""
    fd, bot = world
    carol = fd.add_member("carol")
    role = fd.add_role("students", mentionable=True)
    for prompt in ("@everyone party", "hi @here", f"<@&{role.id}> party"):
        handle = await fd.invoke(carol, "imagine", {"prompt": prompt})
        message = (await handle.response()).message
        assert message.ephemeral and "Prompts cannot contain mentions" in message.content
        assert not message.pings.any
    assert bot.scheduler.waiting_count == 0
    refused = await bot.repos.history.moderation_log(user_id=carol.id)
    assert [g.refusal_reason for g in refused] == ["bad_input"] * 3
    for message in fd.messages(include_deleted=True):
        assert not message.pings.everyone and not message.pings.roles


async def imagine(fd, member, **options):
    """Invoke /imagine and return (handle, generation id) once the job is queued."""
    handle = await fd.invoke(member, "imagine", options)
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    return handle, status_id(status)


async def test_three_users_get_their_own_results_in_fair_order(world):
    """A heavy user's backlog does not hold back two others who each send one job."""
    fd, bot = world
    heavy, light1, light2 = (fd.add_member(n) for n in ("heavy", "light1", "light2"))
    await bot.scheduler.stop()  # hold the dispatcher so everyone queues before anything starts
    heavy_ids = [(await imagine(fd, heavy, prompt=f"heavy {i}", steps=6))[1] for i in range(4)]
    _, light1_id = await imagine(fd, light1, prompt="light one", steps=6)
    _, light2_id = await imagine(fd, light2, prompt="light two", steps=6)
    await bot.scheduler.start()
    results = {}
    for gen_id in [*heavy_ids, light1_id, light2_id]:
        results[gen_id] = await fd.wait_for_message(result_of(fd, gen_id), timeout=60)
    for gen_id, member in [(light1_id, light1), (light2_id, light2), (heavy_ids[0], heavy)]:
        assert f"<@{member.id}>" in results[gen_id].content
    gens = {g.id: g for g in await bot.repos.generations.get_many(list(results))}
    order = sorted(results, key=lambda i: (gens[i].started_at, i))
    # Both light users started before the heavy user's second job.
    assert (
        order.index(light1_id) < order.index(heavy_ids[1])
        or gens[light1_id].started_at == gens[heavy_ids[0]].started_at
    )
    assert order.index(light2_id) <= order.index(heavy_ids[2])


async def test_cancel_by_author_works_and_by_others_is_refused(world):
    """Only the author may cancel; a cancelled job posts nothing."""
    fd, bot = world
    dave, eve = fd.add_member("dave"), fd.add_member("eve")
    await bot.scheduler.stop()
    handle, gen_id = await imagine(fd, dave, prompt="a slow fox")
    status = handle.original
    cancel_id = button(status, "Cancel")
    intruder = await fd.click(eve, status, cancel_id)
    refused = await intruder.response()
    assert refused.message.ephemeral and "Only the author" in refused.message.content
    assert bot.scheduler.position(gen_id) is not None
    own = await fd.click(dave, status, cancel_id)
    await own.response()
    await fd.wait_until(lambda: "cancelled" in (handle.original.content or ""))
    await bot.scheduler.start()
    assert (await bot.repos.generations.get(gen_id)).status == "cancelled"
    # /cancel of a job that is not yours is refused too.
    _, other = await imagine(fd, dave, prompt="another fox")
    h = await fd.invoke(eve, "cancel", {"generation": other})
    assert "not one of your jobs" in (await h.response()).message.content


async def test_reroll_makes_a_child_with_a_new_seed(world):
    """🎲 on someone's result: a new job for the presser, new seed, original as parent."""
    fd, bot = world
    frank, gina = fd.add_member("frank"), fd.add_member("gina")
    _, gen_id = await imagine(fd, frank, prompt="a lighthouse", seed=77)
    result = await fd.wait_for_message(result_of(fd, gen_id), timeout=30)
    click = await fd.click(gina, result, button(result, "🎲"))
    await click.response()
    status = await click.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    child_id = status_id(status)
    child_msg = await fd.wait_for_message(result_of(fd, child_id), timeout=30)
    child = await bot.repos.generations.get(child_id)
    assert child.parent_id == gen_id and child.kind == "reroll" and child.user_id == gina.id
    assert child.recipe["seed"] != 77 and child.prompt == "a lighthouse"
    assert f"reroll of #{gen_id} by <@{frank.id}>" in child_msg.content
    assert child_msg.pings.users == {gina.id}


async def test_result_is_posted_after_the_interaction_expired(world):
    """A job that waited past the interaction's lifetime is still posted in the channel."""
    fd, bot = world
    fd.token_lifetime = 1.0
    nora = fd.add_member("nora")
    await bot.scheduler.stop()
    handle, gen_id = await imagine(fd, nora, prompt="a patient fox")
    status = handle.original
    await asyncio.sleep(1.5)
    await bot.scheduler.start()
    message = await fd.wait_for_message(result_of(fd, gen_id), timeout=30)
    assert f"<@{nora.id}>" in message.content and message.attachments
    for _ in range(100):  # the delivery is recorded right after the post
        if (await bot.repos.generations.get(gen_id)).message_id == message.id:
            break
        await asyncio.sleep(0.05)
    assert (await bot.repos.generations.get(gen_id)).message_id == message.id
    # The status line goes too, although its interaction token has expired.
    await fd.wait_until(lambda: fd.messages_by_id[status.id].deleted, timeout=5)


async def test_unexpected_error_gets_an_apology_with_an_error_id(world, monkeypatch):
    """A bug becomes a short apology with an error id; the traceback goes to the log."""
    fd, bot = world

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(bot.scheduler, "submit", broken)
    # The fixture's watcher fails the test on ERROR records; this one is expected.
    (watcher,) = [
        h for h in logging.getLogger("bot").handlers if isinstance(h, DiscordErrorWatcher)
    ]
    handle = await fd.invoke(fd.add_member("olga"), "imagine", {"prompt": "a fox"})
    message = (await handle.response()).message
    await fd.wait_until(lambda: watcher.records, timeout=5)
    assert [r.exc_info[1].args for r in watcher.records] == [("boom",)]
    watcher.clear()
    assert message.ephemeral and "Sorry, something went wrong" in message.content
    assert "error id `" in message.content


async def test_queue_lists_my_jobs_and_the_cap_refuses_more(world):
    """/queue shows my waiting jobs with positions; one over the per-member cap is refused."""
    fd, bot = world
    pia = fd.add_member("pia")
    cap = bot.settings.queue.max_waiting_per_user
    await bot.scheduler.stop()
    ids = [(await imagine(fd, pia, prompt=f"a tile {i}"))[1] for i in range(cap)]
    over = await fd.invoke(pia, "imagine", {"prompt": "one too many"})
    refusal = (await over.response()).message
    assert refusal.ephemeral and f"You already have {cap} images waiting" in refusal.content
    listing = (await (await fd.invoke(pia, "queue", {})).response()).message
    assert listing.ephemeral and f"{cap} waiting" in listing.content
    for position, gen_id in enumerate(ids, start=1):
        assert f"**#{gen_id}**" in listing.content
        assert f"position {position}" in listing.content
    cancelled = (await (await fd.invoke(pia, "cancel", {})).response()).message
    assert all(f"#{gen_id}" in cancelled.content for gen_id in ids)
    await bot.scheduler.start()
    refused = [
        g for g in await bot.repos.history.moderation_log(user_id=pia.id) if g.status == "blocked"
    ]
    assert [g.refusal_reason for g in refused] == ["over_cap"]
