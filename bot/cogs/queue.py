"""/queue and /cancel: where are my jobs, and stop them."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain import Status
from bot.text import literal
from bot.ui import render, suggest
from bot.ui.client import EaselBot
from bot.ui.errors import reply
from inference.backend import UP


class Queue(commands.Cog):
    def __init__(self, bot: EaselBot):
        self.bot = bot

    @app_commands.command(name="queue", description="Your jobs in the queue, and how busy it is")
    async def queue(self, interaction: discord.Interaction) -> None:
        scheduler = self.bot.scheduler
        mine = scheduler.user_jobs(interaction.user.id)
        total = scheduler.waiting_count
        running = len(scheduler.running_ids)
        lines = [
            f"**Queue:** {running} running, {total} waiting"
            + (" — ⏸️ paused by the moderators" if scheduler.paused else "")
        ]
        workers = scheduler.workers_info()
        if len(workers) > 1 or any(w.state not in UP for w in workers):
            lines.append(f"**Workers:** {render.workers_line(workers)}")
        loading = scheduler.readiness().describe()
        if loading:
            lines.append(f"⏳ Starting up: {loading}; jobs wait and start when it is ready.")
        if not mine:
            lines.append("You have no jobs in the queue. Start one with /imagine.")
        shown = 15  # keeps the answer inside Discord's 2000 characters
        for job in mine[:shown]:
            where = "running" if job.status == Status.RUNNING else f"position {job.position}"
            lines.append(
                f"• **#{job.gen_id}** {literal(job.request.prompt, 60)}"
                f" — {where}, ready in about {render.fmt_seconds(job.eta_seconds)}"
            )
        if len(mine) > shown:
            lines.append(f"… and {len(mine) - shown} more.")
        await reply(interaction, "\n".join(lines))

    @app_commands.command(name="cancel", description="Cancel your queued or running jobs")
    @app_commands.describe(generation="The job's number (#N); leave out to cancel all yours")
    @app_commands.autocomplete(generation=suggest.cancellable)
    async def cancel(
        self, interaction: discord.Interaction, generation: app_commands.Range[int, 1] | None = None
    ) -> None:
        jobs = self.bot.services.jobs
        if generation is not None:
            await jobs.cancel(interaction.user.id, generation)
            await reply(interaction, f"Cancelled #{generation}.")
            return
        cancelled = await jobs.cancel_all(interaction.user.id)
        await reply(interaction, "Cancelled " + ", ".join(f"#{i}" for i in cancelled) + ".")


async def setup(bot: commands.Bot) -> None:
    assert isinstance(bot, EaselBot)
    await bot.add_cog(Queue(bot))
