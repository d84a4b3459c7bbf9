"""The whole bot against bare diffusers, paired and interleaved in one run.

    python benchmarks/bench_roundtrip.py                    # tiny model, then SD 1.5 at 128 px
    python benchmarks/bench_roundtrip.py --preset tiny --pairs 20
    python benchmarks/bench_roundtrip.py --models ~/easel-bench-models   # keep the models

Each pair is one /imagine through `python -m bot` (a subprocess with the bot's default
settings: previews on, 25 steps, DPM++ 2M Karras, guidance 7, the native square size) against
the fake Discord, timed from the interaction to the posted result, and then one bare
`StableDiffusionPipeline.__call__` in this process for the same image (same folder, size,
steps, sampler, guidance and seed, with the pipeline's own safety checker). The ratio is taken
per pair; min / median / max are printed. Then eight members press /imagine at the same moment
and the batch sizes they ran in are read from the bot's database.

`sd15` is Stable Diffusion 1.5's architecture with random weights and a real-size safety
checker (CLIP ViT-L/14 vision tower), its native size set to 128 px so a CPU can run it.
Targets: tiny ≤ 1.15×, sd15 at 128 px ≤ 1.05×, eight simultaneous requests → 4 + 4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the shared machine: no spinning thread pools
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.dummy import save_dummy_model
from tests.fakediscord import FakeDiscord

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": ("tiny", 64), "sd15": ("sd15", 128)}
TARGETS = {"tiny": 1.15, "sd15": 1.05}
STEPS, GUIDANCE, SAMPLER = 25, 7.0, "DPM++ 2M Karras"  # the bot's defaults


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"min {min(v):.3f}  median {statistics.median(v):.3f}  max {max(v):.3f} {unit}"


def model_folder(root: Path, preset: str) -> Path:
    kind, native = PRESETS[preset]
    folder = root / f"{preset}-{native}px"
    if not (folder / "model_index.json").exists():
        print(f"(writing the random-weight {preset} model to {folder} …)", flush=True)
        save_dummy_model(folder, kind, native_size=native)
    return folder


class Bare:
    """Bare diffusers: the pipeline loaded straight from the folder, called as documented."""

    def __init__(self, folder: Path, native: int):
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from inference.samplers import make_scheduler

        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity_error()
            library.disable_progress_bar()
        torch.set_num_threads(1)
        self.torch = torch
        self.native = native
        self.pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
        self.pipe.scheduler = make_scheduler(SAMPLER, self.pipe.scheduler.config)
        self.pipe.set_progress_bar_config(disable=True)

    def __call__(self, prompt: str, seed: int) -> float:
        started = time.perf_counter()
        self.pipe(
            prompt,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            height=self.native,
            width=self.native,
            generator=self.torch.Generator("cpu").manual_seed(seed),
            output_type="pil",
        )
        return time.perf_counter() - started


@contextlib.asynccontextmanager
async def python_m_bot(fd: FakeDiscord, model: Path, data: Path) -> AsyncIterator[None]:
    """`python -m bot` with its default settings, pointed at the fake Discord."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "DISCORD_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        DISCORD_TOKEN=fd.token,
        DISCORD_GUILD_ID=str(fd.guild.id),
        DISCORD_API_BASE=fd.api_base,
        DISCORD_GATEWAY_URL=fd.gateway_url,
        EASEL_MODEL=str(model),
        EASEL_DEVICE="cpu",
        EASEL_DATA_DIR=str(data),
    )
    log = (data.parent / "bot.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=REPO, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        await fd.wait_for_commands("imagine", guild=fd.guild, timeout=120)
        await fd.wait_for_bot(timeout=60)
        yield
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 60)
        log.close()


def gen_id_of(message) -> int:
    return int(message.content.split("**#")[1].split("**")[0])


