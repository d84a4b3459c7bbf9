"""`python -m bot`: the composition root.

settings → database → repositories → workers → scheduler → services → client.

Start-up checks the cheap things first, so a mistake is one line and not minutes of waiting:
the settings, the data folder and the database (read before anything writes), the Discord
token, and only then the model. SIGTERM stops it within seconds at any moment: a running job
stays `running` in the database and runs again at the next start, as after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import discord

from inference.backend import WorkerBackend
from inference.engine import ModelLoadError
from inference.pool import LocalPool

from .db import Database, Repositories, StoreError
from .db.database import ensure_writable_folder
from .queue import Scheduler, WorkerLike
from .services import Services
from .settings import Settings, SettingsError, load_settings
from .ui.client import EaselBot
from .ui.endpoints import point_discord_py_at
from .ui.logchannel import LogChannel

log = logging.getLogger("bot")

NO_TOKEN = """\
Easel needs a Discord bot token (DISCORD_TOKEN) and none is set.
  1. https://discord.com/developers/applications → New Application; open Bot → Reset Token, copy it.
  2. Put it in a file named .env where you run Easel:  DISCORD_TOKEN=<the token>
     (template: config/.env.example; DISCORD_GUILD_ID=<server id> makes commands appear at once).
  3. Invite it: OAuth2 → URL Generator → scopes bot + applications.commands; permissions View
     Channels, Send Messages, Embed Links, Attach Files, Read Message History (117760).
Then run `python -m bot` again."""

BAD_TOKEN = (
    "Discord rejected DISCORD_TOKEN; reset the bot token in the developer portal and put the new "
    "one in .env."
)
# Seconds the worker gets to stop after SIGTERM before it is killed.
STOP_GRACE = 3.0


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the user sees."""


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    # At DEBUG these log request URLs, which carry interaction tokens.
    for name in ("discord.http", "discord.webhook"):
        logging.getLogger(name).setLevel(logging.INFO)
    # "logging in using static token" and the like: a failed start stays one line.
    logging.getLogger("discord.client").setLevel(logging.WARNING)


def build_workers(
    settings: Settings, *, expected_load_seconds: float | None = None
) -> WorkerBackend:
    """The local pool (one process per device) or the Ray cluster's GPUs, not yet started."""
    w = settings.workers
    if w.backend == "ray":
        from inference.ray_backend import RayPool  # Ray is an optional extra

        ray = RayPool(
            settings.engine,
            address=w.ray_address,
            resource=w.ray_resource,
            poll_seconds=w.ray_poll_seconds,
            start_timeout=settings.model.load_timeout,
            restart_delay=w.restart_delay,
        )
        ray.expected_load_seconds = expected_load_seconds
        return ray
    return LocalPool(
        settings.engine,
        settings.worker_devices,
        start_timeout=settings.model.load_timeout,
        restart_delay=w.restart_delay,
        expected_load_seconds=expected_load_seconds,
    )


def build_scheduler(
    settings: Settings, repos: Repositories, worker: WorkerBackend | WorkerLike
) -> Scheduler:
    q = settings.queue
    return Scheduler(
        repos,
        worker,
        max_batch=q.batch_size,
        # Cost is pixels × steps × images; the setting is in megapixel-steps per second.
        initial_cost_per_second=q.initial_mpix_steps_per_second * 1e6,
        batch_window=q.batch_window_ms / 1000,
    )


def build_bot(
    settings: Settings,
    repos: Repositories,
    worker: WorkerBackend | WorkerLike,
    http_session: aiohttp.ClientSession | None = None,
) -> EaselBot:
    """Scheduler → services → client, over opened repositories and the workers (a pool, or one
    lone worker; the client's setup hook starts them if they are not yet, and their safety
    checker also screens uploads)."""
    scheduler = build_scheduler(settings, repos, worker)
    log_channel = LogChannel(repos, settings.discord.log_channel_id)
    workers = scheduler.workers
    services = Services.build(
        settings,
        repos,
        scheduler,
        log_channel,
        native_size=lambda: workers.native_size,
        screener=workers,
        lab_info=lambda: _lab_info(workers),
    )
    return EaselBot(settings, repos, scheduler, services, log_channel, worker, http_session)


