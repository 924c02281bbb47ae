"""A tiny Stable Diffusion pipeline built from configs with fixed seeds (diffusers' get_dummy_components
pattern), so every generator code path runs in well under a second on one CPU thread.

Images are 16 x 16 (VAE factor 2), latents 4 x 8 x 8, text embeddings 77 x 32.
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from xcounter.generators.tokenizer import build_clip_tokenizer

REPORT_SENTENCES = [
    "chest radiograph",
    "small left pleural effusion",
    "large right pleural effusion",
    "cardiomegaly with pulmonary edema",
    "right chest tube in place",
    "no pneumothorax",
    "pacemaker over the left chest",
    "dermoscopy of a pigmented lesion with a ruler",
]
_TOKENIZER_DIR = tempfile.TemporaryDirectory(prefix="xcounter-tiny-tokenizer-")

#: denoising steps of the tiny generator the engine tests share (conftest's `generator` fixture)
TINY_STEPS = 4


@lru_cache(maxsize=1)
def _tokenizer_path() -> Path:
    path = Path(_TOKENIZER_DIR.name)
    build_clip_tokenizer(REPORT_SENTENCES * 2, path, vocab_size=600)
    return path


def tiny_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(_tokenizer_path(), model_max_length=77)


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16)


def tiny_pipeline(image_channels: int = 1, seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD pipeline for 16 x 16 images with `image_channels` channels (1 or 3)."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng():
        unet = tiny_unet(seed)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=image_channels, out_channels=image_channels, latent_channels=4, sample_size=16,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_generator_dir(tmp_path: Path, image_channels: int = 1, seed: int = 0, settings: dict | None = None) -> Path:
    """Save a tiny pipeline as a diffusers folder (optionally with an xcounter.json) and return it."""
    import json

    folder = Path(tmp_path) / f"tiny-sd-{image_channels}ch"
    tiny_pipeline(image_channels, seed).save_pretrained(folder, safe_serialization=True)
    if settings is not None:
        (folder / "xcounter.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder
