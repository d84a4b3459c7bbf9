"""The diffusion lab end to end: the 🔬 menu and /lab through the fake Discord, the real bot and
a real worker on the tiny model with a tiny random CLIP."""

from __future__ import annotations

import asyncio
import io
import itertools
import json

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from inference.engine import EngineConfig, read_png_recipe
from inference.lab.spec import LabConfig
from inference.worker import Worker
from tests.bot.e2e import result, running_easel

pytestmark = pytest.mark.asyncio(loop_scope="module")

LAION = "LAION-5B kept image–caption pairs at 0.28 or more"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_model_dir, tiny_clip_dir):
    config = EngineConfig(
        model=tiny_model_dir,
        device="cpu",
        preview_interval=0.2,
        lab=LabConfig(clip_model=tiny_clip_dir),
    )
    async with Worker(config) as running:
        yield running


# --- helpers -------------------------------------------------------------------------------


async def answer(handle):
    """The interaction's first real answer (a status line, or a private refusal)."""
    await handle.response()
    return await handle.wait_for_message(lambda m: not m.loading, timeout=10)


async def queued_id(handle) -> int:
    message = await answer(handle)
    assert "**#" in (message.content or ""), message.content
    return int(message.content.split("**#")[1].split("**")[0])


async def imagine(fd, member, **options):
    gen_id = await queued_id(await fd.invoke(member, "imagine", options))
    return gen_id, await result(fd, gen_id)


async def pick(fd, member, message, gen_id: int, value: str):
    """Choose a view in the result's 🔬 menu; returns (lab job id, its result message)."""
    lab_id = await queued_id(await fd.select(member, message, f"easel:lab:{gen_id}", [value]))
    return lab_id, await result(fd, lab_id)


async def refused(fd, member, command: str, options) -> str:
    message = await answer(await fd.invoke(member, command, options))
    assert message.ephemeral and "**#" not in (message.content or "")
    return message.content


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def cells(png: bytes) -> list[dict]:
    return json.loads(Image.open(io.BytesIO(png)).text["easel-lab"])["cells"]


def crop(png: bytes, box) -> np.ndarray:
    return pixels(png)[box[1] : box[3], box[0] : box[2]]


def film(message) -> list[np.ndarray]:
    [attachment] = [a for a in message.attachments if a.filename.endswith(".webp")]
    animation = Image.open(io.BytesIO(attachment.data))
    frames = []
    for k in range(animation.n_frames):
        animation.seek(k)
        frames.append(np.asarray(animation.convert("RGB")).astype(int))
    return frames


def field(message, name: str) -> str:
    return next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == name)


# --- the views -----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
async def test_steps_film_from_the_lab_menu(fd, bot, sampler):
    """Bob opens Alice's image in the 🔬 menu: a film of every step (5 of 5), the last frame is
    Alice's image, the same recipe gives the same frames twice, and the job is Bob's."""
    alice, bob = fd.add_member(f"alice-{sampler}"), fd.add_member(f"bob-{sampler}")
    gen_id, message = await imagine(
        fd, alice, prompt="a red fox", seed=77, steps=5, sampler=sampler
    )
    lab_id, shown = await pick(fd, bob, message, gen_id, "steps:0")
    gen = await bot.repos.generations.get(lab_id)
    assert gen.user_id == bob.id and gen.kind == "lab_steps" and gen.parent_id == gen_id
    assert gen.recipe["seed"] == 77 and gen.recipe["lab"]["view"] == "steps"
    frames = film(shown)
    assert len(frames) == 5
    assert np.abs(frames[-1] - pixels(message.attachments[0].data)).max() <= 2
    assert f"denoising film of #{gen_id}" in shown.content.lower()
    assert "what the model sees" not in shown.content  # that is drawn in the picture
    assert [c["label"][0] for c in cells(shown.attachments[0].data)[5:]] == [
        f"step {k} of 5" for k in range(1, 6)
    ]
    assert shown.pings.users == {bob.id}
    again_id = await queued_id(await fd.invoke(bob, "lab steps", {"generation": gen_id}))
    again = await result(fd, again_id)
    assert all(np.array_equal(a, b) for a, b in zip(film(again), frames, strict=True))
    assert again.attachments[0].data == shown.attachments[0].data


async def test_words_one_map_per_word(fd, bot):
    """/lab words: one heat map per word, the letters of each word merged back, captioned."""
    carol = fd.add_member("carol")
    gen_id, _ = await imagine(fd, carol, prompt="a blue whale, at night", seed=3)
    lab_id = await queued_id(await fd.invoke(carol, "lab words", {"generation": gen_id}))
    shown = await result(fd, lab_id)
    record = await bot.repos.lab.get(lab_id)
    assert record.data["words"] == ["a", "blue", "whale", "at", "night"]
    assert record.data["pieces"][2] == ["w", "h", "a", "l", "e</w>"]
    assert record.data["map_size"] == [8, 8]
    found = cells(shown.attachments[0].data)
    assert [c["label"] for c in found] == [["a"], ["blue"], ["whale"], ["at"], ["night"]]
    assert {(c["box"][2] - c["box"][0], c["box"][3] - c["box"][1]) for c in found} == {(128, 128)}
    assert "“whale”" in shown.content and "cross-attention" in shown.content


