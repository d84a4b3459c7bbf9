"""Experiment grids: one recipe with seed, guidance, steps or sampler varied across the columns
(and a second axis across the rows). Each cell is a plain generation run by the engine itself
(safety-checked, its recipe in its own PNG), so any cell can be made again alone."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..engine import CancelCheck, JobCancelled, ProgressCallback, read_png_recipe
from ..request import MAX_SEED, SAMPLERS, GeneratedImage, GenerationRequest, RequestError
from .draw import Cell, compose, fit
from .picture import LabPicture
from .spec import Bounds, axis_label, parse_axis

if TYPE_CHECKING:
    from .tools import LabTools

CHUNK = 4  # cells per pipeline call
SMALLEST_CELL = 128


def grid_view(
    tools: LabTools,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> LabPicture:
    lab = request.lab
    assert lab is not None
    rows = request.grid_cells()
    flat = [(r, c, cell) for r, row in enumerate(rows) for c, cell in enumerate(row)]
    total = sum(cell.steps_run for _, _, cell in flat)
    groups: dict[Any, list[int]] = {}
    for k, (_, _, cell) in enumerate(flat):
        groups.setdefault(cell.batch_key(), []).append(k)
    images: dict[int, GeneratedImage] = {}
    done = 0
    for members in groups.values():
        for start in range(0, len(members), CHUNK):
            chunk = members[start : start + CHUNK]
            offset = done

            def progress(step: int, steps: int, offset: int = offset) -> None:
                if on_progress is not None:
                    on_progress(offset + step, total)

            results = tools.engine.run(
                [flat[k][2] for k in chunk], on_progress=progress, cancelled=cancelled
            )
            for k, result in zip(chunk, results, strict=True):
                if result.cancelled:
                    raise JobCancelled()
                if result.error is not None:
                    raise RequestError(result.error)
                images[k] = result.images[0]
            done += flat[chunk[0]][2].steps_run
    axes = [(axis, parse_axis(axis, text, _ANY)) for axis, text in lab.axes]
    columns = [axis_label(axes[0][0], v) for v in axes[0][1]]
    row_names = [axis_label(axes[1][0], v) for v in axes[1][1]] if len(axes) > 1 else []
    grid_rows: list[list[Cell]] = []
    cells_data: list[dict[str, Any]] = []
    for k, (r, c, _) in enumerate(flat):
        made = images[k]
        recipe = read_png_recipe(made.png)
        label = (columns[c], row_names[r]) if row_names else (columns[c],)
        picture = Image.open(io.BytesIO(made.png)).convert("RGB")
        shown = fit(picture, 10**6, smallest=SMALLEST_CELL)  # full size; tiny ones enlarged
        if r == len(grid_rows):
            grid_rows.append([])
        meta = {"recipe": recipe, "scale": shown.width // picture.width}
        grid_rows[r].append(Cell(shown, label, meta))
        cells_data.append({"row": r, "col": c, "label": " · ".join(label), "recipe": recipe})
    image, layout = compose(
        grid_rows,
        title=_title(axes),
        column_titles=columns,
        row_titles=row_names,
    )
    flagged = [k for k, made in images.items() if made.nsfw]
    scores = images[flagged[0]].safety_scores if flagged else ()
    data = {
        "axis": axes[0][0],
        "axis2": axes[1][0] if len(axes) > 1 else "",
        "columns": columns,
        "rows": row_names,
        "cells": cells_data,
        "flagged_cells": [cells_data[k]["label"] for k in flagged],
    }
    return LabPicture(
        image,
        layout,
        data=data,
        flagged=bool(flagged),
        scores=scores,
        chunks={"easel-cells": json.dumps([c["recipe"] for c in cells_data], sort_keys=True)},
    )


# A stored grid was checked when it was queued: read its values back without limits.
_ANY = Bounds(1, 10**6, -(10.0**6), 10.0**6, MAX_SEED, SAMPLERS)


def _title(axes: Sequence[tuple[str, Sequence[Any]]]) -> str:
    if len(axes) > 1:
        return f"Experiment grid: {axes[0][0]} across, {axes[1][0]} down"
    return f"Experiment grid: {axes[0][0]} across"
