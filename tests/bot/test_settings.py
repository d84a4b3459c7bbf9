"""Settings: layering, the well-known variable names, and one-line errors for bad values."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bot.settings import DEFAULT_TOML, SECTIONS, Settings, SettingsError, load_settings


def load(environ=None, env_file=None, **kwargs):
    return load_settings(environ or {}, env_file=env_file, **kwargs)


def test_defaults_match_default_toml():
    """The dataclass defaults and config/default.toml say the same thing."""
    data = tomllib.loads(DEFAULT_TOML.read_text())
    assert set(data) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(data[section]) == names, section
    from_toml = load()
    from_code = load(default_toml=Path("/nonexistent.toml"))
    assert from_toml == from_code


def test_layers_toml_then_env_file_then_environment(tmp_path):
    """default.toml < EASEL_CONFIG < .env < environment."""
    extra = tmp_path / "mine.toml"
    extra.write_text(
        "[generation]\nmax_steps = 40\ndefault_steps = 20\n"
        '[model]\nid = "from-toml"\ndevice = "cpu"\n'
    )
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DISCORD_TOKEN=secret-token\nEASEL_MODEL=from-dotenv\nEASEL_GENERATION_MAX_STEPS=30\n"
    )
    settings = load(
        {"EASEL_CONFIG": str(extra), "EASEL_GENERATION_MAX_STEPS": "35"}, env_file=env_file
    )
    assert settings.generation.max_steps == 35  # environment beats .env and the TOML file
    assert settings.generation.default_steps == 20  # from the TOML file
    assert settings.model.id == "from-dotenv"  # .env beats the TOML file
    assert settings.model.device == "cpu"
    assert settings.discord_token == "secret-token"
    assert "secret-token" not in repr(settings)


def test_well_known_names():
    """DISCORD_* and EASEL_MODEL / DEVICE / DATA_DIR set their settings."""
    settings = load(
        {
            "DISCORD_TOKEN": "t",
            "DISCORD_GUILD_ID": "1234",
            "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10",
            "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/gateway",
            "EASEL_MODEL": "/models/tiny",
            "EASEL_DEVICE": "cpu",
            "EASEL_DATA_DIR": "/tmp/easel",
            "EASEL_QUEUE_BATCH_SIZE": "2",
            "EASEL_MODERATION_BANNED_WORDS": "foo, bar",
            "EASEL_GENERATION_SAMPLERS": '["Euler", "DDIM"]',
            "EASEL_GENERATION_DEFAULT_SAMPLER": "Euler",
        }
    )
    assert settings.discord.guild_id == 1234
    assert settings.discord.api_base == "http://127.0.0.1:9/api/v10"
    assert settings.discord.gateway_url == "ws://127.0.0.1:9/gateway"
    assert settings.model.id == "/models/tiny" and settings.model.device == "cpu"
    assert settings.data.dir == Path("/tmp/easel")
    assert settings.database_path == Path("/tmp/easel/easel.sqlite3")
    assert settings.queue.batch_size == 2
    assert settings.moderation.banned_words == ("foo", "bar")
    assert settings.generation.samplers == ("Euler", "DDIM")
    assert settings.engine.model == "/models/tiny"
    assert settings.limits.samplers == ("Euler", "DDIM")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EASEL_DEVICE": "gpu"}, "model.device: 'gpu' is not allowed; use one of: auto, cuda"),
        ({"DISCORD_GUILD_ID": "abc"}, "discord.guild_id: expected a whole number"),
        ({"EASEL_GENERATION_MAX_STEPS": "0"}, "generation.max_steps: must be between 1 and 500"),
        ({"EASEL_GENERATION_MAX_STEPS": "10"}, "default_steps: 25 must lie between"),
        ({"EASEL_MODEL_COMPILE": "maybe"}, "model.compile: expected true or false"),
        ({"EASEL_GENERATION_SAMPLERS": "Euler,Heun"}, "'Heun' is not allowed"),
        ({"EASEL_GENERATION_SAMPLERS": "DDIM"}, "default_sampler: 'DPM++ 2M Karras' must be"),
        ({"EASEL_MODERATION_SAFETY_MODE": "blur"}, "safety_mode: 'blur' is not allowed"),
        ({"DISCORD_API_BASE": "discord.com"}, "discord.api_base: 'discord.com' must start"),
        ({"EASEL_QUEUE_DAILY_QUOTA": "-1"}, "queue.daily_quota: must be at least 0"),
        ({"EASEL_CONFIG": "/no/such/file.toml"}, "EASEL_CONFIG: file '/no/such/file.toml'"),
        ({"EASEL_WORKERS_BACKEND": "slurm"}, "workers.backend: 'slurm' is not allowed"),
        ({"EASEL_WORKERS_DEVICES": "cuda:x"}, "workers.devices: 'cuda:x' is not allowed"),
        ({"EASEL_WORKERS_DEVICES": "all,cpu"}, 'workers.devices: "all" stands alone'),
        ({"EASEL_WORKERS_DEVICES": "[]"}, "workers.devices: list at least one device"),
    ],
)
def test_bad_values_stop_with_one_line(environ, message):
    """Each bad value names its key and what is allowed, on one line."""
    with pytest.raises(SettingsError, match=message.replace("+", r"\+").replace("(", r"\(")) as e:
        load(environ)
    assert "\n" not in str(e.value)


def test_workers_devices_and_gpu_numbers():
    """workers.devices takes a list of devices; `auto` there means model.device; cuda:N is a
    valid device everywhere."""
    settings = load({"EASEL_WORKERS_DEVICES": '["cuda:0", "cuda:1"]', "EASEL_DEVICE": "cuda:1"})
    assert settings.workers.devices == ("cuda:0", "cuda:1")
    assert settings.model.device == "cuda:1"
    assert load({"EASEL_DEVICE": "cpu"}).worker_devices == ("cpu",)
    assert load({"EASEL_WORKERS_DEVICES": "all"}).worker_devices == ("all",)
    ray = load({"EASEL_WORKERS_BACKEND": "ray", "EASEL_WORKERS_RAY_ADDRESS": "ray://head:10001"})
    assert (ray.workers.backend, ray.workers.ray_address) == ("ray", "ray://head:10001")


def test_bad_toml_files(tmp_path):
    """Unknown sections and keys, and broken TOML, are named."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[modle]\nid = 'x'\n")
    with pytest.raises(SettingsError, match=r"unknown section \[modle\]"):
        load({"EASEL_CONFIG": str(bad)})
    bad.write_text("[model]\nname = 'x'\n")
    with pytest.raises(SettingsError, match="unknown setting model.name"):
        load({"EASEL_CONFIG": str(bad)})
    bad.write_text("[model\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load({"EASEL_CONFIG": str(bad)})
    bad.write_text("[generation]\nmax_steps = 'many'\n")
    with pytest.raises(SettingsError, match="generation.max_steps: expected a whole number"):
        load({"EASEL_CONFIG": str(bad)})


def test_settings_are_immutable():
    """Settings are frozen once validated."""
    settings = load()
    assert isinstance(settings, Settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue = None
