"""The lab's rules: which images it opens, what its jobs replay, when CLIP is off, and what it
keeps. Plain unit tests over a database; no Discord, no worker."""

from __future__ import annotations

import pytest

from bot.domain import JobOrigin, Kind, UserError
from bot.services.derive import Derivations
from bot.services.lab import Lab
from bot.settings import Settings
from inference.lab.spec import ConceptScore, LabFile, LabOutput
from inference.request import GeneratedImage, GenerationRequest, GenerationResult

GUILD = 5


def lab(repos, info=None) -> Lab:
    settings = Settings()
    derive = Derivations(settings, repos, native_size=lambda: 64)
    return Lab(settings, repos, derive, lambda: info if info is not None else {"clip": True})


async def finished(repos, *, count=1, parent=None, kind=Kind.IMAGINE, index=None, **recipe):
    request = GenerationRequest(
        prompt="a kite", width=64, height=64, steps=4, seed=40, count=count, **recipe
    )
    origin = JobOrigin(
        user_id=1, guild_id=GUILD, kind=kind, parent_id=parent, parent_image_index=index
    )
    gen = await repos.generations.create(request, origin)
    images = [
        GeneratedImage(
            png=b"\x89PNG" + bytes([gen.id, i]), seed=40 + i, index=i, width=64, height=64
        )
        for i in range(count)
    ]
    await repos.generations.mark_running([gen.id])
    return await repos.generations.save_result(gen.id, GenerationResult(str(gen.id), images))


async def test_a_view_replays_one_image_with_its_own_seed(repos):
    """Steps of image 2: the recipe with image 2's seed, one image, no source picture needed."""
    source = await finished(repos, count=2)
    derived = await lab(repos).view(GUILD, source.id, "steps", 1)
    assert derived.kind is Kind.LAB_STEPS and derived.parent_index == 1
    request = derived.request
    assert (request.seed, request.count, request.lab.view) == (41, 1, "steps")
    assert request.init_image is None and request.lab.image_ref is None and request.lab.frames == 8


async def test_noise_and_clip_read_the_picture_itself(repos):
    """Noise and CLIP look at the stored picture, named by its ids in the recipe."""
    source = await finished(repos, count=2)
    derived = await lab(repos).view(GUILD, source.id, "noise", 1)
    assert derived.request.lab.image_ref == (source.id, 1)
    assert derived.request.init_image == await repos.images.read(source.id, 1)


async def test_image_to_image_sources_replay_from_their_start_image(repos):
    """A remix of a variation replays from the image the variation started from."""
    root = await finished(repos, count=2)
    vary = await finished(
        repos, parent=root.id, index=1, kind=Kind.VARY, mode="img2img", strength=0.5
    )
    remix = await finished(repos, parent=vary.id, kind=Kind.REMIX, mode="img2img", strength=0.5)
    derived = await lab(repos).view(GUILD, remix.id, "words", 0)
    assert derived.request.lab.image_ref == (root.id, 1)
    assert derived.request.init_image == await repos.images.read(root.id, 1)
    assert derived.request.mode == "img2img"
    # After a restart the job reads the same image again from its recipe.
    gen = await repos.generations.create(
        derived.request,
        JobOrigin(
            user_id=2, guild_id=GUILD, kind=Kind.LAB_WORDS, parent_id=remix.id, parent_image_index=0
        ),
    )
    reloaded = await repos.images.load_request(gen)
    assert reloaded.init_image == derived.request.init_image and reloaded.lab == derived.request.lab


@pytest.mark.parametrize(
    ("info", "sentence"),
    [
        ({}, "The CLIP view is off on this server (no CLIP model is loaded)."),
        (
            {"clip": False, "clip_note": "lab.clip_model is empty"},
            "The CLIP view is off on this server (lab.clip_model is empty).",
        ),
    ],
)
async def test_clip_view_says_it_is_off(repos, info, sentence):
    """Without a CLIP model the CLIP view says so in one sentence (and queues nothing)."""
    source = await finished(repos)
    with pytest.raises(UserError) as caught:
        await lab(repos, info).view(GUILD, source.id, "clip", 0)
    assert str(caught.value) == sentence


async def test_other_servers_and_unknown_views_are_refused(repos):
    """Another server's id is unknown here; a view that does not exist is named."""
    source = await finished(repos)
    with pytest.raises(UserError, match=f"There is no image #{source.id}"):
        await lab(repos).view(GUILD + 1, source.id, "steps", 0)
    with pytest.raises(UserError, match="Steps, Words, CLIP or Noise"):
        await lab(repos).view(GUILD, source.id, "zoom", 0)


async def test_what_the_lab_found_is_kept_with_the_result(repos):
    """A lab result's facts, files and scores are written with it and read back."""
    gen = await repos.generations.create(
        GenerationRequest(prompt="a kite", seed=1, width=64, height=64),
        JobOrigin(user_id=1, guild_id=GUILD, kind=Kind.LAB_STEPS),
    )
    score = ConceptScore("concept", 3, 0.2, 0.18, 0.02)
    result = GenerationResult(
        str(gen.id),
        [
            GeneratedImage(
                png=b"\x89PNG", seed=1, index=0, nsfw=True, clip_score=0.31, safety_scores=(score,)
            )
        ],
        lab=LabOutput("steps", {"steps": 4}, [LabFile("film.webp", b"RIFF")]),
    )
    await repos.generations.mark_running([gen.id])
    await repos.generations.save_result(gen.id, result)
    record = await repos.lab.get(gen.id)
    assert record.view == "steps" and record.data == {"steps": 4}
    assert record.clip_scores == {0: 0.31} and record.safety_scores == {0: (score,)}
    assert record.files[0].name == f"{gen.id}_film.webp" and record.files[0].read_bytes() == b"RIFF"
