"""Train a text-to-image generator for a domain: fine-tune a Stable Diffusion folder (`base`) or
build a small one from scratch (`from_scratch` architecture JSON: VAE stage, then UNet stage).
Either may refine the VAE decoder alone first (`vae_decoder_steps`; `steps=0` with a base does only
that): the latent space is kept, so the UNet stays valid.

The objective is diffusers' `examples/text_to_image/train_text_to_image.py`: DDPM noise,
epsilon-prediction MSE, AdamW, optional EMA, optional LoRA (peft, as in `train_text_to_image_lora.py`),
`accelerate` for devices. Unlike that script, the batch, noise, timesteps and caption dropout of a
step are a pure function of (seed, step), so a resumed run ends with the same weights.

The output folder loads with `diffusers.StableDiffusionPipeline.from_pretrained(out)` and with
`xcounter.load_generator(out)` (it carries `xcounter.json`), beside `RECIPE.md` and `train_log.jsonl`.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from xcounter.errors import InputError, XCounterError
from xcounter.generators.data import ImageCaptionSet, batch_indices, load_image_captions, resolve_split, \
    read_metadata, step_generator
from xcounter.generators.training_loop import Stage, run_stage
from xcounter.utils.atomic import write_text_atomic

CONFIG_DIR = Path(__file__).with_name("configs")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class FinetuneOptions:
    """Every knob of a run; written to RECIPE.md and checked again on resume."""

    data: str
    out: str
    base: str | None = None
    from_scratch: str | None = None
    train_text_encoder: bool = False
    lora: int | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    resolution: int | None = None
    seed: int = 0
    checkpoint_every: int = 200
    ema: bool = False
    vae_steps: int = 1000
    vae_lr: float = 1e-3
    vae_batch_size: int = 8
    vae_decoder_steps: int = 0
    vae_detail_weight: float = 0.0
    caption_dropout: float = 0.1
    vocab_size: int | None = None
    report_corpus: bool = True
    keep_checkpoints: bool = False


# --------------------------------------------------------------------------- validation

def scratch_config(spec: str | Path) -> dict:
    """Read an architecture JSON: a path, or a shipped name ('phantom-cxr', 'phantom-skin')."""
    path = Path(spec)
    if not path.is_file() and (CONFIG_DIR / f"{spec}.json").is_file():
        path = CONFIG_DIR / f"{spec}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise InputError(f"from-scratch config '{spec}' not found (shipped: {shipped})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"from-scratch config {path} is not valid JSON: {exc}") from None
    missing = [k for k in ("vae", "unet", "text_encoder", "image_channels") if k not in config]
    if missing:
        raise InputError(f"from-scratch config {path} lacks {', '.join(missing)}")
    return config


def check_base(base: str | Path) -> Path:
    """A diffusers Stable Diffusion folder: model_index.json naming unet, vae, text_encoder, tokenizer."""
    base = Path(base)
    index = base / "model_index.json"
    if not index.is_file():
        raise InputError(f"base '{base}' is not a diffusers Stable Diffusion pipeline folder (no model_index.json)")
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"base '{base}' has an unreadable model_index.json") from None
    missing = [c for c in SD_COMPONENTS if c not in components or not (base / c).is_dir()]
    if missing:
        raise InputError(f"base '{base}' is not a diffusers Stable Diffusion pipeline folder (missing {', '.join(missing)})")
    return base


def base_resolution(base: Path, factor: int) -> int | None:
    """Native pixel size of a base pipeline: its UNet's latent `sample_size` times the VAE factor."""
    try:
        size = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8")).get("sample_size")
    except (OSError, ValueError):
        return None
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) * factor if isinstance(size, int) and size > 0 else None


def vae_factor(block_out_channels) -> int:
    return 2 ** (len(block_out_channels) - 1)


