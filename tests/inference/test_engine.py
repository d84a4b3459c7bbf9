"""The engine on a tiny random pipeline, loaded through the real from_pretrained path."""

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from inference.engine import Engine, EngineConfig, ModelLoadError, read_png_recipe
from inference.request import SAMPLERS, GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load()


def request(**overrides) -> GenerationRequest:
    values = dict(prompt="a red fox", seed=42, steps=4, width=64, height=64, job_id="1")
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_native_size_and_device(engine):
    """The tiny model's native size is 64 px; CPU runs in fp32."""
    assert engine.native_size == 64
    assert engine.device == "cpu"
    assert engine.dtype == torch.float32


def test_same_seed_same_bytes(engine):
    """The same recipe and seed give byte-identical PNGs."""
    first = engine.run([request()])[0].images[0].png
    second = engine.run([request()])[0].images[0].png
    assert first == second


def test_png_encoded_later_is_the_same_bytes(engine, tiny_model_dir):
    """With defer_png the engine hands back raw pixels; encode_pngs (the bot, in a thread)
    then gives exactly the bytes the engine would have written."""
    from inference.engine import encode_pngs

    deferring = Engine(EngineConfig(model=tiny_model_dir, device="cpu", defer_png=True)).load()
    (raw,) = deferring.run([request(count=2)])
    assert all(image.png == b"" and image.raw for image in raw.images)
    encode_pngs(raw)
    (direct,) = engine.run([request(count=2)])
    assert [i.png for i in raw.images] == [i.png for i in direct.images]
    assert all(image.raw is None for image in raw.images)


def test_batch_of_four_with_negatives(engine):
    """A count-4 request with a negative prompt gives four distinct 64 px images."""
    (result,) = engine.run([request(count=4, negative="blurry, text")])
    assert result.ok and len(result.images) == 4
    assert [image.seed for image in result.images] == [42, 43, 44, 45]
    assert len({image.png for image in result.images}) == 4
    for image in result.images:
        assert Image.open(io.BytesIO(image.png)).size == (64, 64)


def test_image_of_batch_matches_its_seed_alone(engine):
    """Image i of a batch is reproducible alone with its own seed (within 1 per pixel)."""
    (batch,) = engine.run([request(count=4, negative="blurry")])
    (alone,) = engine.run([request(seed=44, negative="blurry")])
    assert np.abs(pixels(batch.images[2].png) - pixels(alone.images[0].png)).max() <= 1


def test_several_requests_share_one_call(engine):
    """Compatible requests run together and each keeps its own prompt and seeds."""
    results = engine.run(
        [
            request(job_id="a", prompt="a cat", seed=1, count=2),
            request(job_id="b", prompt="a dog", seed=9),
        ]
    )
    assert [r.job_id for r in results] == ["a", "b"]
    assert [len(r.images) for r in results] == [2, 1]
    assert all(r.batch_size == 2 for r in results)
    assert read_png_recipe(results[1].images[0].png)["prompt"] == "a dog"
    (alone,) = engine.run([request(prompt="a dog", seed=9)])
    assert np.abs(pixels(results[1].images[0].png) - pixels(alone.images[0].png)).max() <= 1


def test_png_carries_recipe(engine):
    """Every PNG holds the recipe as JSON and in the common 'parameters' form."""
    (result,) = engine.run([request(negative="fog", guidance=5.5, sampler="Euler a")])
    png = result.images[0].png
    recipe = read_png_recipe(png)
    assert recipe["prompt"] == "a red fox" and recipe["negative"] == "fog"
    assert recipe["seed"] == 42 and recipe["steps"] == 4 and recipe["guidance"] == 5.5
    assert recipe["sampler"] == "Euler a" and recipe["width"] == 64
    assert recipe["model"] == engine.config.model
    text = Image.open(io.BytesIO(png)).text["parameters"]
    assert "Negative prompt: fog" in text and "Seed: 42" in text and "Sampler: Euler a" in text


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(engine, sampler):
    """Each offered sampler maps to a working scheduler."""
    (result,) = engine.run([request(sampler=sampler)])
    assert result.ok and len(result.images) == 1


