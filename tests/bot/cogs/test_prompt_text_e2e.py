"""A member's prompt is shown as typed everywhere it appears: the status line, the result, its
recipe embed, /info, /history, /queue, the moderators' log channel and /mod log. The fake
Discord's markdown model (tests/fakediscord/markdown.py) says what a reader sees."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.domain import JobOrigin
from inference.request import GenerationRequest
from tests.bot.e2e import running_easel
from tests.fakediscord import (
    FakeChannel,
    FakeDiscord,
    FakeMember,
    bidi_trouble,
    fail_on_discord_errors,
    render,
)
from tests.fakediscord.markdown import BIDI_FORMAT

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_MESSAGES = 1 << 13
# Markdown, every <…> chip, a masked link, a bare link, right-to-left letters and an override.
PROMPT = "# **b** __u__ ||s|| `c` <t:0> </imagine:1> [x](http://e.example) שלום \u202eevil"
NEGATIVE = "> q\n- l\n1. one\n-# sub _i_ *i* ~~s~~ \\*e\\*"


@dataclass
class World:
    fd: FakeDiscord
    bot: object
    student: FakeMember
    mod: FakeMember
    log_channel: FakeChannel


@pytest_asyncio.fixture(loop_scope="module")
async def world(worker, tiny_model_dir, tmp_path):
    async with FakeDiscord() as fd:
        log_channel = fd.add_channel("mod-log")
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(
                fd,
                worker,
                tmp_path,
                tiny_model_dir,
                EASEL_DISCORD_LOG_CHANNEL_ID=str(log_channel.id),
            ) as bot:
                yield World(
                    fd,
                    bot,
                    fd.add_member("student"),
                    fd.add_member("teacher", permissions=MANAGE_MESSAGES),
                    log_channel,
                )


def as_typed(text: str, *, inline: bool) -> str:
    """What a reader should see of a member's text: every character as typed (bidirectional
    controls are invisible; inline places show it on one line)."""
    shown = "".join(ch for ch in text if ch not in BIDI_FORMAT)
    return shown.replace("\n", " ") if inline else shown


def assert_literal(markdown: str, typed: str, *, where: str, inline=True, allowed=frozenset()):
    """`typed` is shown in `markdown` character for character (or its start, where the place
    cuts it with "…"), as plain text: no formatting but `allowed`, no mention, chip or link;
    nothing in the message looks like @everyone, its only masked links are Easel's own, and no
    directional control can reorder the text around it."""
    expected = as_typed(typed, inline=inline)
    shown = [s for s in render(markdown) if s.char not in BIDI_FORMAT]
    text = "".join(s.char for s in shown)
    start, length = text.find(expected), len(expected)
    if start < 0:  # cut to fit: the longest start of it followed by the ellipsis
        for length in range(len(expected) - 1, 19, -1):
            start = text.find(expected[:length] + "…")
            if start >= 0:
                break
    assert start >= 0, f"{where}: {expected!r} is not shown as typed in {text!r}"
    odd = {
        (s.char, s.kind, tuple(sorted(s.marks)))
        for s in shown[start : start + length]
        if s.kind != "text" or not s.marks <= allowed
    }
    assert not odd, f"{where}: shown with formatting or as tokens: {sorted(odd)}"
    assert not any(s.kind == "everyone" for s in shown), where
    assert masked_links(shown) <= EASELS_LINKS, f"{where}: {masked_links(shown)}"
    assert bidi_trouble(markdown) is None, f"{where}: {bidi_trouble(markdown)}"


# The masked links Easel writes itself (to its own result messages).
EASELS_LINKS = {"open", "message", "jump to the result"}


def masked_links(shown) -> set[str]:
    """The labels of the masked links in a rendered message."""
    labels, current = set(), ""
    for s in [*shown, None]:
        if s is not None and s.kind == "masked_link":
            current += s.char
        elif current:
            labels.add(current)
            current = ""
    return labels


def field(embed: dict, name: str) -> str:
    return next(f["value"] for f in embed.get("fields") or [] if f["name"] == name)


async def ask(w: World, member, command: str, options=None):
    handle = await w.fd.invoke(member, command, options or {})
    await handle.response()
    return await handle.wait_for_message(lambda m: not m.loading, timeout=10)


async def test_a_prompt_is_shown_as_typed_everywhere(world):
    """Markdown, <t:…> and </cmd:…> chips, masked links and a right-to-left override in a
    prompt are shown literally in every message Easel writes, for members and moderators."""
    w = world
    fd = w.fd
    handle = await fd.invoke(w.student, "imagine", {"prompt": PROMPT, "negative": NEGATIVE})
    await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    gen_id = int(status.content.split("**#")[1].split("**")[0])
    assert_literal(status.content, PROMPT, where="status line")

    result = await fd.wait_for_message(
        lambda m: not m.ephemeral and any(e.get("title") == f"#{gen_id}" for e in m.embeds),
        timeout=30,
    )
    assert_literal(result.content, PROMPT, where="result", allowed=frozenset({"bold"}))
    embed = result.embeds[0]
    assert_literal(embed["description"], PROMPT, where="recipe", inline=False)
    assert_literal(field(embed, "Negative"), NEGATIVE, where="recipe negative", inline=False)

    info = (await ask(w, w.student, "info", {"generation": gen_id})).embeds[0]
    assert_literal(info["description"], PROMPT, where="/info", inline=False)
    assert_literal(field(info, "Negative"), NEGATIVE, where="/info negative", inline=False)
    assert_literal(field(info, "Reproduce"), PROMPT, where="/info reproduce")

    history = (await ask(w, w.student, "history")).embeds[0]
    assert_literal(history["description"], PROMPT, where="/history")

    def queued_line(m) -> bool:
        return f"queued #{gen_id} " in (m.content or "")

    line = await fd.wait_for_message(queued_line, channel=w.log_channel, timeout=10)
    assert_literal(line.content, PROMPT, where="log channel")

    log = (await ask(w, w.mod, "mod log", {"user": w.student})).embeds[0]
    assert_literal(log["description"], PROMPT, where="/mod log", allowed=frozenset({"quote"}))


async def test_queue_lists_a_waiting_prompt_as_typed(world):
    """/queue shows a waiting job's prompt literally."""
    w = world
    slow = await w.fd.invoke(w.student, "imagine", {"prompt": "slow", "steps": 50, "count": 4})
    await slow.response()
    waiting = await w.fd.invoke(w.student, "imagine", {"prompt": PROMPT})
    await waiting.response()
    answer = await ask(w, w.student, "queue")
    assert_literal(answer.content, PROMPT, where="/queue")
    await ask(w, w.student, "cancel")


