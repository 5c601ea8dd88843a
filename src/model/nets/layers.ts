/**
 * Layers as pure functions over named parameters, and their parameter declarations.
 *
 * A layer is a pair: `xxxSpecs(name, ...)` declares its tensors (name, shape, initializer) and
 * `xxx(p, name, ...)` applies it, reading `${name}.kernel` etc. from `p`. Models list their specs
 * once, so `init` and the parameter count follow from the same declaration as `apply`.
 *
 * Layouts are TF.js-native: images NHWC, conv kernels [kh, kw, in, out], linear kernels [in, out].
 * (A PyTorch conv weight [out, in, kh, kw] maps here by transposing to [2, 3, 1, 0].)
 *
 * Initialisation follows PyTorch's defaults so that models behave like their PyTorch references:
 * conv/linear weights use kaiming_uniform(a=√5), which is uniform(±1/√fan_in), and biases use the
 * same bound; GroupNorm starts at γ=1, β=0; embeddings are N(0, 1) (nn.Embedding). A layer can ask
 * for zero init instead (improved-diffusion's `zero_module`), used for the final output layer so a
 * fresh model predicts ε̂ = 0 and the initial loss is E[ε²] = 1 whatever the depth.
 */
import * as tf from '@tensorflow/tfjs';
import type { Denoiser } from './denoiser.js';
import type { Params } from '../params.js';
import { Purpose, stream } from '../rng.js';
import { fusedGroupNorm, type FusedGroupNorm } from '../backend/fused.js';

/** How a tensor is initialised. */
export type Init =
  { kind: 'uniform'; bound: number } | { kind: 'normal'; std: number } | { kind: 'const'; value: number };

/** One parameter tensor of a model: its stable name, shape and initialiser. */
export interface ParamSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly init: Init;
}

/** 'default' = PyTorch default init; 'zero' = all zeros (output layers). */
export type InitMode = 'default' | 'zero';

const GN_EPS = 1e-5;

// ---------------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------------

/** FNV-1a 32-bit hash of the UTF-16 code units of `s` (the rng stream index of a parameter). */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A fresh tensor of `spec.shape`, a pure function of (seed, spec.name, spec.init). */
export function initParam(seed: number, spec: ParamSpec): tf.Tensor {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  const init = spec.init;
  if (init.kind === 'const') {
    data.fill(init.value);
  } else {
    // Keyed by name rather than by position: adding or reordering layers leaves the other
    // tensors' initial values unchanged, and any worker can initialise any subset.
    const s = stream(seed, 0, fnv1a32(spec.name), Purpose.init);
    if (init.kind === 'uniform') {
      for (let i = 0; i < n; i++) data[i] = (2 * s.uniform() - 1) * init.bound;
    } else {
      for (let i = 0; i < n; i++) data[i] = s.normal() * init.std;
    }
  }
  return tf.tensor(data, [...spec.shape], 'float32');
}

/** Checks that names (and their stream indices) are unique; throws naming the clash. */
export function checkSpecs(specs: readonly ParamSpec[]): void {
  const names = new Set<string>();
  const hashes = new Map<number, string>();
  for (const s of specs) {
    if (names.has(s.name)) throw new Error(`duplicate parameter name ${s.name}`);
    names.add(s.name);
    const h = fnv1a32(s.name);
    const other = hashes.get(h);
    // Two names on one stream would get identical initial values.
    if (other !== undefined) throw new Error(`parameter names ${other} and ${s.name} share rng stream ${h}`);
    hashes.set(h, s.name);
  }
}

/** Fresh parameters for `specs`, inserted in sorted name order. */
export function initParams(seed: number, specs: readonly ParamSpec[]): Params {
  checkSpecs(specs);
  const sorted = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const p: Params = new Map();
  for (const s of sorted) p.set(s.name, initParam(seed, s));
  return p;
}

/** Number of scalars declared by `specs`. */
export function countSpecs(specs: readonly ParamSpec[]): number {
  let n = 0;
  for (const s of specs) n += s.shape.reduce((a, b) => a * b, 1);
  return n;
}

