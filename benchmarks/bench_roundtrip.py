"""A /imagine round trip on the fake Discord with the tiny model: interaction → posted result,
and how much of it is the pipeline.

    python benchmarks/bench_roundtrip.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.dummy import save_dummy_model
from inference.engine import EngineConfig
from inference.worker import Worker
from tests.bot.e2e import running_easel
from tests.fakediscord import FakeDiscord


async def one_job(fd, member, bot, prompt: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    handle = await fd.invoke(member, "imagine", {"prompt": prompt, "seed": 1})
    first = await handle.response()
    status = await handle.wait_for_message(lambda m: "**#" in (m.content or ""), timeout=10)
    gen_id = int(status.content.split("**#")[1].split("**")[0])
    await fd.wait_for_message(
        lambda m: not m.ephemeral and any(e.get("title") == f"#{gen_id}" for e in m.embeds),
        timeout=60,
    )
    total = time.perf_counter() - started
    gen = await bot.repos.generations.get(gen_id)
    return total, first.elapsed, gen.timings.get("batch", gen.inference_seconds or 0.0)


async def main(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_dummy_model(Path(tmp) / "tiny", "tiny"))
        async with Worker(EngineConfig(model=model, device="cpu")) as worker, FakeDiscord() as fd:
            async with running_easel(fd, worker, Path(tmp) / "data", model) as bot:
                member = fd.add_member("bench")
                await one_job(fd, member, bot, "warm-up")
                rows = [await one_job(fd, member, bot, f"a fox {i}") for i in range(jobs)]
    totals, firsts, pipes = zip(*rows, strict=True)
    total, pipe = statistics.median(totals), statistics.median(pipes)
    print(f"/imagine round trip on the fake Discord, tiny model, 64 px, 4 steps, {jobs} jobs:")
    print(f"  first answer to the interaction: median {statistics.median(firsts) * 1000:.0f} ms")
    print(
        f"  interaction → result posted:     median {total:.3f} s "
        f"(p90 {sorted(totals)[int(0.9 * len(totals))]:.3f} s)"
    )
    print(f"  of which the pipeline call:      median {pipe:.3f} s ({100 * pipe / total:.0f}%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    asyncio.run(main(parser.parse_args().jobs))
