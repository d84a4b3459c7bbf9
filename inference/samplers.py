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

assert set(SCHEDULERS) == set(SAMPLERS), "every offered sampler needs a scheduler"


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler for `name`, built from the checkpoint's own scheduler config."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(base_config, **overrides)
