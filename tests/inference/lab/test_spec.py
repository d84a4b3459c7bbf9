"""The lab's request contract: axis parsing, grid limits, recipes that survive JSON and pickle."""

from __future__ import annotations

import pickle

import pytest

from inference.lab.spec import Bounds, LabRequest, LabSpecError, check_grid, parse_axis
from inference.request import GenerationRequest, Limits, RequestError, validate

BOUNDS = Bounds(1, 50, 0.0, 20.0, 2**32 - 1, ("DPM++ 2M Karras", "Euler a", "DDIM"))


def test_axis_values_parse_with_commas_or_spaces():
    """Numbers may be separated by commas or spaces; samplers by commas, in any case."""
    assert parse_axis("seed", "1, 2 3", BOUNDS) == (1, 2, 3)
    assert parse_axis("guidance", "3,7.5", BOUNDS) == (3.0, 7.5)
    assert parse_axis("Steps", "10 20", BOUNDS) == (10, 20)
    assert parse_axis("sampler", "euler a, DDIM", BOUNDS) == ("Euler a", "DDIM")


@pytest.mark.parametrize(
    ("axis", "text", "words"),
    [
        ("cfg", "1", "Unknown axis 'cfg'"),
        ("seed", "", "Give the seed values"),
        ("seed", "1, x", "'x' is not a whole number"),
        ("guidance", "high", "'high' is not a number"),
        ("guidance", "25", "out of range; use 0 to 20"),
        ("steps", "0", "out of range; use 1 to 50"),
        ("seed", "-1", "out of range"),
        ("sampler", "Heun", "Unknown sampler 'Heun'"),
    ],
)
def test_bad_axis_values_get_one_sentence(axis, text, words):
    """Unknown axes, values that do not parse and values out of range say what to change."""
    with pytest.raises(LabSpecError, match=words) as caught:
        parse_axis(axis, text, BOUNDS)
    assert str(caught.value).endswith(".") and str(caught.value).count(". ") == 0


def test_grid_limits_and_canonical_values():
    """At most `max_cells` cells; two different axes; values rewritten canonically."""
    lab = check_grid(
        LabRequest("grid", axis="Seed", values="1 2", axis2="guidance", values2="3,7"), BOUNDS, 4
    )
    assert (lab.axis, lab.values, lab.axis2, lab.values2) == ("seed", "1, 2", "guidance", "3, 7")
    with pytest.raises(LabSpecError, match="2 × 3 = 6 cells is too big; use at most 4"):
        check_grid(
            LabRequest("grid", axis="seed", values="1 2", axis2="steps", values2="1 2 3"), BOUNDS, 4
        )
    with pytest.raises(LabSpecError, match="Both axes are seed"):
        check_grid(
            LabRequest("grid", axis="seed", values="1", axis2="seed", values2="2"), BOUNDS, 4
        )
    with pytest.raises(LabSpecError, match="values2 without axis2"):
        check_grid(LabRequest("grid", axis="seed", values="1", values2="2"), BOUNDS, 4)


def test_grid_request_cells_cost_and_round_trip():
    """A 3×2 grid has six one-image cells, costs their sum, and survives JSON and pickle."""
    request = GenerationRequest(
        prompt="a fox",
        seed=9,
        steps=4,
        width=64,
        height=64,
        lab=LabRequest("grid", axis="seed", values="1,2,3", axis2="steps", values2="2, 6"),
    )
    request = validate(request, Limits())
    cells = request.grid_cells()
    assert [[(c.seed, c.steps) for c in row] for row in cells] == [
        [(1, 2), (2, 2), (3, 2)],
        [(1, 6), (2, 6), (3, 6)],
    ]
    assert all(c.lab is None and c.count == 1 for row in cells for c in row)
    assert request.cost == sum(c.cost for row in cells for c in row) == 64 * 64 * 24
    again = GenerationRequest.from_recipe(request.recipe())
    assert again.lab == request.lab and again.grid_cells()[1][2].steps == 6
    assert pickle.loads(pickle.dumps(request)).lab == request.lab
    assert (
        request.batch_key()
        != GenerationRequest.from_recipe(request.recipe(), job_id="7").batch_key()
    )


def test_plain_recipes_have_no_lab_key():
    """A plain generation's recipe (and so its PNG) is unchanged by the lab."""
    assert "lab" not in GenerationRequest(prompt="x", seed=1).recipe()


def test_lab_views_validate():
    """A lab view is one image; a grid's bad values are a RequestError (a logged refusal)."""
    with pytest.raises(RequestError, match="one image at a time"):
        validate(GenerationRequest(prompt="x", count=2, lab=LabRequest("steps")), Limits())
    with pytest.raises(RequestError, match="needs the image"):
        validate(GenerationRequest(prompt="x", lab=LabRequest("noise")), Limits())
    with pytest.raises(RequestError, match="too big; use at most 16"):
        validate(
            GenerationRequest(
                prompt="x",
                lab=LabRequest("grid", axis="seed", values=" ".join(map(str, range(17)))),
            ),
            Limits(),
        )
