"""What a lab view hands the runner: its picture, where each cell is, what it found, the
extra files, and the parts the safety checker must see before any of it is posted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .draw import Layout
from .spec import ConceptScore, LabFile

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass
class LabPicture:
    image: Image
    layout: Layout
    data: dict[str, Any] = field(default_factory=dict)
    files: list[LabFile] = field(default_factory=list)
    # Every frame or map shown (in the picture or the files), checked one by one.
    parts: list[Image] = field(default_factory=list)
    part_names: list[str] = field(default_factory=list)
    # Set by views whose parts the engine already checked (the grid's cells).
    flagged: bool = False
    scores: tuple[ConceptScore, ...] = ()
    chunks: dict[str, str] = field(default_factory=dict)
