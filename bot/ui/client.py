"""The Discord client: owns nothing heavy itself; the database, the worker, the scheduler and
the services are made in `main()` and handed in (discord.py's advanced start-up pattern). It
loads the feature extensions, registers the persistent buttons and listens to the queue."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time

import aiohttp
import discord
from discord.ext import commands

from bot.db import Repositories
from bot.queue import Scheduler, WorkerLike
from bot.services import Services
from bot.settings import Settings
from inference.backend import WorkerBackend
from inference.engine import ModelLoadError

from .actions import Actions
from .buttons import PERSISTENT_ITEMS
from .delivery import Delivery
from .errors import NO_PINGS, EaselTree
from .logchannel import LogChannel

log = logging.getLogger(__name__)

# One module per feature; each has `async def setup(bot)`.
EXTENSIONS = (
    "bot.cogs.imagine",
    "bot.cogs.queue",
    "bot.cogs.lineage",
    "bot.cogs.moderation",
    "bot.cogs.lab",
)


class EaselBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        repos: Repositories,
        scheduler: Scheduler,
        services: Services,
        log_channel: LogChannel,
        worker: WorkerBackend | WorkerLike | None = None,
        http_session: aiohttp.ClientSession | None = None,
    ):
        # Easel never joins voice: skip discord.py's warnings about voice libraries.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.none()
        intents.guilds = True  # channel and role caches: permissions, upload limits
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=EaselTree,
            # A server's queue, log and moderators: Easel's commands live in servers, not DMs.
            allowed_contexts=discord.app_commands.AppCommandContext(
                guild=True, dm_channel=False, private_channel=False
            ),
            allowed_mentions=NO_PINGS,
            help_command=None,
        )
        self.settings = settings
        self.repos = repos
        self.scheduler = scheduler
        self.services = services
        self.worker = worker
        # For downloading uploads; made in main() and handed in, else the bot makes its own.
        self.http_session = http_session
        self._owns_http_session = False
        self.log_channel = log_channel
        log_channel.attach(self)
        self.delivery = Delivery(self, settings, repos, services, scheduler, modlog=log_channel)
        self.actions = Actions(
            settings, repos, services, self.delivery, http_session=lambda: self.http_session
        )
        self.synced_commands: list[discord.app_commands.AppCommand] = []
        # Seconds `close()` waits for a running batch; 0 on SIGTERM (it runs again next time).
        self.close_grace = 5.0
        # Set when close() begins (SIGTERM's handler must not cancel it half-way).
        self.closing = False
        self._loading: asyncio.Task[None] | None = None
        # Why the bot stopped by itself at start-up (the model could not load), if it did.
        self.startup_error: ModelLoadError | None = None

    async def setup_hook(self) -> None:
        if self.http_session is None:
            self.http_session = aiohttp.ClientSession()
            self._owns_http_session = True
        for name in EXTENSIONS:
            if importlib.util.find_spec(name) is not None:
                await self.load_extension(name)
        self.add_dynamic_items(*PERSISTENT_ITEMS)
        self.scheduler.add_listener(self.delivery)
        recovered = await self.scheduler.recover()
        await self.scheduler.start()
        if recovered:
            log.info("Picked up %d job(s) left from the last run", len(recovered))
        guild_id = self.settings.discord.guild_id
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            self.synced_commands = await self.tree.sync(guild=guild)
            log.info("Synced %d commands to server %s", len(self.synced_commands), guild_id)
        else:
            self.synced_commands = await self.tree.sync()
            log.info(
                "Synced %d commands globally (they can take a while to appear)",
                len(self.synced_commands),
            )
        # discord.py calls this after the token was accepted: a bad token is reported at once,
        # not after minutes of loading the model, which starts now, last. Easel is online
        # meanwhile: jobs queue ("the model is loading, about N s") and start once a worker is
        # ready.
        if not self.scheduler.workers.started:
            where = (
                f"the Ray cluster at {self.settings.workers.ray_address}"
                if self.settings.workers.backend == "ray"
                else ", ".join(self.settings.worker_devices)
            )
            log.info("Loading %s on %s in the background …", self.settings.model.id, where)
            self._loading = asyncio.create_task(self._load_model(), name="easel-load-model")

    async def _load_model(self) -> None:
        """Start the workers; remember how long loading took, or stop the bot if the model
        cannot load (`startup_error` is the one line `python -m bot` prints)."""
        started = time.monotonic()
        try:
            await self.scheduler.workers.start()  # once the first worker is ready
        except ModelLoadError as error:
            self.startup_error = error
            await self.close()
            return
        await self.repos.state.set_load_seconds(self.settings.model.id, time.monotonic() - started)

    async def on_ready(self) -> None:
        log.info(
            "Connected as %s (%s) to %d server(s)",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
        )

    async def on_guild_available(self, guild: discord.Guild) -> None:
        await self.services.words.prepare_guild(guild.id)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.services.words.prepare_guild(guild.id)

    async def close(self) -> None:
        self.closing = True
        # Closing while discord.py still waits for the servers' data (up to guild_ready_timeout
        # after connecting) would let that wait dispatch on_ready into a closed client.
        ready_task = getattr(self._connection, "_ready_task", None)
        if ready_task is not None:
            ready_task.cancel()
        loading = self._loading
        if loading is not None and not loading.done() and loading is not asyncio.current_task():
            loading.cancel()  # the workers' own stop() ends what they had started
        await self.scheduler.stop(grace=self.close_grace)
        await self.delivery.close()
        await self.log_channel.close(grace=3.0 if self.close_grace else 1.0)
        if self._owns_http_session and self.http_session is not None:
            await self.http_session.close()
            self.http_session = None
        await super().close()
        # discord.py leaves its "wait for the guilds, then on_ready" task running after close;
        # closed during that wait (a SIGTERM at start-up), it would fail on the closed client.
        ready = getattr(self._connection, "_ready_task", None)
        if ready is not None:
            ready.cancel()


def easel(interaction: discord.Interaction) -> EaselBot:
    """The bot behind an interaction (Easel's commands and buttons run only in an EaselBot)."""
    client = interaction.client
    if not isinstance(client, EaselBot):
        raise TypeError("Easel's commands run only in an EaselBot")
    return client