function fanInInit(fanIn: number, mode: InitMode): Init {
  return mode === 'zero' ? { kind: 'const', value: 0 } : { kind: 'uniform', bound: 1 / Math.sqrt(fanIn) };
}

/** Linear layer: `${name}.kernel` [fin, fout], `${name}.bias` [fout]. */
export function linearSpecs(
  name: string,
  fin: number,
  fout: number,
  mode: InitMode = 'default',
): ParamSpec[] {
  const init = fanInInit(fin, mode);
  return [
    { name: `${name}.kernel`, shape: [fin, fout], init },
    { name: `${name}.bias`, shape: [fout], init },
  ];
}

/** Square conv: `${name}.kernel` [k, k, cin, cout], `${name}.bias` [cout]. */
export function conv2dSpecs(
  name: string,
  k: number,
  cin: number,
  cout: number,
  mode: InitMode = 'default',
): ParamSpec[] {
  const init = fanInInit(k * k * cin, mode);
  return [
    { name: `${name}.kernel`, shape: [k, k, cin, cout], init },
    { name: `${name}.bias`, shape: [cout], init },
  ];
}

/** GroupNorm affine: `${name}.gamma` [c] = 1, `${name}.beta` [c] = 0. */
export function groupNormSpecs(name: string, c: number): ParamSpec[] {
  return [
    { name: `${name}.gamma`, shape: [c], init: { kind: 'const', value: 1 } },
    { name: `${name}.beta`, shape: [c], init: { kind: 'const', value: 0 } },
  ];
}

/** Embedding table `${name}.table` [n, d], N(0, 1) like nn.Embedding. */
export function embeddingSpecs(name: string, n: number, d: number): ParamSpec[] {
  return [{ name: `${name}.table`, shape: [n, d], init: { kind: 'normal', std: 1 } }];
}

