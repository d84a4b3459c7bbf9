"""/mod end to end: the real bot and the fake Discord, a moderator and a regular member.

One worker process for the module, on the tiny model whose safety checker flags every image:
the moderation paths (withheld, spoilered, reviewed, released, removed) need flagged images, and
nothing here needs an unflagged one (the plain path is tested in test_imagine_e2e.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pytest
import pytest_asyncio
from PIL import Image

from bot.db.export import EXPORT_COLUMNS
from inference.engine import EngineConfig
from inference.worker import Worker
from tests.bot.e2e import button, running_easel
from tests.fakediscord import FakeChannel, FakeDiscord, FakeMember, fail_on_discord_errors

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_MESSAGES = 1 << 13
REFUSED_WORD = "does not allow"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(flagging_model_dir):
    async with Worker(EngineConfig(model=flagging_model_dir, device="cpu")) as running:
        yield running


@dataclass
class World:
    fd: FakeDiscord
    bot: object
    mod: FakeMember
    student: FakeMember
    log_channel: FakeChannel


@pytest_asyncio.fixture(loop_scope="module")
async def world(worker, flagging_model_dir, tmp_path):
    async with FakeDiscord() as fd:
        log_channel = fd.add_channel("mod-log")
        with fail_on_discord_errors("discord", "fakediscord", "bot"):
            async with running_easel(
                fd,
                worker,
                tmp_path,
                flagging_model_dir,
                EASEL_DISCORD_LOG_CHANNEL_ID=str(log_channel.id),
                EASEL_MODERATION_BANNED_WORDS="gore",
            ) as bot:
                yield World(
                    fd,
                    bot,
                    fd.add_member("teacher", permissions=MANAGE_MESSAGES),
                    fd.add_member("student"),
                    log_channel,
                )


# --- helpers -------------------------------------------------------------------------------


def text_of(message) -> str:
    """Everything a reader sees in a message: content, embed title, description, fields."""
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields") or []]
        parts.append((embed.get("footer") or {}).get("text") or "")
    return "\n".join(parts)


async def mod(w: World, command: str, options=None, *, member=None, **kwargs):
    """Run a /mod command and return its (ephemeral) answer once it is no longer 'thinking'."""
    handle = await w.fd.invoke(member or w.mod, command, options or {}, **kwargs)
    await handle.response()
    message = await handle.wait_for_message(lambda m: not m.loading, timeout=10)
    assert message.ephemeral
    return message


async def imagine(w: World, prompt: str, **options):
    """The student's /imagine: (gen id, None) when queued, (None, refusal text) when refused."""
    handle = await w.fd.invoke(w.student, "imagine", {"prompt": prompt, **options})
    await handle.response()
    message = await handle.wait_for_message(lambda m: not m.loading, timeout=10)
    if "**#" in (message.content or ""):
        return int(message.content.split("**#")[1].split("**")[0]), None
    assert message.ephemeral  # a refusal is private
    return None, message.content


async def result_message(w: World, gen_id: int, *, timeout: float = 30):
    def find(message):
        return not message.ephemeral and any(e.get("title") == f"#{gen_id}" for e in message.embeds)

    return await w.fd.wait_for_message(find, timeout=timeout)


async def press(w: World, card, label: str):
    """The moderator presses a button on a review card; returns the card once it is updated."""
    before = len(card.history)
    handle = await w.fd.click(w.mod, card, button(card, label))
    await handle.response()
    await w.fd.wait_until(lambda: len(card.history) > before, timeout=10, what="the card edit")
    return card


async def audit_text(w: World, **options) -> str:
    return text_of(await mod(w, "mod audit", options))


def log_lines(w: World) -> str:
    return "\n".join(m.content for m in w.fd.messages(w.log_channel))


# --- permissions ---------------------------------------------------------------------------


def subcommands(definition) -> list[str]:
    found = []
    for option in definition.get("options") or []:
        if option["type"] == 1:
            found.append(f"mod {option['name']}")
        elif option["type"] == 2:
            found += [f"mod {option['name']} {sub['name']}" for sub in option["options"]]
    return found


