"""The lab's views on the real engine and the tiny random models (no worker process)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from inference.engine import Engine, EngineConfig
from inference.lab.draw import to_image
from inference.lab.spec import LabConfig, LabRequest
from inference.lab.tools import clearly_clear
from inference.lab.words import AttentionMaps, WatchingAttnProcessor, prompt_words
from inference.request import SAMPLERS, GenerationRequest, Limits, validate


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_clip_dir):
    return Engine(
        EngineConfig(model=tiny_model_dir, device="cpu", lab=LabConfig(clip_model=tiny_clip_dir))
    ).load()


def recipe(**values) -> GenerationRequest:
    base = dict(prompt="a red fox in snow", seed=11, width=64, height=64, steps=5, job_id="1")
    return GenerationRequest(**{**base, **values})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def film_frames(data: bytes) -> list[np.ndarray]:
    film = Image.open(io.BytesIO(data))
    frames = []
    for k in range(film.n_frames):
        film.seek(k)
        frames.append(np.asarray(film.convert("RGB")).astype(int))
    return frames


def layout(png: bytes) -> list[dict]:
    return json.loads(Image.open(io.BytesIO(png)).text["easel-lab"])["cells"]


def crop(png: bytes, box) -> np.ndarray:
    return pixels(png)[box[1] : box[3], box[0] : box[2]]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_steps_film_ends_on_the_image_for_every_sampler(engine, sampler):
    """Every sampler: one frame per step (up to 8), the last prediction is the plain image, and
    the same recipe gives the same film twice."""
    plain = recipe(sampler=sampler)
    [made] = engine.run([plain])
    lab = dataclasses.replace(plain, job_id="2", lab=LabRequest("steps"))
    [first] = engine.run([lab])
    [second] = engine.run([lab])
    assert first.ok and first.lab.view == "steps" and first.lab.data["steps"] == 5
    frames = film_frames(first.lab.files[0].data)
    assert len(frames) == len(first.lab.data["frames"]) == 5
    assert np.abs(frames[-1] - pixels(made.images[0].png)).max() <= 2
    assert first.images[0].png == second.images[0].png
    assert first.lab.files[0].data == second.lab.files[0].data
    timesteps = [f["timestep"] for f in first.lab.data["frames"]]
    noise = [f["noise"] for f in first.lab.data["frames"]]
    assert timesteps == sorted(timesteps, reverse=True) and noise == sorted(noise, reverse=True)
    cells = layout(first.images[0].png)
    assert len(cells) == 10 and {c["row"] for c in cells} == {0, 1}
    assert cells[-1]["label"][0] == "step 5 of 5"


def test_steps_picks_eight_evenly_spaced_steps(engine):
    """Of 20 steps the film keeps 8, the first and the last among them."""
    [made] = engine.run([recipe(steps=20, job_id="3", lab=LabRequest("steps"))])
    steps = [f["step"] for f in made.lab.data["frames"]]
    assert len(steps) == 8 and steps[0] == 1 and steps[-1] == 20
    assert len(film_frames(made.lab.files[0].data)) == 8


def test_steps_with_the_tiny_frame_decoder(tiny_model_dir, tiny_frame_decoder_dir):
    """With `lab.frame_decoder` the frames come from AutoencoderTiny; the last is still the
    VAE's, so it is the posted image."""
    engine = Engine(
        EngineConfig(
            model=tiny_model_dir, device="cpu", lab=LabConfig(frame_decoder=tiny_frame_decoder_dir)
        )
    ).load()
    assert engine.lab.info()["frame_decoder"]
    [made] = engine.run([recipe(job_id="4")])
    [film] = engine.run([recipe(job_id="5", lab=LabRequest("steps"))])
    assert film.lab.data["decoder"] == "tiny"
    frames = film_frames(film.lab.files[0].data)
    assert np.abs(frames[-1] - pixels(made.images[0].png)).max() <= 2
    assert np.abs(frames[0] - frames[-1]).mean() > 0  # the tiny decoder drew the others


