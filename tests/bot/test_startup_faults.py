"""`python -m bot` meeting a broken world at start-up: one line, exit status ≠ 0, the database
file unchanged, no process left behind; and SIGTERM at any moment ends it within seconds.

Each test runs the real entry point in a subprocess, configured by environment and TOML as a
user would, against the fake Discord (so that a start-up that wrongly goes on would run).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bot.db import Database
from bot.db.database import latest_version
from tests.fakediscord import FakeDiscord

REPO = Path(__file__).resolve().parents[2]
MOUNT_RO = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def base_env(fd: FakeDiscord | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EASEL_", "DISCORD_", "HF_")) and "proxy" not in k.lower()
    }
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        EASEL_DEVICE="cpu",
        EASEL_DATA_DIR=str(tmp_path / "data"),
        # Every process of this run carries it: how "no process left behind" is checked.
        EASEL_TEST_RUN=uuid.uuid4().hex,
    )
    if fd is not None:
        env.update(
            DISCORD_TOKEN=fd.token or "token",
            DISCORD_GUILD_ID=str(fd.guild.id),
            DISCORD_API_BASE=fd.api_base,
            DISCORD_GATEWAY_URL=fd.gateway_url,
        )
    env.update(extra)
    return env


def processes_of(marker: str) -> list[int]:
    """Live processes whose environment carries this run's marker."""
    needle = f"EASEL_TEST_RUN={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


async def assert_nothing_left(marker: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while (left := processes_of(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, f"processes left behind: {left}"


async def run_bot(
    env: dict[str, str], cwd: Path, *, prefix: tuple[str, ...] = (), timeout: float = 60
) -> tuple[int, list[str]]:
    """Run `python -m bot` to its end; (exit status, stderr lines). A bot that does not stop
    by itself within `timeout` fails the test."""
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "bot",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        _, err = await process.communicate()
        pytest.fail(f"the bot kept running instead of stopping: {err.decode()[-2000:]}")
    await assert_nothing_left(env["EASEL_TEST_RUN"])
    assert process.returncode is not None
    return process.returncode, err.decode(errors="replace").strip().splitlines()


def one_line(code: int, lines: list[str]) -> str:
    """The only line on stderr: nothing was logged before the check failed."""
    assert code != 0, lines
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("easel: "), lines
    return lines[0]


def last_line(code: int, lines: list[str]) -> str:
    """The one line that says what is wrong, after (at most) INFO lines of the start-up."""
    assert code != 0, lines
    assert lines and lines[-1].startswith("easel: "), lines
    noise = [line for line in lines[:-1] if " INFO " not in line]
    assert not noise, "\n".join(lines)
    return lines[-1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def make_database(folder: Path) -> Path:
    """A database as Easel leaves it, with its image folder."""
    async with Database.open(folder / "easel.sqlite3"):
        pass
    (folder / "images").mkdir(exist_ok=True)
    return folder / "easel.sqlite3"


@functools.cache
def read_only_mount() -> tuple[str, ...] | None:
    """A command prefix that runs a command with folder `$1` mounted read-only, or None.

    A read-only bind mount in a private mount namespace (`unshare`): as root directly, else in
    a user namespace. It is a real read-only file system (EROFS), which stops root too (root
    ignores permission bits, so chmod would test nothing), and it vanishes with the process.
    """
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"easel-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        for userns in ((), ("--user", "--map-root-user")):
            prefix = ("unshare", *userns, "--mount", "--propagation", "private", "--")
            if shutil.which("unshare") is None:
                return None
            command = [*prefix, "sh", "-c", MOUNT_RO, "sh", str(probe)]
            command += ["sh", "-c", f'! touch "{probe}/x" 2>/dev/null']
            try:
                done = subprocess.run(command, capture_output=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0 and not (probe / "x").exists():
                return prefix
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def read_only(folder: Path) -> tuple[str, ...]:
    """Run the bot with `folder` read-only (see `read_only_mount`); skip where impossible."""
    prefix = read_only_mount()
    if prefix is None:
        if os.geteuid() != 0:  # without root, permission bits are enough
            folder.chmod(0o555)
            for child in folder.rglob("*"):
                child.chmod(0o555 if child.is_dir() else 0o444)
            return ()
        pytest.skip("needs unshare and mount (mount namespaces) to make a read-only folder")
    return (*prefix, "sh", "-c", MOUNT_RO, "sh", str(folder))


@pytest.fixture
async def fd():
    async with FakeDiscord() as server:
        yield server


# -- 3, 4: the data folder -----------------------------------------------------------------------


async def test_read_only_data_folder_refuses_to_start(fd, tmp_path, tiny_model_dir):
    """A data folder (with its database) that cannot be written: one line, nothing changed."""
    data = tmp_path / "data"
    database = await make_database(data)
    before = digest(database)
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir)
    code, lines = await run_bot(env, tmp_path, prefix=read_only(data))
    line = one_line(code, lines)
    assert str(data) in line and "not writable" in line
    assert digest(database) == before


async def test_data_folder_under_a_read_only_file_system(fd, tmp_path, tiny_model_dir):
    """EASEL_DATA_DIR inside a read-only file system: one line, no traceback."""
    parent = tmp_path / "readonly"
    parent.mkdir()
    data = parent / "easel" / "data"
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir, EASEL_DATA_DIR=str(data))
    code, lines = await run_bot(env, tmp_path, prefix=read_only(parent))
    line = one_line(code, lines)
    assert f"Cannot create the data folder {data}" in line
    assert not (parent / "easel").exists()


# -- 6, 7: the database file ---------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "header":
        data[:100] = b"\xa5" * 100
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:  # garbled pages: every page after the first two overwritten with noise
        page = 4096
        for start in range(2 * page, len(data), page):
            data[start : start + page] = bytes((i * 37 + 11) % 256 for i in range(page))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["header", "truncated", "garbled"])
async def test_damaged_database_is_named_and_left_alone(fd, tmp_path, tiny_model_dir, how):
    """A corrupted database file: one line naming it and saying to restore the backup."""
    database = await make_database(tmp_path / "data")
    conn = sqlite3.connect(database)  # enough rows for several pages, all in the file
    conn.execute("CREATE TABLE padding (x TEXT)")
    conn.executemany("INSERT INTO padding VALUES (?)", [("x" * 500,)] * 200)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    damage(database, how)
    before = digest(database)
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir)
    code, lines = await run_bot(env, tmp_path)
    line = one_line(code, lines)
    assert str(database) in line and "restore it from your backup" in line
    assert digest(database) == before


async def test_database_from_a_newer_easel_is_refused_before_any_write(
    fd, tmp_path, tiny_model_dir
):
    """user_version too high: refused, and the file is not touched (no switch to WAL)."""
    database = tmp_path / "data" / "easel.sqlite3"
    database.parent.mkdir()
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE future (x INTEGER)")
        conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    before = digest(database)
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir)
    code, lines = await run_bot(env, tmp_path)
    assert digest(database) == before
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    line = one_line(code, lines)
    assert "upgrade Easel" in line and str(database) in line


