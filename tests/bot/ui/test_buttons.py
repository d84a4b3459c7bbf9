"""The result's components: rows within Discord's limits, the Zoom out / Pan menu on row 3."""

from __future__ import annotations

import pytest

from bot.ui.buttons import OutpaintSelect, result_view


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_result_rows_stay_within_discords_limits(count):
    """Row 0 🎲 ✏️ ℹ️ 🗑️, row 1 V, row 2 U, row 3 the Zoom/Pan menu (6 entries an image,
    ≤ 25), row 4 the 🔬 Lab menu; never more than 5 items a row."""
    view = result_view(7, list(range(count)), max_pixels=1 << 20, size=(64, 64))
    rows = view.to_components()  # the action rows as Discord receives them
    assert len(rows) == 5 and all(len(row["components"]) <= 5 for row in rows)
    (lab,) = rows[4]["components"]
    assert lab["custom_id"] == "easel:lab:7" and len(lab["options"]) == 4 * count <= 25
    assert [len(row["components"]) for row in rows[:3]] == [4, count, count]
    (menu,) = rows[3]["components"]
    assert menu["type"] == 3 and menu["custom_id"] == "easel:outpaint:7"
    assert len(menu["options"]) == 6 * count <= 25 and menu["max_values"] == 1
    values = {option["value"] for option in menu["options"]}
    assert {"zoom:2:0", "zoom:1.5:0", "pan:left:0", "pan:down:0"} <= values
    assert f"pan:up:{count - 1}" in values


def test_no_menu_without_a_shown_image():
    """A result whose images are all withheld offers no zoom or pan."""
    view = result_view(7, [], max_pixels=1 << 20, size=(64, 64))
    rows = view.to_components()
    assert len(rows) == 1 and all(c["type"] == 2 for c in rows[0]["components"])


def test_menu_entries_name_the_image_only_when_there_are_several():
    """One image: "Zoom out 2×"; several: "Image 2 · Zoom out 2×"."""
    single = OutpaintSelect(3, [0]).item
    assert single.options[0].label == "Zoom out 2×" and single.placeholder.endswith("pan…")
    several = OutpaintSelect(3, [0, 1]).item
    assert several.options[6].label == "Image 2 · Zoom out 2×"
