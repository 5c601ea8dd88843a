#!/usr/bin/python3
"""Training-step anchor for ringdiff's DiT: the PyTorch DiT a user would run instead.

Launch:  /usr/bin/python3 dit_step.py --model DiT-S/4 --shape 28x28x1 --num-classes 10 \
             --threads 1 --batch 16 --out /tmp/dit.json
         /usr/bin/python3 dit_step.py --model DiT-S/2 --shape 32x32x4 --num-classes 1000 \
             --learn-sigma --params-only

Model: the structure of facebookresearch/DiT `models.py` (commit ed81ce2): PatchEmbed (a p x p
conv with stride p), the fixed 2-D sin-cos position embedding (not trained), TimestepEmbedder
(256 frequencies, cat(cos, sin), Linear-SiLU-Linear), LabelEmbedder with the classifier-free
guidance null class, DiT blocks with adaLN-Zero, FinalLayer, and its initialisation. DiT imports
PatchEmbed, Attention and Mlp from timm, which is not installed here: the three classes below are
written to have timm's parameters and computation (timm 0.6-0.9, no fused attention: PyTorch 1.13
has no scaled_dot_product_attention).

Two liberties, both only reachable by options ringdiff needs and the reference lacks: rectangular
images (the reference assumes a square grid), and --num-classes 0 (an unconditional DiT without a
label table; the reference always has one). --null-row keeps the null-class row without label
dropout, because ringdiff's DiT always has that row.

Step (as ringdiff's bench:step times it, and as DiT's train.py does it minus the VAE):
  t ~ U{0..T-1}, y dropped to the null class with probability --class-dropout,
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
  loss = mean over the batch of mse(eps, eps_hat) (+ lambda T L_t with --learn-sigma: the
         Improved DDPM variational term with the mean frozen, as DiT's gaussian_diffusion.py),
  backward (gradient accumulation over --microbatch chunks), optional grad-norm clip, AdamW,
  EMA update (DiT's update_ema, with ringdiff's min(decay, (1+n)/(10+n)) warm-up), loss.item().
Inputs are random N(0, 1) "images" and uniform labels, generated before timing. Timed: every
step after --warmup, wall clock; the median is what bench:step compares.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# DiT_models of the reference: depth, hidden size, heads, patch.
PRESETS = {
    f"{name}/{p}": (depth, hidden, heads, p)
    for name, (depth, hidden, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items()
    for p in (2, 4, 8)
}
FREQ_DIM = 256


# --- timm.models.vision_transformer's PatchEmbed, Attention and Mlp, as DiT uses them ---

class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                              bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


# --- DiT ---

def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden, dropout_prob, null_row):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(null_row), hidden)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, train):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0]) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        mods = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_pos_embed_2d(dim, gh, gw):
    """[gh*gw, dim], row-major tokens: the first half encodes the column, the second the row."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def one_axis(pos):
        a = pos[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")
    return torch.cat([one_axis(cols.reshape(-1)), one_axis(rows.reshape(-1))], dim=1).float()


class DiT(nn.Module):
    def __init__(self, shape, patch, hidden, depth, heads, mlp_ratio, num_classes,
                 class_dropout, learn_sigma, null_row):
        super().__init__()
        h, w, c = shape
        self.out_channels = 2 * c if learn_sigma else c
        self.patch = patch
        self.x_embedder = PatchEmbed((h, w), patch, c, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = (LabelEmbedder(num_classes, hidden, class_dropout, null_row)
                           if num_classes > 0 else None)
        gh, gw = self.x_embedder.grid_size
        # A frozen parameter in the reference; a buffer here, so it is neither trained nor counted.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, gh, gw).unsqueeze(0))
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        gh, gw = self.x_embedder.grid_size
        p, c = self.patch, self.out_channels
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], gh, gw, p, p, c))
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


# --- diffusion: the schedule and the training loss ---

def betas_for(name, steps):
    if name == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if name == "cosine":
        def abar(t):
            return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(steps)],
                            dtype=torch.float64)
    raise SystemExit(f"dit_step.py: --schedule {name}: only linear and cosine")


