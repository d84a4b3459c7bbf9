"""`python -m bot`: the composition root.

settings → database → repositories → worker → scheduler → services → client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import discord

from inference.engine import ModelLoadError
from inference.worker import Worker

from .db import Database, Repositories, StoreError
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


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    # At DEBUG these log request URLs, which carry interaction tokens.
    for name in ("discord.http", "discord.webhook"):
        logging.getLogger(name).setLevel(logging.INFO)


def build_scheduler(settings: Settings, repos: Repositories, worker: WorkerLike) -> Scheduler:
    q = settings.queue
    return Scheduler(
        repos,
        worker,
        max_batch=q.batch_size,
        # Cost is pixels × steps × images; the setting is in megapixel-steps per second.
        initial_cost_per_second=q.initial_mpix_steps_per_second * 1e6,
        batch_window=q.batch_window_ms / 1000,
    )


def build_bot(settings: Settings, repos: Repositories, worker: Worker) -> EaselBot:
    """Scheduler → services → client, over opened repositories and a started worker."""
    scheduler = build_scheduler(settings, repos, worker)
    log_channel = LogChannel(repos, settings.discord.log_channel_id)
    services = Services.build(
        settings, repos, scheduler, log_channel, native_size=lambda: worker.native_size
    )
    return EaselBot(settings, repos, scheduler, services, log_channel, worker)


async def run(settings: Settings) -> None:
    """Log in at once while the model loads in the worker; jobs queue meanwhile. A model that
    cannot load stops the bot with its one-line reason."""
    point_discord_py_at(settings.discord.api_base, settings.discord.gateway_url)
    async with Database.open(settings.database_path) as db:
        repos = Repositories.on(db, images_dir=settings.images_dir)
        load_key = f"load_seconds:{settings.model.id}"
        last_load = await repos.state.get(load_key)
        worker = Worker(
            settings.engine,
            start_timeout=settings.model.load_timeout,
            expected_load_seconds=float(last_load) if last_load else None,
        )
        log.info("Loading %s on %s in the background …", settings.model.id, settings.model.device)
        worker.launch()
        try:
            async with build_bot(settings, repos, worker) as bot:
                loop = asyncio.get_running_loop()
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(
                        signal.SIGTERM, lambda: asyncio.ensure_future(bot.close())
                    )
                online = asyncio.create_task(bot.start(settings.discord_token))
                loading = asyncio.create_task(worker.wait_ready())
                await asyncio.wait({online, loading}, return_when=asyncio.FIRST_COMPLETED)
                failed = loading.exception() if loading.done() else None
                if failed is not None:
                    await bot.close()
                    with contextlib.suppress(Exception):
                        await online
                    raise failed
                if not loading.done():
                    loading.cancel()
                else:  # remembered for "the model is loading, about N s" next time
                    await repos.state.set(load_key, f"{worker.info['start_seconds']:.1f}")
                await online
        finally:
            await worker.stop()


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
        print(
            "easel: Discord rejected DISCORD_TOKEN; reset the bot token in the developer "
            "portal and put the new one in .env.",
            file=sys.stderr,
        )
        return 1
    except ModelLoadError as error:
        print(f"easel: {error}", file=sys.stderr)
        return 1
    except StoreError as error:
        print(f"easel: database: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
