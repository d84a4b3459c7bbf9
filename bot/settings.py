"""Settings: `config/default.toml` < `EASEL_CONFIG` file < `.env` < environment variables.

Validated once at start-up; a bad value raises `SettingsError` with one line that names the key
and what is allowed. Secrets come from the environment or `.env` only and are never logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from dotenv import dotenv_values

from inference.engine import DEVICES, DTYPES, EngineConfig, valid_device
from inference.lab.spec import LabConfig
from inference.request import ASPECTS, SAMPLERS, Limits

from .domain import SafetyMode

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "config" / "default.toml"
PERMISSIONS = (
    "manage_messages",
    "manage_guild",
    "moderate_members",
    "kick_members",
    "ban_members",
    "administrator",
)
SAFETY_MODES = tuple(mode.value for mode in SafetyMode)

# The well-known variable names DESIGN.md promises, and the setting each one sets.
ALIASES = {
    "DISCORD_GUILD_ID": ("discord", "guild_id"),
    "DISCORD_API_BASE": ("discord", "api_base"),
    "DISCORD_GATEWAY_URL": ("discord", "gateway_url"),
    "EASEL_MODEL": ("model", "id"),
    "EASEL_DEVICE": ("model", "device"),
    "EASEL_DATA_DIR": ("data", "dir"),
}


class SettingsError(ValueError):
    """One line naming the bad key and what it may be."""


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"low": low, "high": high}


@dataclass(frozen=True)
class DiscordSettings:
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"
    guild_id: int = field(default=0, metadata=_range(0))
    log_channel_id: int = field(default=0, metadata=_range(0))
    progress_interval: float = field(default=1.0, metadata=_range(0.2, 60))
    progress_preview: bool = True
    # Seconds a download of an uploaded image may take.
    download_timeout: float = field(default=20.0, metadata=_range(1, 300))


@dataclass(frozen=True)
class ModelSettings:
    id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    device: str = "auto"  # auto, cuda, cuda:N, mps, cpu (checked below)
    dtype: str = field(default="auto", metadata=_choice(*DTYPES))
    compile: bool = False
    safety_checker: bool = True
    upscaler: str = ""
    inpaint: str = ""
    preview_decoder: str = ""
    load_timeout: float = field(default=900, metadata=_range(1))


@dataclass(frozen=True)
class GenerationSettings:
    samplers: tuple[str, ...] = field(
        default=("DPM++ 2M Karras", "DPM++ 2M", "Euler a", "Euler", "DDIM", "LCM"),
        metadata=_choice(*SAMPLERS),
    )
    default_sampler: str = field(default="DPM++ 2M Karras", metadata=_choice(*SAMPLERS))
    default_steps: int = field(default=25, metadata=_range(1, 500))
    min_steps: int = field(default=1, metadata=_range(1, 500))
    max_steps: int = field(default=50, metadata=_range(1, 500))
    default_guidance: float = field(default=7.0, metadata=_range(0, 50))
    min_guidance: float = field(default=0.0, metadata=_range(0, 50))
    max_guidance: float = field(default=20.0, metadata=_range(0, 50))
    # At most 4: one row of V1–V4 and one of U1–U4 buttons (Discord allows 5 per row).
    default_count: int = field(default=1, metadata=_range(1, 4))
    max_count: int = field(default=4, metadata=_range(1, 4))
    # At most 2000, so a recipe embed stays inside Discord's 6000 characters.
    max_prompt_chars: int = field(default=1000, metadata=_range(1, 2000))
    max_pixels: int = field(default=1048576, metadata=_range(64 * 64))
    vary_strength: float = field(default=0.6, metadata=_range(0.05, 1))
    upscale_strength: float = field(default=0.3, metadata=_range(0.05, 1))
    # Uploads: /imagine's `strength` when none is given, the largest file, and the most pixels
    # an upload may have (checked before it is decoded: a small file can hold a huge image).
    upload_strength: float = field(default=0.6, metadata=_range(0.05, 1))
    max_upload_mb: float = field(default=8.0, metadata=_range(0.1, 100))
    max_upload_megapixels: float = field(default=50.0, metadata=_range(0.01, 400))
    # How much Zoom out and Pan repaint of the new area (1 = paint it from scratch).
    outpaint_strength: float = field(default=1.0, metadata=_range(0.05, 1))


@dataclass(frozen=True)
class QueueSettings:
    max_waiting_per_user: int = field(default=5, metadata=_range(0))
    daily_quota: int = field(default=0, metadata=_range(0))
    batch_size: int = field(default=4, metadata=_range(1, 64))
    batch_window_ms: int = field(default=40, metadata=_range(0, 2000))
    initial_mpix_steps_per_second: float = field(default=10.0, metadata=_range(0.001))


BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class WorkersSettings:
    backend: str = field(default="local", metadata=_choice(*BACKENDS))
    devices: tuple[str, ...] = ("auto",)
    ray_address: str = "auto"
    ray_resource: str = "GPU"
    ray_poll_seconds: float = field(default=5.0, metadata=_range(0.1, 3600))
    restart_delay: float = field(default=30.0, metadata=_range(0, 3600))


@dataclass(frozen=True)
class DataSettings:
    dir: Path = Path("./data")


@dataclass(frozen=True)
class ModerationSettings:
    permission: str = field(default="manage_messages", metadata=_choice(*PERMISSIONS))
    role_id: int = field(default=0, metadata=_range(0))
    safety_mode: str = field(default="withhold", metadata=_choice(*SAFETY_MODES))
    banned_words: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabSettings:
    frame_decoder: str = "auto"
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_in_results: bool = True
    max_grid_cells: int = field(default=16, metadata=_range(1, 25))
    frames: int = field(default=8, metadata=_range(2, 16))
    frame_side: int = field(default=256, metadata=_range(64, 1024))
    max_words: int = field(default=12, metadata=_range(1, 24))


SECTIONS = {
    "discord": DiscordSettings,
    "model": ModelSettings,
    "generation": GenerationSettings,
    "queue": QueueSettings,
    "workers": WorkersSettings,
    "data": DataSettings,
    "moderation": ModerationSettings,
    "lab": LabSettings,
}


@dataclass(frozen=True)
class Settings:
    discord: DiscordSettings = DiscordSettings()
    model: ModelSettings = ModelSettings()
    generation: GenerationSettings = GenerationSettings()
    queue: QueueSettings = QueueSettings()
    workers: WorkersSettings = WorkersSettings()
    data: DataSettings = DataSettings()
    moderation: ModerationSettings = ModerationSettings()
    lab: LabSettings = LabSettings()
    # Secret: kept out of repr so it never lands in a log line.
    discord_token: str = field(default="", repr=False)

    @property
    def limits(self) -> Limits:
        g = self.generation
        return Limits(
            max_prompt_chars=g.max_prompt_chars,
            min_steps=g.min_steps,
            max_steps=g.max_steps,
            min_guidance=g.min_guidance,
            max_guidance=g.max_guidance,
            max_count=g.max_count,
            max_pixels=g.max_pixels,
            samplers=g.samplers,
            max_grid_cells=self.lab.max_grid_cells,
        )

    @property
    def engine(self) -> EngineConfig:
        m = self.model
        return EngineConfig(
            model=m.id,
            device=m.device,
            dtype=m.dtype,
            compile=m.compile,
            safety_checker=m.safety_checker,
            upscaler=m.upscaler,
            inpaint=m.inpaint,
            preview_interval=(
                self.discord.progress_interval if self.discord.progress_preview else 0.0
            ),
            lab=LabConfig(
                frame_decoder=self.lab.frame_decoder,
                clip_model=self.lab.clip_model,
                clip_in_results=self.lab.clip_in_results,
                frame_side=self.lab.frame_side,
                max_words=self.lab.max_words,
            ),
            preview_decoder=m.preview_decoder,
            # The scheduler encodes the PNGs while the GPU runs the next batch.
            defer_png=True,
            max_images=self.queue.batch_size * self.generation.max_count,
            max_pixels=self.generation.max_pixels,
        )

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """workers.devices, with `auto` meaning model.device (EASEL_DEVICE)."""
        return tuple(self.model.device if d == "auto" else d for d in self.workers.devices)

    @property
    def database_path(self) -> Path:
        return self.data.dir / "easel.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data.dir / "images"

    @property
    def aspects(self) -> tuple[str, ...]:
        return tuple(ASPECTS)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is Path:
            return Path(os.path.expanduser(str(value)))
        if kind == tuple[str, ...]:
            if isinstance(value, str):
                text = value.strip()
                items = json.loads(text) if text.startswith("[") else text.split(",")
            else:
                items = value
            if not isinstance(items, list | tuple):
                raise ValueError
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, json.JSONDecodeError):
        pass
    expected = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        Path: "a folder path",
        str: "a string",
    }.get(kind, "a list of strings")
    raise SettingsError(f"Setting {key}: expected {expected}, got {value!r}.")


def _check(key: str, value: Any, meta: dict[str, Any]) -> None:
    choices = meta.get("choices")
    if choices:
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if item not in choices:
                raise SettingsError(
                    f"Setting {key}: {item!r} is not allowed; use one of: {', '.join(choices)}."
                )
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise SettingsError(f"Setting {key}: must be {bounds} (got {value!r}).")


def _read_toml(path: Path, origin: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{origin}: file {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise SettingsError(f"{origin}: {path} is a folder; name a TOML file.") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{origin}: {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as error:
        raise SettingsError(f"{origin}: cannot read {path} ({error.strerror or error}).") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{origin}: {path} is not valid TOML ({error}).") from None


def _merge(base: dict[str, dict[str, Any]], layer: dict[str, Any], origin: str) -> None:
    for section, values in layer.items():
        if section not in SECTIONS:
            raise SettingsError(
                f"{origin}: unknown section [{section}]; known: {', '.join(SECTIONS)}."
            )
        if not isinstance(values, dict):
            raise SettingsError(f"{origin}: [{section}] must be a table of settings.")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, value in values.items():
            if key not in known:
                raise SettingsError(
                    f"{origin}: unknown setting {section}.{key}; known: {', '.join(sorted(known))}."
                )
            base.setdefault(section, {})[key] = value


def _env_layer(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for name, (section, key) in ALIASES.items():
        if environ.get(name, "") != "":
            layer.setdefault(section, {})[key] = environ[name]
    for name, value in environ.items():
        if not name.startswith("EASEL_") or name in ALIASES or name == "EASEL_CONFIG":
            continue
        rest = name[len("EASEL_") :].lower()
        section, _, key = rest.partition("_")
        if section in SECTIONS and key in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            layer.setdefault(section, {})[key] = value
    return layer


def load_settings(
    environ: dict[str, str] | None = None,
    *,
    env_file: str | Path | None = ".env",
    default_toml: Path = DEFAULT_TOML,
) -> Settings:
    """Read and validate every layer; raise `SettingsError` on the first bad value."""
    dotenv = (
        {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        if env_file and Path(env_file).is_file()
        else {}
    )
    # Real environment variables win over .env, as everywhere else.
    env = {**dotenv, **(os.environ if environ is None else environ)}
    values: dict[str, dict[str, Any]] = {}
    if default_toml.is_file():
        _merge(values, _read_toml(default_toml, "config/default.toml"), "config/default.toml")
    if env.get("EASEL_CONFIG"):
        path = Path(env["EASEL_CONFIG"]).expanduser()
        _merge(values, _read_toml(path, "EASEL_CONFIG"), str(path))
    _merge(values, _env_layer(env), "environment")

    sections = {}
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if f.name in values.get(section, {}):
                kwargs[f.name] = _coerce(key, values[section][f.name], hints[f.name])
            value = kwargs.get(f.name, f.default)
            _check(key, value, dict(f.metadata))
        sections[section] = cls(**kwargs)
    settings = Settings(**sections, discord_token=env.get("DISCORD_TOKEN", "").strip())
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    g = settings.generation
    if not g.samplers:
        raise SettingsError("Setting generation.samplers: list at least one sampler.")
    if g.default_sampler not in g.samplers:
        raise SettingsError(
            f"Setting generation.default_sampler: {g.default_sampler!r} must be one of "
            f"generation.samplers ({', '.join(g.samplers)})."
        )
    for name, low, default, high in (
        ("steps", g.min_steps, g.default_steps, g.max_steps),
        ("guidance", g.min_guidance, g.default_guidance, g.max_guidance),
        ("count", 1, g.default_count, g.max_count),
    ):
        if not low <= default <= high:
            raise SettingsError(
                f"Setting generation.default_{name}: {default:g} must lie between the minimum "
                f"({low:g}) and the maximum ({high:g})."
            )
    for key in ("api_base", "gateway_url"):
        url = getattr(settings.discord, key)
        schemes = ("http://", "https://") if key == "api_base" else ("ws://", "wss://")
        if not url.startswith(schemes):
            raise SettingsError(
                f"Setting discord.{key}: {url!r} must start with {' or '.join(schemes)}."
            )
    if not valid_device(settings.model.device):
        raise SettingsError(
            f"Setting model.device: {settings.model.device!r} is not allowed; "
            f"use one of: {', '.join(DEVICES)}, or cuda:N for GPU number N."
        )
    w = settings.workers
    if not w.devices:
        raise SettingsError('Setting workers.devices: list at least one device, e.g. ["auto"].')
    for device in w.devices:
        if device != "all" and not valid_device(device):
            raise SettingsError(
                f"Setting workers.devices: {device!r} is not allowed; use auto, all, cpu, "
                "mps, cuda or cuda:N (GPU number N)."
            )
    if "all" in w.devices and len(w.devices) > 1:
        raise SettingsError('Setting workers.devices: "all" stands alone (every visible GPU).')
    if w.backend == "ray" and not w.ray_address.strip():
        raise SettingsError(
            "Setting workers.ray_address: name the Ray cluster (auto, or ray://host:10001)."
        )
    if not w.ray_resource.strip():
        raise SettingsError("Setting workers.ray_resource: name a Ray resource, e.g. GPU.")
    if not settings.model.id.strip():
        raise SettingsError("Setting model.id (EASEL_MODEL): name a hub model id or a folder.")
