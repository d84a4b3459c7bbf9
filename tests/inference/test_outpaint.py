"""Zoom out and Pan geometry and masks: pure numbers, no model."""

from __future__ import annotations

import numpy as np
import pytest

from inference.outpaint import (
    blend_mask,
    canvas_pixels,
    composite,
    feather_for,
    paint_mask,
    pan,
    zoom_out,
)


def test_zoom_out_2x_centres_the_source():
    """2× doubles both sides and puts the source in the middle, on the 8-pixel grid."""
    geometry = zoom_out(64, 48, 2.0)
    assert (geometry.width, geometry.height) == (128, 96)
    assert geometry.paste == (32, 24, 64, 48)
    assert geometry.feather == 8


def test_zoom_out_1_5x_rounds_to_multiples_of_8():
    """1.5× of 512×512 is 768×768 with the source at 128, 128."""
    geometry = zoom_out(512, 512, 1.5)
    assert (geometry.width, geometry.height, geometry.paste) == (768, 768, (128, 128, 512, 512))
    assert geometry.feather == 32
    odd = zoom_out(72, 56, 1.5)
    assert odd.width % 8 == 0 and odd.height % 8 == 0
    left, top, _, _ = odd.paste
    assert left % 8 == 0 and top % 8 == 0


@pytest.mark.parametrize(
    ("direction", "size", "paste"),
    [
        ("left", (96, 64), (32, 0, 64, 64)),
        ("right", (96, 64), (0, 0, 64, 64)),
        ("up", (64, 96), (0, 32, 64, 64)),
        ("down", (64, 96), (0, 0, 64, 64)),
    ],
)
def test_pan_extends_by_half_on_its_side(direction, size, paste):
    """Pan adds half the source's size on the chosen side and keeps the source opposite."""
    geometry = pan(64, 64, direction)
    assert (geometry.width, geometry.height) == size and geometry.paste == paste


def test_bad_zoom_and_direction_are_refused():
    """A zoom factor must be above 1 and a direction one of the four."""
    with pytest.raises(ValueError):
        zoom_out(64, 64, 1.0)
    with pytest.raises(ValueError):
        pan(64, 64, "sideways")


def test_feather_scales_with_the_source():
    """The band is 1/16 of the shorter side, at least 8 px, on the 8-pixel grid."""
    assert [feather_for(s, s) for s in (64, 256, 512, 1024)] == [8, 16, 32, 64]


def test_blend_mask_keeps_the_source_outside_the_band():
    """1 on new area, 0 deep inside the source, a falling ramp across the band."""
    mask = blend_mask(128, 128, (32, 32, 64, 64), 8)
    assert mask[:32].min() == 1.0 and mask[:, :32].min() == 1.0 and mask[96:].min() == 1.0
    assert mask[40:88, 40:88].max() == 0.0
    row = mask[64, 32:41]
    assert row[0] == 1.0 and row[-1] == 0.0 and np.all(np.diff(row) <= 0)
    assert 0 < row[4] < 1


def test_pan_has_no_band_on_canvas_edges():
    """A pan left blends only along the source's left edge; its other edges are kept whole."""
    mask = blend_mask(96, 64, (32, 0, 64, 64), 8)
    assert mask[:, :32].min() == 1.0
    assert mask[:, 40:].max() == 0.0  # top, bottom and right edges of the source untouched
    assert mask[0, 36] > 0 and mask[63, 36] > 0


def test_paint_mask_covers_new_area_and_band():
    """The painter's mask is 255 where any new paint goes."""
    blend = blend_mask(128, 128, (32, 32, 64, 64), 8)
    painted = paint_mask(blend)
    assert painted.dtype == np.uint8 and set(np.unique(painted)) == {0, 255}
    assert (painted == 255).sum() == (blend > 0).sum()


def test_canvas_and_composite_keep_source_pixels_exactly():
    """The source lies on the canvas as it was, and blending leaves it exact outside the band."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    canvas = canvas_pixels(source, 128, 128, (32, 32, 64, 64))
    assert canvas.shape == (128, 128, 3)
    assert np.array_equal(canvas[32:96, 32:96], source)
    assert np.array_equal(canvas[0, 0], source[0, 0])  # new area starts from the edge pixels
    painted = rng.random((128, 128, 3), dtype=np.float32)
    blend = blend_mask(128, 128, (32, 32, 64, 64), 8)
    out = composite(canvas.astype(np.float32) / 255, painted, blend)
    out8 = (out * 255).round().astype(np.uint8)
    assert np.array_equal(out8[40:88, 40:88], source[8:56, 8:56])
    assert np.allclose(out[:32], painted[:32])
    with pytest.raises(ValueError):
        canvas_pixels(source, 128, 128, (32, 32, 48, 48))