/** Self-attention block over c channels: `${name}.norm`, `${name}.qkv` [c, 3c], `${name}.proj` [c, c]. */
export function attentionSpecs(name: string, c: number, projMode: InitMode = 'default'): ParamSpec[] {
  // qkv/proj are 1x1 convs in the PyTorch reference (fan_in = c); stored as linear kernels.
  return [
    ...groupNormSpecs(`${name}.norm`, c),
    ...linearSpecs(`${name}.qkv`, c, 3 * c),
    ...linearSpecs(`${name}.proj`, c, c, projMode),
  ];
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/** The tensor `name` of `p`; throws if absent (a missing tensor is a bug, never a default). */
export function param(p: Params, name: string): tf.Tensor {
  const t = p.get(name);
  if (t === undefined) throw new Error(`missing parameter ${name}`);
  return t;
}

/** x [N, fin] → [N, fout]. */
export function linear(p: Params, name: string, x: tf.Tensor2D): tf.Tensor2D {
  return tf.add(tf.matMul(x, param(p, `${name}.kernel`) as tf.Tensor2D), param(p, `${name}.bias`));
}

/**
 * x [B, H, W, cin] → [B, H/stride, W/stride, cout], zero padding (k−1)/2 on every side like
 * PyTorch's `padding=k//2`. `imageBias` [B, cout], if given, is added to every pixel of its
 * example (a ResBlock's time embedding), fused into the convolution's bias.
 */
export function conv2d(
  p: Params,
  name: string,
  x: tf.Tensor4D,
  stride: 1 | 2 = 1,
  imageBias?: tf.Tensor2D,
): tf.Tensor4D {
  const kernel = param(p, `${name}.kernel`) as tf.Tensor4D;
  const bias = param(p, `${name}.bias`);
  const [k, , , cout] = kernel.shape;
  // The bias is fused into the convolution (one kernel, no separate full-size add); with a
  // linear activation TF.js keeps the fused kernel under gradients too.
  const b = imageBias ? tf.add(tf.reshape(imageBias, [-1, 1, 1, cout]), bias) : bias;
  // For stride 1 and odd k, 'same' pads (k−1)/2 on both sides: identical to PyTorch. With
  // stride 2 on an even size 'same' would pad 0 before and 1 after, shifting the sampling grid
  // by one pixel with respect to PyTorch (which pads 1 before): pad explicitly instead.
  const q = (k - 1) / 2;
  const pad: 'same' | [[number, number], [number, number], [number, number], [number, number]] =
    stride === 1
      ? 'same'
      : [
          [0, 0],
          [q, q],
          [q, q],
          [0, 0],
        ];
  return tf.fused.conv2d({ x, filter: kernel, strides: stride, pad, bias: b });
}

/**
 * GroupNorm over x [B, H, W, C] with `groups` groups (statistics per example and group), eps 1e-5:
 * y = γ·(x − μ)/√(σ² + ε) + β, σ² the biased variance, as PyTorch's nn.GroupNorm.
 *
 * Written with an explicit gradient: autodiff of the textbook composition (moments, subtract,
 * scale, affine) costs about twenty-five full-size tensor passes forward and backward, this
 * twelve. Forward: μ, σ² (two reductions and one pass), then y = x·a + s with per-(example,
 * channel) a = γ/√(σ² + ε) and s = β − μ·a. Backward: S1 = Σ_hw dy and S2 = Σ_hw dy·x per
 * (example, channel) (three passes), dx in four; the rest is per-(example, channel) algebra:
 *   dβ = Σ_b S1,  dγ = Σ_b r·(S2 − μ·S1),  dx = a·dy + k·x + c,
 *   k = −r²·m2, c = −k·μ − r·m1, r = 1/√(σ² + ε), m1 = Σ_g γ·S1 / n, m2 = Σ_g γ·r·(S2 − μ·S1) / n
 * (n = H·W·C/G, Σ_g over the channels of a group).
 */
export function groupNorm(p: Params, name: string, x: tf.Tensor4D, groups: number): tf.Tensor4D {
  return groupNormAct(p, name, x, groups, false);
}

/**
 * SiLU(GroupNorm(x)), the pre-activation of every U-Net convolution. Backends with a fused
 * kernel (`cpu-native`) run it as one pass for the statistics and one for the output, and its
 * gradient as two, instead of the chain of ops below.
 */
export function groupNormSilu(p: Params, name: string, x: tf.Tensor4D, groups: number): tf.Tensor4D {
  return groupNormAct(p, name, x, groups, true);
}

function groupNormAct(p: Params, name: string, x: tf.Tensor4D, groups: number, act: boolean): tf.Tensor4D {
  const c = x.shape[3];
  if (c % groups !== 0) throw new Error(`${name}: ${groups} groups do not divide ${c} channels`);
  const gamma = param(p, `${name}.gamma`);
  const beta = param(p, `${name}.beta`);
  const fused = fusedGroupNorm(groups, GN_EPS, act);
  if (fused) return fusedGroupNormOp(fused)(x, gamma, beta) as tf.Tensor4D;
  const y = groupNormOp(groups)(x, gamma, beta) as tf.Tensor4D;
  return act ? silu(y) : y;
}

function fusedGroupNormOp(f: FusedGroupNorm): (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor {
  return tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [x, gamma, beta, save] = args as [tf.Tensor4D, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [y, mean, rstd] = f.forward(x, gamma, beta);
    save([x, gamma, beta, mean, rstd]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sg, sb, sm, sr] = saved as [tf.Tensor4D, tf.Tensor, tf.Tensor, tf.Tensor2D, tf.Tensor2D];
        return f.backward(sx, sg, sb, sm, sr, dy);
      },
    };
  });
}

