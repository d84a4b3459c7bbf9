"""The rules of the service, free of Discord: admission, derivations, visibility, what
members and moderators may do. Each service takes the settings and the repositories (and the
scheduler, the word lists and the moderators' log where it needs them) in its constructor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.db import Repositories
from bot.queue import Scheduler
from bot.settings import Settings

from .admission import Admission, Refused
from .derive import Derivations, Derived
from .jobs import Jobs
from .lab import Lab
from .moderation import Moderation
from .modlog import ModLog
from .uploads import Screener, Uploads
from .words import WordLists


@dataclass(frozen=True)
class Services:
    admission: Admission
    derive: Derivations
    jobs: Jobs
    moderation: Moderation
    words: WordLists
    uploads: Uploads
    lab: Lab

    @classmethod
    def build(
        cls,
        settings: Settings,
        repos: Repositories,
        scheduler: Scheduler,
        modlog: ModLog,
        native_size: Callable[[], int],
        screener: Screener | None = None,
        lab_info: Callable[[], Mapping[str, Any]] = dict,
    ) -> Services:
        """`screener`: the safety checker for uploads (the inference worker); without one,
        uploads are refused. `lab_info()`: what the worker's lab can do (its Ready message's
        "lab" entry)."""
        words = WordLists(repos, settings.moderation)
        derive = Derivations(settings, repos, native_size)
        return cls(
            admission=Admission(settings, repos, scheduler, words, modlog, screener),
            derive=derive,
            jobs=Jobs(repos, scheduler, modlog),
            moderation=Moderation(settings, repos, scheduler, words, modlog),
            words=words,
            uploads=Uploads(settings, native_size),
            lab=Lab(settings, repos, derive, lab_info),
        )


__all__ = ["Derived", "ModLog", "Refused", "Services"]
