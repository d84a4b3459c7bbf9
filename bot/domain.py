"""Easel's vocabulary: the states, kinds and reasons of the service, and the rows it keeps.

Every enum here is the one definition of its words: the database stores the values, the
services decide with the members, and the Discord layer shows each member's `label`. Adding a
derivation kind is one `Kind` member here (with its wording), one migration that inserts it into
the `kinds` table, and the derivation itself in `bot/services/derive.py`.

Nothing here imports discord, SQLite or torch; `inference.request` is the plain, pickle-safe
request/result contract that the recipe of a generation is rebuilt into.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from inference.lab.spec import ConceptScore
from inference.request import GenerationRequest


class UserError(Exception):
    """A problem the member can fix; the message is shown to them as is (one sentence)."""


class _Worded(enum.StrEnum):
    """A StrEnum whose members carry a label: `Member = "value", "label"`."""

    label: str

    def __new__(cls, value: str, label: str = "") -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label or value
        return member


class Status(_Worded):
    """Where a request is: the queue's durable truth."""

    QUEUED = "queued", "⏳ queued"
    RUNNING = "running", "⚙️ running"
    DONE = "done", "✅ done"
    FAILED = "failed", "❌ failed"
    CANCELLED = "cancelled", "✖️ cancelled"
    # Stored as 'blocked'; members and moderators read "refused".
    BLOCKED = "blocked", "⛔ refused"

    @property
    def is_active(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)

    @property
    def is_final(self) -> bool:
        return not self.is_active


class Kind(_Worded):
    """How a generation came about. The label is the noun in "remix of #N by @author"."""

    IMAGINE = "imagine", "image"
    REROLL = "reroll", "reroll"
    REMIX = "remix", "remix"
    VARY = "vary", "variation"
    UPSCALE = "upscale", "upscale"
    ZOOM = "zoom", "zoom out"
    PAN = "pan", "pan"
    # The diffusion lab (bot/services/lab.py): views of one image, and experiment grids.
    LAB_STEPS = "lab_steps", "denoising film"
    LAB_WORDS = "lab_words", "word map"
    LAB_CLIP = "lab_clip", "CLIP reading"
    LAB_NOISE = "lab_noise", "noise road"
    LAB_GRID = "lab_grid", "experiment grid"

    @property
    def from_one_image(self) -> bool:
        """Made from one image of its parent (its lineage names which one)."""
        return self in (
            Kind.VARY,
            Kind.UPSCALE,
            Kind.ZOOM,
            Kind.PAN,
            Kind.LAB_STEPS,
            Kind.LAB_WORDS,
            Kind.LAB_CLIP,
            Kind.LAB_NOISE,
        )

    @property
    def is_lab(self) -> bool:
        """A lab view or grid: a picture about images, not an image to build on."""
        return self.value.startswith("lab_")


class RefusalReason(_Worded):
    """Why a request was refused (stored with the refused request)."""

    BAD_INPUT = "bad_input", "bad input"
    BANNED_WORD = "banned_word", "banned word"
    BANNED_USER = "banned_user", "member banned"
    OVER_CAP = "over_cap", "too many waiting"
    OVER_QUOTA = "over_quota", "daily quota used"
    PAUSED = "paused", "queue paused"
    FLAGGED_UPLOAD = "flagged_upload", "upload flagged by the safety checker"

    @property
    def needs_review(self) -> bool:
        """A prompt refused for a banned word, or an upload the safety checker flagged, waits
        for a moderator's look."""
        return self in (RefusalReason.BANNED_WORD, RefusalReason.FLAGGED_UPLOAD)


class ReviewState(_Worded):
    PENDING = "pending"
    RELEASED = "released"
    REMOVED = "removed"


class SafetyMode(_Worded):
    """What a server does with images the safety checker flagged."""

    WITHHOLD = (
        "withhold",
        "flagged images are withheld (a notice in the channel; the image only in /mod review)",
    )
    SPOILER = (
        "spoiler",
        "flagged images are posted behind a spoiler with a content warning (and still listed "
        "in /mod review)",
    )


class AuditAction(_Worded):
    """A moderator's action, as written to the audit table and shown by /mod audit."""

    BAN = "ban", "🔨 ban"
    UNBAN = "unban", "🕊️ unban"
    RELEASE = "release", "✅ release"
    REMOVE = "remove", "🗑️ remove"
    WORD_ADD = "word_add", "➕ banned word added"
    WORD_REMOVE = "word_remove", "➖ banned word removed"
    PAUSE = "pause", "⏸️ pause"
    RESUME = "resume", "▶️ resume"
    SAFETY_MODE = "safety_mode", "🛡️ safety mode"
    LOG_CHANNEL = "log_channel", "📋 log channel"
    EXPORT = "export", "📤 export"
    DENIED = "denied", "🚫 refused /mod (not a moderator)"


# ---------------------------------------------------------------------------------------------
# Who asked, and where


