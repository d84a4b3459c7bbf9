"""Running a real discord.py client against a :class:`FakeDiscord`, and failing on its errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import discord

    from .server import FakeDiscord


@contextlib.contextmanager
def point_discord_py_at(fd: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST base and gateway URL at ``fd`` (process-wide); restore after."""
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fd.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fd.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


async def start_bot(
    bot: discord.Client,
    fd: FakeDiscord,
    *,
    token: str | None = None,
    guild_ready_timeout: float = 0.1,
    timeout: float = 10.0,
) -> asyncio.Task[None]:
    """Run ``bot.start(token)`` in a task and return it once the bot is ready (``on_ready`` fired).

    Call inside :func:`point_discord_py_at`. If the bot fails to start, its exception is raised.
    """
    bot._connection.guild_ready_timeout = guild_ready_timeout
    task = asyncio.create_task(
        bot.start(token if token is not None else fd.token or "fake-token"), name="bot"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not bot.is_ready():
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("bot.start() returned before the bot was ready")
        if loop.time() > deadline:
            await stop_bot(bot, task)
            raise TimeoutError(f"bot was not ready after {timeout}s")
        await asyncio.sleep(0.01)
    return task


async def stop_bot(bot: discord.Client, task: asyncio.Task[None], *, timeout: float = 10.0) -> None:
    """Close the bot and wait for its ``start()`` task to finish (re-raising what it raised)."""
    await bot.close()
    await asyncio.wait_for(task, timeout)


@contextlib.asynccontextmanager
async def running_bot(
    bot: discord.Client, fd: FakeDiscord, **kwargs: float | str | None
) -> AsyncIterator[discord.Client]:
    """``async with running_bot(bot, fd):`` = point discord.py at ``fd``, start, yield, stop.

    Stop the bot before the fake (nest this inside ``async with FakeDiscord()``), otherwise the bot
    sees its server vanish and logs reconnect errors.
    """
    with point_discord_py_at(fd):
        task = await start_bot(bot, fd, **kwargs)  # type: ignore[arg-type]
        try:
            yield bot
        finally:
            await stop_bot(bot, task)


class DiscordErrorWatcher(logging.Handler):
    """Collect ERROR (and worse) records from the ``discord`` and ``fakediscord`` loggers.

    discord.py logs exceptions raised in event handlers, views and commands instead of raising
    them, so a test must look at the log. Use as a context manager (it raises AssertionError on
    exit if anything was logged) or call :meth:`check` yourself::

        with fail_on_discord_errors():
            ...
        with fail_on_discord_errors("discord", "fakediscord", "bot") as errors:
            ...; errors.records  # the collected LogRecords
    """

    def __init__(self, *loggers: str, level: int = logging.ERROR) -> None:
        super().__init__(level)
        self.logger_names = loggers or ("discord", "fakediscord")
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def install(self) -> DiscordErrorWatcher:
        for name in self.logger_names:
            logging.getLogger(name).addHandler(self)
        return self

    def uninstall(self) -> None:
        for name in self.logger_names:
            logging.getLogger(name).removeHandler(self)

    def check(self) -> None:
        if self.records:
            text = "\n".join(self.format(r) for r in self.records)
            raise AssertionError(f"{len(self.records)} error(s) were logged:\n{text}")

    def clear(self) -> None:
        self.records.clear()

    def __enter__(self) -> DiscordErrorWatcher:
        return self.install()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.uninstall()
        if exc_type is None:
            self.check()


fail_on_discord_errors = DiscordErrorWatcher
"""``with fail_on_discord_errors(): ...`` reads best at the call site; same class."""
