/**
 * Every sampler by name. The names are stored in checkpoints and configs (`sample.sampler`):
 * once committed a name keeps its meaning forever (docs/design.md §8): a changed recipe gets a new
 * name, and names are never removed.
 */
import { ddimSampler } from './ddim.js';
import { ddpmSampler } from './ddpm.js';
import { dpmpp2mSampler, dpmpp2mSdeSampler } from './dpmsolver.js';
import { edmHeunSampler } from './karras.js';
import { odeEulerSampler, odeHeunSampler, odeRk45Sampler } from './ode.js';
import { pcLangevinSampler } from './pc.js';
import type { Sampler, SamplerSettings } from './sampler.js';
import { sdeEulerSampler } from './sde.js';
import { unipcBh2Sampler } from './unipc.js';

/** Every sampler name, in the order of help texts and benches. */
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
/** A name of SAMPLER_NAMES. */
export type SamplerName = (typeof SAMPLER_NAMES)[number];

/** The sampler of each name. */
export const SAMPLERS: Readonly<Record<SamplerName, Sampler>> = {
  ddpm: ddpmSampler,
  ddim: ddimSampler,
  'sde-euler': sdeEulerSampler,
  'pc-langevin': pcLangevinSampler,
  'ode-euler': odeEulerSampler,
  'ode-heun': odeHeunSampler,
  'ode-rk45': odeRk45Sampler,
  'dpmpp-2m': dpmpp2mSampler,
  'edm-heun': edmHeunSampler,
  'unipc-bh2': unipcBh2Sampler,
  'dpmpp-2m-sde': dpmpp2mSdeSampler,
};

/** The sampler called `name`; throws a one-line error naming `option` otherwise. */
export function samplerNamed(name: string, option = 'sample.sampler'): Sampler {
  if (!(SAMPLER_NAMES as readonly string[]).includes(name))
    throw new Error(`${option}: unknown sampler '${name}' (known: ${SAMPLER_NAMES.join(', ')})`);
  return SAMPLERS[name as SamplerName];
}

/** Whether a run of `name` with `settings` draws no noise after x at σ_max (it solves the PF-ODE). */
export function isDeterministic(name: SamplerName, settings: SamplerSettings): boolean {
  if (name === 'ddim') return settings.eta === 0;
  if (name === 'edm-heun') return settings.churn === 0;
  return !SAMPLERS[name].stochastic;
}
