"""`python -m bot` exactly as a user starts it: a subprocess configured by env and a TOML file."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.fakediscord import FakeDiscord

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "DISCORD_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


async def test_python_m_bot_serves_imagine(tiny_model_dir, tmp_path):
    """The real entry point connects to the fake Discord and posts a result."""
    config = tmp_path / "easel.toml"
    config.write_text("[generation]\ndefault_steps = 3\n[queue]\nbatch_size = 2\n")
    async with FakeDiscord() as fd:
        env = clean_env(
            DISCORD_TOKEN=fd.token,
            DISCORD_GUILD_ID=str(fd.guild.id),
            DISCORD_API_BASE=fd.api_base,
            DISCORD_GATEWAY_URL=fd.gateway_url,
            EASEL_MODEL=tiny_model_dir,
            EASEL_DEVICE="cpu",
            EASEL_DATA_DIR=str(tmp_path / "data"),
            EASEL_CONFIG=str(config),
        )
        log_path = tmp_path / "bot.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                await fd.wait_for_commands("imagine", guild=fd.guild, timeout=60)
                await fd.wait_for_bot(timeout=30)
                member = fd.add_member("student")
                handle = await fd.invoke(member, "imagine", {"prompt": "a paper boat", "seed": 5})
                first = await handle.response(timeout=5)
                assert first.elapsed < 3
                result = await fd.wait_for_message(
                    lambda m: bool(m.attachments and m.embeds) and not m.ephemeral, timeout=60
                )
                png = await fd.fetch_attachment(result.attachments[0])
                assert Image.open(io.BytesIO(png)).size == (64, 64)
                fields = {f["name"]: f["value"] for f in result.embed["fields"]}
                assert fields["Seed"] == "5" and fields["Steps"] == "3"
            finally:
                process.terminate()
                code = await asyncio.wait_for(process.wait(), 30)
        output = log_path.read_text(errors="replace")
        assert code in (0, -15), output
        assert "Traceback" not in output, output
        assert (tmp_path / "data" / "easel.sqlite3").exists()


async def test_python_m_bot_without_token_explains_and_exits(tmp_path):
    """No DISCORD_TOKEN: a few lines on how to get one, exit status 1."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=tmp_path,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    text = err.decode()
    assert "DISCORD_TOKEN" in text and "applications.commands" in text and ".env" in text
    assert len(text.strip().splitlines()) <= 10


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EASEL_DEVICE": "gpu"}, "model.device"),
        ({"EASEL_QUEUE_BATCH_SIZE": "lots"}, "queue.batch_size"),
    ],
)
async def test_bad_setting_stops_with_one_line(tmp_path, env, message):
    """A bad value stops start-up with one line naming the key."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=tmp_path,
        env=clean_env(DISCORD_TOKEN="x", **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_the_workers_come_from_the_settings():
    """[workers] picks the backend: a local pool on the listed devices (auto = model.device),
    or the Ray cluster with its address and resource."""
    from bot.__main__ import build_workers
    from bot.settings import load_settings
    from inference.pool import LocalPool
    from inference.ray_backend import RayPool

    local = build_workers(load_settings({"EASEL_DEVICE": "cpu"}, env_file=None))
    assert isinstance(local, LocalPool) and local.devices == ["cpu"]
    assert [s.name for s in local.statuses()] == ["cpu"]
    two = build_workers(load_settings({"EASEL_WORKERS_DEVICES": "cpu,cpu"}, env_file=None))
    assert [s.name for s in two.statuses()] == ["cpu#1", "cpu#2"]
    ray = build_workers(
        load_settings(
            {
                "EASEL_WORKERS_BACKEND": "ray",
                "EASEL_WORKERS_RAY_ADDRESS": "ray://head:10001",
                "EASEL_WORKERS_RAY_RESOURCE": "easel",
            },
            env_file=None,
        )
    )
    assert isinstance(ray, RayPool) and (ray.address, ray.resource) == ("ray://head:10001", "easel")
