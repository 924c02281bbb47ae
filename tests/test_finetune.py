"""`xcounter finetune` end to end on tiny models: from scratch, --base, LoRA, text encoder,
exact resume, and one-line errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xcounter.cli import main
from xcounter.generators import training_loop
from xcounter.generators.data import batch_indices
from xcounter.generators.finetune import FinetuneOptions, finetune

from tiny_generator import tiny_generator_dir

CAPTIONS = ["small heart", "large heart", "left pleural effusion", "right chest tube", "no finding"]

TINY_CONFIG = {
    "domain": "test", "resolution": 16, "image_channels": 1, "steps": 5, "guidance_scale": 1.0,
    "vocab_size": 600,
    "vae": {"in_channels": 1, "out_channels": 1, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8,
            "mid_block_add_attention": False, "sample_size": 16},
    "unet": {"sample_size": 4, "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32],
             "layers_per_block": 1, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 32,
             "attention_head_dim": 4, "norm_num_groups": 8},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 32},
}


def write_imagefolder(folder: Path, n: int = 10, size: int = 16, mode: str = "L", split: bool = True) -> Path:
    """A tiny imagefolder of disks whose radius follows the caption; returns the --data folder."""
    target = folder / "train" if split else folder
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    with open(target / "metadata.jsonl", "w") as handle:
        for i in range(n):
            radius = size * (0.2 + 0.05 * (i % 5))
            disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius ** 2) * 200 + rng.integers(0, 40, (size, size))
            Image.fromarray(disk.astype(np.uint8), "L").convert(mode).save(target / f"{i}.png")
            handle.write(json.dumps({"file_name": f"{i}.png", "text": CAPTIONS[i % 5]}) + "\n")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


def scratch_options(data_dir, out, tiny_config, **kw) -> FinetuneOptions:
    defaults = dict(data=str(data_dir), out=str(out), from_scratch=str(tiny_config), steps=4, vae_steps=3,
                    batch_size=4, lr=1e-3, seed=0, checkpoint_every=2, caption_dropout=0.2)
    return FinetuneOptions(**{**defaults, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for part in ("unet", "text_encoder", "vae"):
        for key, value in load_file(next((folder / part).glob("*.safetensors"))).items():
            tensors[f"{part}.{key}"] = value
    return tensors


def test_from_scratch_writes_a_loadable_pipeline(data_dir, tiny_config, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = finetune(scratch_options(data_dir, tmp_path / "gen", tiny_config), progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    meta = json.loads((out / "xcounter.json").read_text())
    assert meta == {"domain": "test", "steps": 5, "guidance_scale": 1.0, "image_channels": 1}
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the latents, not SD's constant
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("vae", 1), ("vae", 2), ("vae", 3)] + \
        [("unet", s) for s in range(1, 5)]
    assert all(np.isfinite(r["loss"]) and r["seconds"] >= 0 for r in log)
    assert "xcounter finetune" in (out / "RECIPE.md").read_text()
    assert not (out / "checkpoints").exists()
    image = pipe("large heart", num_inference_steps=2, height=16, width=16, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 1) and np.isfinite(image).all()
    assert pipe.tokenizer.tokenize("effusion") != [pipe.tokenizer.eos_token]


def test_resumed_run_equals_uninterrupted(data_dir, tiny_config, tmp_path, monkeypatch):
    full = finetune(scratch_options(data_dir, tmp_path / "full", tiny_config, ema=True), progress=False)

    real_save = training_loop.save_checkpoint

    def save_then_crash(stage, step, *args, **kwargs):  # a kill right after the step-2 UNet checkpoint
        real_save(stage, step, *args, **kwargs)
        if stage.name == "unet" and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    options = scratch_options(data_dir, tmp_path / "split", tiny_config, ema=True)
    with pytest.raises(KeyboardInterrupt):
        finetune(options, progress=False)
    assert (tmp_path / "split" / "checkpoints" / "unet.pt").is_file()
    monkeypatch.setattr(training_loop, "save_checkpoint", real_save)
    resumed = finetune(options, resume=True, progress=False)

    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 1, 2, 3, 4]


@pytest.mark.parametrize("lora, text_encoder", [(None, True), (4, False)])
def test_base_finetune_changes_the_trained_parts(tmp_path, lora, text_encoder):
    from diffusers import StableDiffusionPipeline

    base = tiny_generator_dir(tmp_path, settings={"domain": "cxr", "steps": 7, "edit_guidance": 2,
                                                  "kind_edits": {"pathology": {"edit_guidance": 1}}})
    data = write_imagefolder(tmp_path / "data", split=False)
    out = finetune(FinetuneOptions(data=str(data), out=str(tmp_path / "tuned"), base=str(base), steps=3,
                                   batch_size=4, lr=1e-2, lora=lora, train_text_encoder=text_encoder),
                   progress=False)
    before, after = weights(base), weights(out)
    changed = {part: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part))
               for part in ("unet", "text_encoder", "vae")}
    assert changed == {"unet": True, "text_encoder": text_encoder, "vae": False}
    settings = json.loads((out / "xcounter.json").read_text())
    assert settings["steps"] == 7 and settings["edit_guidance"] == 2.0  # the base's own settings carry over
    assert settings["kind_edits"] == {"pathology": {"edit_guidance": 1.0}}
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())  # fused into plain weights
    if lora:
        assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_base_trains_at_its_own_resolution_unless_told_otherwise(tmp_path):
    """A 16 px base fine-tuned on 32 px images trains at 16 px (diffusers' scripts default to the model's
    size too); --resolution overrides."""
    from xcounter.generators.finetune import validate

    base = tiny_generator_dir(tmp_path)
    data = write_imagefolder(tmp_path / "data", size=32, split=False)
    options = FinetuneOptions(data=str(data), out=str(tmp_path / "out"), base=str(base))
    assert validate(options, resume=False)[2] == 16
    options.resolution = 32
    assert validate(options, resume=False)[2] == 32


def test_decoder_refinement_keeps_the_latent_space_and_resumes_exactly(tmp_path, monkeypatch):
    """--steps 0 --vae-decoder-steps N: only the decoder changes (the UNet's latents stay valid), and a
    run killed after a checkpoint resumes to the same weights."""
    base = tiny_generator_dir(tmp_path, settings={"domain": "cxr", "steps": 7})
    data = write_imagefolder(tmp_path / "data", split=False)

    def options(name: str) -> FinetuneOptions:
        return FinetuneOptions(data=str(data), out=str(tmp_path / name), base=str(base), steps=0,
                               vae_decoder_steps=4, vae_batch_size=4, vae_lr=1e-2, checkpoint_every=2)

    full = finetune(options("full"), progress=False)
    before, after = weights(base), weights(full)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("vae.decoder.", "vae.post_quant_conv.")) for k in changed)
    assert json.loads((full / "vae" / "config.json").read_text())["scaling_factor"] == \
        json.loads((base / "vae" / "config.json").read_text())["scaling_factor"]
    recipe = (full / "RECIPE.md").read_text()
    assert "--vae-decoder-steps 4" in recipe and "vae_ssim_after_decoder" in recipe

    real_save = training_loop.save_checkpoint

    def save_then_crash(stage, step, *args, **kwargs):
        real_save(stage, step, *args, **kwargs)
        if stage.name == "vae_decoder" and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune(options("split"), progress=False)
    monkeypatch.setattr(training_loop, "save_checkpoint", real_save)
    resumed = finetune(options("split"), resume=True, progress=False)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def bad_inputs(tmp_path: Path, tiny_config: Path) -> dict[str, tuple[list[str], str]]:
    good = write_imagefolder(tmp_path / "good")
    no_captions = tmp_path / "empty"
    no_captions.mkdir()
    mixed = write_imagefolder(tmp_path / "mixed")
    Image.new("RGB", (16, 16)).save(mixed / "train" / "0.png")
    not_sd = tmp_path / "not-sd"
    not_sd.mkdir()
    (not_sd / "config.json").write_text("{}")
    scratch = ["--from-scratch", str(tiny_config)]
    return {
        "no captions": (["--data", str(no_captions)] + scratch, "no captions file"),
        "mixed": (["--data", str(mixed)] + scratch, "mixed sizes or modes"),
        "not sd": (["--data", str(good), "--base", str(not_sd)], "not a diffusers Stable Diffusion"),
        "resolution": (["--data", str(good), "--resolution", "18"] + scratch, "multiple of the VAE factor 4"),
        "steps": (["--data", str(good), "--steps", "0"] + scratch, "--steps must be positive"),
        "negative decoder steps": (["--data", str(good), "--vae-decoder-steps", "-1"] + scratch,
                                   "--vae-decoder-steps must be zero or positive"),
        "negative detail weight": (["--data", str(good), "--vae-detail-weight", "-1"] + scratch,
                                   "--vae-detail-weight must be zero or positive"),
        "NaN detail weight": (["--data", str(good), "--vae-detail-weight", "nan"] + scratch,
                              "--vae-detail-weight must be zero or positive"),
        "detail weight on a frozen VAE": (["--data", str(good), "--base", str(tiny_generator_dir(tmp_path)),
                                           "--vae-detail-weight", "1"], "use it with --from-scratch or --vae-decoder-steps"),
        "decoder only with lora": (["--data", str(good), "--base", str(tiny_generator_dir(tmp_path)), "--steps", "0",
                                    "--vae-decoder-steps", "2", "--lora", "4"], "refines the VAE decoder alone"),
        "negative lr": (["--data", str(good), "--lr", "-1"] + scratch, "--lr must be a positive number"),
        "nan vae lr": (["--data", str(good), "--vae-lr", "nan"] + scratch, "--vae-lr must be a positive number"),
        "no threads": (["--data", str(good), "--threads", "0"] + scratch, "--threads"),
    }


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_config, capsys):
    cases = bad_inputs(tmp_path, tiny_config)
    capsys.readouterr()  # building the cases' base folder prints progress
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        assert main(["finetune", *args, "--out", str(out), "--quiet"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("Error:") and message in err, (name, err)
        assert not out.exists(), name


def test_batches_are_a_function_of_seed_and_step():
    epoch = [i for step in range(3) for i in batch_indices(12, 4, seed=1, step=step)]
    assert sorted(epoch) == list(range(12))  # one epoch covers every image once
    assert batch_indices(12, 4, 1, 5) == batch_indices(12, 4, 1, 5)
    assert batch_indices(12, 4, 1, 0) != batch_indices(12, 4, 2, 0)


def test_shipped_phantom_configs_build(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from xcounter.generators.finetune import scratch_config

    for name, channels in (("phantom-cxr", 1), ("phantom-skin", 3)):
        config = scratch_config(name)
        vae, unet = AutoencoderKL(**config["vae"]), UNet2DConditionModel(**config["unet"])
        latents = vae.encode(torch.zeros(1, channels, 64, 64)).latent_dist.mean
        assert latents.shape == (1, 4, 16, 16) and config["image_channels"] == channels
        assert 1e6 < sum(p.numel() for p in unet.parameters()) < 2e7


def test_resume_refuses_changed_options(tmp_path):
    from xcounter.errors import XCounterError
    from xcounter.generators.finetune import check_resume_options

    options = FinetuneOptions(data="d", out="o", from_scratch="phantom-cxr", steps=10, lr=1e-3)
    check_resume_options(options, tmp_path, resume=False)
    check_resume_options(FinetuneOptions(**{**options.__dict__, "steps": 20}), tmp_path, resume=True)
    with pytest.raises(XCounterError, match="lr"):
        check_resume_options(FinetuneOptions(**{**options.__dict__, "lr": 1e-4}), tmp_path, resume=True)


def test_resume_reads_options_added_since_as_their_defaults(tmp_path):
    from xcounter.errors import XCounterError
    from xcounter.generators.finetune import check_resume_options

    options = FinetuneOptions(data="d", out="o", from_scratch="phantom-cxr", steps=10)
    saved = {k: v for k, v in options.__dict__.items() if k != "vae_detail_weight"}  # a run from before the option
    (tmp_path / "options.json").write_text(json.dumps(saved))
    check_resume_options(options, tmp_path, resume=True)
    (tmp_path / "options.json").write_text(json.dumps(saved))
    with pytest.raises(XCounterError, match="vae_detail_weight"):
        check_resume_options(FinetuneOptions(**{**options.__dict__, "vae_detail_weight": 1.0}), tmp_path, resume=True)


def test_detail_term_weighs_a_thin_error_that_the_mean_hides():
    from xcounter.generators.vae_training import DETAIL_FRACTION, reconstruction_loss

    images = torch.zeros(2, 3, 20, 20)
    stroke = images.clone()
    stroke[:, 2, 5, 2:6] = 1.0  # a 4-pixel line, 1% of the image, missing from the reconstruction
    plain = reconstruction_loss(images, stroke)
    detailed = reconstruction_loss(images, stroke, detail_weight=1.0)
    assert plain == pytest.approx(2 * 4 / (3 * 400))  # L1 + MSE over every value
    worst = int(400 * DETAIL_FRACTION)  # 8 worst pixels per image: the 4 of the line and 4 exact ones
    assert detailed - plain == pytest.approx(4 / worst)
    assert detailed > 10 * plain
