"""The Discord client: owns nothing heavy itself; the database, the worker, the scheduler and
the services are made in `main()` and handed in (discord.py's advanced start-up pattern). It
loads the feature extensions, registers the persistent buttons and listens to the queue."""

from __future__ import annotations

import importlib.util
import logging

import discord
from discord.ext import commands

from bot.db import Repositories
from bot.queue import Scheduler
from bot.services import Services
from bot.settings import Settings
from inference.worker import Worker

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
        worker: Worker | None = None,
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
        self.log_channel = log_channel
        log_channel.attach(self)
        self.delivery = Delivery(self, settings, repos, services, scheduler, modlog=log_channel)
        self.actions = Actions(settings, repos, services, self.delivery)
        self.synced_commands: list[discord.app_commands.AppCommand] = []

    async def setup_hook(self) -> None:
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
        await self.scheduler.stop(grace=5.0)
        await self.log_channel.close()
        await super().close()


def easel(interaction: discord.Interaction) -> EaselBot:
    """The bot behind an interaction (Easel's commands and buttons run only in an EaselBot)."""
    client = interaction.client
    if not isinstance(client, EaselBot):
        raise TypeError("Easel's commands run only in an EaselBot")
    return client
