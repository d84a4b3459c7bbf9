"""Requests: validation errors, aspect presets, seeds and cost."""

import dataclasses
import json
import pickle

import pytest

from inference.request import (
    MAX_SEED,
    GenerationRequest,
    Limits,
    RequestError,
    aspect_size,
    fit_size,
    validate,
)

LIMITS = Limits(max_steps=50, max_count=4, max_pixels=1024 * 1024, max_prompt_chars=1000)


def make(**overrides) -> GenerationRequest:
    values = dict(prompt="a watercolor fox", width=512, height=512, steps=20)
    values.update(overrides)
    return GenerationRequest(**values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 1001}, "1001 characters"),
        ({"negative": "x" * 1001}, "negative prompt is too long"),
        ({"steps": 0}, "steps must be between 1 and 50"),
        ({"steps": 999}, "steps must be between 1 and 50"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"guidance": 25.0}, "guidance must be between 0 and 20"),
        ({"guidance": -1}, "guidance must be between 0 and 20"),
        ({"count": 0}, "count must be between 1 and 4"),
        ({"count": 5}, "count must be between 1 and 4"),
        ({"seed": -1}, f"seed must be between 0 and {MAX_SEED}"),
        ({"seed": MAX_SEED + 1}, f"seed must be between 0 and {MAX_SEED}"),
        ({"sampler": "Heun"}, "Unknown sampler 'Heun'"),
        ({"width": 500}, "width must be a multiple of 8"),
        ({"height": 510}, "height must be a multiple of 8"),
        ({"width": 2048, "height": 1024}, "too large"),
        ({"mode": "img2img"}, "needs a source image"),
        ({"mode": "img2img", "init_image": b"png", "strength": 0}, "strength must be above 0"),
        ({"mode": "paint"}, "Unknown mode"),
        (
            {"mode": "upscale", "init_image": b"png", "strength": 0.3, "steps": 3},
            "at least 4 steps",
        ),
    ],
)
def test_validation_errors_say_what_to_change(overrides, message):
    """Each bad value gets one sentence naming the value and its bounds."""
    with pytest.raises(RequestError, match=message) as caught:
        validate(make(**overrides), LIMITS)
    assert "\n" not in str(caught.value)


def test_valid_request_is_trimmed():
    """A valid request passes with whitespace trimmed."""
    request = validate(make(prompt="  a fox  ", negative=" blur ", seed=MAX_SEED), LIMITS)
    assert request.prompt == "a fox"
    assert request.negative == "blur"


@pytest.mark.parametrize(
    ("aspect", "native", "size"),
    [
        ("square", 512, (512, 512)),
        ("portrait", 512, (416, 624)),
        ("landscape", 512, (624, 416)),
        ("wide", 512, (680, 384)),
        ("tall", 512, (384, 680)),
        ("square", 1024, (1024, 1024)),
        ("square", 64, (64, 64)),
        ("wide", 64, (80, 48)),
    ],
)
def test_aspect_presets_follow_native_size(aspect, native, size):
    """Presets keep the model's native area and multiples of 8."""
    width, height = aspect_size(aspect, native)
    assert (width, height) == size
    assert width % 8 == 0 and height % 8 == 0
    assert width * height <= native * native


def test_unknown_aspect():
    """An unknown aspect lists the known ones."""
    with pytest.raises(RequestError, match="square, portrait"):
        aspect_size("panorama", 512)


def test_seeds_wrap_and_cost():
    """Image i uses seed + i modulo 2³²; cost counts pixels, steps and images."""
    request = make(seed=MAX_SEED, count=3)
    assert request.image_seeds() == [MAX_SEED, 0, 1]
    assert request.cost == 512 * 512 * 20 * 3
    assert make(mode="img2img", init_image=b"x", strength=0.5).cost == 512 * 512 * 10


def test_request_round_trips_through_pickle_and_recipe():
    """Requests cross the process boundary and rebuild from their recipe."""
    request = make(seed=7, negative="blur", count=2)
    assert pickle.loads(pickle.dumps(request)) == request
    rebuilt = GenerationRequest.from_recipe(request.recipe())
    assert rebuilt == request


def test_outpaint_recipe_round_trips_and_old_recipes_are_unchanged():
    """paste, feather and source are recorded for a zoom and left out of a plain request."""
    plain = GenerationRequest(prompt="a fox", seed=1)
    assert not {"paste", "feather", "source"} & set(plain.recipe())
    zoom = GenerationRequest(
        prompt="a fox",
        seed=1,
        mode="outpaint",
        width=128,
        height=128,
        paste=(32, 32, 64, 64),
        feather=8,
        strength=1.0,
        source="#3 image 1",
    )
    recipe = zoom.recipe()
    assert recipe["paste"] == [32, 32, 64, 64] and recipe["feather"] == 8
    assert recipe["source"] == "#3 image 1" and recipe["mode"] == "outpaint"
    back = GenerationRequest.from_recipe(json.loads(zoom.to_json()))
    assert back.paste == (32, 32, 64, 64) and back == dataclasses.replace(zoom, init_image=None)


def test_outpaint_validation_says_what_to_change():
    """An outpaint needs a source image inside a larger canvas."""
    good = GenerationRequest(
        prompt="a fox",
        mode="outpaint",
        width=128,
        height=128,
        paste=(32, 32, 64, 64),
        feather=8,
        strength=1.0,
        init_image=b"png",
    )
    assert validate(good, Limits()).paste == (32, 32, 64, 64)
    for bad, words in (
        (dataclasses.replace(good, paste=None), "place of its source"),
        (dataclasses.replace(good, width=64, height=64), "leave out aspect"),
        (dataclasses.replace(good, paste=(0, 0, 128, 128)), "larger than its source"),
        (dataclasses.replace(good, init_image=None), "needs a source image"),
    ):
        with pytest.raises(RequestError, match=words):
            validate(bad, Limits())


@pytest.mark.parametrize(
    ("size", "expected"),
    [((100, 50), (88, 40)), ((50, 100), (40, 88)), ((64, 64), (64, 64)), ((1000, 10), (128, 32))],
)
def test_fit_size_keeps_the_shape_within_the_model_size(size, expected):
    """An upload keeps its shape (up to 4:1), about the native area, sides multiples of 8."""
    assert fit_size(*size, native=64, max_pixels=4096 * 4) == expected


def test_fit_size_stays_within_max_pixels():
    """A model bigger than the server's pixel limit is fitted to the limit."""
    width, height = fit_size(3000, 2000, native=1024, max_pixels=500_000)
    assert width * height <= 500_000 and width % 8 == 0 and height % 8 == 0
