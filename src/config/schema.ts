/**
 * The job configuration: one zod schema, where every key has a default and a one-line description.
 * Unknown keys and wrong types are errors that name the key path (see `load.ts`).
 */
import { z } from 'zod';

const int = (min: number) => z.number().int().min(min);

export const RunSchema = z
  .strictObject({
    name: z.string().min(1).default('default').describe('Job name, used in logs and metrics.'),
    seed: int(0)
      .max(2 ** 48)
      .default(0)
      .describe('Seed of every random draw (init, noise, timesteps, data order).'),
    out_dir: z.string().min(1).default('runs/default').describe('Run directory: checkpoints, samples, logs.'),
  })
  .prefault({});

export const DataSchema = z
  .strictObject({
    dataset: z
      .string()
      .min(1)
      // The training nine tenths of the embedded digits: the held-out tenth (mnist:test) is what
      // `eval` measures bits/dim and sample quality against.
      .default('mnist:train')
      .describe(
        'Dataset spec: mnist (all 10 000 digits; mnist:train / mnist:test: a fixed 9:1 split), fashion-mnist, idx:<images>[,<labels>], cifar10:<dir>, folder:<dir>, npy:<file>[,<labels>], toy:<8gaussians|swissroll>.',
      ),
    image_size: int(1).default(28).describe('Side of the square images fed to the model, in pixels.'),
    channels: int(1).max(4).default(1).describe('Image channels (1 grey, 3 RGB).'),
    size: int(1).default(65536).describe('Number of examples in a synthetic (toy) dataset.'),
    random_flip: z.boolean().default(false).describe('Random horizontal flip of images, drawn per example.'),
    drop_last: z
      .boolean()
      .default(true)
      .describe("Drop an epoch's short tail (true) or wrap into the next epoch (false)."),
  })
  .prefault({});

/**
 * The named DiT configurations of Peebles & Xie 2023 (their models.py `DiT_models`): depth, hidden
 * width and heads of S/B/L/XL, each with patch 2, 4 or 8. Names are stored in checkpoints and never
 * change meaning (docs/design.md §8).
 */
export const DIT_PRESETS = {
  'S/2': { depth: 12, hidden: 384, heads: 6, patch: 2 },
  'S/4': { depth: 12, hidden: 384, heads: 6, patch: 4 },
  'S/8': { depth: 12, hidden: 384, heads: 6, patch: 8 },
  'B/2': { depth: 12, hidden: 768, heads: 12, patch: 2 },
  'B/4': { depth: 12, hidden: 768, heads: 12, patch: 4 },
  'B/8': { depth: 12, hidden: 768, heads: 12, patch: 8 },
  'L/2': { depth: 24, hidden: 1024, heads: 16, patch: 2 },
  'L/4': { depth: 24, hidden: 1024, heads: 16, patch: 4 },
  'L/8': { depth: 24, hidden: 1024, heads: 16, patch: 8 },
  'XL/2': { depth: 28, hidden: 1152, heads: 16, patch: 2 },
  'XL/4': { depth: 28, hidden: 1152, heads: 16, patch: 4 },
  'XL/8': { depth: 28, hidden: 1152, heads: 16, patch: 8 },
} as const;
export type DitPresetName = keyof typeof DIT_PRESETS;
const ditPresetNames = Object.keys(DIT_PRESETS) as [DitPresetName, ...DitPresetName[]];

// Shape keys default to null (unset) so that a preset can tell what the user gave: a preset fills
// only the unset ones (`src/config/resolve.ts`).
export const DitSchema = z
  .strictObject({
    preset: z
      .enum(ditPresetNames)
      .nullable()
      .default(null)
      .describe(
        'Named DiT of Peebles & Xie 2023 (S/2, S/4, S/8, B/2 … XL/8): fills depth, hidden, heads and patch where unset.',
      ),
    depth: int(1).nullable().default(null).describe('DiT blocks (null: from the preset).'),
    hidden: int(1)
      .nullable()
      .default(null)
      .describe('DiT token width, a multiple of 4 and of heads (null: from the preset).'),
    heads: int(1).nullable().default(null).describe('Attention heads per DiT block (null: from the preset).'),
    patch: int(1)
      .nullable()
      .default(null)
      .describe('DiT patch side in pixels; must divide the image sides (null: from the preset).'),
    mlp_ratio: z
      .number()
      .positive()
      .default(4)
      .describe('Width of the DiT MLP as a multiple of hidden (4, as every DiT preset).'),
  })
  .prefault({});