const groupNormOps = new Map<number, (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor>();

function groupNormOp(groups: number): (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor {
  let op = groupNormOps.get(groups);
  if (op) return op;
  op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [x, gamma, beta, save] = args as [tf.Tensor4D, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [b, h, w, c] = x.shape;
    const cg = c / groups;
    const xr = tf.reshape(x, [b, h * w, groups, cg]);
    const mean = tf.mean(xr, [1, 3], true); // [B, 1, G, 1]
    // (x − μ)² against μ repeated per channel, [B, 1, 1, C]: broadcasting a per-group value over
    // runs of C/G channels would make the inner loop C/G elements long.
    const meanC = tf.reshape(tf.tile(mean, [1, 1, 1, cg]), [b, 1, 1, c]);
    const dev2 = tf.reshape(tf.squaredDifference(x, meanC), [b, h * w, groups, cg]);
    const variance = tf.mean(dev2, [1, 3], true);
    const rstd = tf.rsqrt(tf.add(variance, GN_EPS));
    const g = tf.reshape(gamma, [1, 1, groups, cg]);
    const a = tf.mul(rstd, g); // [B, 1, G, C/G]
    const shift = tf.sub(tf.reshape(beta, [1, 1, groups, cg]), tf.mul(mean, a));
    const y = tf.add(tf.mul(x, tf.reshape(a, [b, 1, 1, c])), tf.reshape(shift, [b, 1, 1, c]));
    save([x, g, mean, rstd, a]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [sx, sg, smean, srstd, sa] = saved as [tf.Tensor4D, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      const n = h * w * cg;
      const perChannel = (t: tf.Tensor): tf.Tensor => tf.reshape(t, [b, 1, 1, c]);
      const perGroup = (t: tf.Tensor): tf.Tensor => perChannel(tf.tile(t, [1, 1, 1, cg]));
      const s1 = tf.reshape(tf.sum(dy, [1, 2]), [b, 1, groups, cg]);
      const s2 = tf.reshape(tf.sum(tf.mul(dy, sx), [1, 2]), [b, 1, groups, cg]);
      const t = tf.mul(srstd, tf.sub(s2, tf.mul(smean, s1))); // Σ_hw dy·x̂
      const m1 = tf.div(tf.sum(tf.mul(sg, s1), 3, true), n);
      const m2 = tf.div(tf.sum(tf.mul(sg, t), 3, true), n);
      const k = tf.neg(tf.mul(tf.square(srstd), m2));
      const cst = tf.neg(tf.add(tf.mul(k, smean), tf.mul(srstd, m1)));
      const dx = tf.add(tf.add(tf.mul(dy, perChannel(sa)), tf.mul(sx, perGroup(k))), perGroup(cst));
      const dgamma = tf.reshape(tf.sum(t, [0, 1]), gamma.shape);
      const dbeta = tf.reshape(tf.sum(s1, [0, 1]), beta.shape);
      return [dx, dgamma, dbeta];
    };
    return { value: y, gradFunc };
  });
  groupNormOps.set(groups, op);
  return op;
}

/**
 * SiLU x·σ(x), elementwise; same shape as x. Its gradient σ(x)·(1 + x·(1 − σ(x))) is written as
 * dy·(σ·(1 − y) + y) from the saved σ and y: four passes instead of autodiff's six.
 */
export function silu<T extends tf.Tensor>(x: T): T {
  return siluOp(x) as T;
}

const siluOp = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  const s = tf.sigmoid(x);
  const y = tf.mul(x, s);
  save([s, y]);
  return {
    value: y,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [ss, sy] = saved as [tf.Tensor, tf.Tensor];
      return tf.mul(dy, tf.add(tf.mul(ss, tf.sub(1, sy)), sy));
    },
  };
});

/**
 * LayerNorm over the last axis without affine parameters (nn.LayerNorm(elementwise_affine=False)):
 * (x − μ)/√(σ² + eps), σ² the biased variance; same shape as x.
 */
export function layerNormNoAffine<T extends tf.Tensor>(x: T, eps: number): T {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))) as T;
}

const GELU_K = Math.sqrt(2 / Math.PI);
const GELU_A = 0.044715;

/**
 * GELU, tanh approximation (PyTorch's GELU(approximate="tanh")), elementwise; same shape as x:
 * y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³). Explicit gradient from the saved x and tanh u,
 * dy/dx = ½(1 + th) + ½x(1 − th²)·√(2/π)(1 + 3·0.044715x²): autodiff of the composition keeps
 * about twice as many full-size intermediates.
 */