def validate(options: FinetuneOptions, resume: bool) -> tuple[dict | None, int, int]:
    """Check every user input before anything is written; return (scratch config, channels, resolution)."""
    if (options.base is None) == (options.from_scratch is None):
        raise XCounterError("give exactly one of --base SD_DIR or --from-scratch CONFIG")
    if options.vae_decoder_steps < 0:
        raise XCounterError(f"--vae-decoder-steps must be zero or positive, got {options.vae_decoder_steps}")
    decoder_only = options.steps == 0 and options.vae_decoder_steps > 0 and options.base is not None
    if options.steps <= 0 and not decoder_only:
        raise XCounterError(f"--steps must be positive, got {options.steps} (0 only with --base and "
                            f"--vae-decoder-steps, to refine the decoder alone)")
    if decoder_only and (options.lora is not None or options.train_text_encoder or options.ema):
        raise XCounterError("--steps 0 refines the VAE decoder alone: drop --lora, --train-text-encoder and --ema")
    if options.batch_size <= 0 or options.vae_batch_size <= 0:
        raise XCounterError("--batch-size and --vae-batch-size must be positive")
    for flag, lr in (("--lr", options.lr), ("--vae-lr", options.vae_lr)):
        if not 0 < lr < math.inf:  # NaN too; torch's optimizer would refuse it only after the VAE stage ran
            raise XCounterError(f"{flag} must be a positive number, got {lr}")
    if options.lora is not None and options.lora <= 0:
        raise XCounterError(f"--lora rank must be positive, got {options.lora}")
    if not 0.0 <= options.caption_dropout < 1.0:
        raise XCounterError(f"--caption-dropout must be in [0, 1), got {options.caption_dropout}")
    if not 0 <= options.vae_detail_weight < math.inf:  # NaN too: it would poison every VAE loss
        raise XCounterError(f"--vae-detail-weight must be zero or positive, got {options.vae_detail_weight}")
    if options.vae_detail_weight and options.from_scratch is None and not options.vae_decoder_steps:
        raise XCounterError("--vae-detail-weight weighs the VAE's training loss: use it with --from-scratch or "
                            "--vae-decoder-steps (a --base model's VAE is otherwise frozen)")
    if options.from_scratch is not None and options.vae_steps <= 0:
        raise XCounterError(f"--vae-steps must be positive, got {options.vae_steps}")
    if options.from_scratch is not None and options.lora is not None:
        raise XCounterError("--lora needs a --base model (a from-scratch model has nothing to adapt)")
    folder = resolve_split(options.data)
    rows = read_metadata(folder)
    from PIL import Image
    with Image.open(folder / rows[0][0]) as first:
        data_size = first.size[0]
    if options.from_scratch is not None:
        config = scratch_config(options.from_scratch)
        channels, factor = int(config["image_channels"]), vae_factor(config["vae"]["block_out_channels"])
        default_resolution = int(config.get("resolution", data_size))
    else:
        config = None
        base = check_base(options.base)
        vae_config = json.loads((base / "vae" / "config.json").read_text(encoding="utf-8"))
        channels, factor = int(vae_config.get("in_channels", 3)), vae_factor(vae_config["block_out_channels"])
        # the base model's own resolution (SD 1.5: 64 x 8 = 512), as diffusers' training scripts default to:
        # the data's pixel size would train a 64 px model on 128 px latents it never samples at
        default_resolution = base_resolution(base, factor) or data_size
    resolution = options.resolution or default_resolution
    if resolution <= 0 or resolution % factor:
        raise XCounterError(f"--resolution {resolution} is not a multiple of the VAE factor {factor}")
    out = Path(options.out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise XCounterError(f"output folder '{out}' exists and is not empty (pass --resume to continue a run)")
    if resume and not (out / "checkpoints").is_dir():
        raise XCounterError(f"nothing to resume: '{out / 'checkpoints'}' does not exist")
    return config, channels, resolution


# --------------------------------------------------------------------------- components

def nlmcxr_report_texts() -> list[str]:
    """FINDINGS and IMPRESSION texts of torchxrayvision's bundled Indiana reports (read at run time only)."""
    import tarfile
    import xml.etree.ElementTree as ET

    import torchxrayvision as xrv

    path = Path(xrv.datasets.datapath) / "NLMCXR_reports.tgz"
    if not path.is_file():
        return []
    texts = []
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(archive.extractfile(member)).getroot()
            for node in root.iter("AbstractText"):
                if node.get("Label") in ("FINDINGS", "IMPRESSION") and node.text:
                    texts.append(node.text.strip())
    return texts


def scratch_tokenizer(config: dict, captions: list[str], folder: Path, vocab_size: int | None,
                      report_corpus: bool):
    """Build (or, on resume, reload) the domain BPE tokenizer in CLIP format."""
    from transformers import CLIPTokenizer

    from xcounter.generators.tokenizer import MAX_LENGTH, build_clip_tokenizer

    if (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)
    texts = list(captions)
    if report_corpus and config.get("domain") == "cxr":
        texts += nlmcxr_report_texts()
    return build_clip_tokenizer(texts, folder, vocab_size=vocab_size or int(config.get("vocab_size", 1024)))


def noise_schedule(config: dict | None) -> dict:
    defaults = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012}
    return {**defaults, **((config or {}).get("noise_schedule") or {})}


