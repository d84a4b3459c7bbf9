"""Derivations: what reroll, remix, vary and upscale make of a source, and which sources they
refuse. Plain unit tests over a database; no Discord, no worker."""

from __future__ import annotations

import pytest

from bot.domain import JobOrigin, Kind, UserError
from bot.services.derive import Derivations, enough_steps
from bot.settings import GenerationSettings, Settings
from inference.request import GeneratedImage, GenerationRequest, GenerationResult

GUILD = 5


def derivations(repos) -> Derivations:
    settings = Settings(generation=GenerationSettings(vary_strength=0.5, upscale_strength=0.25))
    return Derivations(settings, repos, native_size=lambda: 64)


async def finished(repos, *, count=2, flagged=(), guild=GUILD, steps=4, **recipe):
    request = GenerationRequest(
        prompt="a kite", width=64, height=64, steps=steps, seed=40, count=count, **recipe
    )
    gen = await repos.generations.create(request, JobOrigin(user_id=1, guild_id=guild))
    images = [
        GeneratedImage(
            png=b"\x89PNG" + bytes([i]),
            seed=40 + i,
            index=i,
            nsfw=i in flagged,
            width=64,
            height=64,
        )
        for i in range(count)
    ]
    await repos.generations.mark_running([gen.id])
    return await repos.generations.save_result(gen.id, GenerationResult(str(gen.id), images))


async def test_reroll_keeps_the_recipe_with_a_new_seed(repos):
    """🎲 Same prompt and settings; the seed is left to be drawn anew."""
    source = await finished(repos)
    derived = await derivations(repos).reroll(GUILD, source.id)
    assert derived.kind is Kind.REROLL and derived.parent.id == source.id
    assert derived.request.seed is None and derived.request.prompt == "a kite"
    assert derived.request.count == 2 and derived.request.init_image is None


async def test_remix_keeps_the_seed_and_applies_overrides(repos):
    """A new prompt, the same seed; None overrides leave the source's values."""
    source = await finished(repos)
    derived = await derivations(repos).remix(GUILD, source.id, prompt="a boat", steps=None)
    assert derived.kind is Kind.REMIX
    assert (derived.request.prompt, derived.request.seed, derived.request.steps) == (
        "a boat",
        40,
        4,
    )


async def test_vary_and_upscale_start_from_one_image(repos):
    """🔀 and ⬆️ read the chosen image from disk; upscale doubles the size."""
    source = await finished(repos)
    d = derivations(repos)
    vary = await d.vary(GUILD, source.id, 1)
    assert (vary.kind, vary.parent_index, vary.request.mode) == (Kind.VARY, 1, "img2img")
    assert vary.request.init_image == b"\x89PNG\x01" and vary.request.count == 1
    assert vary.request.strength == 0.5 and vary.request.seed is None
    up = await d.upscale(GUILD, source.id, 0)
    assert (up.request.width, up.request.height, up.request.seed) == (128, 128, 40)
    assert up.request.strength == 0.25 and up.request.steps == 4  # 4 × 0.25 = one step
    origin = up.origin(user_id=9, guild_id=GUILD, channel_id=3, user_name="zoe")
    assert (origin.user_id, origin.parent_id, origin.parent_image_index) == (9, source.id, 0)
    assert origin.kind is Kind.UPSCALE


def test_few_steps_are_raised_so_something_runs():
    """steps × strength must leave at least one step."""
    assert enough_steps(2, 0.25) == 4 and enough_steps(30, 0.5) == 30


async def test_a_reroll_of_a_variation_starts_from_the_same_source_image(repos):
    """Rerolling an image-to-image result reads its parent's image again."""
    source = await finished(repos)
    d = derivations(repos)
    vary = await d.vary(GUILD, source.id, 0)
    child = await repos.generations.create(
        vary.request, vary.origin(user_id=2, guild_id=GUILD, channel_id=3, user_name=None)
    )
    await repos.generations.mark_running([child.id])
    image = GeneratedImage(png=b"\x89PNGv", seed=1, index=0, width=64, height=64)
    await repos.generations.save_result(child.id, GenerationResult(str(child.id), [image]))
    again = await d.reroll(GUILD, child.id)
    assert again.request.mode == "img2img" and again.request.init_image == b"\x89PNG\x00"


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        ("other_server", "reroll", "There is no image"),
        ("missing", "remix", "There is no image #999"),
        ("refused", "reroll", "There is no image"),
        ("deleted", "reroll", "was deleted"),
        ("queued", "reroll", "no finished images"),
        ("withheld", "reroll", "withheld for moderator review"),
        ("withheld", "vary", "Image 1 of"),
        ("plain", "vary_missing", "has no image 3"),
    ],
)
async def test_sources_that_cannot_be_built_on(repos, setup, call, message):
    """Each refusal is one sentence saying why."""
    d = derivations(repos)
    gen_id = 999
    if setup == "other_server":
        gen_id = (await finished(repos, guild=GUILD + 1)).id
    elif setup == "refused":
        gen = await repos.generations.log_refusal(
            GenerationRequest(prompt="x"),
            JobOrigin(user_id=1, guild_id=GUILD),
            reason="banned_word",
            message="no",
        )
        gen_id = gen.id
    elif setup == "deleted":
        gen_id = (await finished(repos)).id
        await repos.generations.mark_deleted(gen_id, by=1)
    elif setup == "queued":
        gen = await repos.generations.create(
            GenerationRequest(prompt="x"), JobOrigin(user_id=1, guild_id=GUILD)
        )
        gen_id = gen.id
    elif setup == "withheld":
        gen_id = (await finished(repos, count=1, flagged={0})).id
    elif setup == "plain":
        gen_id = (await finished(repos)).id
    with pytest.raises(UserError, match=message):
        if call == "reroll":
            await d.reroll(GUILD, gen_id)
        elif call == "remix":
            await d.remix(GUILD, gen_id, prompt="y")
        elif call == "vary":
            await d.vary(GUILD, gen_id, 0)
        else:
            await d.vary(GUILD, gen_id, 2)


