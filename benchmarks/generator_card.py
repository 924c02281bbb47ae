"""Model-card numbers for the generators: controllability, realism (FID on oracle features) and inversion.

- Controllability: for every binary non-anatomy attribute, images sampled from the report sentence with its
  positive phrase and with its negative phrase (same noise seeds); the oracle's rate of the attribute in each
  (goal: at least 90% with, at most 10% without).
- Realism: Fréchet distance between oracle features of images sampled from held-out phantoms' reports and of
  the held-out phantoms themselves, for the final model and for an early checkpoint (`--early DOMAIN=DIR`),
  with the reduction in %. A second draw of real phantoms gives the floor.
- Inversion: DDIM inversion + reconstruction SSIM / MAE of held-out phantoms at the default step count
  (goal: SSIM at least 0.9).

Sampling uses diffusers' `StableDiffusionPipeline` of the loaded generator (`generator.pipe`).

    python benchmarks/generator_card.py --early cxr=/path/to/checkpoint-250 --early skin=...
    python benchmarks/generator_card.py --quick --models tiny
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402

NAME = "generator_card"
DEFAULT_N, QUICK_N = 12, 2
#: held-out phantoms for realism and inversion (never used for training data)
HELD_OUT_BASE = 20_000_000
REALISM_N, QUICK_REALISM_N = 96, 8
INVERSION_N, QUICK_INVERSION_N = 12, 2
CONTROL_GOAL = (0.9, 0.1)
INVERSION_GOAL = 0.9


def sample_images(generator, prompts: list[str], seed: int, guidance: float, batch: int = 16) -> torch.Tensor:
    """Images in [0, 1] from diffusers' pipeline, seeds seed, seed + 1, ... (one per prompt)."""
    pipe, side = generator.pipe, generator.resolution
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        noise = torch.cat([torch.randn((1, *generator.latent_shape), generator=torch.Generator().manual_seed(seed + start + k))
                           for k in range(len(chunk))])
        with torch.no_grad():
            images = pipe(prompt=chunk, num_inference_steps=generator.steps, guidance_scale=guidance, latents=noise,
                          output_type="pt", height=side, width=side).images
        out.append(images.float().clamp(0, 1))
    return torch.cat(out)


def sentence(attributes, phrase: str) -> str:
    return attributes.sentences(phrase)[0]


def controllability(models: C.DomainModels, n: int, seed: int, guidance: float) -> list[dict]:
    rows = []
    for attribute in models.attributes:
        if attribute.kind == "anatomy" or attribute.type != "binary" or not attribute.positive or not attribute.negative:
            continue
        with_prompt = sentence(models.attributes, attribute.positive[0])
        without_prompt = sentence(models.attributes, attribute.negative[0])
        images = sample_images(models.generator, [with_prompt] * n + [without_prompt] * n, seed, guidance)
        with torch.no_grad():
            values = models.oracle.measure(images)[attribute.name].float()
        rate_with, rate_without = float((values[:n] > 0.5).float().mean()), float((values[n:] > 0.5).float().mean())
        rows.append({"attribute": attribute.name, "kind": attribute.kind, "guidance": guidance, "n": n,
                     "with": rate_with, "without": rate_without, "prompt_with": with_prompt,
                     "prompt_without": without_prompt,
                     "met": rate_with >= CONTROL_GOAL[0] and rate_without <= CONTROL_GOAL[1]})
    return rows


def held_out(domain: str, count: int, offset: int, generator) -> tuple[torch.Tensor, list[str]]:
    images, reports = [], []
    for k in range(count):
        pixels, _, report = C.phantom(domain, HELD_OUT_BASE + offset + k)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
        images.append(torch.nn.functional.interpolate(image, size=(generator.resolution,) * 2, mode="area"))
        reports.append(report)
    return torch.cat(images).clamp(0, 1), reports


