"""SDEdit (Meng et al. 2022) as a counterfactual baseline: img2img with the attribute-edited prompt.

Why it is here: it is the obvious way to make a text-guided edit of a scan with the same generator.
Each edit strength s noises the reconstruction's latent to the DDIM timestep at fraction s and
denoises it with the edited prompt, which costs s * steps UNet evaluations *per strength*; finding
the minimal flip therefore re-runs the sampler at every bisected strength. Our swap-step search
shares one denoising prefix and bisects on a Bézier curve with the VAE alone: the NFE counts of the
two say what that saves.

`naive_img2img_search` is the same search through diffusers' `StableDiffusionImg2ImgPipeline`,
one pipeline call per strength, for timing the straightforward implementation against ours.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from diffusers import DDIMScheduler

from xcounter.disentangle.trajectories import DEFAULT_STRENGTHS, select_swap_steps
from xcounter.errors import XCounterError
from xcounter.explanation import Counterfactual
from xcounter.methods.base import SIGNS, EditContext
from xcounter.methods.latent_shift import assemble_counterfactual, refine_flip, target_margins

if TYPE_CHECKING:
    from xcounter.attributes import Attribute
    from xcounter.generators import SDGenerator


def edited_prompt(prompt: str, attribute: "Attribute", sign: str) -> str:
    """The source prompt with the attribute's first positive (add) or negative (remove) phrase appended."""
    if sign not in SIGNS:
        raise XCounterError(f"sign must be one of {', '.join(SIGNS)}, got '{sign}'")
    phrases = attribute.positive if sign == "add" else attribute.negative
    if not phrases:
        kind = "positive" if sign == "add" else "negative"
        raise XCounterError(f"attribute '{attribute.name}' has no {kind} phrase to {sign} it with")
    phrase = phrases[0]
    base = prompt.strip()
    if base and not base.endswith((".", "!", "?")):
        base += "."
    return f"{base} {phrase[:1].upper()}{phrase[1:]}.".strip()


def candidate_noise_steps(context: EditContext, strengths: Sequence[float], steps: int) -> list[int]:
    """The candidates the trajectory search would pick for this budget, as img2img step counts (ascending).

    Same selection as ours (`select_swap_steps`: strongest edit first, then the cheapest that fit in
    `context.max_nfe`), so SDEdit and the trajectory search are compared on the same candidate set.
    """
    swap_steps = select_swap_steps(steps, strengths, context.max_nfe, context.generator.guidance_scale)
    return sorted(steps - swap_step for swap_step in swap_steps)


def img2img(generator: "SDGenerator", z_0: torch.Tensor, embedding: torch.Tensor, noise_steps: Sequence[int],
            *, steps: int, seed: int) -> torch.Tensor:
    """SDEdit latents for every entry of `noise_steps` (n of `steps` DDIM steps), in one UNet batch per step.

    Semantics are diffusers' img2img with `strength = n / steps`: the latent is noised with the
    scheduler to timestep `timesteps[steps - n]` by seeded Gaussian noise (the same draw for every n,
    as each pipeline call with the same seed would make) and denoised with `embedding` from there.
    The noised latents play the role of the generator's "prefix", so `generator.sample` runs and
    counts the UNet evaluations (n per strength): [len(noise_steps), 4, h, w].
    """
    from xcounter.generators import SwapSchedule

    scheduler = DDIMScheduler.from_config(generator.scheduler.config)
    scheduler.set_timesteps(steps)
    noise = torch.randn(z_0.shape, generator=torch.Generator().manual_seed(seed)).to(z_0)
    noised = [scheduler.add_noise(z_0, noise, t.reshape(1)) for t in scheduler.timesteps[:steps]] + [z_0]
    schedules = [SwapSchedule(source=embedding, edited=embedding, swap_step=steps - int(n)) for n in noise_steps]
    with torch.no_grad():
        return generator.sample(noised[0], schedules, steps=steps, prefix=noised)