def test_img2img_and_upscale_sizes(engine):
    """Vary keeps the source size; upscale doubles it."""
    source = engine.run([request()])[0].images[0].png
    (vary,) = engine.run([request(mode="img2img", init_image=source, strength=0.6, seed=3)])
    assert (vary.images[0].width, vary.images[0].height) == (64, 64)
    assert vary.images[0].png != source
    (upscaled,) = engine.run(
        [request(mode="upscale", init_image=source, strength=0.3, width=128, height=128)]
    )
    assert Image.open(io.BytesIO(upscaled.images[0].png)).size == (128, 128)
    assert read_png_recipe(upscaled.images[0].png)["mode"] == "upscale"


def test_progress_reports_every_step(engine):
    """The progress callback sees step n of N for each step."""
    seen = []
    engine.run([request(steps=5)], on_progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_cancel_mid_run_returns_no_image(engine):
    """Cancelling between steps stops the call: no half-denoised image comes back."""
    cancelled: set[str] = set()
    steps = []

    def progress(step, total):
        steps.append(step)
        if step == 2:
            cancelled.add("1")

    (result,) = engine.run([request(steps=20)], on_progress=progress, cancelled=lambda: cancelled)
    assert result.cancelled and not result.images
    assert steps == [1, 2]


def test_cancel_one_job_of_a_batch_keeps_the_others(engine):
    """A cancelled job in a shared batch is dropped; the other still gets its image."""
    (a, b) = engine.run([request(job_id="a"), request(job_id="b", seed=5)], cancelled=lambda: {"a"})
    assert a.cancelled and not a.images
    assert b.ok and len(b.images) == 1


def test_long_prompt_is_reported_as_truncated(engine):
    """A prompt over 77 tokens is flagged so the user can be told."""
    (short,) = engine.run([request()])
    (long,) = engine.run([request(prompt="a very long prompt " * 40)])
    assert not short.prompt_truncated
    assert long.prompt_truncated and long.ok


def test_out_of_memory_splits_the_batch(tiny_model_dir):
    """An out-of-memory error splits the batch in halves and still returns every image."""
    engine = Engine(
        EngineConfig(model=tiny_model_dir, device="cpu", extra={"fail_oom_above": 1})
    ).load()
    (result,) = engine.run([request(count=4)])
    assert result.ok and len(result.images) == 4
    (reference,) = (
        Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load().run([request(count=4)])
    )
    for ours, theirs in zip(result.images, reference.images, strict=True):
        assert np.abs(pixels(ours.png) - pixels(theirs.png)).max() <= 1


def test_nan_decode_is_redone_in_fp32(engine, monkeypatch):
    """A NaN decode (fp16 VAE overflow) is decoded again in fp32 instead of going out black."""
    real = engine._vae_decode
    calls = []

    def flaky(latents):
        calls.append(latents.dtype)
        out = real(latents)
        return torch.full_like(out, float("nan")) if len(calls) == 1 else out

    monkeypatch.setattr(engine, "_vae_decode", flaky)
    (result,) = engine.run([request()])
    assert len(calls) == 2
    assert pixels(result.images[0].png).max() > 0


def test_always_flag_checker_withholds_but_keeps_image(flagging_model_dir):
    """A flagged image is marked, and the image kept is the real one, not a black square."""
    engine = Engine(EngineConfig(model=flagging_model_dir, device="cpu")).load()
    (result,) = engine.run([request(count=2)])
    assert [image.nsfw for image in result.images] == [True, True]
    assert result.any_flagged
    assert all(pixels(image.png).max() > 0 for image in result.images)


def test_random_weights_do_not_flag(engine):
    """The normal tiny checker passes random images."""
    (result,) = engine.run([request(count=2)])
    assert not result.any_flagged


def test_missing_model_folder_is_one_clear_line(tmp_path):
    """A bad folder fails with a one-line ModelLoadError."""
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine(EngineConfig(model=str(tmp_path / "nope"), device="cpu")).load()
    with pytest.raises(ModelLoadError, match="not a diffusers model folder") as caught:
        Engine(EngineConfig(model=str(tmp_path), device="cpu")).load()
    assert "\n" not in str(caught.value)


def test_hub_id_offline_is_one_clear_line():
    """A hub id that is not cached, with no network, says what to do."""
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        Engine(EngineConfig(model="someone/not-a-cached-model", device="cpu")).load()


class FakeClock:
    """Stands in for `time.perf_counter` in the engine: one second per denoising step."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import inference.engine as engine_module

    fake = FakeClock()
    monkeypatch.setattr(engine_module.time, "perf_counter", fake.perf_counter)
    return fake


def run_with_steps(engine, clock, requests, **kwargs):
    """Run, advancing the fake clock a second per step; returns (step of each preview, kind)."""
    seen = []
    step_now = [0]

    def progress(step, total):
        step_now[0] = step
        clock.now += 1.0

    def preview(index, jpeg):
        seen.append((step_now[0] + 1, index, jpeg))

    results = engine.run(requests, on_progress=progress, on_preview=preview, **kwargs)
    return results, seen


def test_first_preview_after_one_interval_and_none_at_the_last_step(tiny_model_dir, clock):
    """Previews start one interval in (not at step 1), come once an interval, never last."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=2.5)).load()
    _, seen = run_with_steps(engine, clock, [request(steps=10)])
    assert [step for step, _, _ in seen] == [4, 7]  # at 3 s and 6 s; step 10 is the result
    image = Image.open(io.BytesIO(seen[0][2]))
    assert image.format == "JPEG" and max(image.size) == 256


def test_previews_of_a_batch_are_one_check_per_interval(tiny_model_dir, clock, monkeypatch):
    """Each request's first image is previewed; the batch's previews share one checker call."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=1.5)).load()
    calls = []
    real = engine._safety_flags

    def counting(images):
        calls.append(len(images))
        return real(images)

    monkeypatch.setattr(engine, "_safety_flags", counting)
    batch = [request(job_id="a", count=2, steps=8), request(job_id="b", seed=7, steps=8)]
    _, seen = run_with_steps(engine, clock, batch)
    assert [(step, index) for step, index, _ in seen] == [(s, i) for s in (3, 5, 7) for i in (0, 1)]
    preview_calls = calls[:-1]  # the last call checks the three result images
    assert preview_calls and all(n == 2 for n in preview_calls) and calls[-1] == 3


def test_previews_stay_within_their_share_of_the_time(tiny_model_dir, clock, monkeypatch):
    """A slow safety checker (a full-size one on a CPU) makes previews rarer, not the job
    slower: they take at most PREVIEW_BUDGET of the time."""
    from inference.engine import PREVIEW_BUDGET

    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=1.0)).load()
    real = engine._safety_flags

    def slow(images):
        clock.now += 0.5
        return real(images)

    monkeypatch.setattr(engine, "_safety_flags", slow)
    _, seen = run_with_steps(engine, clock, [request(steps=40)])
    # The first at 1 s (step 2: this engine measured previews as free at load); that one cost
    # 0.5 s, so the next waits until two of them fit in 3 % of the job's time: at 33.3 s.
    assert PREVIEW_BUDGET == 0.03
    assert [step for step, _, _ in seen] == [2, 34]


def test_a_preview_known_to_be_slow_waits_for_its_budget(tiny_model_dir, clock, monkeypatch):
    """A preview measured at load to cost 0.6 s comes only once the job has run 20 s (3 %)."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu", preview_interval=1.0)).load()
    engine._preview_each = 0.6
    _, seen = run_with_steps(engine, clock, [request(steps=30)])
    # (After it, the measured cost counts: on this fake clock previews then cost nothing.)
    assert seen[0][0] == 21