/** Centres of toy:8gaussians (radius 2, angles 2πk/8): the default analytic mixture is that dataset. */
const EIGHT_CENTRES = Array.from({ length: 8 }, (_, k) => [
  2 * Math.cos((2 * Math.PI * k) / 8),
  2 * Math.sin((2 * Math.PI * k) / 8),
]);

/** An isotropic std per component, or a vector per component (diagonal covariance). */
const StdSchema = z.union([
  z.number().positive(),
  z.array(z.union([z.number().positive(), z.array(z.number().positive()).min(1)])).min(1),
]);

export const AnalyticSchema = z
  .strictObject({
    weights: z
      .array(z.number().positive())
      .min(1)
      .default(new Array<number>(8).fill(1 / 8))
      .describe('Mixture weights π_k, positive, summing to 1 (default: toy:8gaussians).'),
    means: z
      .array(z.array(z.number()).min(1))
      .min(1)
      .default(EIGHT_CENTRES)
      .describe('Component means μ_k, one list of D numbers each (D = the data dimension).'),
    std: StdSchema.default(0.1).describe(
      'Component std: one number for all, one per component (isotropic), or one list of D per component (diagonal).',
    ),
  })
  .superRefine((a, ctx) => {
    const K = a.means.length;
    const D = a.means[0]?.length ?? 0;
    const issue = (path: (string | number)[], message: string) =>
      ctx.addIssue({ code: 'custom', path, message });
    if (a.weights.length !== K) issue(['weights'], `has ${a.weights.length} weights for ${K} means`);
    const sum = a.weights.reduce((x, y) => x + y, 0);
    if (Math.abs(sum - 1) > 1e-6) issue(['weights'], `must sum to 1, got ${sum}`);
    a.means.forEach((m, k) => {
      if (m.length !== D) issue(['means', k], `has ${m.length} coordinates, means.0 has ${D}`);
    });
    if (typeof a.std !== 'number') {
      if (a.std.length !== K) issue(['std'], `has ${a.std.length} entries for ${K} components`);
      a.std.forEach((v, k) => {
        if (typeof v !== 'number' && v.length !== D)
          issue(['std', k], `has ${v.length} values for data of dimension ${D}`);
      });
    }
  })
  .prefault({});

export const ModelSchema = z
  .strictObject({
    kind: z
      .enum(['unet', 'mlp', 'dit', 'analytic'])
      .default('unet')
      .describe(
        'Denoiser: unet or dit (diffusion transformer) for images, mlp for 2-D data, analytic = the exact denoiser of the Gaussian mixture model.analytic (not trained; for sample and bench sample).',
      ),
    channels: z
      .union([
        z.array(int(1)).min(1),
        // ADM's model_channels × channel_mult, written out as the list the job then records.
        z
          .strictObject({ base: int(1), mult: z.array(int(1)).min(1) })
          .transform(({ base, mult }) => mult.map((m) => m * base)),
      ])
      .default([16, 32, 64])
      .describe('U-Net channels per resolution level: a list, or {base, mult} for base × each multiplier.'),
    res_blocks: int(1).default(1).describe('Residual blocks per U-Net level.'),
    unet_layout: z
      .enum(['compact', 'adm'])
      .default('compact')
      .describe(
        'U-Net skips: compact (one per level) or adm (one per block, Res-Attn-Res middle: the U-Net of DDPM, improved-diffusion and ADM).',
      ),
    dropout: z
      .number()
      .min(0)
      .lt(1)
      .default(0)
      .describe('U-Net dropout before the last conv of each residual block (0.1 for ADM on CIFAR-10).'),
    scale_shift_norm: z
      .boolean()
      .default(false)
      .describe(
        'U-Net blocks take the time embedding as GroupNorm scale and shift (ADM) instead of adding it.',
      ),
    resblock_updown: z
      .boolean()
      .default(false)
      .describe(
        'U-Net resamples with residual blocks (average pool / nearest ×2, as BigGAN and ADM) instead of convs.',
      ),
    attention_resolutions: z
      .array(int(1))
      .default([])
      .describe('Resolutions (pixels) whose blocks get self-attention.'),
    attention_heads: int(1).default(1).describe('Heads of each self-attention block.'),
    attention_head_channels: int(0)
      .default(0)
      .describe('Channels per attention head, as ADM num_head_channels (0 = use model.attention_heads).'),
    groups: int(1).default(8).describe('GroupNorm groups.'),
    time_embed_dim: int(1).default(64).describe('Width of the timestep embedding MLP.'),
    hidden: int(1).default(128).describe('Hidden width of the MLP denoiser.'),
    layers: int(1).default(4).describe('Residual layers of the MLP denoiser.'),
    num_classes: z
      .union([int(0), z.literal('auto')])
      .default('auto')
      .describe(
        "Classes for conditioning: auto (the dataset's label count, 0 for unlabelled data) or a number (0 = unconditional); index num_classes is the null class.",
      ),
    class_dropout: z
      .number()
      .min(0)
      .max(1)
      .default(0.1)
      .describe(
        'Probability of replacing the label by the null class in training (0.1, as in Ho & Salimans 2022).',
      ),
    dit: DitSchema.describe('Shape of the DiT (model.kind: dit).'),
    analytic: AnalyticSchema.describe('The Gaussian mixture of model.kind: analytic.'),
  })
  .prefault({});