@pytest.mark.parametrize(
    "prompt, token",
    [("@everyone_ party", "@everyone"), ("x@herex", "@here"), ("a fox", "@here")],
)
async def test_mentions_glued_to_words_are_refused_and_not_shown_as_mentions(world, prompt, token):
    """`@everyone_` and `x@herex` (in the prompt or the negative) are refused like a plain
    @everyone; the refusal and the moderators' line show the token, not a mention."""
    w = world
    options = {"prompt": prompt} if prompt != "a fox" else {"prompt": prompt, "negative": "x@here"}
    answer = (await (await w.fd.invoke(w.student, "imagine", options)).response()).message
    assert answer.ephemeral and "cannot contain mentions" in answer.content
    assert token in answer.content
    assert not any(s.kind == "everyone" for s in render(answer.content))

    def refusal(m) -> bool:
        return "refused (bad input)" in (m.content or "") and token in m.content

    line = await w.fd.wait_for_message(refusal, channel=w.log_channel, timeout=10)
    assert not any(s.kind == "everyone" for s in render(line.content))


async def test_mentions_logged_before_the_check_are_shown_as_text(world):
    """A prompt already in the log with mention-looking text (from before `@everyone_` was
    refused) is shown without anything that looks like a mention, to members and moderators."""
    w = world
    old = "old @everyone_ and x@herex and <@123456789012345678> in <#1>"
    gen = await w.bot.repos.generations.create(
        GenerationRequest(prompt=old, width=64, height=64),
        JobOrigin(user_id=w.student.id, guild_id=w.fd.guild.id, channel_id=w.fd.channel.id),
    )
    await w.bot.repos.generations.mark_cancelled(gen.id)  # not a job for this run
    info = (await ask(w, w.student, "info", {"generation": gen.id})).embeds[0]
    assert_literal(info["description"], old, where="/info", inline=False)
    log = (await ask(w, w.mod, "mod log", {"contains": "old @"})).embeds[0]
    assert_literal(log["description"], old, where="/mod log", allowed=frozenset({"quote"}))


async def test_banned_words_with_backticks_are_listed_as_typed():
    """A banned word holding ``` cannot end /mod words list's code block and format the rest."""
    from bot.cogs.moderation.pages import words_message

    words = ["kraken", "a```**b** <t:0>"]
    content = words_message(words)["content"]
    for word in words:
        assert_literal(content, word, where="/mod words list")
