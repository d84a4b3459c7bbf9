"""The vocabulary: every enum's values are what the database stores and admits."""

from __future__ import annotations

import re
import sqlite3

import pytest

from bot.db import Database
from bot.domain import AuditAction, Kind, RefusalReason, ReviewState, SafetyMode, Status


async def _schema(tmp_path) -> dict[str, str]:
    async with Database.open(tmp_path / "easel.sqlite3"):
        pass
    with sqlite3.connect(tmp_path / "easel.sqlite3") as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))


def _check_values(sql: str, column: str) -> set[str]:
    match = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", sql)
    assert match, f"no CHECK on {column}"
    return set(re.findall(r"'([a-z_]+)'", match.group(1)))


async def test_every_kind_is_in_the_kinds_table(tmp_path):
    """A new Kind member needs its migration: the kinds table lists exactly the enum's values."""
    await _schema(tmp_path)
    with sqlite3.connect(tmp_path / "easel.sqlite3") as conn:
        stored = {row[0] for row in conn.execute("SELECT name FROM kinds")}
    assert stored == {kind.value for kind in Kind}


async def test_checks_admit_exactly_the_enums(tmp_path):
    """The CHECK constraints of the latest schema and the enums name the same values."""
    tables = await _schema(tmp_path)
    assert _check_values(tables["generations"], "status") == {s.value for s in Status}
    assert _check_values(tables["generations"], "review") == {s.value for s in ReviewState}
    assert _check_values(tables["images"], "review") == {s.value for s in ReviewState}
    assert _check_values(tables["guild_settings"], "safety_mode") == {m.value for m in SafetyMode}


async def test_an_unknown_kind_is_refused_by_the_database(tmp_path):
    """The kinds table is a foreign key: a row with a kind nobody added cannot be written."""
    async with Database.open(tmp_path / "easel.sqlite3") as db:
        with pytest.raises(sqlite3.IntegrityError):
            await db.write(
                "INSERT INTO generations (user_id, kind, prompt, recipe, status, created_at) "
                "VALUES (1, 'paint', 'x', '{}', 'queued', 0)"
            )


@pytest.mark.parametrize(
    "enum", [Status, Kind, RefusalReason, ReviewState, SafetyMode, AuditAction]
)
def test_every_member_has_words(enum):
    """Members compare equal to their stored value and carry a label people read."""
    for member in enum:
        assert member == member.value and isinstance(member, str)
        assert member.label and member.label.strip() == member.label


def test_blocked_reads_refused():
    """Stored as 'blocked', shown to people as refused."""
    assert Status.BLOCKED == "blocked" and "refused" in Status.BLOCKED.label