export const DiffusionSchema = z
  .strictObject({
    timesteps: int(2)
      .default(1000)
      .describe('Number of diffusion steps T (1000 as in DDPM, Ho et al. 2020).'),
    // The names of schedules, samplers and model kinds are stored in checkpoints: once committed, a
    // name never changes meaning (docs/design.md §8); a changed recipe gets a new name.
    schedule: z
      .enum(['linear', 'cosine', 'sigmoid'])
      .default('linear')
      .describe("Noise schedule β_t (linear 1e-4…0.02 is DDPM's; cosine is Improved DDPM's)."),
    timestep_sampler: z
      .enum(['uniform', 'loss-second-moment'])
      .default('uniform')
      .describe(
        'Timestep distribution in training; loss-second-moment is Improved DDPM importance sampling.',
      ),
    history_per_term: int(1)
      .default(10)
      .describe('Losses kept per timestep by loss-second-moment (10, as in Improved DDPM).'),
    uniform_prob: z
      .number()
      .min(0)
      .max(1)
      .default(0.001)
      .describe('Uniform mixture weight of loss-second-moment (0.001, as in Improved DDPM).'),
    sigma: z
      .enum(['beta', 'posterior'])
      .default('beta')
      .describe('DDPM sampling variance σ_t²: β_t or the posterior variance.'),
    clip_denoised: z
      .boolean()
      .default(true)
      .describe('Clip the predicted x_0 to [-1, 1] when sampling images.'),
    prediction: z
      .enum(['eps', 'x0', 'v'])
      .default('eps')
      .describe(
        'What the network predicts: eps (the noise, DDPM), x0 (the clean example) or v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022).',
      ),
    loss_weighting: z
      .enum(['none', 'min_snr'])
      .default('none')
      .describe(
        'Per-timestep loss weight: none, or min_snr = min(SNR, γ) in x0 terms, converted for the target (Hang et al. 2023).',
      ),
    min_snr_gamma: z
      .number()
      .positive()
      .default(5)
      .describe('γ of min_snr (5, the value Hang et al. 2023 recommend).'),
    zero_terminal_snr: z
      .boolean()
      .default(false)
      .describe(
        'Rescale the schedule so that the last timestep is pure noise (Lin et al. 2023); needs prediction x0 or v.',
      ),
    offset_noise: z
      .number()
      .min(0)
      .max(1)
      .default(0)
      .describe(
        'Training noise plus this times a per-example, per-channel constant N(0, 1) offset (0.1 is the usual value; 0 = off).',
      ),
    learn_sigma: z
      .boolean()
      .default(false)
      .describe(
        'Learn the variance: the network also outputs v, Σ = exp(v log β + (1−v) log β̃), trained by L_hybrid (Nichol & Dhariwal 2021).',
      ),
    vlb_weight: z
      .number()
      .min(0)
      .default(0.001)
      .describe('λ of L_hybrid = L_simple + λ·L_vlb with learn_sigma (0.001, as Nichol & Dhariwal 2021).'),
    objective: z
      .enum(['ddpm', 'sde', 'edm'])
      .default('ddpm')
      .describe(
        'ddpm: T discrete timesteps of diffusion.schedule; sde: the continuous-time SDE diffusion.sde trained by denoising score matching (Song et al. 2021); edm: Karras et al. 2022 preconditioning with log-normal σ. timesteps are then the bins of the timestep sampler (see src/model/diffusion/continuous.ts).',
      ),
    sde: z
      .enum(['vp', 've', 'subvp'])
      .default('vp')
      .describe('SDE of objective sde: vp (β_min…β_max), ve (σ_min…σ_max, geometric) or subvp.'),
    beta_min: z
      .number()
      .positive()
      .default(0.1)
      .describe('β(0) of the vp and subvp SDEs (0.1, as Song et al. 2021).'),
    beta_max: z
      .number()
      .positive()
      .default(20)
      .describe('β(1) of the vp and subvp SDEs (20, as Song et al. 2021).'),
    sigma_min: z
      .number()
      .positive()
      .optional()
      .describe(
        'Smallest σ: of the ve SDE (default 0.01, Song et al.) or where edm sampling ends (default 0.002, Karras et al.).',
      ),
    sigma_max: z
      .number()
      .positive()
      .optional()
      .describe(
        'Largest σ: of the ve SDE (default 50, Song et al. for CIFAR-10: about the largest distance between two examples) or where edm sampling starts (default 80).',
      ),
    sigma_data: z
      .number()
      .positive()
      .default(0.5)
      .describe('σ_data of edm preconditioning (0.5, Karras et al. 2022).'),
    p_mean: z.number().default(-1.2).describe('Mean of ln σ in edm training (−1.2, Karras et al. 2022).'),
    p_std: z
      .number()
      .positive()
      .default(1.2)
      .describe('Std of ln σ in edm training (1.2, Karras et al. 2022).'),
  })
  .superRefine((d, ctx) => {
    const bad = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
    if (d.zero_terminal_snr && d.prediction === 'eps')
      bad('zero_terminal_snr', 'needs diffusion.prediction x0 or v (ε says nothing about x0 at zero SNR)');
    if (d.objective !== 'ddpm') {
      // These exist only for DDPM's discrete chain (its posterior and its last timestep).
      if (d.learn_sigma)
        bad('learn_sigma', `is for objective ddpm (its discrete posterior), objective is ${d.objective}`);
      if (d.zero_terminal_snr) bad('zero_terminal_snr', `is for objective ddpm, objective is ${d.objective}`);
    }
    if (d.objective === 'edm') {
      if (d.prediction !== 'eps')
        bad(
          'prediction',
          "objective edm trains EDM's preconditioned F; leave prediction at eps (its default)",
        );
      if (d.loss_weighting !== 'none')
        bad(
          'loss_weighting',
          'objective edm has its own weighting λ(σ) = 1/c_out²; leave loss_weighting at none',
        );
    }
    if (d.objective === 'sde' && d.sde !== 've' && !(d.beta_max > d.beta_min))
      bad('beta_max', `must exceed beta_min (${d.beta_min}), got ${d.beta_max}`);
    const lo = d.sigma_min ?? (d.objective === 'edm' ? 0.002 : 0.01);
    const hi = d.sigma_max ?? (d.objective === 'edm' ? 80 : 50);
    if (!(hi > lo)) bad('sigma_max', `must exceed sigma_min (${lo}), got ${hi}`);
  })
  .prefault({});

