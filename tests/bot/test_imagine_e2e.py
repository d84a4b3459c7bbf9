"""/imagine end to end: the real bot, the fake Discord, the tiny model in a real worker."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from PIL import Image

from inference.engine import EngineConfig, read_png_recipe
from inference.worker import Worker
from tests.bot.e2e import button, running_easel
from tests.fakediscord import FakeDiscord, fail_on_discord_errors

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir):
    async with Worker(EngineConfig(model=tiny_model_dir, device="cpu")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def world(worker, tiny_model_dir, tmp_path):
    async with FakeDiscord() as fd:
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(fd, worker, tmp_path, tiny_model_dir) as bot:
                yield fd, bot


def result_of(fd, gen_id: int):
    def find(message):
        return any(e.get("title") == f"#{gen_id}" for e in message.embeds) and \
            not message.ephemeral
    return find


async def test_startup_syncs_commands_with_options(world):
    """Commands are synced to the guild with the options, bounds and choices expected."""
    fd, bot = world
    names = {c["name"] for c in fd.commands(fd.guild)}
    assert {"imagine", "queue", "cancel"} <= names
    imagine = fd.command("imagine", fd.guild)
    options = {o["name"]: o for o in imagine["options"]}
    assert list(options) == ["prompt", "negative", "seed", "steps", "guidance", "aspect",
                             "count", "sampler"]
    assert options["prompt"]["required"] is True
    assert options["steps"]["max_value"] == bot.settings.generation.max_steps
    assert options["count"]["max_value"] == 4
    assert [c["value"] for c in options["aspect"]["choices"]] == [
        "square", "portrait", "landscape", "wide", "tall"]
    assert [c["value"] for c in options["sampler"]["choices"]] == list(
        bot.settings.generation.samplers)


async def test_imagine_posts_result_with_images_embed_and_buttons(world):
    """An answer within the deadline, then a channel message with PNGs, recipe and buttons."""
    fd, bot = world
    alice = fd.add_member("alice")
    handle = await fd.invoke(alice, "imagine", {"prompt": "a red fox", "seed": 1234,
                                                "count": 2, "aspect": "wide"})
    first = await handle.response()
    assert first.elapsed < 3.0
    status = await handle.wait_for_message(lambda m: "#" in (m.content or ""))
    assert status.ephemeral and "a red fox" in status.content
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
    # The author's status message ends with a link to the result.
    await fd.wait_until(lambda: "done" in (handle.original.content or ""), timeout=10)
    # Progress edits were shown on the way.
    contents = [h.get("content") or "" for h in handle.original.history]
    assert any("step" in c for c in contents) or any("queued" in c for c in contents)


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
    refused = await bot.store.moderation_log(user_id=bob.id)
    assert len(refused) == 3 and {g.status for g in refused} == {"blocked"}


async def test_everyone_in_prompt_pings_nobody(world):
    """A prompt with @everyone and a role mention never pings anyone but the author."""
    fd, bot = world
    carol = fd.add_member("carol")
    role = fd.add_role("students", mentionable=True)
    handle = await fd.invoke(carol, "imagine", {"prompt": f"@everyone <@&{role.id}> party"})
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""))
    gen_id = int(status.content.split("**#")[1].split("**")[0])
    result = await fd.wait_for_message(result_of(fd, gen_id), timeout=30)
    assert not result.pings.everyone and not result.pings.roles
    assert result.pings.users == {carol.id}
    for message in fd.messages(include_deleted=True):
        assert not message.pings.everyone and not message.pings.roles