@dataclass(frozen=True)
class Actor:
    """A member doing something, as the moderators' log names them."""

    user_id: int
    name: str = ""  # the member's user name (for log lines)
    channel_id: int | None = None


@dataclass(frozen=True)
class JobOrigin:
    """Who asked for a generation, where, and what it was made from."""

    user_id: int
    guild_id: int | None = None
    channel_id: int | None = None
    kind: Kind = Kind.IMAGINE
    parent_id: int | None = None
    parent_image_index: int | None = None
    user_name: str | None = None  # display name at request time


@dataclass(frozen=True)
class StatusLine:
    """Where a job's public status line is, so it can be removed after a restart."""

    channel_id: int
    message_id: int


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class ImageRow:
    """One stored image of a generation."""

    generation_id: int
    index: int
    seed: int
    path: Path  # absolute path of the PNG file
    width: int = 0
    height: int = 0
    flagged: bool = False
    # None when not flagged; 'pending' until a moderator releases or removes it.
    review: ReviewState | None = None
    reviewed_by: int | None = None
    reviewed_at: datetime | None = None

    @property
    def public(self) -> bool:
        """Not flagged, or released by a moderator (see bot/services/visibility.py)."""
        return not self.flagged or self.review == ReviewState.RELEASED


@dataclass(frozen=True)
class Generation:
    """One request as logged: who, where, the recipe, the outcome, timings, lineage, delivery."""

    id: int
    user_id: int
    user_name: str | None
    guild_id: int | None
    channel_id: int | None
    kind: Kind
    parent_id: int | None
    parent_image_index: int | None
    recipe: dict[str, Any]
    status: Status
    refusal_reason: RefusalReason | None
    refusal_message: str | None
    error: str | None
    flagged: bool
    prompt_truncated: bool
    runs: int
    attempts: int | None
    batch_size: int | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    inference_seconds: float | None
    timings: dict[str, float]
    message_channel_id: int | None
    message_id: int | None
    delivered_at: datetime | None
    deleted_at: datetime | None
    deleted_by: int | None
    # Review of a blocked prompt (banned word): None, 'pending', 'released' or 'removed'.
    review: ReviewState | None
    reviewed_by: int | None
    reviewed_at: datetime | None
    status_line: StatusLine | None = None
    images: tuple[ImageRow, ...] = ()
    # The file (under the data folder's uploads/) of the image the member uploaded with this
    # request, re-encoded; None when there was no upload.
    upload: str | None = None

    @property
    def prompt(self) -> str:
        return str(self.recipe.get("prompt", ""))

    @property
    def negative(self) -> str:
        return str(self.recipe.get("negative", ""))

    @property
    def has_upload(self) -> bool:
        return self.upload is not None

    @property
    def request(self) -> GenerationRequest:
        """The request rebuilt from the recipe, with `job_id = str(id)` (no source image)."""
        return GenerationRequest.from_recipe(self.recipe, job_id=str(self.id))

    @property
    def cost(self) -> int:
        return self.request.cost

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    @property
    def seeds(self) -> list[int]:
        """The seed of each image: from the stored images, else from the recipe."""
        if self.images:
            return [image.seed for image in self.images]
        with contextlib.suppress(Exception):
            return self.request.image_seeds()
        return []

    def image(self, index: int) -> ImageRow | None:
        for image in self.images:
            if image.index == index:
                return image
        return None


@dataclass(frozen=True)
class ReviewItem:
    """One entry of the moderators' review queue: a flagged image, or a blocked prompt."""

    generation: Generation
    image_index: int | None  # None: the blocked prompt itself
    since: datetime

    @property
    def is_prompt(self) -> bool:
        return self.image_index is None


@dataclass(frozen=True)
class Ban:
    id: int
    guild_id: int
    user_id: int
    reason: str
    banned_by: int
    created_at: datetime
    until: datetime | None  # None = permanent
    lifted_at: datetime | None
    lifted_by: int | None

    @property
    def permanent(self) -> bool:
        return self.until is None

    def active_at(self, when: datetime) -> bool:
        return self.lifted_at is None and (self.until is None or self.until > when)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int | None
    actor_id: int
    action: AuditAction | str  # a str only for actions this version does not know
    target_user_id: int | None
    target_generation_id: int | None
    reason: str | None
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    safety_mode: SafetyMode = SafetyMode.WITHHOLD
    log_channel_id: int | None = None
    words_seeded: bool = False
    updated_at: datetime | None = None


def plural(n: int, noun: str) -> str:
    """ "1 image", "2 images"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True)
class LabRecord:
    """What the lab kept for a generation: a lab view's facts and extra files, or a plain
    result's CLIP scores and (flagged images) safety-checker scores, by image index."""

    generation_id: int
    view: str | None  # None for a plain result
    data: dict[str, Any]
    files: tuple[Path, ...]
    clip_scores: dict[int, float]
    safety_scores: dict[int, tuple[ConceptScore, ...]]