export const TrainSchema = z
  .strictObject({
    steps: int(1).default(1500).describe('Optimizer steps of the job.'),
    global_batch: int(1).default(64).describe('Examples per step, summed over all workers.'),
    microbatch: int(0)
      .default(0)
      .describe('Largest batch run through the model at once (0 = no limit); gradients accumulate.'),
    lr: z
      .number()
      .positive()
      .default(2e-3)
      .describe(
        'Peak learning rate (2e-3 for the small default models and short runs; DDPM used 2e-4 for its 35.7 M-parameter U-Net).',
      ),
    warmup_steps: int(0).default(100).describe('Linear learning-rate warm-up, in steps.'),
    lr_schedule: z
      .enum(['constant', 'cosine', 'linear'])
      .default('constant')
      .describe(
        'Learning rate after the warm-up: constant, or cosine / linear decay to train.lr_final at the last step.',
      ),
    lr_final: z
      .number()
      .min(0)
      .default(0)
      .describe('Learning rate at the last step of a cosine or linear schedule.'),
    beta1: z.number().min(0).lt(1).default(0.9).describe('Adam β1.'),
    beta2: z.number().min(0).lt(1).default(0.999).describe('Adam β2.'),
    adam_eps: z.number().positive().default(1e-8).describe('Adam ε.'),
    weight_decay: z.number().min(0).default(0).describe('Decoupled weight decay (AdamW); 0 = Adam.'),
    grad_clip: z.number().min(0).default(1).describe('Global gradient-norm clip (0 = off; 1, as in DDPM).'),
    ema_decay: z
      .number()
      .min(0)
      .max(1)
      .default(0.995)
      .describe('EMA decay of the weights (0.995 for short runs; DDPM used 0.9999 over 800k steps).'),
    ema_schedule: z
      .enum(['exponential', 'power'])
      .default('exponential')
      .describe(
        'EMA of the weights: exponential (train.ema_decay) or the power function of Karras et al. 2024 (train.ema_sigma_rel).',
      ),
    ema_sigma_rel: z
      .number()
      .gt(0)
      .lt(0.2886)
      .default(0.05)
      .describe('Relative width of the power EMA (0.05 ↔ γ = 16.97, 0.10 ↔ γ = 6.94).'),
    ema_warmup: z
      .boolean()
      .default(true)
      .describe('Use min(decay, (1+n)/(10+n)) for the EMA decay at step n.'),
    ema_sync_every: int(1)
      .default(100)
      .describe(
        'Steps between copies of the EMA weights sent to the coordinator (it always gets them at checkpoints).',
      ),
    checkpoint_every: int(0).default(1000).describe('Steps between checkpoints (0 = only the last step).'),
    keep_checkpoints: int(1).default(3).describe('Checkpoints kept in run.out_dir (oldest removed).'),
    log_every: int(1).default(50).describe('Steps between log lines.'),
  })
  .prefault({});