def _lab_info(workers: WorkerBackend) -> Mapping[str, Any]:
    """What the workers' lab can do (their Ready message's "lab" entry)."""
    lab = workers.info.get("lab")
    return lab if isinstance(lab, Mapping) else {}


class _Termination:
    """SIGTERM, from the first moment: cancel everything, without waiting for a batch.

    Python 3.11's `asyncio.wait_for` drops a cancellation that arrives as its awaitable
    finishes (fixed in 3.12), and discord.py connects through one: a SIGTERM at the moment
    the gateway answered would be lost and the bot would run on. So while the task is in a
    stretch that holds no clean-up of its own (`interruptible`), the cancellation is repeated
    until it lands."""

    RETRY_SECONDS = 0.25

    def __init__(self) -> None:
        self.requested = False
        self.bot: EaselBot | None = None
        self._task = asyncio.current_task()
        self._interruptible = False

    def install(self) -> None:
        with contextlib.suppress(NotImplementedError):  # not on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._terminate)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch where cancelling again is harmless (nothing to clean up half-way)."""
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _terminate(self) -> None:
        if self.requested:
            return
        self.requested = True
        log.info("SIGTERM: stopping (a running job runs again at the next start)")
        if self.bot is not None:
            self.bot.close_grace = 0.0
        self._cancel()

    def _cancel(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        asyncio.get_running_loop().call_later(self.RETRY_SECONDS, self._cancel_if_lost)

    def _cancel_if_lost(self) -> None:
        # Still where the cancellation was sent: it was dropped. Unless the bot is closing
        # (discord.py's connect() closes it on some gateway errors): that is a clean-up.
        if self._interruptible and not (self.bot is not None and self.bot.closing):
            self._cancel()


async def login(bot: EaselBot, settings: Settings) -> None:
    """Log in, or the one line that says why Discord could not be reached."""
    try:
        await bot.login(settings.discord_token)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise StartupError(
            f"Cannot reach Discord at {settings.discord.api_base} ({error}); check "
            "the network (and DISCORD_API_BASE)."
        ) from None
    except discord.DiscordServerError as error:
        raise StartupError(
            f"Discord answered {error.status} at start-up; try again in a minute."
        ) from None


async def run(settings: Settings, termination: _Termination | None = None) -> None:
    """Online as soon as Discord accepts the token, while the model loads; jobs queue
    meanwhile. A model that cannot load stops the bot with its one-line reason."""
    termination = termination or _Termination()
    termination.install()
    point_discord_py_at(settings.discord.api_base, settings.discord.gateway_url)
    ensure_writable_folder(settings.data.dir)
    ensure_writable_folder(settings.images_dir, "image folder")
    async with Database.open(settings.database_path) as db:
        repos = Repositories.on(db, images_dir=settings.images_dir)
        # Started by the bot's setup hook, once Discord has accepted the token; how long the
        # last load took makes "the model is loading, about N s".
        workers = build_workers(
            settings, expected_load_seconds=await repos.state.load_seconds(settings.model.id)
        )
        try:
            async with (
                aiohttp.ClientSession() as http_session,
                build_bot(settings, repos, workers, http_session) as bot,
            ):
                termination.bot = bot
                with termination.interruptible():
                    await login(bot, settings)
                    await bot.connect()
                if bot.startup_error is not None:  # the model could not load
                    raise bot.startup_error
        finally:
            await workers.stop(grace=STOP_GRACE if termination.requested else 10.0)


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"easel: {error}", file=sys.stderr)
        return 2
    if not settings.discord_token:
        print(NO_TOKEN, file=sys.stderr)
        return 1
    setup_logging()
    try:
        asyncio.run(run(settings))
    except discord.LoginFailure:
        print(f"easel: {BAD_TOKEN}", file=sys.stderr)
        return 1
    except (ModelLoadError, StoreError, StartupError) as error:
        print(f"easel: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: a clean stop
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
