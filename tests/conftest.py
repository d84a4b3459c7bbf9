"""Shared fixtures: a tiny random Stable Diffusion pipeline, saved once per test session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A ~4 MB random-weight pipeline in diffusers layout (64 px native)."""
    from inference.dummy import save_dummy_model

    return str(save_dummy_model(tmp_path_factory.mktemp("models") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def flagging_model_dir(tmp_path_factory) -> str:
    """The tiny pipeline with a safety checker that flags every image."""
    from inference.dummy import save_dummy_model

    folder = tmp_path_factory.mktemp("models") / "tiny-flag"
    return str(save_dummy_model(folder, "tiny", always_flag=True))


@pytest.fixture(scope="session")
def tiny_frame_decoder_dir(tmp_path_factory) -> str:
    """A random-weight diffusers AutoencoderTiny (the lab's film decoder), saved once."""
    from inference.dummy import save_dummy_tiny_decoder

    return str(save_dummy_tiny_decoder(tmp_path_factory.mktemp("models") / "taesd"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A random-weight CLIPModel (text and vision towers with projections), its byte-level
    tokenizer and image processor, saved once (the lab's `lab.clip_model`)."""
    from inference.lab.dummy import save_clip

    return str(save_clip(tmp_path_factory.mktemp("models") / "clip"))


@pytest.fixture(scope="session")
def preview_decoder_dir(tiny_frame_decoder_dir) -> str:
    """The same tiny random AutoencoderTiny, as `model.preview_decoder`."""
    return tiny_frame_decoder_dir
