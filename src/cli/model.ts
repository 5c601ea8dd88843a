/**
 * `ringdiff model`: the job's denoiser, built for the data shape of its dataset exactly as
 * `train` builds it, counted from its declarations (no weights are drawn, no backend is needed).
 */
import { loadConfig } from '../config/load.js';
import { resolveAnalytic, resolveDit, resolveForDataset } from '../config/resolve.js';
import { openDataset } from '../data/spec.js';
import { analyticDataShape, jobDenoiser, summarizeModel } from '../model/nets/factory.js';

export interface ModelOptions {
  config?: string;
  set?: string[];
  json?: boolean;
}

/** Prints trainable and fixed counts with a per-module breakdown, as text or one JSON object. */
export function describeModel(opts: ModelOptions): void {
  const config = loadConfig(opts.config, opts.set ?? []);
  // An analytic model's data is its mixture: no dataset to open.
  const dataset = config.model.kind === 'analytic' ? null : openDataset(config.data);
  const cfg = dataset ? resolveForDataset(config, dataset) : resolveAnalytic(config);
  const dataShape = dataset ? [...dataset.shape] : analyticDataShape(cfg.model);
  const spec = dataset?.spec ?? 'its Gaussian mixture (model.analytic)';
  const model = jobDenoiser(cfg, dataShape);
  const s = summarizeModel(model);
  const dit = cfg.model.kind === 'dit' ? resolveDit(cfg.model.dit) : null;
  const report = {
    kind: cfg.model.kind,
    ...(dit ? { dit } : {}),
    data_shape: dataShape,
    num_classes: cfg.model.num_classes,
    learn_sigma: cfg.diffusion.learn_sigma,
    params: s.params,
    fixed: s.fixed,
    modules: Object.fromEntries(s.modules.map((m) => [m.module, m.params])),
    fixed_tensors: Object.fromEntries(s.fixedTensors.map((t) => [t.name, [...t.shape]])),
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  const n = (v: number): string => v.toLocaleString('en-US');
  const shape = `[${dataShape.join(', ')}]`;
  const what = dit
    ? `dit${dit.preset ? ` ${dit.preset}` : ''} (depth ${dit.depth}, hidden ${dit.hidden}, heads ${dit.heads}, patch ${dit.patch}, mlp_ratio ${dit.mlp_ratio})`
    : cfg.model.kind;
  const width = Math.max(...s.modules.map((m) => m.module.length), 6);
  const lines = [
    `model ${what} on ${shape} examples of ${spec}, ${cfg.model.num_classes} classes`,
    `params ${n(s.params)} (trainable)`,
    `fixed  ${n(s.fixed)}${s.fixedTensors.map((t) => ` ${t.name} [${t.shape.join(', ')}]`).join(',')} (computed, not trained)`,
    'modules:',
    ...s.modules.map((m) => `  ${m.module.padEnd(width)} ${n(m.params).padStart(13)}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