def test_tiny_decoder_makes_the_previews(tiny_model_dir, preview_decoder_dir, clock):
    """With model.preview_decoder, previews come from that AutoencoderTiny (loaded through
    from_pretrained), not from the linear map."""
    base = dict(model=tiny_model_dir, device="cpu", preview_interval=1.0)
    linear = Engine(EngineConfig(**base)).load()
    tiny = Engine(EngineConfig(**base, preview_decoder=preview_decoder_dir)).load()
    assert type(tiny.preview_decoder).__name__ == "AutoencoderTiny"
    _, by_linear = run_with_steps(linear, clock, [request(steps=4, width=80, height=48)])
    _, by_tiny = run_with_steps(tiny, clock, [request(steps=4, width=80, height=48)])
    assert [s for s, _, _ in by_tiny] == [s for s, _, _ in by_linear] == [2, 3]
    a = Image.open(io.BytesIO(by_linear[0][2]))
    b = Image.open(io.BytesIO(by_tiny[0][2]))
    assert a.size == b.size == (256, 154)
    assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).mean() > 5


def test_no_previews_without_an_interval(engine):
    """Without an interval there are none."""
    quiet = []
    engine.run([request()], on_preview=lambda index, png: quiet.append(index))
    assert quiet == []


def test_missing_preview_decoder_is_one_clear_line(tiny_model_dir, tmp_path):
    """A preview decoder folder that is not there stops the load with one line."""
    config = EngineConfig(
        model=tiny_model_dir, device="cpu", preview_decoder=str(tmp_path / "no-taesd")
    )
    with pytest.raises(ModelLoadError, match="Preview decoder folder"):
        Engine(config).load()


