"""The Discord client: owns nothing heavy itself; the store, the worker and the scheduler are
made in `main()` and handed in (discord.py's advanced start-up pattern)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging

import discord
from discord.ext import commands

from inference.worker import Worker

from .errors import NO_PINGS, EaselTree
from .jobs import JobService
from .scheduler import Scheduler
from .settings import Settings
from .store import Store
from .views import PERSISTENT_ITEMS

log = logging.getLogger(__name__)

# One module per feature; each has `async def setup(bot)`.
EXTENSIONS = (
    "bot.cogs.imagine",
    "bot.cogs.queue",
    "bot.cogs.lineage",
    "bot.cogs.moderation",
)


class EaselBot(commands.Bot):
    def __init__(self, settings: Settings, store: Store, worker: Worker, scheduler: Scheduler):
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
        self.store = store
        self.worker = worker
        self.scheduler = scheduler
        self.jobs = JobService(self)
        self.synced_commands: list[discord.app_commands.AppCommand] = []
        self._log_lines: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self._log_writer: asyncio.Task[None] | None = None

    @property
    def native_size(self) -> int:
        """The model's native square (512 for SD 1.5): aspect presets are relative to it."""
        return self.worker.native_size

    async def setup_hook(self) -> None:
        for name in EXTENSIONS:
            if importlib.util.find_spec(name) is not None:
                await self.load_extension(name)
        self.add_dynamic_items(*PERSISTENT_ITEMS)
        self.scheduler.add_listener(self.jobs)
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

    async def close(self) -> None:
        await self.scheduler.stop(grace=5.0)
        if self._log_writer is not None:
            # Give queued log lines a moment to go out, then stop the writer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_lines.join(), 3.0)
            self._log_writer.cancel()
        await super().close()

    async def audit_line(
        self, interaction: discord.Interaction | None, text: str, *, guild_id: int | None = None
    ) -> None:
        """One short line in the moderators' log channel, if one is configured."""
        channel_id = self.settings.discord.log_channel_id
        if interaction is not None and interaction.guild_id is not None:
            guild_id = interaction.guild_id
        if guild_id is not None:
            channel_id = (await self.store.guild_settings(guild_id)).log_channel_id or channel_id
        if not channel_id:
            return
        who = ""
        if interaction is not None:
            who = f"{interaction.user} (`{interaction.user.id}`)"
            if interaction.channel_id:
                who += f" in <#{interaction.channel_id}>"
            who += ": "
        # Sent in the background, in order: a busy log channel hits Discord's rate limit, and
        # nobody's interaction may wait for it.
        self._log_lines.put_nowait((channel_id, (who + text)[:1900]))
        if self._log_writer is None or self._log_writer.done():
            self._log_writer = asyncio.create_task(self._write_log_lines(), name="easel-log")

    async def _write_log_lines(self) -> None:
        while True:
            channel_id, line = await self._log_lines.get()
            try:
                await self.get_partial_messageable(channel_id).send(line, allowed_mentions=NO_PINGS)
            except discord.HTTPException as error:
                log.warning("Could not write to the log channel %s: %s", channel_id, error)
            except Exception:
                log.exception("Log line to %s failed", channel_id)
            finally:
                self._log_lines.task_done()
