"""Words — what each word painted: the recipe replayed with Easel's own attention processor,
which keeps, for every cross-attention layer, how much each spatial position of the latent
looked at each prompt token (averaged over heads, then over the steps and the layers of the
two middle resolutions: 32×32 and 16×16 for SD 1.5 at 512 px). BPE pieces are merged back
into words and each word's map is laid over the image."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engine import CancelCheck, ProgressCallback
from ..request import GenerationRequest
from .draw import Cell, compose, fit, heat_overlay
from .picture import LabPicture
from .replay import replay

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from .tools import LabTools

COLUMNS = 4


@dataclass
class AttentionMaps:
    """Sums of cross-attention probabilities by layer resolution: (h, w) → (h, w, tokens)."""

    levels: list[tuple[int, int]]
    sums: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    @classmethod
    def for_latents(cls, height: int, width: int) -> AttentionMaps:
        levels = [(height, width)]
        for _ in range(6):  # each down block halves (rounding up, as a stride-2 conv does)
            h, w = levels[-1]
            levels.append((math.ceil(h / 2), math.ceil(w / 2)))
        return cls(levels)

    def add(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """`query` (B, heads, hw, d) and `key` (B, heads, tokens, d) of one cross-attention
        call; with classifier-free guidance the batch is [unconditional, prompt]: keep the
        prompt's half."""
        rows = slice(query.shape[0] // 2, None) if query.shape[0] > 1 else slice(None)
        probs = (query[rows].float() @ key[rows].float().transpose(-1, -2) * scale).softmax(-1)
        mean = probs.mean(dim=(0, 1))  # over the batch rows and the heads: (hw, tokens)
        level = next((lv for lv in self.levels if lv[0] * lv[1] == mean.shape[0]), None)
        if level is None:
            return
        grid = mean.reshape(level[0], level[1], -1)
        if level in self.sums:
            self.sums[level] += grid
        else:
            self.sums[level] = grid.clone()
        self.counts[level] = self.counts.get(level, 0) + 1

    def kept_levels(self) -> list[tuple[int, int]]:
        """The two middle resolutions (all of them when the model has two or fewer)."""
        present = sorted(self.sums, key=lambda lv: -lv[0] * lv[1])
        if len(present) > 2:
            present = present[1:]  # the finest (64×64 for SD 1.5) is mostly edges
        if len(present) > 2:
            present = present[:-1]  # and the coarsest (8×8) mostly layout
        return present

    def maps(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(tokens, H, W) at the finest kept resolution, averaged over the kept levels."""
        import torch.nn.functional as F

        kept = self.kept_levels()
        if not kept:
            raise RuntimeError("The model's UNet has no cross-attention layers to watch.")
        target = kept[0]
        total: torch.Tensor | None = None
        for level in kept:
            mean = (self.sums[level] / self.counts[level]).permute(2, 0, 1)[None]
            if level != target:
                mean = F.interpolate(mean, size=target, mode="bilinear", align_corners=False)
            total = mean if total is None else total + mean
        assert total is not None
        return total[0] / len(kept), kept


class WatchingAttnProcessor:
    """diffusers' SDPA attention (`AttnProcessor2_0`), unchanged in what it computes, that
    also hands each cross-attention call's query and key to `maps`. The output comes from
    the same SDPA call, so the image is the one a plain run makes."""

    def __init__(self, maps: AttentionMaps):
        self.maps = maps

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        import torch.nn.functional as F

        cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if cross:
            self.maps.add(query, key, head_dim**-0.5)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        out: torch.Tensor = hidden_states / attn.rescale_output_factor
        return out


@dataclass(frozen=True)
class Word:
    text: str
    pieces: tuple[str, ...]  # the BPE tokens it was split into
    positions: tuple[int, ...]  # their places in the text encoder's sequence (0 = start)


def prompt_words(tokenizer: Any, prompt: str) -> tuple[list[Word], bool]:
    """The prompt's words as the text encoder saw them (its first 77 tokens): CLIP's BPE
    pieces merged back at each end-of-word mark. Pieces that are only punctuation are left
    out. Also whether the prompt was cut at the token limit."""
    limit = int(getattr(tokenizer, "model_max_length", 77))
    ids = tokenizer(prompt, truncation=False).input_ids
    truncated = len(ids) > limit
    ids = ids[: limit - 1]
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words: list[Word] = []
    current: list[int] = []
    for position, (token_id, piece) in enumerate(zip(ids, pieces, strict=True)):
        if token_id in special:
            continue
        current.append(position)
        if str(piece).endswith("</w>"):
            words.append(_word(tokenizer, ids, pieces, current))
            current = []
    if current:
        words.append(_word(tokenizer, ids, pieces, current))
    return [w for w in words if any(ch.isalnum() for ch in w.text)], truncated


def _word(tokenizer: Any, ids: list[int], pieces: list[str], positions: list[int]) -> Word:
    # decode() undoes the byte-level mapping and the end-of-word marks.
    text = str(tokenizer.decode([ids[p] for p in positions], skip_special_tokens=True)).strip()
    return Word(text, tuple(str(pieces[p]) for p in positions), tuple(positions))


def word_maps(maps: torch.Tensor, words: list[Word]) -> list[npt.NDArray[np.float32]]:
    """Each word's map (H, W), its pieces' attention summed, scaled to [0, 1]."""
    out = []
    for word in words:
        heat = maps[list(word.positions)].sum(0)
        low, high = heat.min(), heat.max()
        heat = (heat - low) / (high - low) if float(high - low) > 1e-12 else heat * 0
        out.append(heat.cpu().numpy().astype("float32"))
    return out


def words_view(
    tools: LabTools,
    request: GenerationRequest,
    on_progress: ProgressCallback | None,
    cancelled: CancelCheck,
) -> LabPicture:
    engine = tools.engine
    factor = engine.vae_scale_factor
    maps = AttentionMaps.for_latents(request.height // factor, request.width // factor)
    watcher = WatchingAttnProcessor(maps)
    processors = {
        name: watcher
        for name in engine.pipe.unet.attn_processors
        if name.endswith("attn2.processor")
    }
    latents = replay(
        tools, request, on_progress=on_progress, cancelled=cancelled, processors=processors
    )
    image = tools.vae_decode(latents)[0]
    tokens, kept = maps.maps()
    words, truncated = prompt_words(engine.pipe.tokenizer, request.prompt)
    shown = words[: tools.config.max_words]
    heat = word_maps(tokens, shown)
    base = fit(tools.frame(image), 256, smallest=128)
    cells = [Cell(heat_overlay(base, h), (w.text,)) for w, h in zip(shown, heat, strict=True)]
    if not cells:
        cells = [Cell(base, ("(no words)",))]
    rows = [cells[i : i + COLUMNS] for i in range(0, len(cells), COLUMNS)]
    picture, layout = compose(rows, title="What each word painted (cross-attention)")
    data = {
        "words": [w.text for w in shown],
        "pieces": [list(w.pieces) for w in shown],
        "more_words": len(words) - len(shown),
        "truncated": truncated,
        "map_size": list(tokens.shape[1:]),
        "levels": [list(level) for level in kept],
    }
    return LabPicture(
        picture,
        layout,
        data=data,
        parts=[tools.frame(image), *(cell.image for cell in cells)],
        part_names=["image", *(f"map of {w.text}" for w in shown)],
    )
