"""`python -m inference generate` end to end, in real subprocesses."""

import os
import subprocess
import sys

from PIL import Image

from inference.engine import read_png_recipe


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generate_writes_png_with_recipe_and_same_seed_same_bytes(tiny_model_dir, tmp_path):
    """The CLI prints the seed and path; rerunning with that seed writes identical bytes."""
    first = run_cli(
        "generate",
        "a red fox",
        "--model",
        tiny_model_dir,
        "--steps",
        "4",
        "--negative",
        "blurry",
        "--out",
        "fox.png",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    line = first.stdout.strip().splitlines()[0]
    assert line.startswith("seed ") and "fox.png (64×64)" in line
    seed = int(line.split()[1].rstrip(":"))
    recipe = read_png_recipe((tmp_path / "fox.png").read_bytes())
    assert recipe["prompt"] == "a red fox" and recipe["negative"] == "blurry"
    assert recipe["seed"] == seed and recipe["steps"] == 4 and recipe["model"] == tiny_model_dir
    assert "Seed: " in Image.open(tmp_path / "fox.png").text["parameters"]

    again = run_cli(
        "generate",
        "a red fox",
        "--model",
        tiny_model_dir,
        "--steps",
        "4",
        "--negative",
        "blurry",
        "--seed",
        str(seed),
        "--out",
        "again.png",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "fox.png").read_bytes()


def test_count_and_aspect_number_the_files(tiny_model_dir, tmp_path):
    """--count 2 --aspect wide writes two numbered files of the preset size."""
    result = run_cli(
        "generate",
        "a fox",
        "--model",
        tiny_model_dir,
        "--steps",
        "2",
        "--count",
        "2",
        "--aspect",
        "wide",
        "--seed",
        "10",
        "--out",
        "w.png",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "seed 10:" in result.stdout and "seed 11:" in result.stdout
    assert Image.open(tmp_path / "w-1.png").size == (80, 48)
    assert (tmp_path / "w-2.png").exists()


def test_flagged_image_is_not_written(flagging_model_dir, tmp_path):
    """A flagged image is not written in the clear and the CLI says so."""
    result = run_cli(
        "generate",
        "a fox",
        "--model",
        flagging_model_dir,
        "--steps",
        "2",
        "--out",
        "f.png",
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert "flagged by the safety checker; not written" in result.stdout
    assert not (tmp_path / "f.png").exists()


def test_missing_model_is_one_line_not_a_traceback(tmp_path):
    """A missing folder, or an uncached hub id offline, gives one error line."""
    for model in (str(tmp_path / "missing"), "nobody/no-such-model"):
        result = run_cli("generate", "a fox", "--model", model, cwd=tmp_path)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr


def test_bad_input_exits_2(tiny_model_dir, tmp_path):
    """Bad options are refused before loading anything."""
    result = run_cli("generate", "a fox", "--model", tiny_model_dir, "--width", "100", cwd=tmp_path)
    assert result.returncode == 2 and "multiple of 8" in result.stderr
