"""Remix culture end to end: Remix modal, Vary, Upscale, restarts, /info, /history, delete."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
from PIL import Image

from bot.domain import JobOrigin
from inference.engine import read_png_recipe
from tests.bot.e2e import button, queued_id, result, running_easel

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def imagine(fd, member, **options):
    gen_id = await queued_id(await fd.invoke(member, "imagine", options), timeout=10)
    return gen_id, await result(fd, gen_id)


async def test_remix_button_modal_keeps_seed_and_credits_author(fd, bot):
    """B remixes A's image: A's seed, B's prompt, credit line, parent link."""
    alice, bob = fd.add_member("alice"), fd.add_member("bob")
    gen_id, message = await imagine(fd, alice, prompt="a castle at dawn", seed=4242, negative="fog")
    opened = await fd.click(bob, message, button(message, "✏️"))
    response = await opened.response()
    assert response.type == 9 and opened.modal
    values = {c["custom_id"]: c.get("value") for c in _inputs(opened.modal)}
    assert "a castle at dawn" in values.values() and "fog" in values.values()
    prompt_id = next(k for k, v in values.items() if v == "a castle at dawn")
    submitted = await fd.submit_modal(bob, opened, {prompt_id: "a castle at dusk"})
    child_id = await queued_id(submitted, timeout=10)
    child_message = await result(fd, child_id)
    child = await bot.repos.generations.get(child_id)
    assert child.user_id == bob.id and child.parent_id == gen_id and child.kind == "remix"
    assert child.recipe["seed"] == 4242 and child.prompt == "a castle at dusk"
    assert child.negative == "fog"
    assert f"remix of #{gen_id} by <@{alice.id}>" in child_message.content
    assert child_message.pings.users == {bob.id}  # the author of the remix, not alice
    assert read_png_recipe(child_message.attachments[0].data)["seed"] == 4242


def _inputs(modal: dict) -> list[dict]:
    found = []
    for row in modal.get("components", []):
        for item in [row.get("component"), *row.get("components", [])]:
            if item and item.get("type") == 4:
                found.append(item)
    return found


async def test_vary_and_upscale_sizes(fd, bot):
    """🔀 keeps the size (new seed, image-to-image); ⬆️ doubles it."""
    carol = fd.add_member("carol")
    gen_id, message = await imagine(fd, carol, prompt="a cat", count=2, aspect="landscape", steps=3)
    size = Image.open(io.BytesIO(message.attachments[1].data)).size
    vary_id = await queued_id(await fd.click(carol, message, button(message, "V2")), timeout=10)
    vary = await result(fd, vary_id)
    assert Image.open(io.BytesIO(vary.attachments[0].data)).size == size
    vary_gen = await bot.repos.generations.get(vary_id)
    assert vary_gen.parent_id == gen_id and vary_gen.parent_image_index == 1
    assert vary_gen.recipe["mode"] == "img2img"
    up_id = await queued_id(await fd.click(carol, message, button(message, "U1")), timeout=10)
    up = await result(fd, up_id)
    assert Image.open(io.BytesIO(up.attachments[0].data)).size == (size[0] * 2, size[1] * 2)
    assert f"upscale of #{gen_id} (image 1)" in up.content


async def test_buttons_work_after_restart(fd, worker, tiny_model_dir, tmp_path):
    """Persistent buttons: a result posted before a restart can be rerolled after it."""
    dave = fd.add_member("dave")
    async with running_easel(fd, worker, tmp_path, tiny_model_dir):
        gen_id, message = await imagine(fd, dave, prompt="a windmill", seed=9)
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as restarted:
        child_id = await queued_id(await fd.click(dave, message, button(message, "🎲")), timeout=10)
        await result(fd, child_id)
        assert (await restarted.repos.generations.get(child_id)).parent_id == gen_id


async def test_info_shows_three_generation_chain(fd, bot):
    """/info of a grandchild lists its parent chain to the root and the recipe."""
    erin, finn = fd.add_member("erin"), fd.add_member("finn")
    root_id, root = await imagine(fd, erin, prompt="a forest", seed=1)
    mid_id = await queued_id(await fd.click(finn, root, button(root, "🎲")), timeout=10)
    mid = await result(fd, mid_id)
    leaf_id = await queued_id(await fd.click(erin, mid, button(mid, "V1")), timeout=10)
    await result(fd, leaf_id)
    # The message's link is recorded just after the message is posted (reads no longer queue
    # behind writes, so /info can run in between).
    while (await bot.repos.generations.get(leaf_id)).message_id is None:
        await asyncio.sleep(0.02)
    info = await fd.invoke(finn, "info", {"generation": leaf_id})
    embed = (await info.response()).message.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert f"#{mid_id} by <@{finn.id}>" in fields["Made from"]
    assert f"#{root_id} by <@{erin.id}>" in fields["Made from"]
    assert "Seed" in fields and "Model" in fields and "jump to the result" in fields["Message"]
    root_info = await fd.invoke(erin, "info", {"generation": root_id})
    root_fields = {
        f["name"]: f["value"] for f in (await root_info.response()).message.embeds[0]["fields"]
    }
    assert f"#{mid_id} reroll by <@{finn.id}>" in root_fields["Remixed into"]