async def test_a_member_is_refused_on_every_mod_command(world):
    """Hidden by default permissions, and refused on the server side even when a server admin
    un-hides /mod; every refused attempt is logged and nothing changes."""
    w = world
    definition = w.fd.command("mod", w.fd.guild)
    assert int(definition["default_member_permissions"]) == MANAGE_MESSAGES
    sample = {
        "mod log": {},
        "mod review": {},
        "mod ban": {"user": w.mod, "duration": "1d"},
        "mod unban": {"user": w.student},
        "mod bans": {},
        "mod words add": {"word": "cake"},
        "mod words remove": {"word": "gore"},
        "mod words list": {},
        "mod export": {},
        "mod pause": {},
        "mod resume": {},
        "mod audit": {},
        "mod safety": {"mode": "spoiler"},
        "mod logchannel": {"channel": w.fd.channel},
    }
    assert sorted(subcommands(definition)) == sorted(sample), "cover every /mod command here"
    with pytest.raises(PermissionError):
        await w.fd.invoke(w.student, "mod log")
    for command, options in sample.items():
        answer = await mod(w, command, options, member=w.student, honor_default_permissions=False)
        assert "Only moderators" in answer.content, command
        assert "Manage Messages" in answer.content
        assert not answer.attachments
    bot = w.bot
    assert await bot.repos.bans.active(w.fd.guild.id, w.mod.id) is None
    assert await bot.services.words.of(w.fd.guild.id) == ["gore"]  # the configured default
    assert not bot.scheduler.paused
    assert (await bot.repos.guilds.settings(w.fd.guild.id)).safety_mode == "withhold"
    denied = await bot.repos.audit.entries(w.fd.guild.id, action="denied", limit=100)
    assert sorted(e.details["command"] for e in denied) == sorted(f"/{c}" for c in sample)
    assert {e.actor_id for e in denied} == {w.student.id}
    assert log_lines(w).count("(not a moderator)") == len(sample)
    # The moderator sees the attempts in /mod audit, ten a page, and pages on.
    page = await mod(w, "mod audit")
    first = text_of(page)
    assert first.count("refused /mod") == 10 and f"<@{w.student.id}>" in first
    older = await w.fd.click(w.mod, page, label="Older ▶")
    await older.response()
    second = text_of(page)  # the same message, edited
    assert second.count("refused /mod") == len(sample) - 10
    assert "(/mod words add)" in first + second and "(/mod log)" in second


# --- banned words --------------------------------------------------------------------------


async def test_banned_word_in_disguise_is_refused_logged_and_reviewed(world):
    """Full-width letters, zero-width joiners and accents do not hide a banned word; the
    refusals are in /mod log and /mod review, where each decision is recorded."""
    w = world
    added = await mod(w, "mod words add", {"word": "Kraken"})
    assert "kraken" in added.content
    listed = await mod(w, "mod words list")
    assert "kraken" in listed.content and "gore" in listed.content
    disguised = [
        "a ｋｒａｋｅｎ attacks a ship",  # full-width letters
        "a kr\u200dak\u200ben at dawn",  # zero-width joiner and space
        "the krákèn awakes",  # accents
        "KRAKEN!!",  # case
        "a kr\u0430ken",  # a Cyrillic look-alike letter
    ]
    for prompt in disguised:
        gen_id, refusal = await imagine(w, prompt)
        assert gen_id is None and REFUSED_WORD in refusal, prompt
    assert w.bot.scheduler.waiting_count == 0

    log = text_of(await mod(w, "mod log", {"status": "blocked"}))
    assert log.count("refused: banned word") == 5
    assert "ｋｒａｋｅｎ attacks a ship" in log and "krákèn" in log
    assert f"<@{w.student.id}>" in log
    one = text_of(await mod(w, "mod log", {"user": w.student, "contains": "ship"}))
    assert "1 request" in one and "ship" in one

    card = await mod(w, "mod review")
    text = text_of(card)
    assert "item 1 of 5" in text and "prompt refused: banned word" in text
    assert "Matched word: “kraken”" in text and "ｋｒａｋｅｎ" in text
    assert not card.attachments
    gens = await w.bot.repos.history.moderation_log(guild_id=w.fd.guild.id, status="blocked")
    first, second = sorted(g.id for g in gens)[:2]
    await press(w, card, "Release")
    assert f"Released #{first}'s prompt" in card.content and "item 1 of 4" in card.content
    await press(w, card, "Remove")
    assert f"Removed #{second}'s prompt" in card.content and "item 1 of 3" in card.content
    await press(w, card, "Skip")
    assert "item 2 of 3" in card.content
    assert (await w.bot.repos.generations.get(first)).review == "released"
    assert (await w.bot.repos.generations.get(second)).review == "removed"

    # Removing the word lets the prompt through again.
    await mod(w, "mod words remove", {"word": "KRAKEN"})
    gen_id, _ = await imagine(w, "a kraken, politely")
    assert gen_id is not None
    await result_message(w, gen_id)
    audit = await audit_text(w)
    for action in ("banned word added", "release", "remove", "banned word removed"):
        assert action in audit
    assert f"#{first}" in audit and "“kraken”" in audit
    assert "banned the word “kraken”" in log_lines(w)