class _StepSearch:
    """Bisection on whole denoising steps: a strength between two step counts costs NFE but changes nothing."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def midpoint(self, low: float, high: float) -> float | None:
        low_n, high_n = round(low * self.steps), round(high * self.steps)
        return None if high_n - low_n <= 1 else ((low_n + high_n) // 2) / self.steps


class SDEdit:
    """Img2img with the edited prompt at rising strengths; the minimal flip is bisected by re-running.

    Args:
        strengths: candidate strengths, run in one batch (rounded to whole denoising steps).
        bisect_steps: at most this many extra img2img runs to narrow the bracket (stops at one step).
    """

    name = "sdedit"

    def __init__(self, strengths: Sequence[float] = DEFAULT_STRENGTHS, bisect_steps: int = 3) -> None:
        if not strengths or any(not 0 < float(s) <= 1 for s in strengths) or bisect_steps < 0:
            raise XCounterError("SDEdit strengths must lie in (0, 1] and bisect_steps must be >= 0")
        self.strengths = tuple(sorted(float(s) for s in strengths))
        self.bisect_steps = bisect_steps

    def generate(self, context: EditContext, attribute: "Attribute | None", sign: str) -> Counterfactual:
        if attribute is None:
            raise XCounterError("SDEdit edits a named attribute; pass one")
        generator = context.generator
        steps = int(context.steps or context.inversion.steps)
        nfe_before = generator.nfe
        with torch.no_grad():
            embedding = generator.embed([edited_prompt(context.inversion.prompt, attribute, sign)])[0]
        z_0 = _reconstruction_latent(context)
        noise_steps = candidate_noise_steps(context, self.strengths, steps)
        if not noise_steps:
            raise XCounterError(f"an NFE budget of {context.max_nfe} affords no SDEdit candidate at {steps} steps")

        def run(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                images = generator.decode(img2img(generator, z_0, embedding, counts, steps=steps,
                                                  seed=context.seed)).clamp(0, 1)
                return images, target_margins(context, images)

        with torch.no_grad():
            source = generator.decode(z_0).clamp(0, 1)
            images, margins = run(noise_steps)
            images = torch.cat([source, images])
            margins = torch.cat([target_margins(context, source), margins])
        strengths = [0.0] + [n / steps for n in noise_steps]

        def evaluate(strength: float) -> tuple[torch.Tensor, float]:
            image, margin = run([round(strength * steps)])
            return image, float(margin[0])

        search = refine_flip(strengths, images, margins, evaluate, self._budgeted_bisections(context, nfe_before),
                             midpoint=_StepSearch(steps).midpoint, flip_margin=context.flip_margin)
        return assemble_counterfactual(context, attribute.name, sign, self.name, strengths, images, search,
                                       nfe=generator.nfe - nfe_before)

    def _budgeted_bisections(self, context: EditContext, nfe_before: int) -> int:
        """Fewer re-runs when the context's NFE budget is nearly spent (each costs up to `steps`, twice with CFG)."""
        if context.max_nfe is None:
            return self.bisect_steps
        left = context.max_nfe - (context.generator.nfe - nfe_before)
        steps = int(context.steps or context.inversion.steps)
        worst = steps * (2 if context.generator.guidance_scale > 1.0 else 1)
        return max(0, min(self.bisect_steps, left // max(1, worst)))


def _reconstruction_latent(context: EditContext) -> torch.Tensor:
    """The latent every diffusion method starts from: the end of the source prefix (= the reconstruction)."""
    prefix = context.prefix if context.prefix is not None else context.inversion.prefix
    if prefix is not None:
        return prefix[-1].detach()
    with torch.no_grad():
        return context.generator.encode(context.inversion.reconstruction)


# -- the naive loop through diffusers' pipeline ------------------------------------------------------

def img2img_pipeline(generator: "SDGenerator"):
    """diffusers' StableDiffusionImg2ImgPipeline over the generator's own components.

    The scheduler is a copy of the generator's (DDIM, no clipping): the pipeline calls
    `set_timesteps` on it, which must not disturb the generator.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    components = dict(generator.pipe.components)
    components["scheduler"] = DDIMScheduler.from_config(generator.scheduler.config)
    components["safety_checker"] = None
    components["requires_safety_checker"] = False
    pipe = StableDiffusionImg2ImgPipeline(**{k: v for k, v in components.items()
                                             if k in _pipeline_arguments(StableDiffusionImg2ImgPipeline)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_arguments(cls) -> set[str]:
    import inspect
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


class _UNetCounter:
    """Counts UNet sample-evaluations the pipeline makes (a CFG batch of 2 counts 2, like the generator)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.count += int(sample.shape[0])

    def close(self) -> None:
        self._handle.remove()


def naive_img2img_search(context: EditContext, attribute: "Attribute", sign: str, *,
                         strengths: Sequence[float] = DEFAULT_STRENGTHS, bisect_steps: int = 3) -> Counterfactual:
    """SDEdit's search, but one `StableDiffusionImg2ImgPipeline` call per candidate and per bisection.

    Same steps, seed, candidates and stopping rule as `SDEdit`, so the same images come out; only the
    cost differs. The image passed to the pipeline is the 4-channel latent (the pipeline then skips
    its VAE encoder and image processor), which also makes 1-channel VAEs work; the pipeline returns
    latents and the generator decodes them. NFE are added to `generator.nfe`.
    """
    generator = context.generator
    steps = int(context.steps or context.inversion.steps)
    prompt = edited_prompt(context.inversion.prompt, attribute, sign)
    pipe = img2img_pipeline(generator)
    with torch.no_grad():
        embedding = generator.embed([prompt])
        negative = generator.embed([""]) if generator.guidance_scale > 1.0 else None
    z_0 = _reconstruction_latent(context)
    counter = _UNetCounter(generator.unet)
    nfe_before = generator.nfe

    def evaluate(strength: float) -> tuple[torch.Tensor, float]:
        n = round(strength * steps)
        # +0.5 keeps int(steps * strength) == n despite float rounding (diffusers truncates)
        latents = pipe(prompt_embeds=embedding, negative_prompt_embeds=negative, image=z_0,
                       strength=min(1.0, (n + 0.5) / steps), num_inference_steps=steps,
                       guidance_scale=generator.guidance_scale, eta=0.0, output_type="latent",
                       generator=torch.Generator().manual_seed(context.seed)).images
        with torch.no_grad():
            image = generator.decode(latents).clamp(0, 1)
            return image, float(target_margins(context, image)[0])

    try:
        with torch.no_grad():
            source = generator.decode(z_0).clamp(0, 1)
            frames, margins = [source], [float(target_margins(context, source)[0])]
        noise_steps = candidate_noise_steps(context, strengths, steps)
        if not noise_steps:
            raise XCounterError(f"an NFE budget of {context.max_nfe} affords no img2img candidate at {steps} steps")
        for n in noise_steps:
            image, margin = evaluate(n / steps)
            frames.append(image)
            margins.append(margin)
        search = refine_flip([0.0] + [n / steps for n in noise_steps], torch.cat(frames), torch.tensor(margins),
                             evaluate, bisect_steps, midpoint=_StepSearch(steps).midpoint)
    finally:
        counter.close()
    if generator.nfe == nfe_before:  # the pipeline called the UNet directly, past the generator's counter
        generator.nfe += counter.count
    return assemble_counterfactual(context, attribute.name, sign, "sdedit_naive",
                                   [0.0] + [n / steps for n in noise_steps], torch.cat(frames), search,
                                   nfe=counter.count)
