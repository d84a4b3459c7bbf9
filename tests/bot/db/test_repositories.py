"""The SQLite database and its repositories: migrations, pragmas, the prompt log, review, bans,
words, audit, export."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import sqlite3
from datetime import UTC, datetime, timedelta

import aiosqlite
import pytest

from bot.db import Database, Repositories, SchemaTooNewError, StoreError
from bot.db import database as database_module
from bot.db.database import Migration, latest_version, load_migrations, migrate
from bot.db.export import EXPORT_COLUMNS, SNOWFLAKE_COLUMNS, csv_bytes
from bot.domain import JobOrigin, RefusalReason
from inference.request import GeneratedImage, GenerationRequest, GenerationResult

T0 = datetime(2030, 5, 17, 9, 30, tzinfo=UTC).timestamp()


class Clock:
    """A settable clock (UTC Unix seconds)."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def req(prompt: str = "a watercolor fox", **overrides) -> GenerationRequest:
    values = dict(prompt=prompt, width=64, height=64, steps=4, seed=7)
    values.update(overrides)
    return GenerationRequest(**values)


def png(tag: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes([tag % 256]) * 16


def result_for(gen_id: int, count: int = 1, *, nsfw=(), seed: int = 7) -> GenerationResult:
    images = [
        GeneratedImage(
            png=png(gen_id * 10 + i), seed=seed + i, index=i, nsfw=i in nsfw, width=64, height=64
        )
        for i in range(count)
    ]
    return GenerationResult(
        job_id=str(gen_id), images=images, timings={"inference": 0.25, "batch": 0.5}, batch_size=1
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


REFUSAL_REASONS = tuple(RefusalReason)


@pytest.fixture
async def repos(tmp_path, clock):
    async with Database.open(tmp_path / "easel.sqlite3", clock=clock) as db:
        yield Repositories.on(db)


@contextlib.asynccontextmanager
async def opened(path):
    """The repositories of the database at `path`, open for the block."""
    async with Database.open(path) as db:
        yield Repositories.on(db)


async def finished(repos: Repositories, user_id: int = 1, *, count: int = 1, nsfw=(), **kwargs):
    gen = await repos.generations.create(
        req(count=count, **kwargs.pop("r", {})), JobOrigin(user_id=user_id, **kwargs)
    )
    await repos.generations.mark_running([gen.id])
    return await repos.generations.save_result(gen.id, result_for(gen.id, count, nsfw=nsfw))


# -- schema and pragmas -----------------------------------------------------------------------


async def test_fresh_database_has_latest_schema_wal_and_foreign_keys(tmp_path):
    """An empty file is migrated to the latest version with WAL, foreign keys and busy_timeout."""
    path = tmp_path / "new.sqlite3"
    async with opened(path) as repos:
        assert await repos.db.schema_version() == latest_version() >= 1
        assert (await repos.db.pragma("journal_mode")).lower() == "wal"
        assert await repos.db.pragma("foreign_keys") == 1
        assert await repos.db.pragma("busy_timeout") >= 1000
        assert (tmp_path / "images").is_dir()
    # WAL is a property of the file: a plain connection sees it too.
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_migration_files_are_numbered_without_gaps():
    """Migrations are 001, 002, … and each one splits into statements."""
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        assert database_module.split_statements(migration.sql)


async def _schema(path) -> list[tuple[str, str, str]]:
    async with aiosqlite.connect(path) as conn:
        async with conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


@pytest.mark.parametrize("start", range(latest_version()))
async def test_upgrade_from_every_earlier_version(tmp_path, start):
    """A database at any earlier version upgrades to the same schema as a fresh one, keeping
    its rows."""
    old = tmp_path / f"v{start}.sqlite3"
    async with aiosqlite.connect(old, isolation_level=None) as conn:
        assert await migrate(conn, target=start) == (0, start)
        if start >= 1:
            await conn.execute(
                "INSERT INTO generations (user_id, kind, prompt, recipe, status, created_at) "
                "VALUES (5, 'imagine', 'kept', '{\"prompt\": \"kept\"}', 'done', 1.0)"
            )
    async with opened(old) as repos:
        assert await repos.db.schema_version() == latest_version()
        if start >= 1:
            kept = await repos.generations.get(1)
            assert kept is not None and kept.prompt == "kept"
    async with opened(tmp_path / "fresh.sqlite3"):
        pass
    assert await _schema(old) == await _schema(tmp_path / "fresh.sqlite3")


async def test_reopening_is_a_no_op(tmp_path):
    """Opening an up-to-date database twice changes nothing and keeps the data."""
    path = tmp_path / "db.sqlite3"
    async with opened(path) as repos:
        gen = await repos.generations.create(req(), JobOrigin(user_id=1))
    async with opened(path) as repos:
        assert (await repos.generations.get(gen.id)).prompt == "a watercolor fox"
        assert await repos.db.schema_version() == latest_version()


async def test_newer_database_is_refused_with_a_clear_error(tmp_path):
    """A database written by a newer Easel is not touched."""
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    with pytest.raises(SchemaTooNewError, match=r"version \d+, but this Easel only knows"):
        await Database.connect(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version() + 1


async def test_failed_migration_rolls_back_entirely(tmp_path, monkeypatch):
    """A migration that fails half-way leaves the database at its old version, unchanged."""
    good = load_migrations()
    broken = Migration(len(good) + 1, "broken", "CREATE TABLE extra (x INTEGER);\nNOT SQL;\n")
    monkeypatch.setattr(database_module, "load_migrations", lambda: [*good, broken])
    path = tmp_path / "db.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        await Database.connect(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "extra" not in names and "generations" not in names


# -- generations ------------------------------------------------------------------------------


async def test_create_logs_the_full_recipe_and_fixes_the_seed(repos, clock):
    """An accepted request is queued with who, where, when and a reproducible recipe."""
    gen = await repos.generations.create(
        req(seed=None, negative="blurry", count=2),
        JobOrigin(user_id=11, guild_id=22, channel_id=33, user_name="ada"),
    )
    assert gen.status == "queued" and gen.kind == "imagine"
    assert (gen.user_id, gen.guild_id, gen.channel_id, gen.user_name) == (11, 22, 33, "ada")
    assert gen.created_at == gen.queued_at == datetime.fromtimestamp(T0, UTC)
    assert isinstance(gen.recipe["seed"], int)
    rebuilt = gen.request
    assert rebuilt.job_id == str(gen.id)
    assert (rebuilt.prompt, rebuilt.negative, rebuilt.count) == ("a watercolor fox", "blurry", 2)
    assert gen.seeds == rebuilt.image_seeds()
    assert gen.cost == rebuilt.cost


async def test_unknown_parent_is_refused(repos):
    """A remix of a generation that does not exist cannot be created."""
    with pytest.raises(StoreError, match="#999 does not exist"):
        await repos.generations.create(req(), JobOrigin(user_id=1, kind="remix", parent_id=999))
    with pytest.raises(StoreError, match="kind"):
        await repos.generations.create(req(), JobOrigin(user_id=1, kind="paint"))


async def test_status_transitions_and_result_files(repos, clock):
    """queued → running → done writes the images as files named by id, with timings."""
    gen = await repos.generations.create(req(count=2), JobOrigin(user_id=1))
    clock.advance(3)
    [running] = await repos.generations.mark_running([gen.id])
    assert running.status == "running" and running.runs == 1
    assert running.started_at == datetime.fromtimestamp(T0 + 3, UTC)
    assert await repos.generations.mark_running([gen.id]) == []  # only queued jobs start
    clock.advance(2)
    done = await repos.generations.save_result(gen.id, result_for(gen.id, 2, nsfw={1}))
    assert done.status == "done" and done.flagged and done.error is None
    assert done.finished_at == datetime.fromtimestamp(T0 + 5, UTC)
    assert done.inference_seconds == 0.25 and done.timings["batch"] == 0.5
    assert [i.index for i in done.images] == [0, 1]
    assert [i.seed for i in done.images] == [7, 8]
    for image in done.images:
        assert image.path == repos.images.images_dir / f"{gen.id}_{image.index}.png"
        assert image.path.read_bytes() == png(gen.id * 10 + image.index)
    assert (done.images[0].flagged, done.images[0].review, done.images[0].public) == (
        False,
        None,
        True,
    )
    assert (done.images[1].flagged, done.images[1].review, done.images[1].public) == (
        True,
        "pending",
        False,
    )
    assert not list(repos.images.images_dir.glob("*.tmp"))
    # A finished job never finishes again.
    assert await repos.generations.save_result(gen.id, result_for(gen.id, 1)) is None
    assert await repos.generations.mark_cancelled(gen.id) is None
    assert (await repos.generations.get(gen.id)).status == "done"


async def test_failed_and_cancelled_outcomes(repos):
    """Errors and cancels are recorded with their message; a cancelled job keeps no images."""
    a = await repos.generations.create(req(), JobOrigin(user_id=1))
    b = await repos.generations.create(req(), JobOrigin(user_id=1))
    c = await repos.generations.create(req(), JobOrigin(user_id=1))
    failed = await repos.generations.mark_failed(a.id, "The worker crashed twice.")
    assert (failed.status, failed.error) == ("failed", "The worker crashed twice.")
    await repos.generations.mark_running([b.id])
    cancelled = await repos.generations.save_result(
        b.id, GenerationResult(job_id=str(b.id), images=result_for(b.id).images, cancelled=True)
    )
    assert cancelled.status == "cancelled" and cancelled.images == ()
    assert (await repos.generations.mark_cancelled(c.id)).status == "cancelled"


async def test_requeue_and_recovery_lists(repos):
    """Running jobs go back to queued; recovery lists queued/running in their original order."""
    gens = [
        await repos.generations.create(req(prompt=f"p{i}"), JobOrigin(user_id=i % 2))
        for i in range(5)
    ]
    await repos.generations.mark_running([gens[1].id, gens[3].id])
    await repos.generations.save_result(gens[0].id, result_for(gens[0].id))
    assert [g.id for g in await repos.generations.jobs_to_recover()] == [g.id for g in gens[1:]]
    assert await repos.generations.requeue([gens[1].id, gens[2].id]) == 1
    assert [g.status for g in await repos.generations.jobs_to_recover()] == [
        "queued",
        "queued",
        "running",
        "queued",
    ]
    assert [g.id for g in await repos.generations.undelivered()] == [gens[0].id]
    assert await repos.generations.mark_delivered(gens[0].id, channel_id=5, message_id=6)
    assert await repos.generations.undelivered() == []
    delivered = await repos.generations.get(gens[0].id)
    assert (delivered.message_channel_id, delivered.message_id, delivered.delivered) == (5, 6, True)


async def test_refusals_are_logged_with_reason_and_message(repos):
    """Every refusal reason is logged as blocked; banned words and flagged uploads go to
    review."""
    for reason in REFUSAL_REASONS:
        gen = await repos.generations.log_refusal(
            req(prompt=f"refused {reason}"),
            JobOrigin(user_id=3, guild_id=4),
            reason=reason,
            message=f"No: {reason}.",
        )
        assert (gen.status, gen.refusal_reason, gen.refusal_message) == (
            "blocked",
            reason,
            f"No: {reason}.",
        )
        reviewed = reason in ("banned_word", "flagged_upload")
        assert gen.review == ("pending" if reviewed else None)
    with pytest.raises(StoreError, match="refusal reason"):
        await repos.generations.log_refusal(
            req(), JobOrigin(user_id=3), reason="grumpy", message="x"
        )
    # A refused remix of an unknown generation is still logged.
    orphan = await repos.generations.log_refusal(
        req(),
        JobOrigin(user_id=3, kind="remix", parent_id=12345),
        reason="bad_input",
        message="No such image.",
    )
    assert orphan.parent_id is None and orphan.status == "blocked"
    assert await repos.history.count_log(status="blocked") == len(REFUSAL_REASONS) + 1


async def test_lineage_children_and_ancestors(repos):
    """Parents, children and the chain back to the root."""
    root = await finished(repos, 1)
    child = await repos.generations.create(
        req(), JobOrigin(user_id=2, kind="remix", parent_id=root.id, parent_image_index=0)
    )
    grandchild = await repos.generations.create(
        req(), JobOrigin(user_id=3, kind="vary", parent_id=child.id, parent_image_index=0)
    )
    sibling = await repos.generations.create(
        req(), JobOrigin(user_id=4, kind="reroll", parent_id=root.id)
    )
    assert [g.id for g in await repos.history.children(root.id)] == [child.id, sibling.id]
    assert [g.id for g in await repos.history.ancestors(grandchild.id)] == [child.id, root.id]
    assert await repos.history.ancestors(root.id) == []
    assert (grandchild.kind, grandchild.parent_id, grandchild.parent_image_index) == (
        "vary",
        child.id,
        0,
    )


async def test_vary_request_reads_its_source_image_from_disk(repos):
    """The source image of a vary job is the parent's file, not a copy in the database."""
    parent = await finished(repos, 1, count=2)
    vary = await repos.generations.create(
        req(mode="img2img", init_image=b"not stored", strength=0.5),
        JobOrigin(user_id=2, kind="vary", parent_id=parent.id, parent_image_index=1),
    )
    assert "init_image" not in vary.recipe
    request = await repos.images.load_request(vary)
    assert request.init_image == png(parent.id * 10 + 1)
    assert request.mode == "img2img" and request.job_id == str(vary.id)
    (repos.images.images_dir / f"{parent.id}_1.png").unlink()
    with pytest.raises(StoreError, match="missing"):
        await repos.images.load_request(vary)


async def test_history_is_newest_first_and_paged(repos, clock):
    """A member's history pages back in time, every status included."""
    ids = []
    for i in range(7):
        clock.advance(1)
        ids.append(
            (
                await repos.generations.create(
                    req(prompt=f"p{i}"), JobOrigin(user_id=9, guild_id=1 + i % 2)
                )
            ).id
        )
        await repos.generations.create(req(), JobOrigin(user_id=10))
    await repos.generations.log_refusal(
        req(), JobOrigin(user_id=9, guild_id=1), reason="over_cap", message="x"
    )
    page1 = await repos.history.history(9, limit=3)
    page2 = await repos.history.history(9, limit=3, offset=3)
    page3 = await repos.history.history(9, limit=3, offset=6)
    newest_first = [*reversed(ids)]
    assert page1[0].status == "blocked"
    assert [g.id for g in page1[1:] + page2 + page3] == newest_first
    assert await repos.history.count_history(9) == 8
    assert [g.id for g in await repos.history.history(9, guild_id=2)] == [ids[5], ids[3], ids[1]]
    # For other members: no refusals, no deleted results.
    await repos.generations.mark_deleted(ids[6], by=9)
    visible = await repos.history.history(9, limit=20, visible_only=True)
    assert [g.id for g in visible] == newest_first[1:]
    assert await repos.history.count_history(9, visible_only=True) == 6
    assert await repos.history.count_history(9, guild_id=1, visible_only=True) == 3


async def test_moderation_log_filters(repos, clock):
    """Filter the log by member, text, status, flagged and time, newest first, paged."""
    a = await finished(repos, 1, r={"prompt": "a red fox"})
    clock.advance(10)
    b = await finished(repos, 2, nsfw={0}, r={"prompt": "a blue whale", "negative": "fox"})
    clock.advance(10)
    c = await repos.generations.log_refusal(
        req(prompt="100% fox_cub"), JobOrigin(user_id=1), reason="banned_word", message="x"
    )
    clock.advance(10)
    d = await repos.generations.create(req(prompt="plain"), JobOrigin(user_id=1, guild_id=77))

    async def ids(**filters):
        return [g.id for g in await repos.history.moderation_log(**filters)]

    assert await ids() == [d.id, c.id, b.id, a.id]
    assert await ids(user_id=1) == [d.id, c.id, a.id]
    assert await ids(contains="FOX") == [c.id, b.id, a.id]  # prompt or negative, any case
    assert await ids(contains="100%") == [c.id]  # % and _ are literal
    assert await ids(contains="x_c") == [c.id]
    assert await ids(contains="fox_") == [c.id]
    assert await ids(contains="%") == [c.id]
    assert await ids(status="blocked") == [c.id]
    assert await ids(flagged=True) == [b.id]
    assert await ids(flagged=False, user_id=1) == [d.id, c.id, a.id]
    assert await ids(since=datetime.fromtimestamp(T0 + 15, UTC)) == [d.id, c.id]
    assert await ids(since=T0 + 15) == [d.id, c.id]
    assert await ids(guild_id=77) == [d.id]
    assert await ids(limit=2, offset=1) == [c.id, b.id]
    assert await repos.history.count_log(contains="fox") == 3
    with pytest.raises(StoreError, match="status"):
        await repos.history.moderation_log(status="lost")


async def test_log_search_finds_disguised_spellings(repos):
    """Searching the log folds text as the word filter does: full-width letters, zero-width
    characters and accents in a prompt still match a plain search, and the other way round."""
    disguised = await repos.generations.log_refusal(
        req(prompt="a ｋｒａ\u200bｋéｎ attack"),
        JobOrigin(user_id=3),
        reason="banned_word",
        message="x",
    )
    plain = await repos.generations.create(req(prompt="Kraken"), JobOrigin(user_id=4))
    ids = [g.id for g in await repos.history.moderation_log(contains="kraken")]
    assert ids == [plain.id, disguised.id]
    assert [g.id for g in await repos.history.moderation_log(contains="ＫＲＡＫＥＮ")] == ids


async def test_review_queue_and_decisions(repos, clock):
    """Flagged images and banned-word prompts wait for a moderator, oldest first."""
    flagged = await finished(repos, 1, count=3, nsfw={0, 2}, guild_id=5)
    clock.advance(5)
    blocked = await repos.generations.log_refusal(
        req(prompt="bad word"), JobOrigin(user_id=2, guild_id=5), reason="banned_word", message="x"
    )
    clock.advance(5)
    other = await finished(repos, 3, nsfw={0}, guild_id=6)
    queue = await repos.review.queue(guild_id=5)
    assert [(i.generation.id, i.image_index) for i in queue] == [
        (flagged.id, 0),
        (flagged.id, 2),
        (blocked.id, None),
    ]
    assert queue[2].is_prompt and queue[0].generation.images[0].flagged
    assert await repos.review.count_pending(guild_id=5) == 3
    assert await repos.review.count_pending() == 4
    assert await repos.review.record(flagged.id, 0, "released", moderator_id=99)
    assert await repos.review.record(blocked.id, None, "removed", moderator_id=99)
    assert not await repos.review.record(flagged.id, 1, "released", moderator_id=99)  # not flagged
    with pytest.raises(StoreError):
        await repos.review.record(flagged.id, 2, "maybe", moderator_id=99)
    assert [(i.generation.id, i.image_index) for i in await repos.review.queue(guild_id=5)] == [
        (flagged.id, 2)
    ]
    released = (await repos.generations.get(flagged.id)).image(0)
    assert (released.review, released.reviewed_by, released.public) == ("released", 99, True)
    assert (await repos.generations.get(blocked.id)).review == "removed"
    # Deleted results leave the queue; the log keeps them.
    assert await repos.generations.mark_deleted(other.id, by=3)
    assert not await repos.generations.mark_deleted(other.id, by=3)
    assert [i.generation.id for i in await repos.review.queue()] == [flagged.id]
    gone = await repos.generations.get(other.id)
    assert gone.deleted and gone.deleted_by == 3


async def test_bans_expire_and_can_be_lifted(repos, clock):
    """A ban is active until it expires or is lifted; a new ban replaces the old one."""
    assert await repos.bans.active(1, 2) is None
    ban = await repos.bans.ban(1, 2, by=9, reason="spam", duration=timedelta(hours=1))
    assert ban.until == datetime.fromtimestamp(T0 + 3600, UTC) and not ban.permanent
    assert (await repos.bans.active(1, 2)).reason == "spam"
    assert await repos.bans.active(7, 2) is None  # per server
    clock.advance(3599)
    assert await repos.bans.active(1, 2) is not None
    clock.advance(1)
    assert await repos.bans.active(1, 2) is None
    assert not await repos.bans.unban(1, 2, by=9)
    forever = await repos.bans.ban(1, 2, by=9, reason="again")
    assert forever.permanent and (await repos.bans.active(1, 2)).id == forever.id
    shorter = await repos.bans.ban(1, 2, by=8, until=datetime.fromtimestamp(T0 + 7200, UTC))
    assert (await repos.bans.active(1, 2)).id == shorter.id
    clock.advance(3600)
    assert await repos.bans.active(1, 2) is None  # the permanent one was replaced
    await repos.bans.ban(1, 2, by=9)
    assert await repos.bans.unban(1, 2, by=9)
    assert await repos.bans.active(1, 2) is None
    assert await repos.bans.of_guild(1) == []
    history = await repos.bans.of_guild(1, active_only=False)
    assert len(history) == 4 and history[0].lifted_by == 9
    with pytest.raises(StoreError, match="future"):
        await repos.bans.ban(1, 2, by=9, until=datetime.fromtimestamp(T0, UTC))


async def test_banned_words_per_server(repos):
    """Words are per server; the default list is copied in once."""
    assert await repos.words.add(1, "owl", by=9)
    assert not await repos.words.add(1, "owl", by=9)
    assert await repos.words.add(1, "bat")
    assert await repos.words.of_guild(1) == ["bat", "owl"]
    assert await repos.words.of_guild(2) == []
    assert await repos.words.remove(1, "owl")
    assert not await repos.words.remove(1, "owl")
    assert await repos.words.seed(2, ["gore", "owl"])
    await repos.words.remove(2, "owl")
    assert not await repos.words.seed(2, ["gore", "owl"])  # removals stick
    assert await repos.words.of_guild(2) == ["gore"]
    with pytest.raises(StoreError):
        await repos.words.add(1, "  ")


async def test_a_word_list_read_during_a_change_is_not_kept(repos, monkeypatch):
    """The lists are kept in memory between changes; a read that a change overtook is
    answered but not kept, so the next request sees the new word."""
    await repos.words.add(1, "owl")
    assert await repos.words.of_guild(1) == ["owl"]
    await repos.words.add(1, "bat")  # a change drops the kept list
    assert await repos.words.of_guild(1) == ["bat", "owl"]
    await repos.words.remove(1, "bat")
    db = repos.words.db
    real_all = db.all

    async def read_overtaken_by_a_change(sql, params=()):
        rows = await real_all(sql, params)
        await repos.words.add(1, "squid")  # lands while the read is on its way back
        return rows

    monkeypatch.setattr(db, "all", read_overtaken_by_a_change)
    assert await repos.words.of_guild(1) == ["owl"]
    monkeypatch.setattr(db, "all", real_all)
    assert await repos.words.of_guild(1) == ["owl", "squid"]


async def test_a_new_generation_is_returned_as_written(repos):
    """create() and log_refusal() hand back the row as the database holds it (one trip)."""
    queued = await repos.generations.create(req(), JobOrigin(user_id=1, guild_id=2))
    assert queued == await repos.generations.get(queued.id)
    refused = await repos.generations.log_refusal(
        req(), JobOrigin(user_id=1), reason=RefusalReason.BANNED_WORD, message="no"
    )
    assert refused == await repos.generations.get(refused.id)
    assert refused.refusal_reason == RefusalReason.BANNED_WORD


async def test_audit_log(repos, clock):
    """Moderator actions are kept with who, what, target, reason, details and time."""
    await repos.audit.add(1, 9, "ban", target_user_id=2, reason="spam", details={"duration": "1h"})
    clock.advance(1)
    await repos.audit.add(1, 8, "word_add", details={"word": "owl"})
    await repos.audit.add(2, 9, "pause")
    entries = await repos.audit.entries(1)
    assert [e.action for e in entries] == ["word_add", "ban"]
    ban = entries[1]
    assert (ban.actor_id, ban.target_user_id, ban.reason, ban.details) == (
        9,
        2,
        "spam",
        {"duration": "1h"},
    )
    assert ban.created_at == datetime.fromtimestamp(T0, UTC)
    assert [e.action for e in await repos.audit.entries(1, actor_id=9)] == ["ban"]
    assert [e.action for e in await repos.audit.entries(1, action="word_add")] == ["word_add"]
    assert len(await repos.audit.entries(1, limit=1, offset=1)) == 1


async def test_guild_settings_and_state(repos):
    """Per-server safety mode and log channel; global state survives in the store."""
    settings = await repos.guilds.settings(5)
    assert (settings.safety_mode, settings.log_channel_id) == ("withhold", None)
    assert (await repos.guilds.set_safety_mode(5, "spoiler")).safety_mode == "spoiler"
    assert (await repos.guilds.set_log_channel(5, 123)).log_channel_id == 123
    assert (await repos.guilds.settings(5)).safety_mode == "spoiler"
    with pytest.raises(StoreError):
        await repos.guilds.set_safety_mode(5, "blur")
    assert await repos.state.get("queue.paused") is None
    await repos.state.set("queue.paused", "1")
    assert await repos.state.get("queue.paused") == "1"
    await repos.state.set("queue.paused", None)
    assert await repos.state.get("queue.paused", "0") == "0"


async def test_daily_count_uses_the_utc_day(repos, clock):
    """The quota counts today's accepted requests (UTC), not refusals or unstarted cancels."""
    clock.now = datetime(2030, 5, 17, 23, 59, tzinfo=UTC).timestamp()
    await finished(repos, 1)
    await repos.generations.create(req(), JobOrigin(user_id=1))
    cancelled = await repos.generations.create(req(), JobOrigin(user_id=1))
    await repos.generations.mark_cancelled(cancelled.id)
    failed = await repos.generations.create(req(), JobOrigin(user_id=1))
    await repos.generations.mark_failed(failed.id, "boom")
    await repos.generations.log_refusal(
        req(), JobOrigin(user_id=1), reason="over_quota", message="x"
    )
    await repos.generations.create(req(), JobOrigin(user_id=2))
    assert await repos.generations.count_today(1) == 2
    clock.advance(60)  # 00:00 UTC the next day
    assert await repos.generations.count_today(1) == 0
    await repos.generations.create(req(), JobOrigin(user_id=1))
    assert await repos.generations.count_today(1) == 1


async def test_export_has_one_row_per_image(repos, clock):
    """The CSV export: one row per image with recipe and outcome; refusals as image-less rows."""
    two = await finished(repos, 1, count=2, nsfw={1}, guild_id=5, user_name="ada")
    clock.advance(100)
    refused = await repos.generations.log_refusal(
        req(prompt="nope"), JobOrigin(user_id=2, guild_id=5), reason="banned_user", message="x"
    )
    await finished(repos, 3, guild_id=6)
    rows = await repos.export.export_rows(guild_id=5)
    assert [(r["generation_id"], r["image_index"]) for r in rows] == [
        (two.id, 0),
        (two.id, 1),
        (refused.id, None),
    ]
    assert all(list(r) == list(EXPORT_COLUMNS) for r in rows)
    first = rows[0]
    assert (first["prompt"], first["seed"], first["steps"], first["width"]) == (
        "a watercolor fox",
        7,
        4,
        64,
    )
    assert (first["status"], first["image_seed"], first["image_file"], first["user_name"]) == (
        "done",
        7,
        f"{two.id}_0.png",
        "ada",
    )
    assert (rows[1]["image_flagged"], rows[1]["image_review"]) == (1, "pending")
    assert (rows[2]["status"], rows[2]["refusal_reason"]) == ("blocked", "banned_user")
    images_only = await repos.export.export_rows(guild_id=5, include_imageless=False)
    assert len(images_only) == 2
    assert len(await repos.export.export_rows(since=T0 + 50)) == 2
    # It writes and parses as CSV.
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    parsed = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert len(parsed) == 3 and parsed[0]["prompt"] == "a watercolor fox"


async def test_export_writes_discord_ids_as_text_that_reads_back_exactly(repos):
    """Snowflakes survive a reader that turns bare numbers into floats (as spreadsheets do):
    read back with the csv module's number typing, every id is a string with all 19 digits."""
    user, guild, channel, message, deleter = (
        1234567890123456789,
        987654321098765432,
        1111111111111111111,
        1357924680135792468,
        1999999999999999999,
    )
    gen = await finished(repos, user, guild_id=guild, channel_id=channel)
    await repos.generations.mark_delivered(gen.id, channel_id=channel, message_id=message)
    await repos.generations.mark_deleted(gen.id, by=deleter)
    refused = await repos.generations.log_refusal(
        req(prompt="=1+1"), JobOrigin(user_id=user, guild_id=guild), reason="paused", message="x"
    )
    data, count = csv_bytes(await repos.export.export_rows(guild_id=guild), EXPORT_COLUMNS)
    assert count == 2
    # QUOTE_NONNUMERIC reads an unquoted field as a float, as a spreadsheet reads a bare number.
    reader = csv.reader(
        io.StringIO(data.decode("utf-8-sig"), newline=""), quoting=csv.QUOTE_NONNUMERIC
    )
    header, *rows = list(reader)
    assert tuple(header) == EXPORT_COLUMNS
    expected = {
        "user_id": user,
        "guild_id": guild,
        "channel_id": channel,
        "message_id": message,
        "deleted_by": deleter,
    }
    assert set(expected) == SNOWFLAKE_COLUMNS
    first, second = (dict(zip(header, row, strict=True)) for row in rows)
    for column, value in expected.items():
        cell = first[column]
        assert isinstance(cell, str), f"{column} came back as {cell!r}"
        assert cell == f'="{value}"' and cell[2:-1] == str(value)
    assert second["user_id"] == f'="{user}"' and second["message_id"] == ""
    # Numbers stay numbers, and member text is still defused, not mistaken for an id.
    assert first["generation_id"] == gen.id and first["steps"] == 4
    assert second["generation_id"] == refused.id and second["prompt"] == "'=1+1"


async def test_export_pages_through_many_rows(repos):
    """The export streams in chunks without skipping or repeating rows."""
    for i in range(25):
        await repos.generations.create(req(prompt=f"p{i}"), JobOrigin(user_id=i))
    rows = [row async for row in repos.export.rows(chunk=7)]
    assert [r["prompt"] for r in rows] == [f"p{i}" for i in range(25)]


async def test_concurrent_writers_share_one_connection_safely(repos):
    """Many coroutines writing at once get distinct ids and consistent rows."""
    gens = await asyncio.gather(
        *(
            repos.generations.create(req(prompt=f"p{i}"), JobOrigin(user_id=i % 3))
            for i in range(40)
        )
    )
    assert len({g.id for g in gens}) == 40
    await asyncio.gather(
        *(repos.generations.mark_running([g.id]) for g in gens[:20]),
        *(repos.generations.mark_cancelled(g.id) for g in gens[20:]),
    )
    statuses = [g.status for g in await repos.generations.get_many([g.id for g in gens])]
    assert statuses == ["running"] * 20 + ["cancelled"] * 20


async def test_load_result_rebuilds_from_files(repos):
    """A finished job's result can be rebuilt for redelivery after a restart."""
    gen = await finished(repos, 1, count=2, nsfw={0})
    result = await repos.images.load_result(gen)
    assert result.ok and result.job_id == str(gen.id)
    assert [(i.index, i.seed, i.nsfw) for i in result.images] == [(0, 7, True), (1, 8, False)]
    assert result.images[1].png == png(gen.id * 10 + 1)