# --- the safety checker --------------------------------------------------------------------


async def test_flagged_image_is_withheld_reviewed_and_released(world):
    """Withhold mode: a public notice only; the moderator sees the unredacted image, releases
    it, and it appears in the channel as a normal result."""
    w = world
    gen_id, _ = await imagine(w, "a lighthouse at night", seed=5)
    notice = await result_message(w, gen_id)
    assert "withheld for moderator review" in notice.content and not notice.attachments
    # The moderators' log channel hears of the flag, with a link to the notice.
    await w.fd.wait_until(lambda: f"🛡️ #{gen_id}" in log_lines(w))
    assert f"/{notice.id}" in log_lines(w) and "flagged by the safety checker" in log_lines(w)

    card = await mod(w, "mod review")
    assert card.visible_to == w.mod.id
    assert "flagged by the safety checker" in text_of(card) and "item 1 of 1" in text_of(card)
    (attachment,) = card.attachments
    assert attachment.spoiler  # the moderator chooses when to look
    png = await w.fd.fetch_attachment(attachment)
    assert png == await w.bot.repos.images.read(gen_id, 0)
    assert Image.open(io.BytesIO(png)).convert("L").getextrema() != (0, 0)  # not blacked out

    await press(w, card, "Release")
    assert "Nothing is waiting" in card.content
    assert f"Released #{gen_id} image 1" in card.content and not card.attachments

    released = await result_message(w, gen_id)
    assert released.id != notice.id and notice.deleted
    (public,) = released.attachments
    assert not public.spoiler and await w.fd.fetch_attachment(public) == png
    assert "withheld" not in released.content and released.pings.users == {w.student.id}
    assert button(released, "V1")  # a released image can be varied like any other
    gen = await w.bot.repos.generations.get(gen_id)
    assert gen.images[0].review == "released" and gen.message_id == released.id
    assert f"#{gen_id} image 1" in await audit_text(w, action="release")
    assert f"released #{gen_id} image 1" in log_lines(w)


