"""Self-test of tests/fakediscord: a small, real discord.py bot driven end to end through it."""

from __future__ import annotations

import asyncio
import binascii
import io
import os
import struct
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.fakediscord import (
    FakeDiscord,
    InteractionFailed,
    fail_on_discord_errors,
    point_discord_py_at,
    running_bot,
    start_bot,
)

pytestmark = pytest.mark.asyncio


def tiny_png(width: int = 8, height: int = 6) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", binascii.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- the bot under test ------------------------------------------------------------------------


class RemixModal(discord.ui.Modal, title="Remix"):
    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label="Prompt", default="a fox", custom_id="prompt"
    )
    note: discord.ui.TextInput = discord.ui.TextInput(
        label="Note", required=False, custom_id="note"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            f"remix: {self.prompt.value} / {self.note.value!r}", ephemeral=True
        )


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    intro = discord.ui.TextDisplay("Tell us how it went")
    text: discord.ui.Label = discord.ui.Label(
        text="Feedback",
        component=discord.ui.TextInput(custom_id="text", style=discord.TextStyle.paragraph),
    )
    mood: discord.ui.Label = discord.ui.Label(
        text="Mood",
        component=discord.ui.Select(
            custom_id="mood",
            options=[
                discord.SelectOption(label="Happy", value="happy"),
                discord.SelectOption(label="Sad", value="sad"),
            ],
        ),
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            f"{self.text.component.value} / {self.mood.component.values}"
        )


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"reroll:(?P<gen>\d+)"):
    """A persistent button: works on old messages after a restart, routed by its custom_id alone."""

    def __init__(self, gen: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", custom_id=f"reroll:{gen}"))
        self.gen = gen

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match
    ) -> RerollButton:
        return cls(int(match["gen"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"reroll {self.gen} by {interaction.user.name}")


class ResultView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        button.disabled = True
        await interaction.response.edit_message(content="again!", view=self)

    @discord.ui.button(label="Remix", custom_id="remix")
    async def remix(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(RemixModal())

    @discord.ui.select(
        custom_id="size",
        options=[
            discord.SelectOption(label="Small", value="s"),
            discord.SelectOption(label="Large", value="l"),
        ],
    )
    async def size(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.send_message(f"size {select.values[0]}", ephemeral=True)


def build_commands(bot: SelfTestBot) -> list[app_commands.Command | app_commands.Group]:
    @app_commands.command(description="Make an image")
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        steps: app_commands.Range[int, 1, 50] = 4,
        guidance: float = 7.5,
        private: bool = False,
        aspect: Literal["square", "wide"] = "square",
        model: str = "tiny",
    ) -> None:
        await interaction.response.defer(thinking=True, ephemeral=private)
        embed = discord.Embed(
            title=prompt, description=f"steps={steps} guidance={guidance} aspect={aspect}"
        )
        embed.set_image(url="attachment://fox.png")
        view = ResultView().add_item(RerollButton(42))
        await interaction.followup.send(
            f"done by {interaction.user.mention}",
            file=discord.File(bot.png_path, "fox.png"),
            embed=embed,
            view=view,
        )

    @imagine.autocomplete("model")
    async def model_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=m, value=m)
            for m in ("tiny", "sd15", "sdxl")
            if m.startswith(current)
        ]

    @app_commands.command(description="Progress updates")
    async def progress(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        for step in (1, 2):
            await interaction.edit_original_response(content=f"step {step}/2")
        await interaction.edit_original_response(
            content="finished", attachments=[discord.File(bot.png_path, "a.png")]
        )

    @app_commands.command(description="A secret")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("for your eyes only", ephemeral=True)

    @app_commands.command(description="Open a modal with labels")
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @app_commands.command(description="Announce without pinging")
    async def announce(interaction: discord.Interaction) -> None:
        await interaction.channel.send(
            "@everyone hi", allowed_mentions=discord.AllowedMentions.none()
        )
        await interaction.response.send_message("sent", ephemeral=True)

    @app_commands.command(description="Answers too late")
    async def slow(interaction: discord.Interaction, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await interaction.response.send_message("late")
        except discord.HTTPException as exc:
            bot.failures.append(exc)

    @app_commands.command(description="Sends an empty message")
    async def blank(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.send_message()
        except discord.HTTPException as exc:
            bot.failures.append(exc)

    @app_commands.command(description="Follows up too late")
    async def later(interaction: discord.Interaction, delay: float) -> None:
        await interaction.response.defer()
        await asyncio.sleep(delay)
        try:
            await interaction.followup.send("later")
        except discord.HTTPException as exc:
            bot.failures.append(exc)

    @app_commands.command(description="Describe an upload")
    async def describe(interaction: discord.Interaction, image: discord.Attachment) -> None:
        data = await image.read()
        await interaction.response.send_message(
            f"{image.filename} {len(data)} bytes {image.width}x{image.height}",
            file=discord.File(io.BytesIO(data), "echo.png"),
        )

    mod = app_commands.Group(
        name="mod",
        description="Moderation",
        default_permissions=discord.Permissions(manage_messages=True),
    )

    @mod.command(description="Ban a user")
    async def ban(
        interaction: discord.Interaction, user: discord.Member, reason: str = "none"
    ) -> None:
        await interaction.response.send_message(
            f"banned {user.mention} ({reason})", allowed_mentions=discord.AllowedMentions.none()
        )

    words = app_commands.Group(name="words", description="Banned words", parent=mod)

    @words.command(name="add", description="Add a banned word")
    async def words_add(interaction: discord.Interaction, word: str) -> None:
        await interaction.response.send_message(f"added {word}", ephemeral=True)

    return [imagine, progress, feedback, secret, announce, slow, blank, later, describe, mod]


class SelfTestBot(commands.Bot):
    def __init__(self, guild_id: int, png_path: str) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.guild_id = guild_id
        self.png_path = png_path
        self.failures: list[discord.HTTPException] = []
        self.edits: list[tuple[str, str]] = []
        self.deleted: list[int] = []
        self.seen: list[str] = []  # content of member messages, as the bot received them

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RerollButton)
        guild = discord.Object(self.guild_id)
        for cmd in build_commands(self):
            self.tree.add_command(cmd, guild=guild)
        await self.tree.sync(guild=guild)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass  # discord.py sleeps 5 s before every non-initial IDENTIFY; skip that in tests

    async def on_message(self, message: discord.Message) -> None:
        if not message.author.bot:
            self.seen.append(message.content)

    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        self.edits.append((before.content, after.content))

    async def on_message_delete(self, message: discord.Message) -> None:
        self.deleted.append(message.id)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def png_path(tmp_path) -> str:
    path = tmp_path / "fox.png"
    path.write_bytes(tiny_png())
    return str(path)


@pytest_asyncio.fixture
async def fd() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake
        fake.check()


@pytest.fixture
def errors() -> Iterator[fail_on_discord_errors]:
    """Fail the test on ERROR records from discord.py or the fake; clear() expected ones."""
    with fail_on_discord_errors() as watcher:
        yield watcher


@pytest_asyncio.fixture
async def bot(
    fd: FakeDiscord, png_path: str, errors: fail_on_discord_errors
) -> AsyncIterator[SelfTestBot]:
    the_bot = SelfTestBot(fd.guild.id, png_path)
    async with running_bot(the_bot, fd):
        yield the_bot
    assert the_bot.is_closed()


# -- tests -------------------------------------------------------------------------------------


async def test_connects_syncs_and_caches_the_guild(fd: FakeDiscord, bot: SelfTestBot) -> None:
    guild = bot.get_guild(fd.guild.id)
    assert guild is not None and guild.get_channel(fd.channel.id).name == "general"
    assert bot.user.id == fd.bot_user.id and bot.application_id == fd.application_id
    names = {c["name"] for c in fd.commands(fd.guild)}
    assert names == {
        "imagine",
        "progress",
        "feedback",
        "secret",
        "announce",
        "slow",
        "blank",
        "later",
        "describe",
        "mod",
    }
    mod = fd.command("mod", fd.guild)
    assert [o["name"] for o in mod["options"]] == ["ban", "words"]
    fetched = await bot.tree.fetch_commands(guild=discord.Object(fd.guild.id))
    assert {c.name for c in fetched} == names and all(c.id for c in fetched)
    assert fd.gateway.identify_count == 1


async def test_imagine_defer_followup_button_modal_select(
    fd: FakeDiscord, bot: SelfTestBot
) -> None:
    alice, bob = fd.add_member("alice"), fd.add_member("bob")
    handle = await fd.invoke(
        alice, "imagine", {"prompt": "a fox", "steps": 8, "guidance": 5.5, "aspect": "wide"}
    )
    first = await handle.response()
    assert first.type == 5 and first.accepted and first.elapsed < 3

    msg = await handle.wait_for_message(lambda m: bool(m.attachments))
    assert (
        msg is handle.original is handle.followups[0]
    )  # the followup replaced the "thinking" message
    assert msg.history[0]["flags"] & 128 and not msg.loading and not msg.ephemeral
    assert msg.content == f"done by {alice.mention}" and alice.id in msg.pings.users
    assert (
        msg.embed["title"] == "a fox"
        and "steps=8 guidance=5.5 aspect=wide" in msg.embed["description"]
    )
    att = msg.attachments[0]
    assert (att.filename, att.content_type, att.size) == ("fox.png", "image/png", len(tiny_png()))
    assert msg.embed["image"]["url"] == att.url and msg.history[-1]["attachments"][0]["width"] == 8
    assert await fd.fetch_attachment(att) == tiny_png()
    assert [b["label"] for b in msg.buttons] == ["Again", "Remix", "Reroll"]
    assert msg in fd.messages(fd.channel)

    click = await fd.click(bob, msg, "again")
    assert (await click.response()).type == 7
    assert handle.original.content == "again!" and msg.find_component("again")["disabled"] is True
    assert [h["content"] for h in msg.history] == ["", f"done by {alice.mention}", "again!"]
    with pytest.raises(ValueError, match="disabled"):
        await fd.click(bob, msg, "again")

    remix = await fd.click(bob, msg, label="Remix")
    assert (await remix.response()).type == 9
    assert remix.modal["title"] == "Remix"
    submitted = await fd.submit_modal(bob, remix, {"note": "more red"})
    reply = await submitted.wait_for_message()
    assert reply.content == "remix: a fox / 'more red'" and reply.ephemeral
    assert (
        reply in fd.visible_to(bob)
        and reply not in fd.visible_to(alice)
        and reply not in fd.messages()
    )
    with pytest.raises(ValueError, match="required"):
        await fd.submit_modal(bob, remix, {"prompt": ""})

    picked = await fd.select(alice, msg, "size", ["l"])
    assert (await picked.wait_for_message()).content == "size l"


async def test_modal_with_labels_text_display_and_select(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    opened = await fd.invoke(alice, "feedback")
    assert (await opened.response()).type == 9
    assert [c["type"] for c in opened.modal["components"]] == [10, 18, 18]
    with pytest.raises(ValueError, match="required"):
        await fd.submit_modal(alice, opened, {"mood": ["sad"]})
    with pytest.raises(ValueError, match="only offers"):
        await fd.submit_modal(alice, opened, {"text": "ok", "mood": ["angry"]})
    submitted = await fd.submit_modal(alice, opened, {"text": "great", "mood": ["sad"]})
    assert (await submitted.wait_for_message()).content == "great / ['sad']"


async def test_persistent_button_survives_a_bot_restart(
    fd: FakeDiscord, png_path: str, errors
) -> None:
    alice, bob = fd.add_member("alice"), fd.add_member("bob")
    async with running_bot(SelfTestBot(fd.guild.id, png_path), fd):
        handle = await fd.invoke(alice, "imagine", {"prompt": "a fox"})
        result = await handle.wait_for_message(lambda m: bool(m.buttons))
    async with running_bot(SelfTestBot(fd.guild.id, png_path), fd):
        reroll = await fd.click(bob, result, "reroll:42")
        assert (await reroll.wait_for_message()).content == "reroll 42 by bob"
    assert fd.gateway.identify_count == 2


async def test_client_side_option_checks(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    with pytest.raises(ValueError, match="outside"):
        await fd.invoke(alice, "imagine", {"prompt": "x", "steps": 500})
    with pytest.raises(ValueError, match="required"):
        await fd.invoke(alice, "imagine", {"steps": 5})
    with pytest.raises(ValueError, match="not one of"):
        await fd.invoke(alice, "imagine", {"prompt": "x", "aspect": "round"})
    with pytest.raises(LookupError):
        await fd.invoke(alice, "paint", {})
    everything = await fd.autocomplete(
        alice, "imagine", {"prompt": "x"}, focused="model", timeout=5
    )
    assert [c["value"] for c in everything] == ["tiny", "sd15", "sdxl"]
    choices = await fd.autocomplete(
        alice, "imagine", {"prompt": "x", "model": "sd"}, focused="model"
    )
    assert [c["value"] for c in choices] == ["sd15", "sdxl"]


async def test_subcommands_groups_user_option_and_permissions(
    fd: FakeDiscord, bot: SelfTestBot
) -> None:
    moderator = fd.add_member("mo", permissions=1 << 13)  # manage messages
    alice, bob = fd.add_member("alice"), fd.add_member("bob")
    handle = await fd.invoke(moderator, "mod ban", {"user": bob, "reason": "spam"})
    assert (await handle.response()).type == 4
    msg = handle.original
    assert msg.content == f"banned {bob.mention} (spam)" and not msg.pings.any and msg.type == 20
    assert msg.interaction_metadata["user"]["id"] == str(moderator.id)

    words = await fd.invoke(moderator, "mod words add", {"word": "gore"})
    assert (await words.wait_for_message()).content == "added gore"
    with pytest.raises(PermissionError):
        await fd.invoke(alice, "mod ban", {"user": bob})
    overridden = await fd.invoke(alice, "mod ban", {"user": bob}, honor_default_permissions=False)
    assert (await overridden.wait_for_message()).content.startswith("banned")
    with pytest.raises(LookupError, match="needs a subcommand"):
        await fd.invoke(moderator, "mod words", {})


async def test_ephemeral_progress_edits(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    handle = await fd.invoke(alice, "progress")
    msg = await handle.wait_for_message(lambda m: m.content == "finished")
    assert msg.ephemeral and msg.visible_to == alice.id and msg not in fd.messages()
    assert [h["content"] for h in msg.history] == ["", "step 1/2", "step 2/2", "finished"]
    assert msg.attachments[0].filename == "a.png"

    secret = await fd.invoke(alice, "secret")
    note = await secret.wait_for_message()
    assert note.ephemeral and fd.visible_to(alice)[-1] is note


async def test_allowed_mentions_and_channel_messages(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    handle = await fd.invoke(alice, "announce")
    await handle.response()
    hi = await fd.wait_for_message(lambda m: m.content == "@everyone hi")
    assert not hi.pings.any and hi.history[0]["mention_everyone"] is False
    assert (
        hi.allowed_mentions == {"parse": [], "users": [], "roles": []}
        or hi.allowed_mentions["parse"] == []
    )

    channel = bot.get_channel(fd.channel.id)
    sent = await channel.send(
        f"@everyone look {alice.mention}"
    )  # no allowed_mentions: everything pings
    loud = fd.messages_by_id[sent.id]
    assert loud.pings.everyone and loud.pings.users == {alice.id}
    await sent.edit(content="quiet now", allowed_mentions=discord.AllowedMentions.none())
    assert [h["content"] for h in loud.history] == [f"@everyone look {alice.mention}", "quiet now"]
    assert not loud.pings.any
    fetched = await channel.fetch_message(sent.id)
    assert fetched.content == "quiet now"
    with pytest.raises(discord.HTTPException) as too_long:
        await sent.edit(content="x" * 2001)
    assert too_long.value.code == 50035 and loud.content == "quiet now" and len(loud.history) == 2
    await sent.delete()
    assert loud.deleted and loud not in fd.messages()
    await fd.wait_until(lambda: sent.id in bot.deleted, what="MESSAGE_DELETE to reach the bot")
    assert ("@everyone look " + alice.mention, "quiet now") in bot.edits
    history = [m.content async for m in channel.history(limit=10)]
    assert "quiet now" not in history and "@everyone hi" in history

    # Members' messages: without the message content intent the bot sees text only when mentioned.
    await fd.send_as(alice, "no mention")
    await fd.send_as(alice, f"{fd.bot_user.mention} hello")
    await fd.wait_until(lambda: len(bot.seen) == 2, what="two MESSAGE_CREATEs")
    assert bot.seen == ["", f"{fd.bot_user.mention} hello"]

    user = await bot.fetch_user(alice.id)
    await user.send("a DM")
    assert [m.content for m in fd.messages(fd.dm_channel(alice.user))] == ["a DM"]


async def test_nonce_is_enforced_for_a_few_minutes(fd: FakeDiscord, bot: SelfTestBot) -> None:
    """A repeated post with the same nonce and enforce_nonce returns the first message."""
    channel = bot.get_channel(fd.channel.id)
    first = await channel.send("once", nonce="e42")
    again = await channel.send("once more", nonce="e42")
    assert again.id == first.id
    assert [m.content for m in fd.messages() if m.content.startswith("once")] == ["once"]
    other = await channel.send("other", nonce="e43")
    assert other.id != first.id
    fd.nonce_window = 0  # minutes later: Discord has forgotten the nonce
    later = await channel.send("once", nonce="e42")
    assert later.id != first.id
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x", nonce="n" * 26)
    assert too_long.value.code == 50035


async def test_scripted_server_errors(fd: FakeDiscord, bot: SelfTestBot) -> None:
    """fd.fail: a 503 before the work, a 503 after it (the message exists), 500s retried."""
    channel = bot.get_channel(fd.channel.id)
    before = fd.fail("POST", "/messages$", 503)
    with pytest.raises(discord.DiscordServerError) as refused:
        await channel.send("lost", nonce="e50")
    assert refused.value.status == 503 and before.times == 0 and len(before.served) == 1
    assert "lost" not in [m.content for m in fd.messages()]
    fd.fail("POST", "/messages$", 503, after_commit=True)
    with pytest.raises(discord.DiscordServerError):
        await channel.send("made", nonce="e51")
    made = [m for m in fd.messages() if m.content == "made"]
    assert len(made) == 1
    # Sent again with its nonce, it is answered with the message that already exists.
    assert (await channel.send("made", nonce="e51")).id == made[0].id
    # discord.py retries a 500 itself (after a second); the nonce keeps it to one message.
    fd.fail("POST", "/messages$", 500, after_commit=True)
    retried = await channel.send("retried", nonce="e52")
    assert [m.id for m in fd.messages() if m.content == "retried"] == [retried.id]
    edit = fd.fail("PATCH", "/messages/\\d+$", 502)
    await retried.edit(content="edited")  # 502 is retried by discord.py too
    assert edit.served and fd.messages_by_id[retried.id].content == "edited"


async def test_deadline_and_token_expiry(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    fd.response_deadline = 0.2
    slow = await fd.invoke(alice, "slow", {"delay": 0.4})
    with pytest.raises(InteractionFailed):
        await slow.response()
    await fd.wait_until(lambda: bot.failures, what="the late callback to fail")
    assert isinstance(bot.failures[0], discord.NotFound) and bot.failures[0].code == 10062

    fd.response_deadline, fd.token_lifetime = 3.0, 0.3
    later = await fd.invoke(alice, "later", {"delay": 0.5})
    assert (await later.response()).type == 5
    await fd.wait_until(lambda: len(bot.failures) == 2, what="the expired followup to fail")
    assert bot.failures[1].status == 401 and bot.failures[1].code == 50027

    blank = await fd.invoke(alice, "blank")
    with pytest.raises(InteractionFailed, match="Cannot send an empty message"):
        await blank.response()
    assert bot.failures[2].code == 50006


async def test_attachment_option(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    upload = fd.upload(tiny_png(4, 3), "in.png")
    handle = await fd.invoke(alice, "describe", {"image": upload})
    reply = await handle.wait_for_message()  # a type 4 callback sent as multipart with a file
    assert reply.content == f"in.png {upload.size} bytes 4x3"
    assert await fd.fetch_attachment(reply.attachments[0]) == upload.data


async def test_resume_reconnect_and_invalid_session(fd: FakeDiscord, bot: SelfTestBot) -> None:
    alice = fd.add_member("alice")
    await fd.disconnect_bot()
    during = await fd.invoke(alice, "secret")  # sent while the bot is away: replayed on RESUME
    assert (await during.wait_for_message()).ephemeral
    assert fd.gateway.resume_count == 1

    fd.request_reconnect()
    await fd.wait_until(
        lambda: fd.gateway.resume_count == 2 and fd.gateway.live_session, what="RESUME after op 7"
    )
    assert fd.gateway.connections[0].path == "/resume"

    fd.invalidate_session()
    await fd.wait_until(
        lambda: fd.gateway.identify_count == 2 and fd.gateway.live_session, what="re-IDENTIFY"
    )
    await fd.wait_until(lambda: bot.is_ready() and bot.get_guild(fd.guild.id), what="ready again")
    assert (
        await (await fd.invoke(alice, "secret")).wait_for_message()
    ).content == "for your eyes only"


async def test_unknown_routes_are_loud(
    fd: FakeDiscord, bot: SelfTestBot, errors: fail_on_discord_errors
) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/applications/@me/emojis"))
    assert len(errors.records) == 1 and "unhandled route" in errors.records[0].getMessage()
    assert fd.problems and "emojis" in fd.problems[0]
    errors.clear()
    fd.problems.clear()


async def test_bad_token_fails_login(fd: FakeDiscord, png_path: str) -> None:
    the_bot = SelfTestBot(fd.guild.id, png_path)
    with point_discord_py_at(fd), pytest.raises(discord.LoginFailure):
        await start_bot(the_bot, fd, token="wrong")
    await the_bot.close()


async def test_bot_in_another_process(fd: FakeDiscord) -> None:
    """The server assumes nothing about where the bot runs: drive a bot in a subprocess."""
    script = textwrap.dedent(
        """
        import os, discord, yarl
        discord.http.Route.BASE = os.environ["DISCORD_API_BASE"]
        gateway = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway
        client = discord.Client(intents=discord.Intents.default())
        tree = discord.app_commands.CommandTree(client)
        guild = discord.Object(int(os.environ["GUILD_ID"]))

        @tree.command(guild=guild, description="Ping")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")
            await client.close()

        @client.event
        async def setup_hook() -> None:
            await tree.sync(guild=guild)

        client.run(os.environ["DISCORD_TOKEN"], log_handler=None)
        """
    )
    env = {
        **os.environ,
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DISCORD_TOKEN": fd.token,
        "GUILD_ID": str(fd.guild.id),
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
    try:
        await fd.wait_for_commands("ping", guild=fd.guild, timeout=30)
        await fd.wait_for_bot(timeout=30)
        handle = await fd.invoke(fd.add_member("alice"), "ping")
        assert (await handle.wait_for_message(timeout=10)).content == "pong"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
