"""The lab's extra models with random weights, saved in the layout `from_pretrained` reads: a
tiny decoder (diffusers `AutoencoderTiny`, TAESD's architecture for `sd15`) and a CLIP model
with both towers and their projections (ViT-B/32's shape for `sd15`). For tests and
benchmarks: they cost what the real ones cost, and need no download."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..dummy import PRESETS, _byte_level_tokenizer_files


def save_frame_decoder(folder: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """A random `AutoencoderTiny` (what `lab.frame_decoder` names) saved to `folder`."""
    import torch
    from diffusers import AutoencoderTiny

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")
    torch.manual_seed(seed)
    model: Any
    if preset == "tiny":
        model = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
        )
    else:
        model = AutoencoderTiny()  # the defaults are TAESD's architecture
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_clip(folder: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """A random `CLIPModel` with its tokenizer and image processor saved to `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")
    torch.manual_seed(seed)
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        _byte_level_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "max_position_embeddings": 77,
    }
    if preset == "tiny":
        side = 32
        config = CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "vocab_size": len(tokenizer),
                **special,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": side,
                "patch_size": 8,
            },
            projection_dim=16,
        )
    else:  # openai/clip-vit-base-patch32, the model LAION filtered with
        side = 224
        config = CLIPConfig(
            text_config={
                "hidden_size": 512,
                "intermediate_size": 2048,
                "num_attention_heads": 8,
                "num_hidden_layers": 12,
                "vocab_size": 49408,
                "hidden_act": "quick_gelu",
                **special,
            },
            vision_config={
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_attention_heads": 12,
                "num_hidden_layers": 12,
                "image_size": side,
                "patch_size": 32,
                "hidden_act": "quick_gelu",
            },
            projection_dim=512,
        )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(folder)
    return folder