async def bot_job(fd: FakeDiscord, member, prompt: str, seed: int) -> tuple[float, int, int]:
    """Seconds from the interaction to the posted result, how many previews were shown, and
    the job's id."""
    started = time.perf_counter()
    handle = await fd.invoke(member, "imagine", {"prompt": prompt, "seed": seed})
    status = (await handle.response(timeout=30)).message
    gen_id = gen_id_of(status)
    await fd.wait_for_message(
        lambda m: not m.ephemeral and any(e.get("title") == f"#{gen_id}" for e in m.embeds),
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    await fd.wait_until(lambda: status.deleted, timeout=30)  # done with it before the next
    # Each preview is a new attachment; edits without one keep the last.
    previews = len({a["id"] for h in status.history for a in h.get("attachments") or []})
    return elapsed, previews, gen_id


def pipeline_seconds(data: Path, ids: list[int]) -> dict[int, float]:
    """The worker's own time for each job's pipeline call (`timings.batch` in the log)."""
    import json

    with sqlite3.connect(data / "easel.sqlite3") as conn:
        rows = conn.execute(
            f"SELECT id, timings FROM generations WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
    return {gen_id: json.loads(timings)["batch"] for gen_id, timings in rows}


async def simultaneous(fd: FakeDiscord, data: Path, n: int = 8) -> list[int]:
    """n members press /imagine at once; the batch size each job ran in."""
    members = [fd.add_member(f"class-{i}") for i in range(n)]
    handles = await asyncio.gather(
        *(fd.invoke(m, "imagine", {"prompt": f"together {i}"}) for i, m in enumerate(members))
    )
    ids = [gen_id_of((await h.response(timeout=30)).message) for h in handles]
    for gen_id in ids:
        await fd.wait_for_message(
            lambda m, g=gen_id: (
                not m.ephemeral and any(e.get("title") == f"#{g}" for e in m.embeds)
            ),
            timeout=900,
        )
    with sqlite3.connect(data / "easel.sqlite3") as conn:
        rows = conn.execute(
            f"SELECT id, batch_size FROM generations WHERE id IN ({','.join('?' * n)})", ids
        ).fetchall()
    return [size for _, size in sorted(rows)]


async def run_preset(preset: str, root: Path, pairs: int) -> None:
    folder = model_folder(root, preset)
    native = PRESETS[preset][1]
    bare = Bare(folder, native)
    bare("warm-up", 0)
    with tempfile.TemporaryDirectory(prefix="easel-roundtrip-") as tmp:
        data = Path(tmp) / "data"
        async with FakeDiscord() as fd, python_m_bot(fd, folder, data):
            member = fd.add_member("bench")
            await bot_job(fd, member, "warm-up", 0)  # waits for the model to load, too
            bots, bares, ratios, previews, ids = [], [], [], 0, []
            for i in range(pairs):
                seed = 1000 + i
                # Interleaved, alternating which goes first, so drifts hit both alike.
                # The bare call runs in a thread so the fake Discord keeps answering meanwhile.
                if i % 2:
                    b = await asyncio.to_thread(bare, f"a fox {i}", seed)
                    t, p, gen_id = await bot_job(fd, member, f"a fox {i}", seed)
                else:
                    t, p, gen_id = await bot_job(fd, member, f"a fox {i}", seed)
                    b = await asyncio.to_thread(bare, f"a fox {i}", seed)
                ids.append(gen_id)
                bots.append(t)
                bares.append(b)
                ratios.append(t / b)
                previews += p
            inside = pipeline_seconds(data, ids)
            own = [t - inside[g] for t, g in zip(bots, ids, strict=True)]
            batches = await simultaneous(fd, data)
    threads = os.environ["OMP_NUM_THREADS"]
    print(
        f"{preset} ({native} px, {STEPS} steps, {SAMPLER}, guidance {GUIDANCE}; the bot's "
        f"defaults, previews on), {pairs} pairs, CPU, OMP_NUM_THREADS={threads}:"
    )
    print(f"  python -m bot, interaction → result posted  {spread(bots)}")
    print(f"  bare StableDiffusionPipeline.__call__        {spread(bares)}")
    print(
        f"  bot / bare, per pair                         {spread(ratios, '×')}"
        f"   (target ≤ {TARGETS[preset]:.2f}×: "
        f"{'met' if statistics.median(ratios) <= TARGETS[preset] else 'missed'} at the median)"
    )
    print(
        f"  the bot's own time per job (round trip − the worker's pipeline call) "
        f"{spread(own, 'ms', 1e3)}"
    )
    its = [STEPS / b for b in bares]
    print(f"  bare call in UNet steps per second          {spread(its, 'it/s')}")
    print(f"  previews shown in the status line: {previews} over {pairs} jobs")
    # Each job records the size of the batch it ran in: k jobs of size k are one batch.
    runs = [
        size
        for size in sorted(set(batches), reverse=True)
        for _ in range(batches.count(size) // size)
    ]
    verdict = "met" if runs == [4, 4] else "missed"
    shown = " + ".join(map(str, runs))
    print(f"  8 simultaneous /imagine ran as batches of {shown}  (target 4 + 4: {verdict})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--pairs", type=int, default=0, help="default: 15 tiny, 5 sd15")
    parser.add_argument("--models", type=Path, default=None, help="where to keep the models")
    args = parser.parse_args()
    presets = list(PRESETS) if args.preset == "all" else [args.preset]
    with tempfile.TemporaryDirectory(prefix="easel-models-") as tmp:
        root = args.models or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for preset in presets:
            await run_preset(preset, root, args.pairs or (15 if preset == "tiny" else 5))


if __name__ == "__main__":
    asyncio.run(main())