async def test_history_pages(fd, bot):
    """/history lists newest first, ten a page, with Older/Newer buttons."""
    gus = fd.add_member("gus")
    for i in range(12):
        await bot.repos.generations.create(
            bot.services.derive.new_request(prompt=f"sketch {i}", seed=i),
            JobOrigin(user_id=gus.id, guild_id=fd.guild.id, channel_id=fd.channel.id),
        )
    handle = await fd.invoke(gus, "history", {})
    page1 = (await handle.response()).message
    text = page1.embeds[0]["description"]
    assert text.index("sketch 11") < text.index("sketch 2")
    assert "sketch 1 " not in text and "Page 1 of 2" in page1.embeds[0]["footer"]["text"]
    older = await fd.click(gus, page1, button(page1, "Older ▶"))
    await older.response()
    page2 = fd.messages_by_id[page1.id]
    assert "sketch 0" in page2.embeds[0]["description"]
    assert "Page 2 of 2" in page2.embeds[0]["footer"]["text"]
    other = await fd.invoke(fd.add_member("hana"), "history", {"user": gus, "page": 2})
    assert "sketch 1 " in (await other.response()).message.embeds[0]["description"]


async def test_delete_by_stranger_refused_by_author_allowed(fd, bot):
    """🗑 only for the author (or a moderator); the log keeps the record."""
    ivy, jack = fd.add_member("ivy"), fd.add_member("jack")
    gen_id, message = await imagine(fd, ivy, prompt="a boat")
    stranger = await fd.click(jack, message, button(message, "🗑️"))
    assert "Only the author" in (await stranger.response()).message.content
    assert not fd.messages_by_id[message.id].deleted
    own = await fd.click(ivy, message, button(message, "🗑️"))
    await own.response()
    await fd.wait_until(lambda: fd.messages_by_id[message.id].deleted)
    gen = await bot.repos.generations.get(gen_id)
    assert gen.deleted and gen.deleted_by == ivy.id
    again = await fd.invoke(jack, "remix", {"generation": gen_id, "prompt": "a ship"})
    assert "was deleted" in (await again.response()).message.content


async def test_remix_without_changes_reproduces_the_bytes(fd, bot):
    """/remix with the same prompt and no overrides gives byte-identical images."""
    kim = fd.add_member("kim")
    gen_id, message = await imagine(fd, kim, prompt="a red kite", seed=321)
    handle = await fd.invoke(kim, "remix", {"generation": gen_id, "prompt": "a red kite"})
    child_id = await queued_id(handle, timeout=10)
    child = await result(fd, child_id)
    assert child.attachments[0].data == message.attachments[0].data


async def test_remix_of_unknown_generation_is_refused(fd, bot):
    """An unknown id gets a clear sentence."""
    lee = fd.add_member("lee")
    handle = await fd.invoke(lee, "remix", {"generation": 999999, "prompt": "x"})
    assert "There is no image #999999" in (await handle.response()).message.content


async def test_remix_of_withheld_image_is_refused(fd, bot):
    """An image the safety checker flagged cannot be remixed, varied or upscaled."""
    from inference.request import GeneratedImage, GenerationResult

    mia = fd.add_member("mia")
    request = bot.services.derive.new_request(prompt="something flagged", seed=3)
    gen = await bot.repos.generations.create(
        request, JobOrigin(user_id=mia.id, guild_id=fd.guild.id, channel_id=fd.channel.id)
    )
    png = (await bot.worker.run([gen.request]))[0].images[0].png
    await bot.repos.generations.save_result(
        gen.id,
        GenerationResult(
            job_id=str(gen.id),
            images=[GeneratedImage(png=png, seed=3, index=0, nsfw=True, width=64, height=64)],
        ),
    )
    handle = await fd.invoke(mia, "remix", {"generation": gen.id, "prompt": "again"})
    message = (await handle.response()).message
    assert message.ephemeral and "withheld for moderator review" in message.content