export function geluTanh<T extends tf.Tensor>(x: T): T {
  return geluTanhOp(x) as T;
}

const geluTanhOp = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  // x·x² rather than pow(x, 3): Pow has no native kernel, Multiply and Square do.
  const u = tf.mul(tf.add(x, tf.mul(GELU_A, tf.mul(x, tf.square(x)))), GELU_K);
  const th = tf.tanh(u);
  save([x, th]);
  return {
    value: tf.mul(tf.mul(0.5, x), tf.add(1, th)),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sx, sth] = saved as [tf.Tensor, tf.Tensor];
      const du = tf.mul(GELU_K, tf.add(1, tf.mul(3 * GELU_A, tf.square(sx))));
      const d = tf.add(
        tf.mul(0.5, tf.add(1, sth)),
        tf.mul(tf.mul(0.5, sx), tf.mul(tf.sub(1, tf.square(sth)), du)),
      );
      return tf.mul(dy, d);
    },
  };
});

/**
 * Width of the sinusoidal features feeding a time-embedding MLP of width `tdim`: tdim/4 rounded
 * down to even (32 for 128, as in the reference), at least 2.
 */
export function sinusoidalDim(tdim: number): number {
  return Math.max(2, 2 * Math.floor(tdim / 8));
}

/** t [B] (float timesteps) → [B, dim] = cat(sin(t·f), cos(t·f)), f_i = exp(−ln(10⁴)·i/half), i < half. */
export function timestepEmbedding(t: tf.Tensor1D, dim: number): tf.Tensor2D {
  if (dim % 2 !== 0 || dim < 2) throw new Error(`timestep embedding dim must be even and ≥ 2, got ${dim}`);
  const half = dim / 2;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = Math.exp((-Math.log(10000) * i) / half);
  const a = tf.mul(tf.reshape(tf.cast(t, 'float32'), [-1, 1]), tf.tensor2d(freqs, [1, half])) as tf.Tensor2D;
  return tf.concat([tf.sin(a), tf.cos(a)], 1);
}

/** Rows of `${name}.table` [n, d] picked by labels y [B] → [B, d]. */
export function embedding(p: Params, name: string, y: tf.Tensor1D): tf.Tensor2D {
  return tf.gather(param(p, `${name}.table`) as tf.Tensor2D, tf.cast(y, 'int32'));
}

/**
 * Multi-head self-attention over the H·W positions of x [B, H, W, C] → [B, H, W, C]:
 * x + proj(softmax(QKᵀ/√d)·V) with q, k, v from a 1x1 projection of GroupNorm(x).
 * The qkv output is laid out [q | k | v], each C = heads × d, head-major.
 */
export function selfAttention(
  p: Params,
  name: string,
  x: tf.Tensor4D,
  groups: number,
  heads: number,
): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  if (c % heads !== 0) throw new Error(`${name}: ${heads} heads do not divide ${c} channels`);
  const n = h * w;
  const hn = tf.reshape(groupNorm(p, `${name}.norm`, x, groups), [b * n, c]) as tf.Tensor2D;
  return tf.add(x, tf.reshape(multiHeadAttention(p, name, hn, b, n, heads), [b, h, w, c]));
}

/**
 * Multi-head self-attention over tokens [B·N, C] (B sequences of N): `${name}.qkv` (laid out
 * [q | k | v], each head-major), softmax(QKᵀ/√d)·V per head (d = C/heads), then `${name}.proj`.
 * Returns [B·N, C].
 */
export function multiHeadAttention(
  p: Params,
  name: string,
  tokens: tf.Tensor2D,
  b: number,
  n: number,
  heads: number,
): tf.Tensor2D {
  const c = tokens.shape[1];
  const d = c / heads;
  const qkv = linear(p, `${name}.qkv`, tokens);
  // [B·N, C] → [B·heads, N, d]; rank ≤ 4 throughout so that every op has a gradient on all backends.
  const toHeads = (m: tf.Tensor2D): tf.Tensor3D =>
    tf.reshape(tf.transpose(tf.reshape(m, [b, n, heads, d]), [0, 2, 1, 3]), [b * heads, n, d]);
  const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
  const scores = tf.mul(tf.matMul(toHeads(q), toHeads(k), false, true), 1 / Math.sqrt(d));
  const o = tf.matMul(softmaxLastAxis(scores), toHeads(v)); // [B·heads, N, d]
  const merged = tf.reshape(tf.transpose(tf.reshape(o, [b, heads, n, d]), [0, 2, 1, 3]), [
    b * n,
    c,
  ]) as tf.Tensor2D;
  return linear(p, `${name}.proj`, merged);
}