// Mirrors SAMPLER_NAMES and DISCRETIZATIONS of src/model/sampling (a test keeps them equal; config
// does not import the model). Stored in checkpoints: a name never changes meaning (docs/design.md §8).
export const SAMPLER_NAMES = [
  'ddpm',
  'ddim',
  'sde-euler',
  'pc-langevin',
  'ode-euler',
  'ode-heun',
  'ode-rk45',
  'dpmpp-2m',
  'edm-heun',
  'unipc-bh2',
  'dpmpp-2m-sde',
] as const;
export const DISCRETIZATION_NAMES = ['auto', 'uniform', 'quadratic', 'karras', 'trailing'] as const;

export const SampleSchema = z
  .strictObject({
    count: int(0).default(100).describe('Samples drawn from the EMA at the end of training (0 = none).'),
    sampler: z
      .enum(SAMPLER_NAMES)
      .default('ddim')
      .describe(
        'End-of-run sampler: ddpm (all T steps), ddim, sde-euler, pc-langevin, ode-euler, ode-heun, ode-rk45 (adaptive), dpmpp-2m, edm-heun, unipc-bh2, dpmpp-2m-sde (see docs/samplers.md).',
      ),
    steps: int(1)
      .default(100)
      .describe(
        'Steps of the end-of-run sampler (DDIM: at most diffusion.timesteps; ignored by ddpm and ode-rk45).',
      ),
    eta: z
      .number()
      .min(0)
      .default(1)
      .describe('DDIM η: 0 deterministic, 1 the DDPM posterior variance on the strided steps.'),
    guidance: z
      .number()
      .min(0)
      .default(2)
      .describe(
        'Classifier-free guidance weight w of class-conditional models (ignored when unconditional).',
      ),
    discretization: z
      .enum(DISCRETIZATION_NAMES)
      .default('auto')
      .describe(
        "Noise levels visited: uniform or quadratic in time, karras (ρ-spaced σ), trailing (Lin et al. 2023); auto = the sampler's own.",
      ),
    rho: z
      .number()
      .positive()
      .default(7)
      .describe('ρ of the karras discretisation (7, Karras et al. 2022: it evens out the local error).'),
    churn: z
      .number()
      .min(0)
      .default(0)
      .describe('S_churn of edm-heun (0 = deterministic; Karras et al. 2022 tuned 40-80 per dataset).'),
    churn_sigma_min: z
      .number()
      .min(0)
      .default(0)
      .describe('S_tmin of edm-heun: churn only at σ ≥ this (Karras et al. used 0.05).'),
    churn_sigma_max: z
      .number()
      .positive()
      .nullable()
      .default(null)
      .describe('S_tmax of edm-heun: churn only at σ ≤ this (null = no limit; Karras et al. used 50).'),
    churn_noise: z
      .number()
      .positive()
      .default(1)
      .describe('S_noise of edm-heun: scale of the churn noise (Karras et al. used 1.003-1.007).'),
    snr: z
      .number()
      .positive()
      .default(0.16)
      .describe('Signal-to-noise ratio r of the pc-langevin corrector (0.16, Song et al. 2021 on CIFAR-10).'),
    corrector_steps: int(0)
      .default(1)
      .describe('Langevin corrector steps per noise level of pc-langevin (1, as Song et al. 2021).'),
    tolerance: z
      .number()
      .positive()
      .lt(1)
      .default(1e-5)
      .describe(
        'rtol = atol of ode-rk45 (1e-5, as Song et al. 2021 for their RK45 likelihoods and samples).',
      ),
  })
  .superRefine((o, ctx) => {
    if (o.discretization !== 'auto' && (o.sampler === 'ddpm' || o.sampler === 'ode-rk45'))
      ctx.addIssue({
        code: 'custom',
        path: ['discretization'],
        message: `${o.sampler} has no time grid to choose; leave it auto`,
      });
    if (o.churn > 0 && o.sampler !== 'edm-heun')
      ctx.addIssue({
        code: 'custom',
        path: ['churn'],
        message: `only edm-heun churns, sampler is ${o.sampler}`,
      });
  })
  .prefault({});