# -- 8: the configuration and Discord ------------------------------------------------------------


@pytest.mark.parametrize("case", ["folder", "not utf-8", "discord unreachable"])
async def test_config_and_discord_problems_are_one_line(fd, tmp_path, tiny_model_dir, case):
    """EASEL_CONFIG naming a folder or a non-UTF-8 file; the Discord API unreachable."""
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir)
    if case == "folder":
        (tmp_path / "conf").mkdir()
        env["EASEL_CONFIG"] = str(tmp_path / "conf")
        expected = "is a folder"
    elif case == "not utf-8":
        (tmp_path / "easel.toml").write_bytes('[data]\ndir = "caf\xe9"\n'.encode("latin-1"))
        env["EASEL_CONFIG"] = str(tmp_path / "easel.toml")
        expected = "is not UTF-8"
    else:
        env["DISCORD_API_BASE"] = f"http://127.0.0.1:{closed_port()}/api/v10"
        expected = "Cannot reach Discord"
    code, lines = await run_bot(env, tmp_path)
    assert expected in last_line(code, lines)


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_model_that_cannot_load_stops_the_bot_with_one_line(fd, tmp_path):
    """The bot logs in while the model loads; when loading fails it says why and exits 1."""
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    env = base_env(fd, tmp_path, EASEL_MODEL=str(not_a_model))
    code, lines = await run_bot(env, tmp_path, timeout=90)
    assert code == 1
    assert "is not a diffusers model folder" in lines[-1] and lines[-1].startswith("easel: ")
    assert "Traceback" not in "\n".join(lines)