def features(oracle, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return oracle.logits(images).float().numpy()


def realism(models: C.DomainModels, early, count: int, seed: int, guidance: float) -> dict:
    from xcounter.metrics import frechet_distance

    real, reports = held_out(models.domain, count, 0, models.generator)
    second, _ = held_out(models.domain, count, 100_000, models.generator)
    reference = features(models.oracle, real)
    out = {"n": count, "guidance": guidance,
           "floor_real_vs_real": frechet_distance(features(models.oracle, second), reference)}
    for name, generator in (("final", models.generator), ("early", early)):
        if generator is None:
            out[name] = None
            continue
        generated = sample_images(generator, reports, seed, guidance)
        out[name] = frechet_distance(features(models.oracle, generated), reference)
    if out.get("early") and out.get("final") is not None:
        out["reduction_percent"] = 100.0 * (out["early"] - out["final"]) / out["early"]
    return out


def inversion(models: C.DomainModels, count: int) -> dict:
    images, reports = held_out(models.domain, count, 200_000, models.generator)
    ssims, errors = [], []
    for k in range(count):
        result = models.generator.invert(images[k:k + 1], reports[k])
        ssims.append(float(result.ssim))
        errors.append(float(result.error))
    return {"n": count, "steps": models.steps, "ssim_mean": float(np.mean(ssims)), "ssim_min": float(np.min(ssims)),
            "mae_mean": float(np.mean(errors)), "met": float(np.mean(ssims)) >= INVERSION_GOAL}


def run_domain(domain: str, args, total: C.Budget) -> dict:
    import diffusers
    import transformers

    import xcounter

    transformers.logging.set_verbosity_error()  # long held-out reports are truncated to CLIP's 77 tokens
    diffusers.logging.set_verbosity_error()

    models = C.load_domain(domain, args.models, [])
    early_spec = dict(item.split("=", 1) for item in args.early if "=" in item).get(domain)
    early = xcounter.load_generator(early_spec) if early_spec and args.models == "shipped" else None
    if args.models == "tiny":
        early = models.generator  # the tiny test model stands in for both checkpoints
    n = args.n or (QUICK_N if args.quick or args.models == "tiny" else DEFAULT_N)
    guidance_values = [float(g) for g in str(args.guidance).split(",") if g.strip()]
    quick = args.quick or args.models == "tiny"
    control = []
    for guidance in guidance_values:
        control += controllability(models, n, args.seed, guidance)
        print(f"[{NAME}] {domain} controllability at guidance {guidance:g} ({total.elapsed:.0f}s)", flush=True)
    realism_rows = [realism(models, early, QUICK_REALISM_N if quick else REALISM_N, args.seed, guidance)
                    for guidance in guidance_values]
    print(f"[{NAME}] {domain} realism ({total.elapsed:.0f}s)", flush=True)
    return {"models": models.describe(), "early": early_spec, "controllability": control, "realism": realism_rows,
            "inversion": inversion(models, QUICK_INVERSION_N if quick else INVERSION_N),
            "grid": sample_grid(models, args.seed, args.out)}


#: the grid's rows: the neutral report and the first positive phrase of these attributes
GRID_ATTRIBUTES = {"cxr": ("chest_tube", "pleural_effusion", "cardiomegaly", "pacemaker"),
                   "skin": ("ruler", "hair", "ink_marking", "blue_white_veil", "border_irregularity", "dark_corner")}
GRID_SEEDS, GRID_GUIDANCE = 6, 4.0


def sample_grid(models: C.DomainModels, seed: int, out: Path) -> str | None:
    """A picture of what the prompts draw: rows = prompts, columns = noise seeds (guidance 4)."""
    plt = C.matplotlib_pyplot()
    names = [n for n in GRID_ATTRIBUTES.get(models.domain, ()) if n in models.attributes]
    prompts = [models.attributes.neutral_prompt] + [sentence(models.attributes, models.attributes[n].positive[0])
                                                     for n in names]
    images = sample_images(models.generator, [p for p in prompts for _ in range(GRID_SEEDS)], seed, GRID_GUIDANCE)
    fig, axes = plt.subplots(len(prompts), GRID_SEEDS, figsize=(1.3 * GRID_SEEDS, 1.4 * len(prompts)), squeeze=False)
    for row, prompt in enumerate(prompts):
        for col in range(GRID_SEEDS):
            image = images[row * GRID_SEEDS + col].permute(1, 2, 0).numpy()
            ax = axes[row][col]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(("neutral" if row == 0 else names[row - 1]).replace("_", " "), fontsize=7)
    fig.suptitle(f"{models.domain}: samples at guidance {GRID_GUIDANCE:g} (rows: prompts, columns: seeds)", fontsize=8)
    return C.save_figure(fig, out, f"bench_{NAME}_{models.domain}_grid")


def goals(domains: dict) -> list[dict]:
    out = []
    for domain, result in domains.items():
        for guidance in sorted({r["guidance"] for r in result["controllability"]}):
            rows = [r for r in result["controllability"] if r["guidance"] == guidance]
            met = [r["attribute"] for r in rows if r["met"]]
            out.append(C.goal_row(f"{domain}: controllability at guidance {guidance:g} (>= 90% with, <= 10% without)",
                                  f"{len(met)}/{len(rows)} attributes", len(met) == len(rows),
                                  "met: " + (", ".join(met) or "none")))
        for row in result["realism"]:
            if row.get("reduction_percent") is not None:
                out.append(C.goal_row(f"{domain}: FID (oracle features) falls from the early checkpoint, guidance "
                                      f"{row['guidance']:g}", f"{row['reduction_percent']:.0f}%",
                                      row["reduction_percent"] > 0, f"{row['early']:.1f} -> {row['final']:.1f}"))
        inv = result["inversion"]
        out.append(C.goal_row(f"{domain}: inversion SSIM >= 0.9", inv["ssim_mean"], inv["met"],
                              f"min {inv['ssim_min']:.3f}, N = {inv['n']}, {inv['steps']} DDIM steps"))
    return out


def plot(domains: dict, out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    if not domains:
        return None
    fig, axes = plt.subplots(1, len(domains), figsize=(6 * len(domains), 4), squeeze=False)
    for ax, (domain, result) in zip(axes[0], domains.items()):
        guidance = max(r["guidance"] for r in result["controllability"])
        rows = [r for r in result["controllability"] if r["guidance"] == guidance]
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [r["with"] for r in rows], 0.4, label="prompted with", color="#1a73e8")
        ax.barh(y + 0.2, [r["without"] for r in rows], 0.4, label="prompted without", color="#9aa0a6")
        ax.axvline(0.9, color="#1a73e8", linestyle="--", linewidth=1)
        ax.axvline(0.1, color="#5f6368", linestyle="--", linewidth=1)
        ax.set_yticks(y, [r["attribute"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("oracle rate of the attribute")
        ax.set_title(f"{domain}: controllability, guidance {guidance:g}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(domains: dict, goal_rows: list[dict], figure: str | None, args, argv, budget: C.Budget) -> list[str]:
    lines = C.header("Generator quality: controllability, realism, inversion", f"{NAME}.py", argv, args,
                     [f"Wall time: {budget.elapsed:.0f} s (process CPU time {budget.cpu:.0f} s)."])
    for domain, result in domains.items():
        lines += [f"### {domain} ({result['models']['generator']})", ""]
        rows = [[r["attribute"], r["kind"], r["guidance"], r["n"], r["with"], r["without"],
                 "met" if r["met"] else "**MISSED**"] for r in result["controllability"]]
        lines += ["Controllability (oracle rate of the attribute; prompts: the first report template with the "
                  "attribute's first positive / negative phrase, same noise seeds):", ""]
        lines += C.table(["attribute", "kind", "guidance", "N per prompt", "rate prompted with",
                          "rate prompted without", "goal (>= 0.9 / <= 0.1)"], rows)
        realism_rows = [[r["guidance"], r["n"], r["final"], r["early"] if r["early"] is not None else "not measured",
                         f"{r['reduction_percent']:.0f}%" if r.get("reduction_percent") is not None else "n/a",
                         r["floor_real_vs_real"]] for r in result["realism"]]
        lines += [f"Realism: Fréchet distance on oracle features against held-out phantoms (early checkpoint: "
                  f"`{result['early'] or 'none given'}`):", ""]
        lines += C.table(["guidance", "N", "final", "early checkpoint", "reduction", "real vs real (floor)"],
                         realism_rows)
        inv = result["inversion"]
        lines += [f"Inversion ({inv['n']} held-out phantoms, {inv['steps']} DDIM steps, report as prompt): mean SSIM "
                  f"{inv['ssim_mean']:.3f} (min {inv['ssim_min']:.3f}), MAE {inv['mae_mean']:.3f}.", ""]
        if result.get("grid"):
            lines += [f"![{domain} samples]({result['grid']})", ""]
    return lines + C.closing(goal_rows, figure, "controllability")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = C.parser(__doc__.splitlines()[0])
    parser.set_defaults(out=str(C.REPORTS / "zoo"))
    parser.add_argument("--early", action="append", default=[], metavar="DOMAIN=DIR",
                        help="an early checkpoint of the same training run, for the FID reduction")
    parser.add_argument("--guidance", default="1,4", help="classifier-free guidance scales to sample at")
    return C.run_domain_benchmark(NAME, argv, parser, run_domain=run_domain, goals=goals, plot=plot,
                                  markdown=markdown)


if __name__ == "__main__":
    main()
