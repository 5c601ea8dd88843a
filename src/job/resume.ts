/** What a checkpoint must agree on to be resumed, and the device state built from one. */
import type { Config } from '../config/schema.js';
import { paramsFromHost, type HostTensor, type Params } from '../model/params.js';
import { type TrainState } from '../model/optim.js';
import { type LoadedCheckpoint } from '../model/checkpoint.js';
import { validateConfig } from '../config/load.js';

/** Keys whose change would make a resumed run a different run. */
const RUN_DEFINING = [
  'run.seed',
  'data',
  'model',
  'diffusion',
  'train.global_batch',
  'train.lr',
  'train.warmup_steps',
  'train.lr_schedule',
  'train.lr_final',
  'train.beta1',
  'train.beta2',
  'train.adam_eps',
  'train.weight_decay',
  'train.grad_clip',
  'train.ema_decay',
  'train.ema_warmup',
  'train.ema_schedule',
  'train.ema_sigma_rel',
  'train.microbatch',
] as const;

function pick(cfg: Config, key: string): unknown {
  return key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], cfg);
}

/**
 * Throws if `saved` (a checkpoint's config) differs from `cfg` in a key that defines the run (names
 * the first such key). Keys added since the checkpoint was written take their defaults, which keep
 * the behaviour of the version that wrote it.
 */
export function checkResumeCompatible(raw: unknown, cfg: Config, dir: string): void {
  const saved = validateConfig(raw, `${dir}/state.json config`);
  for (const key of RUN_DEFINING) {
    const a = JSON.stringify(pick(saved, key));
    const b = JSON.stringify(pick(cfg, key));
    if (a !== b)
      throw new Error(
        `${dir}: checkpoint was written with ${key} = ${a}, config has ${b}; use a new run.out_dir`,
      );
  }
}

/** Device state from a loaded checkpoint. */
export function stateFromCheckpoint(c: LoadedCheckpoint): TrainState {
  const moments = (prefix: string): Params => {
    const h = new Map<string, HostTensor>();
    for (const [name, t] of c.optimizer) if (name.startsWith(prefix)) h.set(name.slice(prefix.length), t);
    return paramsFromHost(h);
  };
  return {
    step: c.step,
    params: paramsFromHost(c.model),
    ema: paramsFromHost(c.ema),
    m: moments('m.'),
    v: moments('v.'),
  };
}