def scratch_components(config: dict, tokenizer, seed: int) -> dict:
    """Random-init VAE, UNet, CLIP text encoder (sized for `tokenizer`) and a DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config["vae"])
    unet = UNet2DConditionModel(**config["unet"])
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **config["text_encoder"])
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(**noise_schedule(config), clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def base_components(base: Path) -> dict:
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"base '{base}' could not be loaded as a Stable Diffusion pipeline: {exc}") from None
    return {k: getattr(pipe, k) for k in SD_COMPONENTS}


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# --------------------------------------------------------------------------- UNet stage

def unet_stage(parts: dict, latents: torch.Tensor, input_ids: torch.Tensor, empty_ids: torch.Tensor,
               options: FinetuneOptions, train_text_encoder: bool, accelerator) -> Stage:
    """Epsilon (or v) prediction MSE on precomputed latents; returns a checkpointable Stage."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    unet, text_encoder = parts["unet"], parts["text_encoder"]
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    unet.requires_grad_(options.lora is None)
    if options.lora is not None:
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=options.lora, lora_alpha=options.lora, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
    text_encoder.requires_grad_(train_text_encoder)
    modules = {"unet": unet, "text_encoder": text_encoder}
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    parameters = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=1e-2)
    ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True, power=3 / 4) if options.ema else None
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if train_text_encoder:  # DDP refuses a module without trainable parameters
        text_encoder = accelerator.prepare(text_encoder)
    else:
        text_encoder.to(device)
    if ema is not None:  # built on the CPU parameters: follow them to the device
        ema.to(device)
    modules = {"unet": unet, "text_encoder": text_encoder}
    prediction = noise_scheduler.config.prediction_type

    def loss_at(step: int) -> torch.Tensor:
        indices = batch_indices(len(latents), options.batch_size, options.seed, step)[rank::world]
        generator = step_generator(options.seed, step, salt=2)
        clean = latents[indices]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(indices),),
                                  generator=generator)
        dropped = torch.rand(len(indices), generator=generator) < options.caption_dropout
        ids = torch.where(dropped[:, None], empty_ids[None, :], input_ids[indices])
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with torch.set_grad_enabled(train_text_encoder):
            states = text_encoder(ids.to(device))[0]
        predicted = unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=states).sample
        target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(clean, noise, timesteps)
        return F.mse_loss(predicted.float(), target.to(device).float())

    return Stage(name="unet", modules=modules, parameters=parameters, optimizer=optimizer, loss_at=loss_at,
                 steps=options.steps, lr=options.lr, warmup=min(100, options.steps // 10), ema=ema)


# --------------------------------------------------------------------------- output

def save_pipeline(parts: dict, out: Path, lora_unet=None) -> None:
    """Save a from_pretrained-loadable SD folder into `out` (staged, then moved in)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    staging = out / ".pipeline.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    if lora_unet is not None:
        StableDiffusionPipeline.save_lora_weights(staging, unet_lora_layers=lora_unet, safe_serialization=True)
    for entry in staging.iterdir():
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def recipe_text(options: FinetuneOptions, summary: dict) -> str:
    command = "xcounter finetune " + " ".join(shlex.quote(a) for a in cli_arguments(options))
    lines = ["# Training recipe", "", "Reproduce with:", "", "```", command, "```", "",
             "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "Options:", "", "```json", json.dumps(asdict(options), indent=2), "```", ""]
    return "\n".join(lines)


def cli_arguments(options: FinetuneOptions) -> list[str]:
    """The command-line flags that reproduce `options` (for RECIPE.md)."""
    args = ["--data", options.data, "--out", options.out]
    args += ["--base", options.base] if options.base else ["--from-scratch", options.from_scratch,
                                                            "--vae-steps", str(options.vae_steps)]
    if options.from_scratch or options.vae_decoder_steps:
        args += ["--vae-lr", str(options.vae_lr), "--vae-batch-size", str(options.vae_batch_size)]
        if options.vae_detail_weight:
            args += ["--vae-detail-weight", str(options.vae_detail_weight)]
    if options.vae_decoder_steps:
        args += ["--vae-decoder-steps", str(options.vae_decoder_steps)]
    args += ["--steps", str(options.steps), "--batch-size", str(options.batch_size), "--lr", str(options.lr),
             "--seed", str(options.seed), "--caption-dropout", str(options.caption_dropout),
             "--checkpoint-every", str(options.checkpoint_every)]
    if options.resolution:
        args += ["--resolution", str(options.resolution)]
    if options.train_text_encoder:
        args.append("--train-text-encoder")
    if options.lora:
        args += ["--lora", str(options.lora)]
    if options.ema:
        args.append("--ema")
    if options.vocab_size:
        args += ["--vocab-size", str(options.vocab_size)]
    return args


# --------------------------------------------------------------------------- entry point

def logged_seconds(log_path: Path) -> float:
    """Training time over all stages and all (resumed) processes, from train_log.jsonl."""
    last: dict[str, float] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        last[record["stage"]] = record["seconds"]
    return sum(last.values())


def check_resume_options(options: FinetuneOptions, folder: Path, resume: bool) -> None:
    """A resumed run must use the options it started with (the step count may grow)."""
    path = folder / "options.json"
    # stage lengths may change (a run can be extended, or finished at its last checkpoint), the decoder's
    # too since nothing downstream depends on it, and the run folder may have been moved or copied
    mutable = {"out", "steps", "vae_decoder_steps", "checkpoint_every", "keep_checkpoints"}
    current = {k: v for k, v in asdict(options).items() if k not in mutable}
    if resume and path.is_file():
        saved = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in mutable}
        # an option added after the run started is compared with its default
        defaults = {f.name: f.default for f in fields(FinetuneOptions)}
        changed = sorted(k for k in current if saved.get(k, defaults[k]) != current[k])
        if changed:
            raise XCounterError(f"cannot resume with changed options ({', '.join(changed)}); "
                                f"use the options of the interrupted run")
    write_text_atomic(path, json.dumps(asdict(options), indent=2))


def prepare_scratch(config: dict, data: ImageCaptionSet, options: FinetuneOptions, checkpoints: Path,
                    log_path: Path, accelerator, resume: bool, progress: bool, summary: dict):
    """Stage 1: tokenizer + random components, train the VAE, fix its scaling factor.

    Returns (components, unscaled latents of every image, xcounter.json settings).
    """
    from xcounter.generators.vae_training import encode_all, reconstruction_ssim, scaling_factor, vae_stage

    tokenizer = scratch_tokenizer(config, data.captions, checkpoints / "tokenizer", options.vocab_size,
                                  options.report_corpus)
    parts = scratch_components(config, tokenizer, options.seed)
    stage = vae_stage(parts["vae"], data, steps=options.vae_steps, batch_size=options.vae_batch_size,
                      lr=options.vae_lr, seed=options.seed, accelerator=accelerator,
                      detail_weight=options.vae_detail_weight)
    summary["vae_final_loss"] = round(run_stage(stage, accelerator, checkpoints, log_path,
                                                options.checkpoint_every, resume, progress), 6)
    vae = accelerator.unwrap_model(stage.modules["vae"]).vae
    raw = encode_all(vae, data, accelerator.device)
    vae.register_to_config(scaling_factor=scaling_factor(raw))
    summary["vae_scaling_factor"] = round(vae.config.scaling_factor, 6)
    summary["vae_ssim"] = round(reconstruction_ssim(vae, data, accelerator.device), 4)
    parts["vae"] = vae
    meta = {"domain": config.get("domain"), "steps": int(config.get("steps", 20)),
            "guidance_scale": float(config.get("guidance_scale", 1.0))}
    return parts, raw, meta


def prepare_base(base: Path, data: ImageCaptionSet, accelerator):
    """Load the base pipeline and encode every image with its (frozen) VAE."""
    from xcounter.generators.stable_diffusion import checked_kind_edits
    from xcounter.generators.vae_training import encode_all

    parts = base_components(base)
    parts["vae"].to(accelerator.device)
    raw = encode_all(parts["vae"], data, accelerator.device)
    saved = json.loads((base / "xcounter.json").read_text()) if (base / "xcounter.json").is_file() else {}
    meta = {"domain": saved.get("domain"), "steps": int(saved.get("steps", 20)),
            "guidance_scale": float(saved.get("guidance_scale", 1.0))}
    if saved.get("edit_guidance") is not None:  # a continued model starts from its base's measured push
        meta["edit_guidance"] = float(saved["edit_guidance"])
    if saved.get("kind_edits"):
        meta["kind_edits"] = checked_kind_edits(saved["kind_edits"], base / "xcounter.json")
    return parts, raw, meta


def refine_decoder(parts: dict, raw: torch.Tensor, data: ImageCaptionSet, options: FinetuneOptions,
                   checkpoints: Path, log_path: Path, accelerator, resume: bool, progress: bool,
                   summary: dict) -> None:
    """Optional stage: train the VAE decoder alone on the frozen encoder's latents `raw`.

    The latent space (and `scaling_factor`) is unchanged, so the UNet, trained here or before, still fits.
    """
    from xcounter.generators.vae_training import decoder_stage, reconstruction_ssim

    vae = parts["vae"]
    summary["vae_ssim_before_decoder"] = round(reconstruction_ssim(vae, data, accelerator.device), 4)
    stage = decoder_stage(vae, data, raw, steps=options.vae_decoder_steps, batch_size=options.vae_batch_size,
                          lr=options.vae_lr, seed=options.seed, accelerator=accelerator,
                          detail_weight=options.vae_detail_weight)
    summary["vae_decoder_final_loss"] = round(run_stage(stage, accelerator, checkpoints, log_path,
                                                        options.checkpoint_every, resume, progress), 6)
    parts["vae"] = accelerator.unwrap_model(stage.modules["vae"]).vae
    summary["vae_ssim_after_decoder"] = round(reconstruction_ssim(parts["vae"], data, accelerator.device), 4)


def finetune(options: FinetuneOptions, *, resume: bool = False, progress: bool = True,
             device: str | None = None) -> Path:
    """Run a whole training (both stages when from scratch) and write the output folder.

    Every input is checked before anything is written. With `resume`, stages continue from the
    checkpoints in `out/checkpoints` and end with the same weights as an uninterrupted run.
    """
    from accelerate import Accelerator

    config, channels, resolution = validate(options, resume)
    data = load_image_captions(options.data, channels=channels, resolution=resolution)
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu)
    out = Path(options.out)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    check_resume_options(options, checkpoints, resume)
    log_path = out / "train_log.jsonl"
    if not resume:
        log_path.unlink(missing_ok=True)
    summary: dict = {"images": len(data), "resolution": resolution, "image_channels": channels}

    if config is not None:
        parts, raw, meta = prepare_scratch(config, data, options, checkpoints, log_path, accelerator,
                                           resume, progress, summary)
        train_text_encoder = True
    else:
        parts, raw, meta = prepare_base(Path(options.base), data, accelerator)
        train_text_encoder = options.train_text_encoder
    if options.vae_decoder_steps:
        refine_decoder(parts, raw, data, options, checkpoints, log_path, accelerator, resume, progress, summary)
    parts["vae"].requires_grad_(False)
    stage = None
    if options.steps:
        latents = raw * parts["vae"].config.scaling_factor
        input_ids = tokenize(parts["tokenizer"], data.captions)
        empty_ids = tokenize(parts["tokenizer"], [""])[0]
        stage = unet_stage(parts, latents, input_ids, empty_ids, options, train_text_encoder, accelerator)
        summary["final_loss"] = round(run_stage(stage, accelerator, checkpoints, log_path,
                                                options.checkpoint_every, resume, progress), 6)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return out
    if stage is not None:
        parts["unet"] = accelerator.unwrap_model(stage.modules["unet"])
        parts["text_encoder"] = accelerator.unwrap_model(stage.modules["text_encoder"])
        if stage.ema is not None:
            stage.ema.copy_to(stage.parameters)
    lora_layers = None
    if options.lora is not None:
        from peft.utils import get_peft_model_state_dict

        lora_layers = get_peft_model_state_dict(parts["unet"])
        parts["unet"].fuse_lora()
        parts["unet"].unload_lora()
    for module in (parts["unet"], parts["text_encoder"], parts["vae"]):
        module.to("cpu").eval()
    save_pipeline(parts, out, lora_layers)
    summary.update({"unet_parameters": sum(p.numel() for p in parts["unet"].parameters()),
                    "text_encoder_parameters": sum(p.numel() for p in parts["text_encoder"].parameters()),
                    "seconds": round(logged_seconds(log_path), 1),
                    "device": str(accelerator.device), "torch_threads": torch.get_num_threads(),
                    "python": sys.version.split()[0]})
    write_text_atomic(out / "xcounter.json", json.dumps({**meta, "image_channels": channels}, indent=2) + "\n")
    write_text_atomic(out / "RECIPE.md", recipe_text(options, summary))
    if not options.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return out