class Diffusion:
    """Per-timestep constants (computed in float64, used in float32) of a DDPM schedule."""

    def __init__(self, betas):
        self.T = len(betas)
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        tables = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_1m_abar": (1 - abar).sqrt(),
            "sqrt_recip_abar": (1 / abar).sqrt(),
            "sqrt_recipm1_abar": (1 / abar - 1).sqrt(),
            "log_betas": betas.log(),
            "post_log_var": torch.cat([post_var[1:2], post_var[1:]]).log(),
            "post_c1": betas * abar_prev.sqrt() / (1 - abar),
            "post_c2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
        }
        for k, v in tables.items():
            setattr(self, k, v.float())

    @staticmethod
    def at(table, t):
        return table[t].view(-1, 1, 1, 1)

    def q_sample(self, x0, t, eps):
        return self.at(self.sqrt_abar, t) * x0 + self.at(self.sqrt_1m_abar, t) * eps

    def vb_bits(self, x0, xt, t, eps_frozen, v_raw):
        """L_t per example in bits/dim: KL(q(x_{t-1}|x_t,x0) || p), or the decoder NLL at t = 0."""
        at = self.at
        x0_hat = at(self.sqrt_recip_abar, t) * xt - at(self.sqrt_recipm1_abar, t) * eps_frozen
        mean = at(self.post_c1, t) * x0_hat + at(self.post_c2, t) * xt
        true_mean = at(self.post_c1, t) * x0 + at(self.post_c2, t) * xt
        true_log_var = at(self.post_log_var, t)
        frac = (v_raw + 1) / 2
        log_var = frac * at(self.log_betas, t) + (1 - frac) * true_log_var
        kl = 0.5 * (-1 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean) ** 2 * torch.exp(-log_var))
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        per = torch.where((t == 0).view(-1, 1, 1, 1), nll, kl)
        return per.mean(dim=(1, 2, 3)) / math.log(2.0)


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    def cdf(v):
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = cdf(inv_std * (centered + 1 / 255))
    cdf_min = cdf(inv_std * (centered - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def per_example_loss(model, diffusion, x0, t, y, eps, learn_sigma, vlb_weight):
    xt = diffusion.q_sample(x0, t, eps)
    out = model(xt, t, y)
    if not learn_sigma:
        return ((out - eps) ** 2).mean(dim=(1, 2, 3))
    eps_hat, v_raw = out.chunk(2, dim=1)
    mse = ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3))
    vb = diffusion.vb_bits(x0, xt, t, eps_hat.detach(), v_raw)
    return mse + vlb_weight * diffusion.T * vb


# --- a check against ringdiff's reference fixture ---

def check_fixture(path):
    """Relative error of this DiT against test/fixtures/dit-ref.json (made with the reference).

    The fixture holds a tiny learned-sigma DiT's weights under ringdiff's names and layouts
    (linear kernels [in, out], the patch kernel [p, p, C, D]), inputs in NHWC and the reference's
    output: agreement says this file computes what facebookresearch/DiT computes.
    """
    with open(path) as f:
        fx = json.load(f)
    model = DiT((8, 8, 2), patch=2, hidden=8, depth=2, heads=2, mlp_ratio=4.0, num_classes=3,
                class_dropout=0.1, learn_sigma=True, null_row=True)
    model.eval()
    rename = {"x_embed": "x_embedder.proj", "t_embed.lin1": "t_embedder.mlp.0",
              "t_embed.lin2": "t_embedder.mlp.2", "final.ada": "final_layer.adaLN_modulation.1",
              "final.linear": "final_layer.linear", "y_embed": "y_embedder.embedding_table"}
    state = {"pos_embed": model.pos_embed}
    for name, rec in fx["params"].items():
        value = torch.tensor(rec["data"], dtype=torch.float32).reshape(rec["shape"])
        base, kind = name.rsplit(".", 1)
        base = rename.get(base, base.replace(".ada", ".adaLN_modulation.1"))
        if kind == "bias":
            state[base + ".bias"] = value
        elif value.dim() == 4:
            state[base + ".weight"] = value.permute(3, 2, 0, 1)
        else:
            state[base + ".weight"] = value if kind == "table" else value.t()
    model.load_state_dict(state, strict=True)
    x = torch.tensor(fx["x"]).reshape(3, 8, 8, 2).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(x, torch.tensor(fx["t"]), torch.tensor(fx["y"], dtype=torch.long))
    out = out.permute(0, 2, 3, 1).reshape(-1)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    return dict(out_rel_err=rel(out, torch.tensor(fx["out"])),
                pos_rel_err=rel(model.pos_embed.reshape(-1), torch.tensor(fx["pos_embed"])))


# --- command line ---

def parse_shape(text):
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be HxWxC, got '{text}'")
    if min(h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"--shape must be positive, got '{text}'")
    return h, w, c


def build(a):
    depth, hidden, heads, patch = PRESETS[a.model.removeprefix("DiT-")]
    depth, hidden = a.depth or depth, a.hidden or hidden
    heads, patch = a.heads or heads, a.patch or patch
    if a.shape[0] % patch or a.shape[1] % patch:
        raise SystemExit(f"dit_step.py: --patch {patch} does not divide the image sides "
                         f"{a.shape[0]}x{a.shape[1]}")
    dims = dict(depth=depth, hidden=hidden, heads=heads, patch=patch, mlp_ratio=a.mlp_ratio)
    model = DiT(a.shape, patch, hidden, depth, heads, a.mlp_ratio, a.num_classes,
                a.class_dropout, a.learn_sigma, a.class_dropout > 0 or a.null_row)
    return model, dims