async def test_spoiler_mode_and_remove(world):
    """Spoiler mode: flagged images go out behind a spoiler with a warning; Remove takes one
    off the channel, Release leaves the other behind its spoiler."""
    w = world
    answer = await mod(w, "mod safety", {"mode": "spoiler"})
    assert "spoiler" in answer.content
    gen_id, _ = await imagine(w, "a stormy sea", count=2)
    first = await result_message(w, gen_id)
    assert "Content warning" in first.content
    assert len(first.attachments) == 2 and all(a.spoiler for a in first.attachments)
    assert not first.embed.get("image")  # embed images are never blurred

    card = await mod(w, "mod review")
    assert f"#{gen_id} · image 1 of 2" in text_of(card)
    await press(w, card, "Remove")
    await w.fd.wait_until(lambda: first.deleted)
    second = await result_message(w, gen_id)
    (left,) = second.attachments
    assert left.spoiler and "removed by a moderator" in second.content
    assert f"Removed #{gen_id} image 1" in card.content and f"#{gen_id} · image 2 of 2" in text_of(
        card
    )
    await press(w, card, "Release")
    assert "Nothing is waiting" in card.content
    assert not second.deleted and second.attachments[0].spoiler  # unchanged
    images = (await w.bot.repos.generations.get(gen_id)).images
    assert [i.review for i in images] == ["removed", "released"]
    audit = await audit_text(w)
    assert "safety mode" in audit and "withhold → spoiler" in audit
    assert f"#{gen_id} image 1" in audit and f"#{gen_id} image 2" in audit


async def test_ban_author_from_review_rechecks_rights(world):
    """Review buttons check the presser's rights again; Ban author asks how long and why,
    bans, and removes the item."""
    w = world
    gen_id, _ = await imagine(w, "two foxes", count=2)
    await result_message(w, gen_id)
    card = await mod(w, "mod review")
    roles = list(w.mod.roles)
    w.mod.roles.clear()  # no longer a moderator
    refused = await w.fd.click(w.mod, card, button(card, "Release"))
    assert "Only moderators" in (await refused.response()).message.content
    assert (await w.bot.repos.generations.get(gen_id)).images[0].review == "pending"
    w.mod.roles.extend(roles)

    ban = await w.fd.click(w.mod, card, button(card, "Ban author"))
    await ban.response()
    assert ban.modal is not None and ban.modal["title"] == "Ban student"
    bad = await w.fd.submit_modal(w.mod, ban, {"duration": "a while", "reason": "spam"})
    assert "not a duration" in (await bad.response()).message.content
    ban = await w.fd.click(w.mod, card, button(card, "Ban author"))
    await ban.response()
    submit = await w.fd.submit_modal(w.mod, ban, {"duration": "2h", "reason": "spam"})
    await submit.response()
    await w.fd.wait_until(lambda: "Banned" in card.content, timeout=10)
    assert "for 2 h" in card.content and f"Removed #{gen_id} image 1" in card.content
    assert f"#{gen_id} · image 2 of 2" in text_of(card)  # the next item
    banned = await w.bot.repos.bans.active(w.fd.guild.id, w.student.id)
    assert banned is not None and banned.reason == "spam"
    assert 7100 < (banned.until - banned.created_at).total_seconds() <= 7200
    assert (await w.bot.repos.generations.get(gen_id)).images[0].review == "removed"
    audit = await audit_text(w)
    assert "ban" in audit and "“spam”" in audit and "“author banned”" in audit
    assert "review release of" in audit  # the refused press


# --- bans ----------------------------------------------------------------------------------


