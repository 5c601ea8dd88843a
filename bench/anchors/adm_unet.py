"""Reference outputs of the ADM U-Net (openai/guided-diffusion's UNetModel) for ringdiff's tests.

Usage (torch at /usr/bin/python3, the reference checked out anywhere):
    /usr/bin/python3 bench/anchors/adm_unet.py --repo /path/to/guided-diffusion \
        --out test/fixtures/adm-ref.json

Builds two tiny UNetModels (a DDPM-style one and one with every ADM option), draws their
weights from N(0, 0.3) (so that zero-initialised layers take part), evaluates them on fixed
inputs, and writes the weights under ringdiff's parameter names (NHWC / HWIO layouts) with the
inputs, the outputs and the parameter counts of the full-size published configurations.
GroupNorm32's 32 groups are replaced by 4 so that the tiny models stay tiny: ringdiff takes the
group count from model.groups.
"""
import argparse
import json
import sys

import torch as th


def load(repo, groups):
    sys.path.insert(0, repo)
    from guided_diffusion import nn as gnn
    from guided_diffusion import unet

    unet.normalization = lambda ch: gnn.GroupNorm32(groups, ch)
    return unet


def conv_kernel(w):
    """OIHW (or OI1 for 1-D 1x1 convs) → HWIO as a nested list."""
    if w.dim() == 3:
        return w[:, :, 0].t()
    return w.permute(2, 3, 1, 0)


def ours(model, opts):
    """The state dict under ringdiff's names, in ringdiff's layouts."""
    out = {}
    sd = model.state_dict()
    half = opts["model_channels"] // 2

    def lin(dst, src, perm_rows=None):
        k = sd[src + ".weight"].t()
        if perm_rows is not None:
            k = k[perm_rows]
        out[dst + ".kernel"] = k
        out[dst + ".bias"] = sd[src + ".bias"]

    def conv(dst, src):
        out[dst + ".kernel"] = conv_kernel(sd[src + ".weight"])
        out[dst + ".bias"] = sd[src + ".bias"]

    def norm(dst, src):
        out[dst + ".gamma"] = sd[src + ".weight"]
        out[dst + ".beta"] = sd[src + ".bias"]

    def res(dst, src):
        norm(dst + ".norm1", src + ".in_layers.0")
        conv(dst + ".conv1", src + ".in_layers.2")
        lin(dst + ".temb", src + ".emb_layers.1")
        norm(dst + ".norm2", src + ".out_layers.0")
        conv(dst + ".conv2", src + ".out_layers.3")
        if src + ".skip_connection.weight" in sd:
            conv(dst + ".skip", src + ".skip_connection")

    def attn(dst, src):
        norm(dst + ".norm", src + ".norm")
        conv(dst + ".qkv", src + ".qkv")
        conv(dst + ".proj", src + ".proj_out")

    # The reference embeds t as [cos | sin], ringdiff as [sin | cos]: permute lin1's input rows.
    perm = list(range(half, 2 * half)) + list(range(half))
    lin("time.lin1", "time_embed.0", perm)
    lin("time.lin2", "time_embed.2")
    if "label_emb.weight" in sd:
        table = sd["label_emb.weight"]
        # ringdiff's extra null-class row (classifier-free guidance); unused by the fixture's labels.
        out["class_embed.table"] = th.cat([table, th.randn(1, table.shape[1]) * 0.3])
    conv("conv_in", "input_blocks.0.0")
    mult = opts["channel_mult"]
    nrb = opts["num_res_blocks"]
    k = 1
    for i in range(len(mult)):
        for j in range(nrb):
            res(f"down.{i}.res.{j}", f"input_blocks.{k}.0")
            if f"input_blocks.{k}.1.qkv.weight" in sd:
                attn(f"down.{i}.attn.{j}", f"input_blocks.{k}.1")
            k += 1
        if i < len(mult) - 1:
            if opts.get("resblock_updown"):
                res(f"down.{i}.resdown", f"input_blocks.{k}.0")
            else:
                conv(f"down.{i}.downsample", f"input_blocks.{k}.0.op")
            k += 1
    res("mid.res.0", "middle_block.0")
    attn("mid.attn.0", "middle_block.1")
    res("mid.res.1", "middle_block.2")
    k = 0
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            src = f"output_blocks.{k}"
            res(f"up.{i}.res.{j}", src + ".0")
            layer = 1
            if f"{src}.1.qkv.weight" in sd:
                attn(f"up.{i}.attn.{j}", src + ".1")
                layer = 2
            if i > 0 and j == nrb:
                if opts.get("resblock_updown"):
                    res(f"up.{i}.resup", f"{src}.{layer}")
                else:
                    conv(f"up.{i}.upsample", f"{src}.{layer}.conv")
            k += 1
    norm("out.norm", "out.0")
    conv("out.conv", "out.2")
    return out