async def test_clip_line_and_clip_view(fd, bot):
    """Every result names CLIP's similarity against LAION's line; /lab clip explains it."""
    dana = fd.add_member("dana")
    gen_id, message = await imagine(fd, dana, prompt="a watercolor fox in snow", seed=5)
    line = field(message, "CLIP")
    assert line.endswith(LAION) and -1 <= float(line.split(" — ")[0]) <= 1
    lab_id, shown = await pick(fd, dana, message, gen_id, "clip:0")
    record = await bot.repos.lab.get(lab_id)
    score = record.data["similarity"]
    assert -1 <= score <= 1 and abs(score - float(line.split(" — ")[0])) < 0.006
    assert f"{score:.2f} — {LAION}" in shown.content and "CLIP sees: " in shown.content
    assert "Closest phrases" in {f["name"] for f in shown.embeds[0]["fields"]}


async def test_noise_frames_get_noisier(fd, bot):
    """/lab noise: measured on the posted frames, each is further from t = 0 than the one
    before; no frame is the image itself."""
    erin = fd.add_member("erin")
    gen_id, _ = await imagine(fd, erin, prompt="a lighthouse", seed=8)
    lab_id = await queued_id(await fd.invoke(erin, "lab noise", {"generation": gen_id}))
    shown = await result(fd, lab_id)
    png = shown.attachments[0].data
    found = cells(png)
    assert [c["label"][0] for c in found][:2] == ["the picture", "t = 0"]
    frames = [crop(png, c["box"]).astype(float) for c in found[1:]]
    distance = [np.abs(f - frames[0]).mean() for f in frames]
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(distance))
    assert distance[-1] > distance[1] > 0
    assert "forward process" in shown.content


async def test_grid_three_by_two_cells_reproduce(fd, bot):
    """A 3×2 grid has six labelled cells; /info lists their recipes; each recipe, made alone
    with /imagine, is that cell."""
    finn = fd.add_member("finn")
    options = {
        "prompt": "a paper boat",
        "axis": "seed",
        "values": "1, 2, 3",
        "axis2": "guidance",
        "values2": "3, 9",
        "steps": 3,
    }
    grid_id = await queued_id(await fd.invoke(finn, "lab grid", options))
    shown = await result(fd, grid_id)
    gen = await bot.repos.generations.get(grid_id)
    assert gen.kind == "lab_grid" and gen.cost == 6 * 64 * 64 * 3
    png = shown.attachments[0].data
    found = cells(png)
    assert [c["label"] for c in found] == [
        [f"seed {s}", f"guidance {g}"] for g in (3, 9) for s in (1, 2, 3)
    ]
    assert json.loads(Image.open(io.BytesIO(png)).text["easel-cells"]) == [
        c["recipe"] for c in found
    ]
    info = await answer(await fd.invoke(finn, "info", {"generation": grid_id}))
    listed = field(info, "Cells").splitlines()
    assert len(listed) == 6 and listed[4].startswith("seed 2 · guidance 9: seed 2, 3 steps")
    for cell in found:
        r = cell["recipe"]
        _, alone = await imagine(
            fd,
            finn,
            prompt=r["prompt"],
            seed=r["seed"],
            steps=r["steps"],
            guidance=r["guidance"],
            sampler=r["sampler"],
        )
        assert read_png_recipe(alone.attachments[0].data)["seed"] == r["seed"]
        made = pixels(alone.attachments[0].data)
        assert np.abs(crop(png, cell["box"])[:: cell["scale"], :: cell["scale"]] - made).max() <= 2
    assert "An experiment grid: seed across (seed 1, seed 2, seed 3)" in shown.content


async def test_lab_menu_works_after_a_restart(fd, worker, tiny_model_dir, tmp_path):
    """The 🔬 menu of a result posted before a restart still opens the lab after it."""
    gus = fd.add_member("gus")
    async with running_easel(fd, worker, tmp_path, tiny_model_dir):
        gen_id, message = await imagine(fd, gus, prompt="a windmill", seed=9, count=2)
    menu = next(
        c
        for row in message.components
        for c in row["components"]
        if c.get("custom_id") == f"easel:lab:{gen_id}"
    )
    # Row 4, the last row: after 🎲, V1–V2, U1–U2 and the Zoom/Pan menu.
    assert len(menu["options"]) == 8 and row_of(message, menu) == len(message.components) - 1 == 4
    async with running_easel(fd, worker, tmp_path, tiny_model_dir) as restarted:
        lab_id, _ = await pick(fd, gus, message, gen_id, "noise:1")
        gen = await restarted.repos.generations.get(lab_id)
        assert gen.parent_image_index == 1 and gen.recipe["seed"] == 10  # image 2's own seed


