"""`xcounter finetune`: train a domain generator (fine-tune a SD folder, or from scratch)."""
from __future__ import annotations

import click


@click.command("finetune")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Imagefolder with metadata.jsonl (file_name, text), or its parent holding train/.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output pipeline folder.")
@click.option("--base", default=None, help="A local diffusers Stable Diffusion folder to fine-tune.")
@click.option("--from-scratch", "from_scratch", default=None, metavar="CONFIG",
              help="Architecture JSON (path, or 'phantom-cxr' / 'phantom-skin') for a new small model.")
@click.option("--train-text-encoder", is_flag=True, help="Also train the text encoder (always on from scratch).")
@click.option("--lora", type=int, default=None, metavar="RANK", help="Train LoRA adapters of this rank on the UNet.")
@click.option("--steps", type=int, default=1000, show_default=True,
              help="UNet optimisation steps (0: only --vae-decoder-steps, with --base).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True,
              help="3e-4 from scratch; about 1e-5 for a full fine-tune of a real SD model, 1e-4 for LoRA.")
@click.option("--resolution", type=int, default=None, help="Training side in pixels (default: config / data).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints; ends as an uninterrupted run would.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--ema", is_flag=True, help="Keep an exponential moving average of the weights and save it.")
@click.option("--vae-steps", type=int, default=1000, show_default=True, help="From scratch: VAE stage steps.")
@click.option("--vae-lr", type=float, default=1e-3, show_default=True,
              help="VAE stage (from scratch) and decoder refinement learning rate.")
@click.option("--vae-batch-size", type=int, default=8, show_default=True,
              help="VAE stage and decoder refinement batch (small batches, many steps train it fastest).")
@click.option("--vae-decoder-steps", type=int, default=0, show_default=True,
              help="Refine the VAE decoder alone for this many steps (encoder, latent space and UNet kept); "
                   "with --base and --steps 0 this is all that is trained.")
@click.option("--vae-detail-weight", type=float, default=0.0, show_default=True,
              help="VAE stages: weight of the worst-2%-pixels error term, so thin rare structures (ink strokes) "
                   "are not painted over.")
@click.option("--caption-dropout", type=float, default=0.1, show_default=True,
              help="Share of empty captions (for classifier-free guidance).")
@click.option("--vocab-size", type=int, default=None, help="From scratch: BPE vocabulary size.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT/checkpoints after a finished run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per process (default: torch's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(device: str, threads: int | None, quiet: bool, resume: bool, **kwargs) -> None:
    """Train a text-to-image generator for a medical domain."""
    import torch

    from xcounter.generators.finetune import FinetuneOptions, finetune

    if threads:
        torch.set_num_threads(threads)
    out = finetune(FinetuneOptions(**kwargs), resume=resume, progress=not quiet,
                   device=None if device == "auto" else device)
    click.echo(f"Saved generator to {out}")