async def test_undelivered_result_is_posted_once_after_restart(
    fd, worker, tiny_model_dir, tmp_path, monkeypatch
):
    """A result Discord kept refusing until the bot stopped is posted by the next start, and
    never twice."""
    import discord

    from bot.ui.delivery import Delivery

    nina = fd.add_member("nina")
    real_post = Delivery.post_result
    tries = []

    async def discord_hiccup(self, gen, result, *, nonce=None):
        tries.append(gen.id)
        raise discord.DiscordServerError(_Response(503), "Service Unavailable")

    monkeypatch.setattr(Delivery, "post_result", discord_hiccup)
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as first:
        first.delivery.retry_delays = (0.05,)
        gen_id = await queued_id(
            await fd.invoke(nina, "imagine", {"prompt": "a lost letter"}), timeout=10
        )
        await fd.wait_until(lambda: tries.count(gen_id) >= 3, timeout=30)  # retried, not dropped
        assert not (await first.repos.generations.get(gen_id)).delivered
    monkeypatch.setattr(Delivery, "post_result", real_post)
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as second:
        message = await result(fd, gen_id)
        assert f"<@{nina.id}>" in message.content
        for _ in range(100):
            if (await second.repos.generations.get(gen_id)).delivered:
                break
            await asyncio.sleep(0.05)
    async with running_easel(fd, worker, tmp_path, tiny_model_dir):
        await asyncio.sleep(0.5)
    posted = [m for m in fd.messages() if any(e.get("title") == f"#{gen_id}" for e in m.embeds)]
    assert len(posted) == 1


class _Response:
    """Just enough of an aiohttp response for discord.HTTPException."""

    def __init__(self, status: int):
        self.status = status
        self.reason = "Service Unavailable"


async def test_ids_from_another_server_are_unknown(fd, bot):
    """A generation of one server cannot be looked up, remixed or deleted from another."""
    from types import SimpleNamespace

    from bot.domain import UserError

    owner = fd.add_member("quinn")
    gen_id, _ = await imagine(fd, owner, prompt="a local secret")
    elsewhere = SimpleNamespace(guild_id=fd.guild.id + 1)
    with pytest.raises(UserError, match=f"There is no image #{gen_id}"):
        await bot.services.derive.here(elsewhere.guild_id, gen_id)
    with pytest.raises(UserError, match=f"There is no image #{gen_id}"):
        await bot.services.derive.source(elsewhere.guild_id, gen_id)
    assert (await bot.services.derive.here(fd.guild.id, gen_id)).id == gen_id


FORM_KEYS = (
    "type",
    "required",
    "min_value",
    "max_value",
    "min_length",
    "max_length",
    "choices",
    "autocomplete",
)


async def test_remix_and_imagine_forms_agree(fd, bot):
    """/remix offers /imagine's options in /imagine's order, with the same bounds and choices
    from the settings, after the image it remixes; Discord's form keeps members inside them."""
    from inference.request import MAX_SEED

    # An upload (image, strength) is /imagine's own: a remix starts from its source.
    imagine_form = [
        o
        for o in fd.command("imagine", fd.guild)["options"]
        if o["name"] not in ("image", "strength")
    ]
    remix_form = fd.command("remix", fd.guild)["options"]
    assert remix_form[0]["name"] == "generation" and remix_form[0]["required"]
    assert [o["name"] for o in remix_form[1:]] == [o["name"] for o in imagine_form]
    for mine, theirs in zip(remix_form[1:], imagine_form, strict=True):
        assert {k: mine.get(k) for k in FORM_KEYS} == {k: theirs.get(k) for k in FORM_KEYS}
    g = bot.settings.generation
    form = {o["name"]: o for o in remix_form}
    assert (form["seed"]["min_value"], form["seed"]["max_value"]) == (0, MAX_SEED)
    assert (form["steps"]["min_value"], form["steps"]["max_value"]) == (g.min_steps, g.max_steps)
    assert (form["guidance"]["min_value"], form["guidance"]["max_value"]) == (
        g.min_guidance,
        g.max_guidance,
    )
    assert form["prompt"]["max_length"] == min(g.max_prompt_chars, 6000)
    assert form["negative"]["max_length"] == min(g.max_prompt_chars, 6000)
    assert [c["value"] for c in form["sampler"]["choices"]] == list(g.samplers)
    assert "autocomplete" not in form["sampler"] or not form["sampler"]["autocomplete"]
    assert form["count"]["max_value"] == g.max_count

    alice, bob = fd.add_member("alice"), fd.add_member("bob")
    gen_id, _ = await imagine(fd, alice, prompt="a lighthouse", seed=77)
    for bad in (
        {"steps": g.max_steps + 1},
        {"guidance": g.max_guidance + 1},
        {"seed": MAX_SEED + 1},
        {"sampler": "Heun"},
        {"prompt": "x" * (min(g.max_prompt_chars, 6000) + 1)},
    ):
        with pytest.raises(ValueError):
            await fd.invoke(bob, "remix", {"generation": gen_id, "prompt": "a tower", **bad})
    handle = await fd.invoke(
        bob, "remix", {"generation": gen_id, "prompt": "a tower", "count": 2, "aspect": "wide"}
    )
    child = await bot.repos.generations.get(await queued_id(handle, timeout=10))
    posted = await result(fd, child.id)
    assert len(posted.attachments) == 2 and child.recipe["seed"] == 77
    assert child.recipe["width"] > child.recipe["height"]