def case(unet, name, opts, image_size, batch, seed):
    th.manual_seed(seed)
    model = unet.UNetModel(image_size=image_size, use_new_attention_order=True, **opts)
    model.eval()
    with th.no_grad():
        for p in model.parameters():
            p.copy_(th.randn_like(p) * 0.3)
        x = th.randn(batch, opts["in_channels"], image_size, image_size)
        t = th.tensor([3.0, 517.0, 999.0][:batch])
        y = th.tensor([0, 2, 1][:batch]) if opts.get("num_classes") else None
        out = model(x, t, y)
    params = ours(model, opts)
    n_ref = sum(p.numel() for p in model.parameters())
    n_ours = sum(v.numel() for v in params.values())
    tolist = lambda v: [round(float(a), 7) for a in v.detach().reshape(-1)]
    return {
        "name": name,
        "options": opts,
        "reference_params": n_ref,
        "mapped_params": n_ours,
        "params": {k: {"shape": list(v.shape), "data": tolist(v)} for k, v in params.items()},
        "x": {"shape": [batch, image_size, image_size, opts["in_channels"]], "data": tolist(x.permute(0, 2, 3, 1))},
        "t": t.tolist(),
        "y": None if y is None else y.tolist(),
        "out": {"shape": [batch, image_size, image_size, opts["out_channels"]], "data": tolist(out.permute(0, 2, 3, 1))},
    }


def published_counts(unet):
    """Parameter counts of published configurations, with the reference's own GroupNorm32."""
    configs = {
        "ddpm-cifar10": dict(image_size=32, in_channels=3, model_channels=128, out_channels=3, num_res_blocks=2,
                             attention_resolutions=(2,), dropout=0.1, channel_mult=(1, 2, 2, 2)),
        "iddpm-cifar10-learn-sigma": dict(image_size=32, in_channels=3, model_channels=128, out_channels=6,
                                          num_res_blocks=3, attention_resolutions=(2, 4), dropout=0.3,
                                          channel_mult=(1, 2, 2, 2), num_heads=4),
        "adm-imagenet64-cond": dict(image_size=64, in_channels=3, model_channels=192, out_channels=6,
                                    num_res_blocks=3, attention_resolutions=(2, 4, 8), channel_mult=(1, 2, 3, 4),
                                    num_classes=1000, num_head_channels=64, use_scale_shift_norm=True,
                                    resblock_updown=True, use_new_attention_order=True),
    }
    return {k: sum(p.numel() for p in unet.UNetModel(**v).parameters()) for k, v in configs.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="a checkout of openai/guided-diffusion")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    unet = load(args.repo, 4)
    cases = [
        case(unet, "ddpm", dict(in_channels=2, model_channels=8, out_channels=2, num_res_blocks=1,
                                attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2), 8, 2, 0),
        case(unet, "adm", dict(in_channels=2, model_channels=8, out_channels=4, num_res_blocks=2,
                               attention_resolutions=(2,), channel_mult=(1, 1, 2), num_classes=3,
                               num_head_channels=4, use_scale_shift_norm=True, resblock_updown=True), 8, 3, 1),
    ]
    import importlib

    sys.modules.pop("guided_diffusion.unet", None)
    full = importlib.import_module("guided_diffusion.unet")
    doc = {
        "about": "openai/guided-diffusion guided_diffusion/unet.py UNetModel (use_new_attention_order), GroupNorm with 4 groups, weights N(0, 0.3), float32; made by bench/anchors/adm_unet.py",
        "published": published_counts(full),
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f)
    for c in cases:
        print(f"{c['name']}: reference {c['reference_params']} params, mapped {c['mapped_params']}")
    print("published:", doc["published"])


if __name__ == "__main__":
    main()
