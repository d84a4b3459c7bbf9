"""The lab's models and shared steps, loaded once beside the engine's pipeline: the optional
tiny frame decoder, the optional CLIP model, decoding frames, encoding images, and the safety
checker with its per-concept scores."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .spec import ConceptScore, LabConfig
from .vocabulary import VOCABULARY

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from PIL.Image import Image

    from ..engine import Engine
    from ..request import GenerationRequest, GenerationResult

    Pixels = npt.NDArray[np.float32]
    # (H, W, 3) bytes: a plain result's pixels, as the engine hands them over.
    Bytes = npt.NDArray[np.uint8]

log = logging.getLogger(__name__)

DECODE_CHUNK = 4  # latents decoded per VAE call: bounded memory on big frames
# lab.frame_decoder = "auto": the model's preview decoder when one is set, else the tiny
# autoencoder made for the model's latent space (madebyollin's TAESD), else the VAE.
AUTO_FRAME_DECODERS = {
    "StableDiffusionPipeline": "madebyollin/taesd",
    "StableDiffusionXLPipeline": "madebyollin/taesdxl",
}
CHECK_CHUNK = 16  # pictures per safety-checker call: a film's 16 frames in one

# How far under every line (CLIP similarity − threshold) a bf16 score must lie for the picture
# to be clear without an fp32 look. bf16 moved the similarities of random tiny and SD 1.5-sized
# checkers by at most 0.0015 here; the margin is over ten times that.
FAST_CHECK_MARGIN = 0.02


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm BF16), as Linux
    reports it; elsewhere, or when it cannot tell, no."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def clearly_clear(scores: Sequence[ConceptScore], margin: float = FAST_CHECK_MARGIN) -> bool:
    """Whether every concept and special-care similarity is `margin` or more under its line:
    then no error smaller than `margin` can make the checker flag the picture."""
    return all(s.similarity - s.threshold <= -margin for s in scores)


class _HubAccess:
    """Whether the hub can be reached, asked once per load and only for a hub id: without it,
    only the local cache is read (one clear sentence, not minutes of retries)."""

    @functools.cached_property
    def unreachable(self) -> str | None:
        from ..engine import hub_unreachable

        return hub_unreachable()

    def where(self, name: str) -> dict[str, Any]:
        if os.path.isdir(name) or not self.unreachable:
            return {}
        return {"local_files_only": True}

    def why(self, name: str, error: Exception) -> str:
        """One line on why `name` could not be loaded."""
        from ..engine import error_line, hub_offline

        if not os.path.isdir(name):
            if hub_offline():
                return f"{name!r} is not in the local cache and the hub is offline"
            if self.unreachable:
                return (
                    f"{name!r} is not in the local cache and {self.unreachable} cannot be reached"
                )
        return f"{name!r} could not be loaded ({error_line(error)})"


class LabTools:
    """What the lab views share; `engine` is a loaded `Engine`."""

    def __init__(self, config: LabConfig, engine: Engine):
        self.config = config
        self.engine = engine
        self.frame_decoder: Any = None
        self.clip: Any = None
        self.clip_tokenizer: Any = None
        self.clip_processor: Any = None
        self.clip_note = "lab.clip_model is empty" if not config.clip_model else ""
        self.frame_note = ""
        self._vocabulary: dict[str, tuple[tuple[str, ...], torch.Tensor]] | None = None
        self._img2img: Any = None

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> LabTools:
        """Load the configured frame decoder and CLIP model; one warning for each that cannot
        be loaded (the lab then uses the VAE, or says the CLIP view is off)."""
        engine = self.engine
        name = self.config.frame_decoder
        if name == "auto" and engine.preview_decoder is not None:
            self.frame_decoder = engine.preview_decoder  # already loaded, and made for this model
            name = ""
        elif name == "auto":
            name = AUTO_FRAME_DECODERS.get(type(engine.pipe).__name__, "")
        hub = _HubAccess()
        if name:
            from diffusers import AutoencoderTiny

            try:
                decoder = AutoencoderTiny.from_pretrained(
                    name, dtype=engine.dtype, **hub.where(name)
                )
                self.frame_decoder = decoder.to(engine.device)
            except Exception as error:
                self.frame_note = hub.why(name, error)
                log.warning("Lab frame decoder off, using the VAE: %s", self.frame_note)
        if self.config.clip_model:
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

            name = self.config.clip_model
            try:
                where = hub.where(name)
                model: Any = CLIPModel.from_pretrained(name, dtype=engine.dtype, **where)
                self.clip = model.to(engine.device)
                self.clip_tokenizer = CLIPTokenizer.from_pretrained(name, **where)
                self.clip_processor = CLIPImageProcessor.from_pretrained(name, **where)
                self.clip.eval()
            except Exception as error:
                self.clip = None
                self.clip_note = hub.why(name, error)
                log.warning("The lab's CLIP view is off: %s", self.clip_note)
        return self

    def info(self) -> dict[str, Any]:
        """What the bot needs to know (sent with the worker's Ready message)."""
        return {
            "clip": self.clip is not None,
            "clip_note": self.clip_note,
            "frame_decoder": self.frame_decoder is not None,
            "frame_note": self.frame_note,
            "clip_in_results": self.clip is not None and self.config.clip_in_results,
        }

    @property
    def img2img(self) -> Any:
        """The engine's components as an image-to-image pipeline (shared weights)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.engine.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    # --- latents and pixels ----------------------------------------------------------------

    def vae_decode(self, latents: torch.Tensor) -> list[Pixels]:
        """UNet-space latents (N, 4, h, w) through the model's VAE: (H, W, 3) in [0, 1]. An fp16
        NaN or black decode is redone in fp32."""
        import torch

        vae = self.engine.pipe.vae
        out: list[Pixels] = []
        for start in range(0, latents.shape[0], DECODE_CHUNK):
            chunk = latents[start : start + DECODE_CHUNK] / vae.config.scaling_factor
            if getattr(vae.config, "shift_factor", None):
                chunk = chunk + vae.config.shift_factor
            chunk = chunk.to(self.engine.device, vae.dtype)
            with torch.inference_mode():
                decoded = vae.decode(chunk, return_dict=False)[0].float()
                if not torch.isfinite(decoded).all() and vae.dtype != torch.float32:
                    original = vae.dtype
                    vae.to(torch.float32)
                    try:
                        decoded = vae.decode(chunk.float(), return_dict=False)[0].float()
                    finally:
                        vae.to(original)
            pixels = (decoded / 2 + 0.5).clamp(0, 1).nan_to_num(0.0)
            out.extend(pixels.permute(0, 2, 3, 1).cpu().numpy())
        return out

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """A frame's size: the image's, shrunk so the longer side is at most `frame_side`."""
        scale = min(1.0, self.config.frame_side / max(width, height))
        return max(8, round(width * scale)), max(8, round(height * scale))

    def decode_frames(self, latents: torch.Tensor) -> list[Image]:
        """Film frames (N, 4, h, w) as pictures of `frame_size`: through the tiny decoder when
        one is loaded (cheap at full size), else through the VAE from latents shrunk to about
        the frame's size (a quarter of the work for a 512 px image in 256 px frames)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image as PILImage

        from .draw import to_image

        factor = self.engine.vae_scale_factor
        size = self.frame_size(latents.shape[3] * factor, latents.shape[2] * factor)
        if self.frame_decoder is not None:
            arrays = []
            for start in range(0, latents.shape[0], DECODE_CHUNK):
                chunk = latents[start : start + DECODE_CHUNK].to(
                    self.engine.device, self.frame_decoder.dtype
                )
                with torch.inference_mode():
                    decoded = self.frame_decoder.decode(chunk, return_dict=False)[0].float()
                pixels = (decoded / 2 + 0.5).clamp(0, 1).nan_to_num(0.0)
                arrays.extend(pixels.permute(0, 2, 3, 1).cpu().numpy())
        else:
            shrink = max(1, math.ceil(max(latents.shape[2:]) * factor / self.config.frame_side))
            if shrink > 1:
                small = (max(1, latents.shape[2] // shrink), max(1, latents.shape[3] // shrink))
                latents = F.interpolate(latents.float(), size=small, mode="area")
            arrays = self.vae_decode(latents)
        frames = [to_image(p) for p in arrays]
        return [
            f if f.size == size else f.resize(size, PILImage.Resampling.LANCZOS) for f in frames
        ]

    def frame(self, pixels: Pixels | Image) -> Image:
        """A full-size picture as a frame (`frame_size`)."""
        from PIL import Image as PILImage

        from .draw import to_image

        image = to_image(pixels)
        size = self.frame_size(*image.size)
        return image if image.size == size else image.resize(size, PILImage.Resampling.LANCZOS)

    def encode(self, image: Image) -> torch.Tensor:
        """An RGB picture to UNet-space latents (1, 4, h, w): the VAE's mean, no sampling."""
        import numpy as np
        import torch

        vae = self.engine.pipe.vae
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        batch = (pixels.permute(2, 0, 1)[None] * 2 - 1).to(self.engine.device, vae.dtype)
        with torch.inference_mode():
            mean = vae.encode(batch).latent_dist.mean
        latents = mean.float()
        if getattr(vae.config, "shift_factor", None):
            latents = latents - vae.config.shift_factor
        scaled: torch.Tensor = latents * vae.config.scaling_factor
        return scaled

    # --- the safety checker ----------------------------------------------------------------

    def check(
        self, pictures: Sequence[Pixels | Bytes | Image]
    ) -> list[tuple[bool, tuple[ConceptScore, ...]]]:
        """The safety checker's verdict and per-concept scores for each picture, computed as
        `StableDiffusionSafetyChecker.forward` computes them (without blacking anything out).

        A lab view shows the checker a dozen pictures or more. Where the checker runs in fp32
        on a CPU that computes bf16 natively, they are first scored in bf16 (about 3.5× faster
        there): a picture that lies at least `FAST_CHECK_MARGIN` under every line is clear;
        any other is scored again in fp32, which alone flags a picture and gives the
        moderators' numbers. So the verdicts are fp32's."""
        from .draw import to_image

        checker, extractor = self.engine.safety_checker, self.engine.feature_extractor
        if checker is None or extractor is None or not pictures:
            return [(False, ()) for _ in pictures]
        images = [to_image(p) for p in pictures]
        out: list[tuple[bool, tuple[ConceptScore, ...]]] = []
        for start in range(0, len(images), CHECK_CHUNK):
            clip_input = self._checker_input(images[start : start + CHECK_CHUNK])
            if not self.fast_checks:
                out.extend(self._scores(clip_input, fast=False))
                continue
            rows = self._scores(clip_input, fast=True)
            unsure = [k for k, (_, scores) in enumerate(rows) if not clearly_clear(scores)]
            if unsure:
                exact = self._scores(clip_input[unsure], fast=False)
                for k, row in zip(unsure, exact, strict=True):
                    rows[k] = row
            out.extend(rows)
        return out

    @functools.cached_property
    def fast_checks(self) -> bool:
        """Whether `check` scores in bf16 first: an fp32 checker on a CPU with native bf16
        (elsewhere bf16 is slower, and a GPU's checker already runs in the model's dtype)."""
        import torch

        checker = self.engine.safety_checker
        return (
            checker is not None
            and checker.dtype == torch.float32
            and torch.device(self.engine.device).type == "cpu"
            and cpu_has_native_bf16()
        )

    def _scores(
        self, clip_input: torch.Tensor, *, fast: bool
    ) -> list[tuple[bool, tuple[ConceptScore, ...]]]:
        """Verdict and scores of a batch of checker inputs, in bf16 (`fast`) or as it is."""
        import contextlib

        import torch
        from torch.nn.functional import normalize

        checker = self.engine.safety_checker
        precision = (
            torch.autocast("cpu", dtype=torch.bfloat16) if fast else contextlib.nullcontext()
        )
        with torch.inference_mode():
            with precision:
                embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
            # The similarities themselves in the checker's own dtype (bf16 would round them).
            embeds = normalize(embeds.to(checker.dtype))
            special = torch.mm(embeds, normalize(checker.special_care_embeds).t())
            concept = torch.mm(embeds, normalize(checker.concept_embeds).t())
        special_np = special.cpu().float().numpy()
        concept_np = concept.cpu().float().numpy()
        special_w = checker.special_care_embeds_weights.detach().cpu().float().numpy()
        concept_w = checker.concept_embeds_weights.detach().cpu().float().numpy()
        out: list[tuple[bool, tuple[ConceptScore, ...]]] = []
        for row in range(special_np.shape[0]):
            scores: list[ConceptScore] = []
            adjustment = 0.0
            for k in range(special_np.shape[1]):
                sim, threshold = float(special_np[row, k]), float(special_w[k])
                score = round(sim - threshold + adjustment, 3)
                scores.append(ConceptScore("special", k, sim, threshold, score))
                if score > 0:
                    adjustment = 0.01
            flagged = False
            for k in range(concept_np.shape[1]):
                sim, threshold = float(concept_np[row, k]), float(concept_w[k])
                score = round(sim - threshold + adjustment, 3)
                scores.append(ConceptScore("concept", k, sim, threshold, score))
                flagged = flagged or score > 0
            out.append((flagged, tuple(scores)))
        return out

    def _checker_input(self, images: Sequence[Image]) -> torch.Tensor:
        """The checker's input, made on the device as the engine makes it for results: one
        call for the pictures of each size (a film's frames share one), in their order."""
        import numpy as np
        import torch

        by_size: dict[tuple[int, int], list[int]] = {}
        for k, image in enumerate(images):
            by_size.setdefault(image.size, []).append(k)
        rows: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for indexes in by_size.values():
            pixels = np.stack(
                [np.asarray(images[k].convert("RGB"), dtype=np.float32) for k in indexes]
            )
            batch = torch.from_numpy(pixels / 255.0).permute(0, 3, 1, 2).to(self.engine.device)
            for k, row in zip(indexes, self.engine.clip_input(batch), strict=True):
                rows[k] = row
        return torch.stack(rows)

    # --- CLIP ------------------------------------------------------------------------------

    def _text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        import torch
        from torch.nn.functional import normalize

        tokens = self.clip_tokenizer(
            list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        ).to(self.engine.device)
        with torch.inference_mode():
            pooled = self.clip.text_model(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            ).pooler_output
            embeds: torch.Tensor = normalize(self.clip.text_projection(pooled).float(), dim=-1)
        return embeds

    def _image_embeds(self, pictures: Sequence[Pixels | Bytes | Image]) -> torch.Tensor:
        import torch
        from torch.nn.functional import normalize

        from .draw import to_image

        images = [to_image(p) for p in pictures]
        pixel_values = self.clip_processor(images=images, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(self.engine.device, self.clip.dtype)
        with torch.inference_mode():
            pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
            embeds: torch.Tensor = normalize(self.clip.visual_projection(pooled).float(), dim=-1)
        return embeds

    def clip_similarity(
        self, prompt: str, pictures: Sequence[Pixels | Bytes | Image]
    ) -> list[float]:
        """CLIP's cosine similarity of the prompt with each picture, in [-1, 1]."""
        if self.clip is None or not pictures:
            return []
        text = self._text_embeds([prompt])
        images = self._image_embeds(pictures)
        return [float(v) for v in (images @ text.T)[:, 0].cpu()]

    def clip_reading(
        self, picture: Pixels | Image, top: int = 3
    ) -> dict[str, list[tuple[str, float]]]:
        """For each group of the vocabulary, the phrases CLIP finds closest to the picture."""
        if self.clip is None:
            return {}
        if self._vocabulary is None:
            self._vocabulary = {
                group: (phrases, self._text_embeds(phrases))
                for group, phrases in VOCABULARY.items()
            }
        image = self._image_embeds([picture])[0]
        reading: dict[str, list[tuple[str, float]]] = {}
        for group, (phrases, embeds) in self._vocabulary.items():
            sims = (embeds @ image).cpu().tolist()
            ranked = sorted(zip(phrases, sims, strict=True), key=lambda p: -p[1])
            reading[group] = [(phrase, float(sim)) for phrase, sim in ranked[:top]]
        return reading

    # --- plain results ---------------------------------------------------------------------

    def annotate(
        self, request: GenerationRequest, result: GenerationResult, arrays: Sequence[Bytes]
    ) -> None:
        """Add CLIP's score to each image of a plain result (when enabled) and, to a flagged
        image, the checker's per-concept scores (for the moderators' "why")."""
        images = result.images
        if self.clip is not None and self.config.clip_in_results and images:
            for image, score in zip(
                images, self.clip_similarity(request.prompt, arrays), strict=False
            ):
                image.clip_score = score
        flagged = [i for i, image in enumerate(images) if image.nsfw and i < len(arrays)]
        if flagged:
            checked = self.check([arrays[i] for i in flagged])
            for i, (_, scores) in zip(flagged, checked, strict=True):
                images[i].safety_scores = scores
