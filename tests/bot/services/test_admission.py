"""Admission: the one place that refuses requests, each with a sentence and a log row."""

from __future__ import annotations

import pytest

from bot.domain import JobOrigin, RefusalReason, UserError
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


class FakeScreener:
    """The safety checker's verdicts, recorded: what it was shown and what it said."""

    def __init__(self, flag: bool = False, fail: bool = False):
        self.flag, self.fail, self.seen = flag, fail, []

    async def screen(self, pngs: list[bytes]) -> list[bool]:
        self.seen += pngs
        if self.fail:
            raise RuntimeError("the worker is gone")
        return [self.flag] * len(pngs)


def upload_request():
    return req(prompt="my sketch", mode="img2img", strength=0.5, source="upload")


async def test_an_upload_is_screened_queued_and_kept(repos, make_scheduler):
    """A passed upload joins the queue as the job's source and is kept as <id>.png."""
    scheduler = await make_scheduler()
    screener = FakeScreener()
    admission = admission_for(repos, scheduler, screener=screener)
    gen = await admission.admit(
        upload_request(), JobOrigin(user_id=1, guild_id=5), upload=b"\x89PNGclean"
    )
    assert screener.seen == [b"\x89PNGclean"]
    assert gen.status == "queued" and gen.upload == f"{gen.id}.png" and not gen.flagged
    assert await repos.images.read_upload(gen) == b"\x89PNGclean"
    assert scheduler.queue.get(gen.id).request.init_image == b"\x89PNGclean"


async def test_a_flagged_upload_is_refused_kept_and_reviewed(repos, make_scheduler):
    """The checker flags the upload: refused before anything runs, logged as flagged, kept for
    the moderators, waiting in /mod review."""
    scheduler = await make_scheduler()
    admission = admission_for(repos, scheduler, screener=FakeScreener(flag=True))
    with pytest.raises(Refused) as refused:
        await admission.admit(upload_request(), JobOrigin(user_id=1, guild_id=5), upload=b"bad")
    assert refused.value.reason == "flagged_upload" and "safety checker" in refused.value.message
    logged = await repos.generations.get(refused.value.generation.id)
    assert (logged.status, logged.flagged, logged.review) == ("blocked", True, "pending")
    assert await repos.images.read_upload(logged) == b"bad"
    assert scheduler.waiting_count == 0
    (item,) = await repos.review.queue(guild_id=5)
    assert item.generation.id == logged.id and item.image_index is None


async def test_upload_refusals_before_screening_keep_the_upload(repos, make_scheduler):
    """A request that cannot run (too few steps for its strength) is refused before the
    checker is asked; the upload is kept with the refusal."""
    scheduler = await make_scheduler()
    screener = FakeScreener()
    admission = admission_for(repos, scheduler, screener=screener)
    with pytest.raises(Refused) as refused:
        await admission.admit(
            req(prompt="my sketch", mode="img2img", steps=1, strength=0.5),
            JobOrigin(user_id=1, guild_id=5),
            upload=b"png",
        )
    assert refused.value.reason == "bad_input" and "at least 2 steps" in refused.value.message
    assert screener.seen == [] and refused.value.generation.upload is not None


async def test_a_failed_screening_is_a_sentence(repos, make_scheduler):
    """When the checker cannot answer, the member is told to try again; nothing is queued."""
    scheduler = await make_scheduler()
    admission = admission_for(repos, scheduler, screener=FakeScreener(fail=True))
    with pytest.raises(UserError, match="could not be checked just now"):
        await admission.admit(upload_request(), JobOrigin(user_id=1, guild_id=5), upload=b"png")
    assert scheduler.waiting_count == 0


async def test_refuse_logs_a_request_that_never_got_that_far(repos, make_scheduler):
    """An upload that is not an image is logged as refused with its sentence."""
    admission = admission_for(repos, await make_scheduler())
    with pytest.raises(Refused) as refused:
        await admission.refuse(
            upload_request(),
            JobOrigin(user_id=1, guild_id=5),
            None,
            RefusalReason.BAD_INPUT,
            "Not an image.",
        )
    logged = await repos.generations.get(refused.value.generation.id)
    assert (logged.status, logged.refusal_message) == ("blocked", "Not an image.")
