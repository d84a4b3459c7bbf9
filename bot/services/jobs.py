"""What members may do to jobs and results: cancel their own, delete theirs (moderators:
anyone's). The log keeps every deleted result."""

from __future__ import annotations

from bot.db import Repositories
from bot.domain import Actor, AuditAction, Generation, UserError
from bot.queue import Scheduler

from .modlog import ModLog


class Jobs:
    def __init__(self, repos: Repositories, scheduler: Scheduler, modlog: ModLog):
        self.repos = repos
        self.scheduler = scheduler
        self.modlog = modlog

    async def cancel(self, user_id: int, gen_id: int, *, others: str | None = None) -> Generation:
        """Cancel one of the member's queued or running jobs. `others` is the sentence for a
        job that is not theirs."""
        gen = await self.repos.generations.get(gen_id)
        if gen is None or gen.user_id != user_id:
            raise UserError(others or f"#{gen_id} is not one of your jobs.")
        if not await self.scheduler.cancel(gen_id, user_id=user_id):
            raise UserError(f"#{gen_id} is no longer waiting or running.")
        return gen

    async def cancel_all(self, user_id: int) -> list[int]:
        cancelled = await self.scheduler.cancel_user(user_id)
        if not cancelled:
            raise UserError("You have no jobs waiting or running.")
        return cancelled

    async def delete(
        self, actor: Actor, guild_id: int | None, gen: Generation, *, moderator: bool
    ) -> Generation:
        """Mark a result deleted (the author, or a moderator); stop it if it has not finished.
        The caller removes the message from the channel."""
        if actor.user_id != gen.user_id and not moderator:
            raise UserError("Only the author of an image or a moderator can delete it.")
        if gen.deleted:
            raise UserError(f"#{gen.id} is already deleted.")
        await self.repos.generations.mark_deleted(gen.id, by=actor.user_id)
        if not gen.is_final:
            await self.scheduler.cancel(gen.id)  # deleting a waiting job stops it
        if moderator and actor.user_id != gen.user_id:
            await self.repos.audit.add(
                gen.guild_id,
                actor.user_id,
                AuditAction.REMOVE,
                target_user_id=gen.user_id,
                target_generation_id=gen.id,
                reason="deleted from the channel",
            )
        await self.modlog.write(guild_id, f"deleted #{gen.id}", actor)
        return gen
