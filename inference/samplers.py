"""Sampler names users see, mapped to diffusers schedulers."""

from __future__ import annotations

from typing import Any

from .request import SAMPLERS

# name -> (scheduler class name in diffusers, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}

# name -> (sampler, schedule type) as AUTOMATIC1111's web UI writes them in a PNG's
# `parameters` since 1.9, where the two are separate fields. "Uniform" is the model's own noise
# schedule (what these diffusers schedulers use without Karras sigmas); A1111 reads a DPM++ 2M
# without a schedule type as Karras, so it must be said. The Karras sampler keeps its older
# one-field name, which readers before 1.9 need and later ones split themselves.
A1111_NAMES: dict[str, tuple[str, str]] = {
    "DPM++ 2M": ("DPM++ 2M", "Uniform"),
    "DPM++ 2M Karras": ("DPM++ 2M Karras", "Karras"),
    "Euler": ("Euler", "Uniform"),
    "Euler a": ("Euler a", "Uniform"),
    "DDIM": ("DDIM", "Uniform"),
    "LCM": ("LCM", "Uniform"),
}

assert set(SCHEDULERS) == set(SAMPLERS), "every offered sampler needs a scheduler"
assert set(A1111_NAMES) == set(SAMPLERS), "every offered sampler needs its A1111 names"


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler for `name`, built from the checkpoint's own scheduler config."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(base_config, **overrides)