async def test_a_queued_lab_job_runs_after_a_restart(fd, worker, tiny_model_dir, tmp_path):
    """A lab view still waiting in the queue when the bot stops is picked up by the next start
    and posted like any recovered job: its film, its caption, for the member who asked."""
    kim, lee = fd.add_member("kim"), fd.add_member("lee")
    env = {"EASEL_GENERATION_MAX_STEPS": "500"}
    async with running_easel(fd, worker, tmp_path, tiny_model_dir, **env) as first:
        gen_id, message = await imagine(fd, kim, prompt="a lighthouse", seed=3, steps=4)
        long = {"prompt": "a long night", "steps": 100}
        long_id = await queued_id(await fd.invoke(lee, "imagine", long))
        await running(first, long_id)  # the worker is busy with it: what comes next waits
        lab_id = await queued_id(await fd.select(kim, message, f"easel:lab:{gen_id}", ["steps:0"]))
        assert (await first.repos.generations.get(lab_id)).status == "queued"
        first.close_grace = 0.0  # stop now, as on SIGTERM
    async with running_easel(fd, worker, tmp_path, tiny_model_dir, **env) as restarted:
        await running(restarted, long_id)  # lee's long job runs again first: cancel it
        cancelled = (await (await fd.invoke(lee, "cancel", {})).response()).message
        assert f"#{long_id}" in cancelled.content, cancelled.content
        shown = await result(fd, lab_id, timeout=60)
        assert f"denoising film of #{gen_id}" in shown.content.lower()
        assert len(film(shown)) == 4 and shown.pings.users == {kim.id}
        gen = await restarted.repos.generations.get(lab_id)
        assert gen.status == "done" and gen.kind == "lab_steps" and gen.user_id == kim.id


async def running(bot, gen_id: int) -> None:
    for _ in range(400):
        if (await bot.repos.generations.get(gen_id)).status == "running":
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"#{gen_id} did not start within 20 s")


def row_of(message, component) -> int:
    return next(k for k, row in enumerate(message.components) if component in row["components"])


async def test_lab_results_are_not_remixed_or_labbed_again(fd, bot):
    """A lab picture offers Info and Delete only; remixing it or opening it in the lab says why
    not."""
    hana = fd.add_member("hana")
    gen_id, message = await imagine(fd, hana, prompt="a kite", seed=2)
    lab_id, shown = await pick(fd, hana, message, gen_id, "words:0")
    labels = {c.get("label") for row in shown.components for c in row["components"]}
    assert labels == {"Info", "Delete"}
    text = await refused(fd, hana, "lab steps", {"generation": lab_id})
    assert (
        text
        == f"#{lab_id} is already a lab picture; open the lab on the image it is about (#{gen_id})."
    )
    text = await refused(fd, hana, "remix", {"generation": lab_id, "prompt": "a bird"})
    assert "is a lab picture, not an image to remix" in text


async def test_refusals_are_one_private_sentence(fd, bot):
    """Unknown or deleted images, another server's ids, too many cells, unknown axes and values
    that do not parse or are out of range: one private sentence each, nothing queued."""
    ivan = fd.add_member("ivan")
    gen_id, _ = await imagine(fd, ivan, prompt="a teapot", seed=4)
    assert await refused(fd, ivan, "lab noise", {"generation": 9999}) == "There is no image #9999."
    assert await refused(fd, ivan, "lab words", {"generation": gen_id, "image": 2}) == (
        f"#{gen_id} has no image 2; it has 1."
    )
    grid = {"prompt": "a cup"}
    cases = [
        (
            {"axis": "cfg", "values": "1"},
            "Unknown axis 'cfg'; vary one of: seed, guidance, steps, sampler.",
        ),
        (
            {"axis": "seed", "values": "1 2 3 4 5", "axis2": "steps", "values2": "1 2 3 4"},
            "A grid of 5 × 4 = 20 cells is too big; use at most 16 cells in all.",
        ),
        (
            {"axis": "guidance", "values": "3, lots"},
            "'lots' is not a number; give guidance values like 3, 7, 12.",
        ),
        ({"axis": "steps", "values": "10, 999"}, "Steps 999 is out of range; use 1 to 50."),
        (
            {"axis": "sampler", "values": "Heun"},
            "Unknown sampler 'Heun'; choose from: DPM++ 2M Karras, DPM++ 2M, Euler a, Euler, DDIM, LCM.",
        ),
    ]
    for extra, sentence in cases:
        assert await refused(fd, ivan, "lab grid", {**grid, **extra}) == sentence
    refusals = [
        g
        for g in await bot.repos.history.history(ivan.id, guild_id=fd.guild.id, limit=20)
        if g.status == "blocked"
    ]
    assert len(refusals) == len(cases) and all(g.refusal_reason == "bad_input" for g in refusals)
    await answer(await fd.invoke(ivan, "delete", {"generation": gen_id}))
    assert await refused(fd, ivan, "lab clip", {"generation": gen_id}) == (
        f"#{gen_id} was deleted, so the lab cannot open it."
    )