@pytest.mark.slow
def test_torch_compile_gives_the_same_image(tiny_model_dir):
    """torch.compile with inductor (channels-last, fused projections, UNet and VAE decoder)
    matches eager within 1 per pixel. The warm-up is skipped here: over every shape it takes
    far too long on a CPU (the warm-up itself is the next test's)."""
    eager = Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load()
    config = EngineConfig(
        model=tiny_model_dir, device="cpu", compile=True, extra={"skip_warmup": True}
    )
    compiled = Engine(config).load()
    (a,) = eager.run([request()])
    (b,) = compiled.run([request()])
    assert np.abs(pixels(a.images[0].png) - pixels(b.images[0].png)).max() <= 1


@pytest.mark.slow
def test_compile_warm_up_leaves_no_member_a_recompile(tiny_model_dir):
    """model.compile: after the warm-up at load, every batch size, aspect, guidance and
    upscale size runs without compiling anything (dynamo counts graphs; the eager backend
    keeps this to tracing, ~1 min on a CPU)."""
    from torch._dynamo.utils import counters

    config = EngineConfig(
        model=tiny_model_dir,
        device="cpu",
        compile=True,
        max_images=8,
        extra={"compile_backend": "eager"},
    )
    engine = Engine(config).load()
    assert engine.compiled_graphs >= 2 and engine.compile_seconds > 0
    assert engine.pipe.unet.attn_processors  # fused projections kept working processors
    before = int(counters["stats"]["unique_graphs"])
    jobs = [
        [request(width=80, height=48, count=3, guidance=0.0)],  # wide, no guidance
        [request(width=48, height=80, count=2, guidance=5.0)],  # tall
        [request(job_id="a", count=4, seed=1), request(job_id="b", count=4, seed=9)],  # 8
        [request(count=1, guidance=1.0)],  # guidance 1 runs without classifier-free guidance
        [request(width=128, height=128)],  # an upscale's size
    ]
    for batch in jobs:
        assert all(result.ok for result in engine.run(batch))
    assert int(counters["stats"]["unique_graphs"]) == before


def test_previews_pass_the_safety_checker_first(flagging_model_dir, clock):
    """A preview the safety checker flags is never sent (previews are shown before results)."""
    engine = Engine(
        EngineConfig(model=flagging_model_dir, device="cpu", preview_interval=1.0)
    ).load()
    (result,), seen = run_with_steps(engine, clock, [request(steps=10)])
    assert seen == [] and result.any_flagged