async def test_ban_cancels_queue_and_refuses_until_it_expires(world):
    """A ban cancels the member's waiting jobs and refuses new ones until it ends; unban lifts
    one without an end."""
    w = world
    bot = w.bot
    await bot.scheduler.stop()  # hold the dispatcher so the jobs stay queued
    try:
        queued = [(await imagine(w, f"a queued fox {i}"))[0] for i in range(2)]
        assert all(queued) and bot.scheduler.waiting_count == 2
        bad = await mod(w, "mod ban", {"user": w.student, "duration": "soon"})
        assert "not a duration" in bad.content and "30m" in bad.content
        assert "cannot ban yourself" in (await mod(w, "mod ban", {"user": w.mod})).content
        answer = await mod(
            w, "mod ban", {"user": w.student, "duration": "30m", "reason": "flooding the queue"}
        )
        assert "for 30 min" in answer.content
        assert all(f"#{i}" in answer.content for i in queued)
        assert bot.scheduler.waiting_count == 0
        assert {g.status for g in await bot.repos.generations.get_many(queued)} == {"cancelled"}
    finally:
        await bot.scheduler.start()
    gen_id, refusal = await imagine(w, "one more fox")
    assert gen_id is None and "banned from making images in this server until" in refusal
    log = text_of(await mod(w, "mod log", {"user": w.student, "status": "blocked"}))
    assert "refused: member banned" in log and "one more fox" in log

    real_clock = bot.repos.db.clock
    bot.repos.db.clock = lambda: real_clock() + 31 * 60  # half an hour later
    try:
        gen_id, _ = await imagine(w, "a fox after the ban")
        assert gen_id is not None
        await result_message(w, gen_id)
    finally:
        bot.repos.db.clock = real_clock

    answer = await mod(w, "mod ban", {"user": w.student})  # no end
    assert "with no end" in answer.content
    assert "no end" in (await mod(w, "mod bans")).content
    assert (await imagine(w, "still banned?"))[0] is None
    assert "Unbanned" in (await mod(w, "mod unban", {"user": w.student})).content
    assert "not banned" in (await mod(w, "mod unban", {"user": w.student})).content
    gen_id, _ = await imagine(w, "free again")
    await result_message(w, gen_id)
    audit = await audit_text(w)
    assert audit.count("🔨 ban") == 2 and "unban" in audit and "“flooding the queue”" in audit
    assert "cancelled " + ", ".join(f"#{i}" for i in queued) in audit


# --- export, pause, settings ---------------------------------------------------------------


async def test_export_is_a_csv_with_one_row_per_image(world):
    """The CSV parses with the csv module: one row per image with recipe and outcome, one per
    refused request; spreadsheet formulas are defused."""
    w = world
    two, _ = await imagine(w, '=HYPERLINK("http://x") two cats', count=2, seed=42)
    one, _ = await imagine(w, "one owl", steps=3)
    refused, _ = await imagine(w, "gore everywhere")  # the configured default word
    assert refused is None
    await result_message(w, two)
    await result_message(w, one)

    answer = await mod(w, "mod export")
    (attachment,) = answer.attachments
    assert attachment.filename.endswith(".csv") and "3 rows" not in answer.content
    data = (await w.fd.fetch_attachment(attachment)).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(data, newline=""))
    assert tuple(reader.fieldnames) == EXPORT_COLUMNS
    rows = list(reader)
    assert len(rows) == 4 and "4 rows" in answer.content
    by_gen: dict[str, list[dict]] = {}
    for row in rows:
        by_gen.setdefault(row["generation_id"], []).append(row)
    cats = by_gen[str(two)]
    assert [r["image_index"] for r in cats] == ["0", "1"]
    assert [r["image_seed"] for r in cats] == ["42", "43"]
    assert cats[0]["prompt"] == '\'=HYPERLINK("http://x") two cats'  # not a formula
    assert cats[0]["status"] == "done" and cats[0]["image_flagged"] == "1"
    assert cats[0]["image_review"] == "pending" and cats[0]["user_id"] == f'="{w.student.id}"'
    (owl,) = by_gen[str(one)]
    assert owl["steps"] == "3" and owl["prompt"] == "one owl" and owl["image_file"]
    (gore,) = [r for r in rows if r["status"] == "blocked"]
    assert gore["refusal_reason"] == "banned_word" and gore["image_index"] == ""

    later = await mod(w, "mod export", {"since": "2099-01-01"})
    assert "0 rows" in later.content
    assert "not a time" in (await mod(w, "mod export", {"since": "yesterday-ish"})).content
    audit = await audit_text(w, action="export")
    assert "4 rows" in audit and "0 rows since 2099-01-01" in audit