async def test_generation_options_suggest_recent_images(fd, bot):
    """Every `generation` option autocompletes `#N — prompt…`: the member's own recent images
    (a number typed finds anyone's to remix or look at), anyone's for a moderator on /info
    and /delete, and only the member's waiting or running jobs on /cancel."""
    for command in ("remix", "info", "delete", "cancel"):
        (option,) = [
            o for o in fd.command(command, fd.guild)["options"] if o["name"] == "generation"
        ]
        assert option.get("autocomplete") is True, command
    ivy, jon = fd.add_member("ivy"), fd.add_member("jon")
    teacher = fd.add_member("teacher", permissions=1 << 13)
    long_prompt = "a **bold** lighthouse \u202eat night " + "with many details " * 8
    first, _ = await imagine(fd, ivy, prompt="a quiet harbour")
    second, _ = await imagine(fd, ivy, prompt=long_prompt)
    theirs, _ = await imagine(fd, jon, prompt="a windmill")

    def ids(choices) -> list[int]:
        return [c["value"] for c in choices]

    mine = await fd.autocomplete(ivy, "remix", {}, focused="generation")
    assert ids(mine)[:2] == [second, first] and theirs not in ids(mine)
    assert all(len(c["name"]) <= 100 for c in mine)
    assert mine[1]["name"] == f"#{first} — a quiet harbour"
    assert mine[0]["name"].startswith(f"#{second} — a **bold** lighthouse at night with")
    assert mine[0]["name"].endswith("…") and "\u202e" not in mine[0]["name"]
    typed = await fd.autocomplete(ivy, "remix", {"generation": "harb"}, focused="generation")
    assert ids(typed) == [first]
    by_number = await fd.autocomplete(
        ivy, "info", {"generation": f"#{theirs}"}, focused="generation"
    )
    assert theirs in ids(by_number)
    own_only = await fd.autocomplete(ivy, "delete", {}, focused="generation")
    assert theirs not in ids(own_only) and {first, second} <= set(ids(own_only))
    anyones = await fd.autocomplete(teacher, "delete", {}, focused="generation")
    assert {first, second, theirs} <= set(ids(anyones))
    refused = await bot.repos.generations.log_refusal(
        bot.services.derive.new_request(prompt="a refused kite"),
        JobOrigin(user_id=jon.id, guild_id=fd.guild.id, channel_id=fd.channel.id),
        reason="bad_input",
        message="x",
    )
    assert refused.id in ids(await fd.autocomplete(teacher, "info", {}, focused="generation"))
    assert refused.id not in ids(await fd.autocomplete(jon, "info", {}, focused="generation"))

    assert await fd.autocomplete(ivy, "cancel", {}, focused="generation") == []
    slow = await queued_id(
        await fd.invoke(ivy, "imagine", {"prompt": "a slow owl", "steps": 50, "count": 4}),
        timeout=10,
    )
    waiting = await queued_id(
        await fd.invoke(ivy, "imagine", {"prompt": "a patient owl"}), timeout=10
    )
    jobs = await fd.autocomplete(ivy, "cancel", {}, focused="generation")
    assert ids(jobs) == [slow, waiting]
    assert re.fullmatch(rf"#{waiting} — a patient owl \((position \d+|running)\)", jobs[1]["name"])
    assert await fd.autocomplete(jon, "cancel", {}, focused="generation") == []
    patient = await fd.autocomplete(ivy, "cancel", {"generation": "patient"}, focused="generation")
    assert ids(patient) == [waiting]
    await (await fd.invoke(ivy, "cancel", {})).response()
