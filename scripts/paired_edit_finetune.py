"""Edit-aligned paired fine-tuning of a phantom UNet: an experiment, not the shipped recipe (negative result,
xcounter/zoo/phantom-cxr/RECIPE.md, "Tried ... paired").

Pairs: phantom A and its twin B with one binary attribute toggled (renderer). Conditions: e_A = E(caption A);
e_B = the explainer's own edited embedding for that edit (restated caption spliced, + sign*alpha*d_a).
Loss: eps-MSE on (x_t^A, e_A) and (x_t^B, e_B), plus the cross term: from x_t^A under e_B predict z_B
(min-SNR-5 weighted eps-MSE against eps* = eps + sqrt(abar/(1-abar)) (z_A - z_B)).
"""
import argparse, json, math, shutil, sys, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--domain", default="cxr")
p.add_argument("--pairs", type=int, default=2000)
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--lr", type=float, default=5e-5)
p.add_argument("--cross", type=float, default=1.0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--loss", default="cross", choices=("cross", "diff"))
p.add_argument("--diff-weight", type=float, default=1.0)
p.add_argument("--trainable", default="all", choices=("all", "cross-attention"),
               help="cross-attention: only the text keys and values (attn2.to_k / to_v) learn")
p.add_argument("--std-b", type=int, default=1, help="1: also the epsilon term on (x_t^B, e_B)")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

from diffusers import DDPMScheduler
from xcounter.attributes import load_attributes
from xcounter.generators import load_generator
from xcounter.phantoms import caption, make_phantom, sample_attributes
from xcounter.disentangle.directions import LanguageDirections
from xcounter.disentangle.prompt_edit import spliced_embedding
from xcounter.disentangle.trajectories import edited_embedding, resolve_edit_settings

zoo = Path(__file__).resolve().parents[1] / "xcounter" / "zoo" / f"phantom-{args.domain}"
gen = load_generator(f"phantom-{args.domain}")
attrs = load_attributes(args.domain)
binary = [a for a in attrs if a.kind != "anatomy" and a.type == "binary"]
directions = LanguageDirections(gen, attrs, disentangle=True).fit().directions_
rng = np.random.default_rng(args.seed)
t0 = time.time()
zA, zB, eA, eB, meta = [], [], [], [], []
with torch.no_grad():
    for i in range(args.pairs):
        seed = 5_000_000 + args.seed * 100_000 + i
        truth = sample_attributes(args.domain, seed)
        a = binary[rng.integers(len(binary))]
        present = bool(truth[a.name])
        sign = "remove" if present else "add"
        pa, ta = make_phantom(args.domain, seed, size=128)
        pb, tb = make_phantom(args.domain, seed, size=128, **{a.name: not present})
        cap = caption(ta, args.domain, np.random.default_rng(seed))
        imgs = torch.from_numpy(np.stack([pa, pb])).permute(0, 3, 1, 2).float() / 255.0
        imgs = F.interpolate(imgs, size=(gen.resolution,) * 2, mode="area").clamp(0, 1)
        z = gen.encode(imgs)
        src = gen.embed([cap])[0]
        restated = a.restated(cap, sign)
        base = src if restated is None else spliced_embedding(gen, cap, restated, src)
        alpha, _ = resolve_edit_settings(None, None, gen, a.kind)
        e = edited_embedding(base, directions[a.name], sign, alpha)
        zA.append(z[0]); zB.append(z[1]); eA.append(src); eB.append(e)
        meta.append((seed, a.name, sign))
        if i % 500 == 0:
            print(f"pairs {i} {time.time()-t0:.0f}s", flush=True)
zA, zB, eA, eB = map(torch.stack, (zA, zB, eA, eB))
print("data", zA.shape, eA.shape, f"{time.time()-t0:.0f}s", flush=True)

unet = gen.unet
unet.train().requires_grad_(args.trainable == "all")
if args.trainable == "cross-attention":
    for name, parameter in unet.named_parameters():
        if "attn2.to_k" in name or "attn2.to_v" in name:
            parameter.requires_grad_(True)
trainable = [q for q in unet.parameters() if q.requires_grad]
print("trainable parameters", sum(q.numel() for q in trainable), flush=True)
sched = DDPMScheduler.from_pretrained(zoo / "scheduler")
abar = sched.alphas_cumprod
opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-2)
g = torch.Generator().manual_seed(args.seed)
log = []
for step in range(args.steps):
    idx = torch.randint(0, len(zA), (args.batch,), generator=g)
    a0, b0, ca, cb = zA[idx], zB[idx], eA[idx], eB[idx]
    noise = torch.randn(a0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=g)
    xa, xb = sched.add_noise(a0, noise, t), sched.add_noise(b0, noise, t)
    ab = abar[t].reshape(-1, 1, 1, 1)
    snr = ab / (1 - ab)
    target_cross = noise + snr.sqrt() * (a0 - b0)
    weight = torch.clamp(5.0 / snr, max=1.0)  # min-SNR-5 in eps space
    x = torch.cat([xa, xb, xa]); c = torch.cat([ca, cb, cb]); tt = torch.cat([t, t, t])
    pred = unet(x, tt, encoder_hidden_states=c).sample
    pa_, pb_, pc_ = pred.chunk(3)
    std = F.mse_loss(pa_, noise) + (F.mse_loss(pb_, noise) if args.std_b else 0.0 * pb_.sum())
    if args.loss == "cross":
        cross = (weight * (pc_ - target_cross) ** 2).mean()
    else:  # the edit's response alone: eps(x_A, e_B) - eps(x_A, e_A) against sqrt(snr) (z_A - z_B)
        cross = (weight * (pc_ - pa_.detach() - snr.sqrt() * (a0 - b0)) ** 2).mean() * args.diff_weight
    loss = std + args.cross * cross
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    log.append({"step": step, "std": float(std.detach()) / 2, "cross": float(cross.detach())})
    if step % 100 == 0 or step == args.steps - 1:
        w = log[-100:]
        print(f"step {step} std {np.mean([r['std'] for r in w]):.4f} cross {np.mean([r['cross'] for r in w]):.4f} "
              f"{time.time()-t0:.0f}s", flush=True)

out = Path(args.out)
if out.exists():
    shutil.rmtree(out)
shutil.copytree(zoo, out)
unet.eval()
unet.save_pretrained(out / "unet")
(out / "paired_log.json").write_text(json.dumps({"args": vars(args), "log": log[::10]}))
print("saved", out, f"{time.time()-t0:.0f}s")