export const ClusterSchema = z
  .strictObject({
    min_workers: int(1).default(1).describe('Workers the coordinator waits for before the first step.'),
    max_workers: int(1).default(64).describe('Largest number of workers admitted.'),
    heartbeat_timeout_ms: int(1)
      .default(10000)
      .describe('Silence after which a worker is declared dead, in ms.'),
    verify_every: int(0).default(100).describe('Steps between cross-worker weight checksums (0 = never).'),
    token: z
      .string()
      .default('')
      .describe('Join token every worker RPC carries (env RINGDIFF_TOKEN wins; launch generates one).'),
    stop_grace_s: int(1)
      .max(3600)
      .default(20)
      .describe(
        "On SIGTERM, how long processes wait for the final checkpoint before they exit, in s (under Slurm's default KillWait of 30 s).",
      ),
    ring_timeout_ms: int(1)
      .default(60000)
      .describe(
        'A ring collective that receives nothing for this long fails (a peer is dead or stuck), in ms.',
      ),
    allreduce: z
      .strictObject({
        compression: z
          .enum(['none', 'fp16'])
          .default('none')
          .describe('Wire encoding of gradients: none (fp32) or fp16.'),
        encryption: z
          .enum(['none', 'curve'])
          .default('none')
          .describe('ZeroMQ CURVE encryption of ring traffic.'),
        chunk_bytes: int(4).default(1048576).describe('Bytes of float32 data per ring message.'),
      })
      .prefault({}),
    tls: z
      .strictObject({
        cert: z
          .string()
          .default('')
          .describe('PEM certificate of the coordinator (gRPC TLS; empty = plaintext).'),
        key: z.string().default('').describe('PEM private key of the coordinator certificate.'),
        ca: z
          .string()
          .default('')
          .describe(
            'PEM CA: workers verify the coordinator with it; set on the coordinator, it requires client certificates (mutual TLS).',
          ),
        client_cert: z.string().default('').describe('PEM client certificate of workers (mutual TLS).'),
        client_key: z.string().default('').describe('PEM private key of the worker client certificate.'),
      })
      .prefault({}),
  })
  .prefault({});