def test_new_requests_use_the_defaults_and_the_models_size(repos):
    """A fresh request has the configured defaults at the model's native square."""
    request = derivations(repos).new_request(prompt="p", steps=None, guidance=3.0)
    g = GenerationSettings()
    assert (request.width, request.height) == (64, 64)
    assert request.steps == g.default_steps and request.guidance == 3.0
    assert request.sampler == g.default_sampler


async def test_zoom_out_puts_the_image_on_a_larger_canvas(repos):
    """🔭 2×: twice the size, the source in the middle, its geometry and source recorded."""
    source = await finished(repos)
    zoom = await derivations(repos).zoom(GUILD, source.id, 1, 2.0)
    request = zoom.request
    assert (zoom.kind, zoom.parent_index) == (Kind.ZOOM, 1)
    assert (request.mode, request.width, request.height) == ("outpaint", 128, 128)
    assert request.paste == (32, 32, 64, 64) and request.feather == 8
    assert request.init_image == b"\x89PNG\x01" and request.seed is None
    assert request.strength == 1.0 and request.source == f"#{source.id} image 2"
    assert request.prompt == "a kite" and request.count == 1


@pytest.mark.parametrize(
    ("direction", "size", "paste"),
    [
        ("left", (96, 64), (32, 0, 64, 64)),
        ("right", (96, 64), (0, 0, 64, 64)),
        ("up", (64, 96), (0, 32, 64, 64)),
        ("down", (64, 96), (0, 0, 64, 64)),
    ],
)
async def test_pan_extends_the_chosen_side(repos, direction, size, paste):
    """⬅ ➡ ⬆ ⬇: half the image's size more on that side."""
    source = await finished(repos, count=1)
    pan = await derivations(repos).pan(GUILD, source.id, 0, direction)
    assert pan.kind is Kind.PAN
    assert (pan.request.width, pan.request.height) == size and pan.request.paste == paste


async def test_a_zoom_over_max_pixels_is_refused_with_a_sentence(repos):
    """A zoom that would pass generation.max_pixels says so, with the sizes."""
    source = await finished(repos, count=1)
    settings = Settings(generation=GenerationSettings(max_pixels=12_288))
    d = Derivations(settings, repos, native_size=lambda: 64)
    assert (await d.zoom(GUILD, source.id, 0, 1.5)).request.width == 96
    with pytest.raises(UserError, match=r"would make it 128×128, more than this server's 12288"):
        await d.zoom(GUILD, source.id, 0, 2.0)
    with pytest.raises(UserError, match="left, right, up or down"):
        await d.pan(GUILD, source.id, 0, "sideways")


async def test_variation_of_a_zoom_is_plain_image_to_image(repos):
    """Vary of a zoom result keeps no canvas geometry."""
    source = await finished(repos, count=1)
    d = derivations(repos)
    zoom = await d.zoom(GUILD, source.id, 0, 2.0)
    child = await repos.generations.create(
        zoom.request, zoom.origin(user_id=2, guild_id=GUILD, channel_id=3, user_name=None)
    )
    await repos.generations.mark_running([child.id])
    image = GeneratedImage(png=b"\x89PNGz", seed=1, index=0, width=128, height=128)
    await repos.generations.save_result(child.id, GenerationResult(str(child.id), [image]))
    vary = await d.vary(GUILD, child.id, 0)
    assert vary.request.mode == "img2img" and vary.request.paste is None
    assert (vary.request.width, vary.request.height) == (128, 128)
    reroll = await d.reroll(GUILD, child.id)  # the same zoom again: same source and canvas
    assert reroll.request.paste == (32, 32, 64, 64) and reroll.request.init_image == b"\x89PNG\x00"


async def test_reroll_and_remix_of_an_upload_start_from_the_upload(repos):
    """An image-to-image job from an upload is rerolled and remixed from that upload, also
    two generations down."""
    request = GenerationRequest(
        prompt="my cat", width=64, height=64, steps=4, seed=3, mode="img2img", source="upload"
    )
    gen = await repos.generations.create(request, JobOrigin(user_id=1, guild_id=GUILD))
    await repos.generations.attach_upload(gen.id, b"\x89PNGupload")
    await repos.generations.mark_running([gen.id])
    image = GeneratedImage(png=b"\x89PNGresult", seed=3, index=0, width=64, height=64)
    await repos.generations.save_result(gen.id, GenerationResult(str(gen.id), [image]))
    d = derivations(repos)
    remix = await d.remix(GUILD, gen.id, prompt="my dog")
    assert remix.request.init_image == b"\x89PNGupload" and remix.request.seed == 3
    child = await repos.generations.create(
        remix.request, remix.origin(user_id=2, guild_id=GUILD, channel_id=3, user_name=None)
    )
    await repos.generations.mark_running([child.id])
    await repos.generations.save_result(child.id, GenerationResult(str(child.id), [image]))
    again = await d.reroll(GUILD, child.id)
    assert again.request.init_image == b"\x89PNGupload"
    # After a restart the job's source is read from disk the same way.
    queued = await repos.generations.create(
        again.request, again.origin(user_id=2, guild_id=GUILD, channel_id=3, user_name=None)
    )
    loaded = await repos.images.load_request(queued)
    assert loaded.init_image == b"\x89PNGupload" and loaded.job_id == str(queued.id)