/** 2×2 average pooling with stride 2: x [B, H, W, C] → [B, H/2, W/2, C] (H, W even). */
export function avgPool2x(x: tf.Tensor4D): tf.Tensor4D {
  // A sum over the two window axes of a reshaped view: its gradient is a broadcast, where TF.js's
  // AvgPoolGrad loops in JS (a quarter of an ADM U-Net step on the cpu-native backend).
  const [b, h, w, c] = x.shape;
  const windows = tf.reshape(x, [b * (h / 2), 2, w / 2, 2, c]);
  return tf.reshape(tf.mul(tf.sum(windows, [1, 3]), 0.25), [b, h / 2, w / 2, c]);
}

/**
 * Softmax over the last axis, same shape as x, with the gradient y·(dy − Σ dy·y). Built from
 * Exp/Sub/Sum/RealDiv because TF.js's cpu Softmax calls its JS kernels directly, so a backend's
 * faster ones (cpu-native) are never used by it.
 */
export function softmaxLastAxis<T extends tf.Tensor>(x: T): T {
  return softmaxOp(x) as T;
}

const softmaxOp = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
  const e = tf.exp(tf.sub(x, tf.max(x, -1, true)));
  const y = tf.div(e, tf.sum(e, -1, true));
  save([y]);
  return {
    value: y,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sy] = saved as [tf.Tensor];
      return tf.mul(sy, tf.sub(dy, tf.sum(tf.mul(dy, sy), -1, true)));
    },
  };
});

/** Nearest-neighbour ×2 upsampling: x [B, H, W, C] → [B, 2H, 2W, C]. */
export function upsampleNearest2x(x: tf.Tensor4D): tf.Tensor4D {
  // A broadcast add of zeros [1, 2, 1, 2, 1] to x viewed as [B·H, 1, W, 1, C] repeats every pixel
  // 2×2 in one pass, and its gradient is one sum over the two repeat axes (tile's gradient, by
  // contrast, is a zero tensor plus a slice and an add per copy, and only up to rank 4).
  const [b, h, w, c] = x.shape;
  const up = tf.add(tf.reshape(x, [b * h, 1, w, 1, c]), tf.zeros([1, 2, 1, 2, 1])); // [B·H, 2, W, 2, C]
  return tf.reshape(up, [b, 2 * h, 2 * w, c]);
}

/**
 * conv2d(p, name, upsampleNearest2x(x)) for a 3×3 kernel, computed without the upsampled image:
 * x [B, H, W, cin] → [B, 2H, 2W, cout]. Output pixel (2i + a, 2j + b) sees only pixels i − 1 … i + 1
 * of x, each kernel row (column) landing on one of two of them, so each of the four phases (a, b)
 * is a 2×2 convolution of x with rows (columns) of the kernel summed in pairs:
 *   a = 0: source rows (i − 1, i) take kernel rows (0, 1 + 2);  a = 1: rows (i, i + 1) take (0 + 1, 2)
 * (and likewise for columns). The same function of the same parameters, in 16 multiply-adds per
 * pixel and channel pair instead of 36, and no 4×-size intermediate in either direction.
 */
