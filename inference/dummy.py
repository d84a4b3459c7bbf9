"""Stable Diffusion pipelines with random weights, saved in diffusers layout.

They cost what the real model costs to run but need no download, so they serve the tests
(`tiny`: 64 px native, ~4 MB) and the benchmarks (`sd15`: Stable Diffusion 1.5's architecture).
`python -m inference dummy-model FOLDER` writes one, for checking a machine end to end offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "sd15")


def _byte_level_tokenizer_files(folder: Path) -> None:
    """A CLIP byte-level BPE vocabulary with every byte symbol and no merges."""
    # GPT-2's reversible byte-to-printable-character map, which CLIP's tokenizer uses.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def byte_level_tokenizer() -> tuple[Any, dict[str, Any]]:
    """A CLIP tokenizer over `_byte_level_tokenizer_files`, and the special token ids a CLIP
    text config built for it needs."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _byte_level_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    return tokenizer, special


def build_dummy_pipeline(
    preset: str = "tiny",
    *,
    always_flag: bool = False,
    seed: int = 0,
    native_size: int | None = None,
) -> Any:  # a diffusers StableDiffusionPipeline
    """A `StableDiffusionPipeline` with random weights of the given architecture.

    `native_size` changes only the size the model calls native (its UNet's `sample_size`),
    not its architecture: `sd15` at 128 px costs what Stable Diffusion 1.5 costs at 128 px.
    """

    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
    )

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")
    torch.manual_seed(seed)
    tokenizer, special = byte_level_tokenizer()
    if preset == "tiny":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=(native_size or 64) // 8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )

        vae = AutoencoderKL(
            block_out_channels=(8, 16, 16, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=64,
        )
        text_config = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            **special,
        )
    else:
        unet = UNet2DConditionModel(
            sample_size=(native_size or 512) // 8,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_config = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            **special,
        )
    text_encoder = CLIPTextModel(text_config)
    if preset == "tiny":
        vision: dict[str, Any] = {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 224,
            "patch_size": 32,
        }
        projection = 32
    else:
        # The real checker's size (CLIP ViT-L/14 vision tower): a toy one would hide its cost.
        vision = {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        }
        projection = 768
    safety_config = CLIPConfig(
        # The checker uses only the vision tower; the text side stays minimal.
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config=vision,
        projection_dim=projection,
    )
    safety_checker = StableDiffusionSafetyChecker(safety_config)
    if always_flag:
        # A negative threshold makes every image's concept score exceed it.
        with torch.no_grad():
            safety_checker.concept_embeds_weights.fill_(-2.0)
    feature_extractor = CLIPImageProcessor(
        crop_size=224, size={"shortest_edge": 224}, do_center_crop=True, do_resize=True
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=True,
    )


def save_dummy_tiny_decoder(folder: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """A random `AutoencoderTiny` in diffusers layout, for `model.preview_decoder` and
    `lab.frame_decoder`: `tiny` is TAESD's layout with 8 channels (8× upsampling, ~20 k
    parameters), `sd15` TAESD's own architecture."""
    import torch
    from diffusers import AutoencoderTiny

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")
    torch.manual_seed(seed)
    decoder: Any
    if preset == "tiny":
        decoder = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
        )
    else:
        decoder = AutoencoderTiny()  # the defaults are TAESD's architecture
    folder = Path(folder)
    decoder.save_pretrained(folder, safe_serialization=True)
    return folder


def save_dummy_model(
    folder: str | Path,
    preset: str = "tiny",
    *,
    always_flag: bool = False,
    native_size: int | None = None,
) -> Path:
    """Write a random-weight pipeline to `folder` in diffusers layout and return the folder."""
    folder = Path(folder)
    pipe = build_dummy_pipeline(preset, always_flag=always_flag, native_size=native_size)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
