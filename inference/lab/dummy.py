"""The lab's extra models with random weights, saved in the layout `from_pretrained` reads: a
tiny decoder (diffusers `AutoencoderTiny`, TAESD's architecture for `sd15`) and a CLIP model
with both towers and their projections (ViT-B/32's shape for `sd15`). For tests and
benchmarks: they cost what the real ones cost, and need no download."""

from __future__ import annotations

from pathlib import Path

from ..dummy import PRESETS, byte_level_tokenizer


def save_clip(folder: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """A random `CLIPModel` with its tokenizer and image processor saved to `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")
    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer, special = byte_level_tokenizer()
    special = {**special, "max_position_embeddings": 77}
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