# --- the `parameters` text as AUTOMATIC1111 reads it ------------------------------------------
# A reader written from A1111's documented infotext format (modules/infotext_utils.py,
# parse_generation_parameters; modules/sd_samplers.py, get_sampler_and_scheduler): the prompt
# lines, an optional "Negative prompt:" line, then one line of "Key: value" fields, where a
# value in double quotes is JSON.
INFOTEXT_FIELD = re.compile(r'\s*(\w[\w /-]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_SCHEDULES = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")
# A1111's samplers that pick a schedule themselves when it says "Automatic".
A1111_DEFAULT_SCHEDULE = {"DPM++ 2M": "Karras"}


def parse_infotext(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(INFOTEXT_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:").strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in INFOTEXT_FIELD.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = json.loads(value)
        fields[key] = value
    return fields


def a1111_sampler(fields: dict[str, str], *, since_1_9: bool) -> tuple[str, str]:
    """(sampler, schedule) as A1111 reads them: before 1.9 the schedule was part of the
    sampler's name; since, "Schedule type" names it (a name with the old suffix still splits)."""
    name = fields["Sampler"]
    schedule = fields.get("Schedule type", "Automatic") if since_1_9 else "Uniform"
    for label in A1111_SCHEDULES:
        if name.endswith(" " + label):
            name, schedule = name.removesuffix(" " + label), label
    if schedule == "Automatic":
        schedule = A1111_DEFAULT_SCHEDULE.get(name, "Uniform")
    return name, schedule


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "prompt, negative, model, mode",
    [
        ("a red fox", "", "stable-diffusion-v1-5/stable-diffusion-v1-5", "txt2img"),
        (
            'a fox, (detailed:1.2), "quoted"\nsecond line: with colon',
            "blurry, low quality\nSteps: 99, Seed: 1, Size: 8x8",
            r"C:\models\my model, v2: final",
            "img2img",
        ),
    ],
)
def test_parameters_round_trip_through_an_a1111_reader(sampler, prompt, negative, model, mode):
    """The PNG's `parameters` read back by A1111's rules (1.9 and later, and older) give the
    recipe: sampler and schedule as Easel ran them, quoted values whole, Easel's version."""
    from inference.engine import easel_version, png_with_recipe
    from inference.samplers import SCHEDULERS

    recipe = GenerationRequest(
        prompt=prompt,
        negative=negative,
        seed=4294967295,
        steps=30,
        guidance=6.5,
        width=512,
        height=768,
        sampler=sampler,
        model=model,
        mode=mode,
        strength=0.55,
    ).recipe()
    png = png_with_recipe(Image.new("RGB", (8, 8)), recipe)
    fields = parse_infotext(Image.open(io.BytesIO(png)).text["parameters"])
    assert fields["Prompt"] == prompt and fields["Negative prompt"] == negative
    assert (fields["Steps"], fields["CFG scale"], fields["Seed"]) == ("30", "6.5", "4294967295")
    assert (fields["Size"], fields["Model"]) == ("512x768", model)
    assert fields["Version"] == f"Easel {easel_version()}"
    assert fields.get("Denoising strength") == (None if mode == "txt2img" else "0.55")
    karras = SCHEDULERS[sampler][1].get("use_karras_sigmas", False)
    base = sampler.removesuffix(" Karras")
    for since_1_9 in (True, False):
        assert a1111_sampler(fields, since_1_9=since_1_9) == (
            base,
            "Karras" if karras else "Uniform",
        ), f"read {'by 1.9+' if since_1_9 else 'before 1.9'}"


def outpaint_request(source_png: bytes, geometry, **overrides) -> GenerationRequest:
    return request(
        mode="outpaint",
        init_image=source_png,
        width=geometry.width,
        height=geometry.height,
        paste=geometry.paste,
        feather=geometry.feather,
        strength=1.0,
        **overrides,
    )


def test_zoom_out_paints_around_the_source_and_keeps_it(engine):
    """Zoom out 2× through the inpainting pipeline (from_pipe of the base model): twice the
    size, the source's pixels exact outside the blend band, new paint around it."""
    from inference.outpaint import zoom_out

    source = engine.run([request()])[0].images[0].png
    geometry = zoom_out(64, 64, 2.0)
    (result,) = engine.run([outpaint_request(source, geometry)])
    assert result.ok and engine._inpaint.unet is engine.pipe.unet  # no second model
    out = pixels(result.images[0].png)
    assert out.shape == (128, 128, 3)
    band = geometry.feather
    assert np.array_equal(
        out[32 + band : 96 - band, 32 + band : 96 - band], pixels(source)[band:-band, band:-band]
    )
    assert not np.array_equal(out[:32], np.broadcast_to(out[32:33], out[:32].shape))  # painted
    recipe = read_png_recipe(result.images[0].png)
    assert recipe["mode"] == "outpaint" and recipe["paste"] == [32, 32, 64, 64]


def test_pan_keeps_the_opposite_side(engine):
    """Pan right: the canvas grows to the right and the source's left part is untouched."""
    from inference.outpaint import pan

    source = engine.run([request(seed=7)])[0].images[0].png
    geometry = pan(64, 64, "right")
    (result,) = engine.run([outpaint_request(source, geometry, seed=8)])
    out = pixels(result.images[0].png)
    assert out.shape == (64, 96, 3)
    assert np.array_equal(
        out[:, : 64 - geometry.feather], pixels(source)[:, : 64 - geometry.feather]
    )


def test_screen_uses_the_safety_checker(engine, flagging_model_dir):
    """screen() gives the checker's verdict on PNG bytes of any size."""
    png = io.BytesIO()
    Image.new("RGB", (40, 72), (120, 80, 40)).save(png, format="PNG")
    assert engine.screen([png.getvalue(), png.getvalue()]) == [False, False]
    flagging = Engine(EngineConfig(model=flagging_model_dir, device="cpu")).load()
    assert flagging.screen([png.getvalue()]) == [True]


# -- the safety checker's input, on the device --------------------------------------------------


def decoded_images(seed: int, n: int, height: int, width: int) -> torch.Tensor:
    """Smooth random images (N, 3, H, W) in [0, 1], like decoded ones."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(1, height // 8), max(1, width // 8), generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (fine + 0.05 * torch.randn(n, 3, height, width, generator=generator)).clamp(0, 1)


def pil_path_flags(engine, images: torch.Tensor) -> list[bool]:
    """The flags as Easel computed them before: PIL feature extractor, float32 on the CPU."""
    from diffusers.utils.pil_utils import numpy_to_pil

    stack = images.permute(0, 2, 3, 1).numpy()
    features = engine.feature_extractor(numpy_to_pil(stack), return_tensors="pt")
    with torch.inference_mode():
        _, flags = engine.safety_checker(images=stack.copy(), clip_input=features.pixel_values)
    return [bool(f) for f in flags]


def concept_scores(engine, clip_input: torch.Tensor) -> torch.Tensor:
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    checker = engine.safety_checker
    with torch.inference_mode():
        embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
        return cosine_distance(embeds, checker.concept_embeds)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80), (512, 512), (512, 768)])
def test_device_clip_input_matches_the_feature_extractor(engine, height, width):
    """Resized, cropped and normalised on the device, the checker's input is the PIL path's
    within a byte per pixel at most (both resize bytes with antialiased bicubic, in two
    passes)."""
    from inference.engine import _clip_input_pil

    images = decoded_images(1, 3, height, width)
    ours = engine.clip_input(images)
    theirs = _clip_input_pil(engine.feature_extractor, images)
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    difference = (ours - theirs).abs()
    # One byte is 1 / 255 / std ≈ 0.015 after normalising.
    assert difference.mean() < 0.001
    assert difference.max() < 0.035


def test_flags_equal_on_both_checker_paths(tiny_model_dir):
    """With thresholds set so that about half of 24 images are flagged, the device path flags
    exactly the images the PIL path flags."""
    engine = Engine(EngineConfig(model=tiny_model_dir, device="cpu")).load()
    from inference.engine import _clip_input_pil

    images = torch.cat([decoded_images(seed, 4, 64, 64) for seed in range(6)])
    scores = concept_scores(engine, _clip_input_pil(engine.feature_extractor, images))[:, 0]
    with torch.no_grad():
        # Concept 0's threshold at the median score; the other concepts never fire.
        engine.safety_checker.concept_embeds_weights.fill_(10.0)
        engine.safety_checker.concept_embeds_weights[0] = float(scores.median())
        engine.safety_checker.special_care_embeds_weights.fill_(10.0)
    expected = pil_path_flags(engine, images)
    assert 0 < sum(expected) < len(expected)
    assert engine._safety_flags(images) == expected