def test_auto_frame_decoder(tiny_model_dir, tiny_frame_decoder_dir, monkeypatch, caplog):
    """`auto` takes the preview decoder when one is loaded, else the tiny autoencoder made for
    the pipeline's family; one that cannot be loaded leaves the VAE, with one warning."""
    from inference.lab import tools

    auto = LabConfig(frame_decoder="auto")
    shared = Engine(
        EngineConfig(
            model=tiny_model_dir, device="cpu", preview_decoder=tiny_frame_decoder_dir, lab=auto
        )
    ).load()
    assert shared.lab.frame_decoder is shared.preview_decoder is not None
    # A tiny decoder that is not in the (offline) cache: the VAE, and the reason why.
    monkeypatch.setitem(tools.AUTO_FRAME_DECODERS, "StableDiffusionPipeline", "easel-tests/none")
    offline = Engine(EngineConfig(model=tiny_model_dir, device="cpu", lab=auto)).load()
    assert offline.lab.frame_decoder is None
    assert "'easel-tests/none' is not in the local cache" in offline.lab.frame_note
    assert "Lab frame decoder off" in caplog.text
    monkeypatch.setitem(
        tools.AUTO_FRAME_DECODERS, "StableDiffusionPipeline", tiny_frame_decoder_dir
    )
    found = Engine(EngineConfig(model=tiny_model_dir, device="cpu", lab=auto)).load()
    assert found.lab.frame_decoder is not None and not found.lab.frame_note
    [film] = found.run([recipe(job_id="6", lab=LabRequest("steps"))])
    assert film.lab.data["decoder"] == "tiny"


def test_lab_models_come_from_the_cache_when_the_hub_cannot_be_reached(tiny_model_dir, monkeypatch):
    """Without the hub, the lab's hub models are looked up in the local cache only (no
    retries), and the note says the hub could not be reached."""
    import inference.engine

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(inference.engine, "hub_unreachable", lambda: "huggingface.co:443")
    asked: list[dict] = []

    def from_pretrained(name, **options):
        asked.append(options)
        raise OSError("not cached")

    monkeypatch.setattr("diffusers.AutoencoderTiny.from_pretrained", from_pretrained)
    monkeypatch.setattr("transformers.CLIPModel.from_pretrained", from_pretrained)
    config = LabConfig(frame_decoder="easel-tests/taesd", clip_model="easel-tests/clip")
    lab = Engine(EngineConfig(model=tiny_model_dir, device="cpu", lab=config)).load().lab
    assert [a.get("local_files_only") for a in asked] == [True, True]
    assert lab.frame_decoder is None and lab.clip is None
    assert "huggingface.co:443 cannot be reached" in lab.frame_note
    assert "huggingface.co:443 cannot be reached" in lab.clip_note


def test_prompt_words_merge_bpe_pieces(engine):
    """The tiny tokenizer has no merges, so every letter is a piece: they are merged back into
    words at CLIP's end-of-word marks, punctuation left out."""
    words, truncated = prompt_words(engine.pipe.tokenizer, "a red fox, in snow")
    assert [w.text for w in words] == ["a", "red", "fox", "in", "snow"]
    assert words[1].pieces == ("r", "e", "d</w>") and words[1].positions == (2, 3, 4)
    assert not truncated
    _, cut = prompt_words(engine.pipe.tokenizer, "word " * 40)
    assert cut


def test_watching_processor_changes_nothing(engine):
    """The attention processor that keeps the maps computes exactly what SDPA does."""
    import torch

    unet = engine.pipe.unet
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.inference_mode():
        plain = unet(sample, 500, encoder_hidden_states=context).sample
        before = dict(unet.attn_processors)
        maps = AttentionMaps.for_latents(8, 8)
        watcher = WatchingAttnProcessor(maps)
        unet.set_attn_processor(
            {k: (watcher if k.endswith("attn2.processor") else v) for k, v in before.items()}
        )
        try:
            watched = unet(sample, 500, encoder_hidden_states=context).sample
        finally:
            unet.set_attn_processor(before)
    assert torch.equal(plain, watched)
    tokens, kept = maps.maps()
    assert tokens.shape == (77, 8, 8) and kept == [(8, 8), (4, 4)]
    assert torch.allclose(tokens.sum(0), torch.ones(8, 8), atol=1e-4)  # softmax over tokens


