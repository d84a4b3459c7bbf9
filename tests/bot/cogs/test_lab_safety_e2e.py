"""The lab and the safety checker end to end, on the tiny model whose checker flags every image:
a withheld image cannot be opened in the lab; a released one can, and the lab picture it makes
is checked (frame by frame) and withheld for review too, with the checker's reasons."""

from __future__ import annotations

import pytest
import pytest_asyncio

from inference.engine import EngineConfig
from inference.worker import Worker
from tests.bot.cogs.test_lab_e2e import answer, queued_id, refused
from tests.bot.e2e import button, result, running_easel

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_MESSAGES = 1 << 13


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(flagging_model_dir):
    async with Worker(EngineConfig(model=flagging_model_dir, device="cpu")) as running:
        yield running


def text_of(message) -> str:
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields") or []]
    return "\n".join(parts)


async def test_flagged_sources_and_frames_stay_out_of_the_channel(
    fd, worker, flagging_model_dir, tmp_path
):
    """Withheld: no 🔬 menu and /lab refuses. Released: the lab opens it, its frames are flagged,
    so the film is withheld for review (no picture, no animation in the channel), and /mod review
    says how far over the line it was."""
    teacher = fd.add_member("teacher", permissions=MANAGE_MESSAGES)
    student = fd.add_member("student")
    async with running_easel(fd, worker, tmp_path, flagging_model_dir) as bot:
        gen_id = await queued_id(
            await fd.invoke(student, "imagine", {"prompt": "a lighthouse", "seed": 3})
        )
        notice = await result(fd, gen_id)
        assert "withheld for moderator review" in notice.content and not notice.attachments
        assert not any(
            c.get("custom_id", "").startswith("easel:lab:")
            for row in notice.components
            for c in row["components"]
        )
        assert await refused(fd, student, "lab steps", {"generation": gen_id}) == (
            f"Image 1 of #{gen_id} is withheld for moderator review, so the lab cannot open it."
        )

        card = await answer(await fd.invoke(teacher, "mod review", {}))
        why = next(
            f["value"] for f in card.embeds[0]["fields"] if f["name"] == "Why it was flagged"
        )
        assert "over the line" in why and "vs threshold -2.000" in why
        handle = await fd.click(teacher, card, button(card, "Release"))
        await handle.response()
        released = await fd.wait_for_message(
            lambda m: (
                not m.ephemeral
                and m.attachments
                and any(e.get("title") == f"#{gen_id}" for e in m.embeds)
            ),
            timeout=20,
        )
        lab_id = await queued_id(
            await fd.select(student, released, f"easel:lab:{gen_id}", ["steps:0"])
        )
        shown = await result(fd, lab_id)
        assert "withheld for moderator review" in shown.content
        assert not shown.attachments  # neither the picture nor the film
        gen = await bot.repos.generations.get(lab_id)
        assert gen.flagged and gen.images[0].review == "pending"
        record = await bot.repos.lab.get(lab_id)
        assert "seen 1" in record.data["flagged_parts"] and record.safety_scores[0]

        card = await answer(await fd.invoke(teacher, "mod review", {}))
        text = text_of(card)
        assert f"#{lab_id}" in text and "Why it was flagged" in text and "over the line" in text