export function upsampleConv2d(p: Params, name: string, x: tf.Tensor4D): tf.Tensor4D {
  const kernel = param(p, `${name}.kernel`) as tf.Tensor4D;
  const bias = param(p, `${name}.bias`);
  const [b, h, w] = x.shape;
  const [kh, kw, , cout] = kernel.shape;
  if (kh !== 3 || kw !== 3) throw new Error(`${name}: upsampleConv2d needs a 3×3 kernel, got ${kh}×${kw}`);
  // The kernel with taps (0, 1, 2) along `axis` folded into two for phase `phase`.
  const fold = (k: tf.Tensor4D, axis: 0 | 1, phase: 0 | 1): tf.Tensor4D => {
    const [t0, t1, t2] = tf.split(k, 3, axis) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
    return tf.concat(
      phase === 0 ? [t0, tf.add<tf.Tensor4D>(t1, t2)] : [tf.add<tf.Tensor4D>(t0, t1), t2],
      axis,
    );
  };
  const pads: Array<[number, number]> = [
    [1, 0],
    [0, 1],
  ];
  // Interleaved by concatenation (whose gradient is a split): TF.js's Unpack, the gradient of
  // stack, copies element by element.
  const rows = ([0, 1] as const).map((a) => {
    const ka = fold(kernel, 0, a);
    const cols = ([0, 1] as const).map((c) =>
      tf.reshape(
        tf.fused.conv2d({
          x,
          filter: fold(ka, 1, c),
          strides: 1,
          pad: [[0, 0], pads[a] as [number, number], pads[c] as [number, number], [0, 0]],
          bias,
        }),
        [b, h, 1, w, 1, cout],
      ),
    );
    return tf.concat(cols, 4); // [B, H, 1, W, 2 (column phase), cout]
  });
  return tf.reshape(tf.concat(rows, 2), [b, 2 * h, 2 * w, cout]); // [B, H, 2, W, 2, cout]
}

// ---------------------------------------------------------------------------------------------
// Pieces shared by the denoisers
// ---------------------------------------------------------------------------------------------

/**
 * Time (+ class) embedding: `time.lin1` [sinDim, tdim], `time.lin2` [tdim, tdim] and, when
 * conditional, `class_embed.table` [numClasses + 1, tdim] (last row = null class).
 */
export function timeEmbedSpecs(sinDim: number, tdim: number, numClasses: number): ParamSpec[] {
  const specs = [...linearSpecs('time.lin1', sinDim, tdim), ...linearSpecs('time.lin2', tdim, tdim)];
  if (numClasses > 0) specs.push(...embeddingSpecs('class_embed', numClasses + 1, tdim));
  return specs;
}

/**
 * Timestep (+ class) embedding shared by the denoisers: t [B], y [B] | null → [B, tdim].
 * A conditional model given y = null embeds every example with the null class.
 */
export function timeEmbed(
  p: Params,
  t: tf.Tensor1D,
  y: tf.Tensor1D | null,
  sinDim: number,
  numClasses: number,
): tf.Tensor2D {
  const temb = linear(p, 'time.lin2', silu(linear(p, 'time.lin1', timestepEmbedding(t, sinDim))));
  if (numClasses === 0) return temb;
  const labels = y ?? tf.fill([t.shape[0]], numClasses, 'int32');
  return tf.add(temb, embedding(p, 'class_embed', labels as tf.Tensor1D));
}

/** Throws a one-line error unless x is [B, ...dataShape], t is [B] and y is [B] (or null). */
export function checkInputs(m: Denoiser, x: tf.Tensor, t: tf.Tensor1D, y: tf.Tensor1D | null): void {
  const b = x.shape[0];
  const want = [b, ...m.dataShape];
  if (x.rank !== want.length || x.shape.some((d, i) => d !== want[i]))
    throw new Error(
      `denoiser input x has shape [${x.shape.join(', ')}], expected [B, ${m.dataShape.join(', ')}]`,
    );
  if (t.rank !== 1 || t.shape[0] !== b)
    throw new Error(`denoiser t has shape [${t.shape.join(', ')}], expected [${b}]`);
  if (y !== null) {
    if (m.numClasses === 0)
      throw new Error('denoiser is unconditional (model.num_classes 0) but got labels y');
    if (y.rank !== 1 || y.shape[0] !== b)
      throw new Error(`denoiser y has shape [${y.shape.join(', ')}], expected [${b}]`);
  }
}