# -- 9: a hub model without a network ------------------------------------------------------------


@pytest.mark.parametrize("model", [None, "someone/some-model"])
async def test_hub_model_without_network_is_one_clear_sentence(fd, tmp_path, model):
    """No cached copy and no hub: one sentence that says so, no warnings or retries."""
    env = base_env(fd, tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    del env["HF_HUB_OFFLINE"]  # a machine that is simply offline
    if model is not None:
        env["EASEL_MODEL"] = model
    started = time.monotonic()
    code, lines = await run_bot(env, tmp_path)
    assert code != 0
    final = [line for line in lines if line.startswith("easel: ")]
    assert len(final) == 1 and "cannot be reached" in final[0], lines
    assert "model_index.json" not in final[0]
    noise = [line for line in lines if " INFO " not in line and line not in final]
    assert not noise, "\n".join(noise)
    assert len(set(lines)) == len(lines), "a line was printed twice"
    assert time.monotonic() - started < 30  # not half a minute of retries


# -- 10: SIGTERM and the token -------------------------------------------------------------------


async def start(env: dict[str, str], cwd: Path, log: Path) -> asyncio.subprocess.Process:
    handle = log.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=cwd, env=env, stdout=handle, stderr=handle
        )
    finally:
        handle.close()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def terminate(process: asyncio.subprocess.Process, log: Path) -> float:
    """SIGTERM; seconds until the bot exited (it must, within 20 s)."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"SIGTERM did not stop the bot: {tail(log)}")
    return time.monotonic() - sent


async def test_sigterm_while_the_model_loads_leaves_nothing(fd, tmp_path, tiny_model_dir):
    """SIGTERM while the worker loads the model: the bot and the worker are gone at once."""
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir)
    log = tmp_path / "bot.log"
    process = await start(env, tmp_path, log)
    marker = env["EASEL_TEST_RUN"]
    deadline = time.monotonic() + 60
    while len(processes_of(marker)) < 2:  # the worker has been spawned
        assert time.monotonic() < deadline and process.returncode is None, tail(log)
        await asyncio.sleep(0.02)
    assert "ready in" not in tail(log)  # still loading
    took = await terminate(process, log)
    await assert_nothing_left(marker, within=1.0)
    assert took < 5, f"{took:.1f} s"
    assert process.returncode == 0, tail(log)
    assert "Traceback" not in tail(log) and " ERROR " not in tail(log), tail(log)


async def test_sigterm_with_a_job_running_exits_within_seconds(fd, tmp_path, tiny_model_dir):
    """SIGTERM while a long job runs: out within a few seconds, the job kept for next time."""
    config = tmp_path / "easel.toml"
    config.write_text("[generation]\nmax_steps = 500\n")
    env = base_env(fd, tmp_path, EASEL_MODEL=tiny_model_dir, EASEL_CONFIG=str(config))
    log = tmp_path / "bot.log"
    process = await start(env, tmp_path, log)
    try:
        await fd.wait_for_commands("imagine", guild=fd.guild, timeout=60)
        await fd.wait_for_bot(timeout=30)
        member = fd.add_member("student")
        handle = await fd.invoke(
            member, "imagine", {"prompt": "a long night", "steps": 500, "count": 4}
        )
        await handle.response(timeout=10)
        await handle.wait_for_message(lambda m: "step " in (m.content or ""), timeout=60)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    took = await terminate(process, log)
    await assert_nothing_left(env["EASEL_TEST_RUN"], within=1.0)
    assert took < 5, f"{took:.1f} s"
    assert "Traceback" not in tail(log) and " ERROR " not in tail(log), tail(log)
    with sqlite3.connect(tmp_path / "data" / "easel.sqlite3") as conn:
        (status,) = conn.execute("SELECT status FROM generations").fetchone()
    assert status == "running"  # queued again by the next start, as after a crash


async def test_bad_token_is_reported_before_the_model_loads(fd, tmp_path):
    """A rejected token is the one line, even when the model would not load either."""
    env = base_env(fd, tmp_path, EASEL_MODEL=str(tmp_path / "no-such-model"))
    env["DISCORD_TOKEN"] = "not-the-token"
    code, lines = await run_bot(env, tmp_path)
    assert "Discord rejected DISCORD_TOKEN" in last_line(code, lines)