def test_attention_maps_keep_the_two_middle_resolutions():
    """SD 1.5 at 512 px attends at 64, 32, 16 and 8: the maps average 32×32 and 16×16."""
    import torch

    maps = AttentionMaps.for_latents(64, 64)
    for side in (64, 32, 16, 8):
        q = torch.randn(2, 8, side * side, 40)
        maps.add(q, torch.randn(2, 8, 77, 40), 40**-0.5)
    tokens, kept = maps.maps()
    assert kept == [(32, 32), (16, 16)] and tokens.shape == (77, 32, 32)


def test_words_view_one_map_per_word(engine):
    """One map per word over the image, which is the plain image."""
    [made] = engine.run([recipe(job_id="6")])
    [words] = engine.run([recipe(job_id="7", lab=LabRequest("words"))])
    assert words.lab.data["words"] == ["a", "red", "fox", "in", "snow"]
    assert words.lab.data["map_size"] == [8, 8]
    cells = layout(words.images[0].png)
    assert [c["label"] for c in cells] == [["a"], ["red"], ["fox"], ["in"], ["snow"]]
    sizes = {(c["box"][2] - c["box"][0], c["box"][3] - c["box"][1]) for c in cells}
    assert sizes == {(128, 128)}  # 64 px enlarged twice
    assert not np.array_equal(
        crop(words.images[0].png, cells[0]["box"]), crop(words.images[0].png, cells[2]["box"])
    )
    del made


def test_clip_similarity_and_reading(engine):
    """CLIP's similarity is a cosine in [-1, 1]; the reading names a phrase of each group; a
    plain result carries its score."""
    [made] = engine.run([recipe(job_id="8")])
    assert -1 <= made.images[0].clip_score <= 1
    [seen] = engine.run(
        [
            recipe(
                job_id="9", lab=LabRequest("clip", image_ref=(1, 0)), init_image=made.images[0].png
            )
        ]
    )
    data = seen.lab.data
    assert -1 <= data["similarity"] <= 1 and data["laion_threshold"] == 0.28
    assert abs(data["similarity"] - made.images[0].clip_score) < 1e-3
    assert len(data["sees"]) == 3 and set(data["phrases"]) == {
        "medium",
        "style",
        "subject",
        "setting",
    }