export const EvalSchema = z
  .strictObject({
    every: int(0)
      .default(0)
      .describe('Steps between evaluations during training, also run at the last step (0 = never).'),
    count: int(0)
      .default(500)
      .describe('Samples drawn from the EMA weights per evaluation for FID/KID/IS/precision/recall.'),
    sampler: z
      .enum(SAMPLER_NAMES)
      .nullable()
      .default(null)
      .describe(
        "Sampler of the evaluation's samples (null = sample.sampler; its other settings are sample.*).",
      ),
    steps: int(1).nullable().default(null).describe('Steps of the evaluation sampler (null = sample.steps).'),
    net: z
      .string()
      .default('')
      .describe(
        'mnistcnn weights (ringdiff eval train-features), on every worker; empty = no sample metrics, only bits/dim.',
      ),
    ref: z
      .string()
      .default('')
      .describe(
        "Reference dataset spec of the sample metrics (empty = the dataset's test split, as eval nll).",
      ),
    ref_count: int(0)
      .default(0)
      .describe('Reference examples, spread over the set (0 = eval.count); their features are cached.'),
    block: int(1)
      .default(32)
      .describe(
        'Samples per model call: fixed index blocks, whole blocks per worker, so results do not depend on the world size.',
      ),
    nll_count: int(0)
      .default(0)
      .describe(
        'Held-out examples of the bits/dim bound per evaluation (0 = no bound; objective ddpm only).',
      ),
    nll_timesteps: int(2)
      .default(20)
      .describe(
        'Network calls per example of the bound (stratified estimator of eval nll; ≤ diffusion.timesteps).',
      ),
    seed: int(0)
      .default(0)
      .describe('Seed of the evaluation noise (samples, bound), fixed across evaluations.'),
  })
  .prefault({});

export const ConfigSchema = z
  .strictObject({
    run: RunSchema,
    data: DataSchema,
    model: ModelSchema,
    diffusion: DiffusionSchema,
    train: TrainSchema,
    sample: SampleSchema,
    cluster: ClusterSchema,
    eval: EvalSchema,
  })
  .superRefine((c, ctx) => {
    const ev = c.eval;
    if (ev.every > 0 && ev.net === '' && ev.nll_count === 0)
      ctx.addIssue({
        code: 'custom',
        path: ['eval', 'every'],
        message: `${ev.every} but nothing to evaluate: set eval.net (sample metrics) or eval.nll_count (bits/dim)`,
      });
    if (ev.every > 0 && ev.net !== '' && ev.count < 10)
      ctx.addIssue({
        code: 'custom',
        path: ['eval', 'count'],
        message: `${ev.count}: the sample metrics need at least 10 samples (Inception Score splits)`,
      });
    if (ev.every > 0 && ev.nll_count > 0 && c.diffusion.objective !== 'ddpm')
      ctx.addIssue({
        code: 'custom',
        path: ['eval', 'nll_count'],
        message: `the bound is that of the discrete DDPM process; diffusion.objective is ${c.diffusion.objective}`,
      });
    if (ev.every > 0 && ev.nll_count > 0 && ev.nll_timesteps > c.diffusion.timesteps)
      ctx.addIssue({
        code: 'custom',
        path: ['eval', 'nll_timesteps'],
        message: `${ev.nll_timesteps} is more than diffusion.timesteps (${c.diffusion.timesteps})`,
      });
    const evSampler = ev.sampler ?? c.sample.sampler;
    if (ev.every > 0 && c.diffusion.objective !== 'ddpm' && (evSampler === 'ddpm' || evSampler === 'ddim'))
      ctx.addIssue({
        code: 'custom',
        path: ['eval', 'sampler'],
        message: `${evSampler} walks the timesteps of objective ddpm; objective ${c.diffusion.objective} needs a σ sampler`,
      });
    // DDPM and DDIM walk the discrete timesteps of objective ddpm; continuous models have none.
    if (c.diffusion.objective !== 'ddpm' && (c.sample.sampler === 'ddpm' || c.sample.sampler === 'ddim'))
      ctx.addIssue({
        code: 'custom',
        path: ['sample', 'sampler'],
        message: `${c.sample.sampler} walks the timesteps of objective ddpm; objective ${c.diffusion.objective} needs a σ sampler (edm-heun, dpmpp-2m, unipc-bh2, ode-heun, sde-euler, …)`,
      });
  });

export type Config = z.infer<typeof ConfigSchema>;
export type ModelConfig = Config['model'];
export type DitConfig = ModelConfig['dit'];
export type AnalyticConfig = ModelConfig['analytic'];
export type SampleConfig = Config['sample'];
export type DiffusionConfig = Config['diffusion'];
export type TrainConfig = Config['train'];
export type EvalConfig = Config['eval'];