def counts(model):
    modules = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    return dict(params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                fixed=model.pos_embed.numel(), modules=modules)


def train(a, model):
    diffusion = Diffusion(betas_for(a.schedule, a.timesteps))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(a.beta1, a.beta2), eps=a.adam_eps,
                            weight_decay=a.weight_decay)
    ema = [p.detach().clone() for p in model.parameters()]
    model.train()

    g = torch.Generator().manual_seed(1234)
    steps = a.warmup + a.iters
    h, w, c = a.shape
    x0s = torch.randn(steps, a.batch, c, h, w, generator=g)
    epss = torch.randn(steps, a.batch, c, h, w, generator=g)
    ts = torch.randint(0, diffusion.T, (steps, a.batch), generator=g)
    ys = torch.randint(0, max(a.num_classes, 1), (steps, a.batch), generator=g)
    chunk = a.microbatch if 0 < a.microbatch < a.batch else a.batch

    def step(i):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for s in range(0, a.batch, chunk):
            sl = slice(s, s + chunk)
            per = per_example_loss(model, diffusion, x0s[i, sl], ts[i, sl], ys[i, sl], epss[i, sl],
                                   a.learn_sigma, a.vlb_weight)
            # Sum over the chunk / B: the chunks' gradients add up to the batch mean's.
            loss = per.sum() / a.batch
            loss.backward()
            total += loss.item()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        decay = min(a.ema_decay, (1 + i) / (10 + i)) if a.ema_warmup else a.ema_decay
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(decay).add_(p, alpha=1 - decay)
        return total

    losses, times = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return losses, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="DiT-S/4", choices=[f"DiT-{k}" for k in PRESETS])
    ap.add_argument("--depth", type=int, help="override the preset's depth")
    ap.add_argument("--hidden", type=int, help="override the preset's hidden size")
    ap.add_argument("--heads", type=int, help="override the preset's heads")
    ap.add_argument("--patch", type=int, help="override the preset's patch size")
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--shape", type=parse_shape, default=(28, 28, 1),
                    help="HxWxC (default 28x28x1)")
    ap.add_argument("--num-classes", type=int, default=10, help="0 = unconditional")
    ap.add_argument("--class-dropout", type=float, default=0.1)
    ap.add_argument("--null-row", action="store_true",
                    help="keep the null-class row without label dropout (ringdiff always has it)")
    ap.add_argument("--learn-sigma", action="store_true")
    ap.add_argument("--vlb-weight", type=float, default=0.001, help="lambda of L_hybrid")
    ap.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=0.0, help="global norm clip, 0 = off")
    ap.add_argument("--ema-decay", type=float, default=0.9999)
    ap.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false")
    ap.add_argument("--microbatch", type=int, default=0, help="0 = the whole batch at once")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", help="write the result as JSON here")
    ap.add_argument("--params-only", action="store_true",
                    help="print the parameter counts as JSON and exit")
    ap.add_argument("--check-fixture", metavar="JSON",
                    help="compare with ringdiff's test/fixtures/dit-ref.json, print JSON and exit")
    a = ap.parse_args()

    if a.check_fixture:
        print(json.dumps(check_fixture(a.check_fixture)))
        return

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, dims = build(a)
    n = counts(model)
    if a.params_only:
        print(json.dumps(dict(**n, **dims)))
        return
    if a.batch < 1 or a.iters < 1 or a.warmup < 0:
        raise SystemExit("dit_step.py: --batch and --iters must be >= 1, --warmup >= 0")

    losses, times = train(a, model)
    med = statistics.median(times)
    res = dict(torch=torch.__version__, threads=a.threads, batch=a.batch, shape=list(a.shape),
               num_classes=a.num_classes, learn_sigma=a.learn_sigma, **dims, **n,
               step_times_s=times, step_median_s=med, samples_per_s_median=a.batch / med,
               losses=losses)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f)
    h, w, c = a.shape
    print(f"torch {torch.__version__} | {a.model} {dims} on {h}x{w}x{c}, {a.num_classes} classes, "
          f"learn_sigma {a.learn_sigma} | params {n['params']} (fixed {n['fixed']}) | "
          f"threads {a.threads} batch {a.batch}")
    print(f"  step median {med * 1e3:.1f} ms -> {a.batch / med:.2f} samples/s; steps ms: "
          + " ".join(f"{x * 1e3:.0f}" for x in times))
    print("  losses (warm-up + timed): " + " ".join(f"{x:.4f}" for x in losses))


if __name__ == "__main__":
    main()