def test_clip_view_off_without_a_model(tiny_model_dir):
    """With lab.clip_model empty the engine says the CLIP view is off."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load()
    assert engine.lab.info()["clip"] is False
    [made] = engine.run([recipe(job_id="10")])
    assert made.images[0].clip_score is None
    [off] = engine.run(
        [
            recipe(
                job_id="11", lab=LabRequest("clip", image_ref=(1, 0)), init_image=made.images[0].png
            )
        ]
    )
    assert off.error.startswith("The CLIP view is off: lab.clip_model is empty")


def test_noise_frames_get_noisier(engine):
    """Measured on the decoded frames: each is further from the t = 0 frame than the last."""
    [made] = engine.run([recipe(job_id="12")])
    [road] = engine.run(
        [
            recipe(
                job_id="13",
                lab=LabRequest("noise", image_ref=(1, 0)),
                init_image=made.images[0].png,
            )
        ]
    )
    assert road.lab.data["timesteps"][0] == 0 and road.lab.data["timesteps"][-1] == 999
    cells = layout(road.images[0].png)
    assert cells[0]["label"][0] == "the picture" and len(cells) == 9
    frames = [crop(road.images[0].png, c["box"]).astype(float) for c in cells[1:]]
    distance = [np.abs(f - frames[0]).mean() for f in frames]
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(distance))
    assert distance[-1] > distance[1] > 0


def test_grid_cells_are_the_images_of_their_recipes(engine):
    """Each cell of a 3×2 grid is what its own recipe makes alone."""
    grid = validate(
        recipe(
            job_id="14",
            steps=3,
            lab=LabRequest(
                "grid", axis="seed", values="1,2,3", axis2="sampler", values2="Euler, DDIM"
            ),
        ),
        Limits(),
    )
    [made] = engine.run([grid])
    cells = layout(made.images[0].png)
    assert len(cells) == 6 and cells[4]["label"] == ["seed 2", "DDIM"]
    for cell in cells:
        alone = GenerationRequest.from_recipe(cell["recipe"], job_id="15")
        [again] = engine.run([alone])
        scale = cell["scale"]
        shown = crop(made.images[0].png, cell["box"])[::scale, ::scale]
        assert np.abs(shown - pixels(again.images[0].png)).max() <= 2


def test_safety_scores_agree_with_the_checker(engine, flagging_model_dir):
    """The lab's per-concept scores reach the checker's own verdict, flagged or not."""
    images = [np.random.default_rng(k).random((64, 64, 3), dtype=np.float32) for k in range(3)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # as the engine decodes
    assert [f for f, _ in engine.lab.check(images)] == engine._safety_flags(batch) == [False] * 3
    flagging = Engine(EngineConfig(model=flagging_model_dir, device="cpu")).load()
    checked = flagging.lab.check(images)
    assert [f for f, _ in checked] == flagging._safety_flags(batch) == [True] * 3
    scores = checked[0][1]
    assert len(scores) == 20 and all(s.score > 0 for s in scores if s.group == "concept")
    [made] = flagging.run([recipe(job_id="16")])
    assert made.images[0].nsfw and made.images[0].safety_scores  # why, kept for moderators


def test_fast_checks_give_the_full_precision_verdicts(tiny_model_dir):
    """Scored first in bf16, a picture near or over a line is scored again in fp32: verdicts
    and the moderators' numbers are fp32's; only clearly clear pictures keep bf16 scores."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load()
    tools = engine.lab
    noise = [np.random.default_rng(k).random((64, 64, 3), dtype=np.float32) for k in range(3)]
    plain = [np.full((64, 64, 3), colour, np.float32) for colour in ([0, 0, 0], [1, 1, 1])]
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], (64, 1, 3))
    images = [*noise, *plain, ramp]
    tools.__dict__["fast_checks"] = False
    similarity = tools.check(images)[0][1][3].similarity  # concept 0 (after 3 special-care)
    # Picture 0 just under concept 0's line: closer than bf16 can tell apart.
    with torch.no_grad():
        engine.safety_checker.concept_embeds_weights[0] = similarity + 0.0004
    exact = tools.check(images)
    tools.__dict__["fast_checks"] = True
    fast = tools.check(images)
    bf16 = tools._scores(tools._checker_input([to_image(i) for i in images]), fast=True)
    assert [f for f, _ in fast] == [f for f, _ in exact]
    assert not exact[0][0] and any(f for f, _ in exact)
    assert not clearly_clear(bf16[0][1])  # picture 0 is near the line in bf16 too
    clear = 0
    for (_, scores), (_, exact_scores), (_, first) in zip(fast, exact, bf16, strict=True):
        # fp32 of a smaller batch differs from the whole batch's in the last bits only.
        rescored = all(
            abs(a.similarity - b.similarity) < 1e-5
            for a, b in zip(scores, exact_scores, strict=True)
        )
        if clearly_clear(first):
            assert scores == first  # kept from bf16
            clear += 1
        else:
            assert rescored and [a.score for a in scores] == [b.score for b in exact_scores]
    assert clear, "no picture was cleared by the bf16 scores"


def test_steps_of_a_variation_start_from_its_source(engine):
    """An image-to-image recipe is replayed from its start image: only the last `strength` of
    the steps run, and the film still ends on the variation."""
    [source] = engine.run([recipe(job_id="17")])
    vary = recipe(
        job_id="18", seed=12, mode="img2img", strength=0.6, init_image=source.images[0].png
    )
    [made] = engine.run([vary])
    [film] = engine.run(
        [dataclasses.replace(vary, job_id="19", lab=LabRequest("steps", image_ref=(1, 0)))]
    )
    assert film.lab.data["steps"] == 3  # int(5 × 0.6)
    frames = film_frames(film.lab.files[0].data)
    assert len(frames) == 3 and np.abs(frames[-1] - pixels(made.images[0].png)).max() <= 2