async def test_pause_resume_and_log_channel(world):
    """Paused: new requests are told why; resumed: accepted again. The log channel can be moved."""
    w = world
    other = w.fd.add_channel("staff")
    await mod(w, "mod logchannel", {"channel": other})
    answer = await mod(w, "mod pause", {"reason": "exam time"})
    assert "Paused" in answer.content
    gen_id, refusal = await imagine(w, "a paused fox")
    assert gen_id is None and "paused by the moderators" in refusal
    assert "already paused" in (await mod(w, "mod pause")).content
    await mod(w, "mod resume")
    assert "not paused" in (await mod(w, "mod resume")).content
    gen_id, _ = await imagine(w, "a running fox")
    await result_message(w, gen_id)
    log = text_of(await mod(w, "mod log", {"status": "blocked"}))
    assert "refused: queue paused" in log
    audit = await audit_text(w)
    for action in ("pause", "resume", "log channel"):
        assert action in audit
    assert "“exam time”" in audit
    staff = "\n".join(m.content for m in w.fd.messages(other))
    assert "paused the queue: exam time" in staff and "resumed the queue" in staff


# --- the words of the forms ----------------------------------------------------------------


def mod_option(w: World, path: str, name: str) -> dict:
    """One option of a /mod subcommand as synced to Discord (what the form shows)."""
    node = w.fd.command("mod", w.fd.guild)
    for part in path.split():
        node = next(o for o in node["options"] if o["name"] == part)
    return next(o for o in node["options"] if o["name"] == name)


async def test_mod_forms_use_the_words_moderators_read(world):
    """/mod ban and unban say whom; /mod audit offers actions by their labels and /mod log
    says "refused", while the values sent back stay the stored ones."""
    from bot.domain import AuditAction, Status

    w = world
    for path in ("ban", "unban"):
        description = mod_option(w, path, "user")["description"]
        assert description != "Who" and "member" in description
    actions = mod_option(w, "audit", "action")["choices"]
    assert [(c["name"], c["value"]) for c in actions] == [(a.label, a.value) for a in AuditAction]
    assert not {"word_add", "safety_mode", "denied"} & {c["name"] for c in actions}
    statuses = mod_option(w, "log", "status")
    names = {c["value"]: c["name"] for c in statuses["choices"]}
    assert "refused" in names["blocked"] and "blocked" not in " ".join(names.values())
    assert "blocked" not in statuses["description"]
    assert set(names) == {s.value for s in Status}
    # The stored value still filters: refused requests are found under "refused".
    refused, _ = await imagine(w, "gore again")
    assert refused is None
    shown = text_of(await mod(w, "mod log", {"status": "blocked"}))
    assert "refused" in shown and "status blocked" not in shown
    audit = text_of(await mod(w, "mod audit", {"action": "word_add"}))
    assert "word_add" not in audit


async def test_a_flagged_upload_is_refused_and_reviewed(world):
    """The always-flag checker flags an upload before any work on it: the member gets one
    private sentence, nothing is queued, and the moderator sees the image in /mod review."""
    w = world
    picture = io.BytesIO()
    Image.new("RGB", (80, 64), (30, 160, 90)).save(picture, format="PNG")
    attachment = w.fd.upload(picture.getvalue(), "beach.png")
    handle = await w.fd.invoke(w.student, "imagine", {"prompt": "my beach", "image": attachment})
    await handle.response()
    answer = await handle.wait_for_message(lambda m: not m.loading, timeout=20)
    assert answer.ephemeral and "safety checker flagged that image" in answer.content
    assert w.bot.scheduler.waiting_count == 0 and w.bot.scheduler.batches_run == 0
    (gen,) = await w.bot.repos.history.moderation_log(guild_id=w.fd.guild.id)
    assert (gen.status, gen.refusal_reason, gen.flagged) == ("blocked", "flagged_upload", True)
    await w.fd.wait_until(lambda: "upload flagged by the safety checker" in log_lines(w))

    card = await mod(w, "mod review")
    assert f"#{gen.id} · uploaded image flagged by the safety checker" in text_of(card)
    (shown,) = card.attachments
    assert shown.spoiler
    assert await w.fd.fetch_attachment(shown) == await w.bot.repos.images.read_upload(gen)
    assert "from an uploaded image" in text_of(await mod(w, "mod log"))
    await press(w, card, "Remove")
    assert "Nothing is waiting" in card.content and f"Removed #{gen.id}'s upload" in card.content
    assert (await w.bot.repos.generations.get(gen.id)).review == "removed"
