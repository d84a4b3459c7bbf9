"""Admission: the one place that refuses requests, each with a sentence and a log row."""

from __future__ import annotations

import pytest

from bot.domain import JobOrigin
from bot.services.admission import Refused
from tests.bot.queue.fakes import admission_for, req


@pytest.mark.parametrize(
    ("options", "prepare", "reason", "fragment"),
    [
        ({}, "pause", "paused", "paused"),
        ({"max_waiting_per_user": 2}, "two_waiting", "over_cap", "2 images waiting"),
        ({"daily_quota": 2}, "two_done", "over_quota", "all 2 of today's requests"),
        ({}, "ban", "banned_user", "banned"),
    ],
)
async def test_refusals_are_explained_and_logged(
    repos, make_scheduler, options, prepare, reason, fragment
):
    """Paused queue, waiting cap, daily quota and bans refuse with a sentence and a log row."""
    scheduler = await make_scheduler()
    admission = admission_for(repos, scheduler, **options)
    if prepare == "pause":
        await scheduler.pause()
    elif prepare == "two_waiting":
        await scheduler.submit(req(), JobOrigin(user_id=1, guild_id=5))
        await scheduler.submit(req(), JobOrigin(user_id=1, guild_id=5))
        await scheduler.submit(req(), JobOrigin(user_id=2, guild_id=5))  # others are not capped
    elif prepare == "two_done":
        await scheduler.start()
        for _ in range(2):
            await scheduler.submit(req(), JobOrigin(user_id=1, guild_id=5))
        await scheduler.idle()
    else:
        await repos.bans.ban(5, 1, by=9, reason="spam")
    with pytest.raises(Refused) as refused:
        await admission.admit(
            req(prompt="one more"), JobOrigin(user_id=1, guild_id=5, channel_id=6)
        )
    error = refused.value
    assert error.reason == reason and fragment in error.message
    assert error.message.endswith(".") and str(error) == error.message
    logged = await repos.generations.get(error.generation.id)
    assert (logged.status, logged.refusal_reason, logged.prompt) == ("blocked", reason, "one more")
    assert logged.refusal_message == error.message and logged.channel_id == 6


async def test_caps_of_zero_mean_no_limit(repos, make_scheduler):
    """0 disables the waiting cap and the daily quota."""
    scheduler = await make_scheduler()
    admission = admission_for(repos, scheduler, max_waiting_per_user=0, daily_quota=0)
    for _ in range(30):
        await admission.admit(req(), JobOrigin(user_id=1))
    assert scheduler.waiting_count == 30


async def test_unknown_source_is_refused_and_logged(repos, make_scheduler):
    """A remix of a generation that does not exist is a refusal, not a crash."""
    admission = admission_for(repos, await make_scheduler())
    with pytest.raises(Refused) as refused:
        await admission.admit(req(), JobOrigin(user_id=1, kind="remix", parent_id=4242))
    assert refused.value.reason == "bad_input" and "#4242 does not exist" in refused.value.message
    assert (await repos.generations.get(refused.value.generation.id)).status == "blocked"
