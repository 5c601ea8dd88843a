/**
 * `ringdiff bench sample`: quality against NFE of every sampler (src/model/sampling/bench.ts) on
 * the analytic oracle — the built-in 8-Gaussian mixture, or `--config` — or on a checkpoint,
 * measured against its training data. Prints a table (or JSON) and writes an SVG plot.
 *
 * Options (commander names): --checkpoint | --config [--set], --samplers a,b, --steps 5,10,…,
 * --tolerance 1e-2,… (ode-rk45), --count, --seed, --chunk, --plot <file.svg>, --json, and the
 * sampler settings of `ringdiff sample` (--discretization, --rho, --churn…, --snr, …).
 */
import { writeFileSync } from 'node:fs';
import { initBackend } from '../model/backend/index.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { disposeParams } from '../model/params.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { processOf } from '../model/diffusion/continuous.js';
import { mixtureOf, sampleMixture } from '../model/nets/analytic.js';
import { openDataset } from '../data/spec.js';
import { SAMPLER_NAMES, type SamplerName } from '../model/sampling/registry.js';
import {
  benchRuns,
  formatBenchTable,
  runSampleBench,
  type BenchRow,
  type BenchTarget,
} from '../model/sampling/bench.js';
import { slicedWasserstein } from '../model/sampling/quality.js';
import { lineChart } from '../telemetry/report.js';
import { UsageError } from './common.js';
import { loadSampleModel, samplerOption, settingsFromCli, type SamplerCliOptions } from './sample.js';

/** The options of `bench sample` (commander names; lists as comma-separated strings). */
export interface BenchSampleCliOptions extends Omit<SamplerCliOptions, 'steps' | 'tolerance' | 'sampler'> {
  checkpoint?: string;
  config?: string;
  set?: string[];
  samplers?: string;
  steps?: string;
  tolerance?: string;
  count?: number;
  seed?: number;
  chunk?: number;
  plot?: string;
  json?: boolean;
  /** false (--no-ode-error): skip the PF-ODE reference run (costly for a large network). */
  odeError?: boolean;
  backend?: string;
}

/** A comma-separated list of numbers, each checked by `ok`; errors name the option. */
function numberList(opt: string, v: string, ok: (n: number) => boolean, what: string): number[] {
  const out = v.split(',').map((p) => Number(p.trim()));
  const bad = out.findIndex((n, i) => (v.split(',')[i] ?? '').trim() === '' || !ok(n));
  if (bad >= 0) throw new UsageError(`${opt} must be a comma-separated list of ${what}, got '${v}'`);
  return out;
}

/** Parses the options, runs the bench, prints the table (or JSON) and writes the plot. */
export async function benchSample(o: BenchSampleCliOptions): Promise<BenchRow[]> {
  const samplers: SamplerName[] = o.samplers
    ? o.samplers.split(',').map((n) => samplerOption(n.trim(), '--samplers'))
    : [...SAMPLER_NAMES];
  const steps = numberList(
    '--steps',
    o.steps ?? '5,10,20,50,100',
    (n) => Number.isInteger(n) && n >= 1,
    'integers ≥ 1',
  );
  const tolerances = numberList(
    '--tolerance',
    o.tolerance ?? '1e-2,1e-3,1e-4',
    (n) => n > 0 && n < 1,
    'numbers in (0, 1)',
  );
  const settings = { ...settingsFromCli({ ...o, tolerance: undefined }), steps: 50 };
  const count = o.count ?? 2000;
  const plot = o.plot ?? 'bench-sample.svg';
  if (!plot.toLowerCase().endsWith('.svg')) throw new UsageError(`--plot ${plot}: the file must end in .svg`);
  await initBackend(o.backend, { quiet: true });
  const src = await loadSampleModel(o, true);
  const { cfg, dataShape, params } = src;
  try {
    const model = jobDenoiser(cfg, dataShape);
    const schedule = scheduleOf(cfg.diffusion);
    const D = dataShape.reduce((a, b) => a * b, 1);
    const seed = o.seed ?? 0;
    let target: BenchTarget;
    let what: string;
    // A reference ten times the sample size, the measure then sees mostly the samples' own noise;
    // at most 2.5e7 values (100 MB) for images.
    const refSize = Math.max(count, Math.min(10 * count, Math.floor(2.5e7 / D)));
    if (cfg.model.kind === 'analytic') {
      const a = cfg.model.analytic;
      const mixture = mixtureOf(a.weights, a.means, a.std);
      // Exact draws of another purpose than the samplers' noise: no counter is shared.
      target = {
        reference: sampleMixture(mixture, refSize, seed + 1),
        second: sampleMixture(mixture, count, seed + 2),
        mixture,
      };
      what = `${src.what}, ${count} samples`;
    } else {
      const ds = openDataset(cfg.data);
      if (ds.size < 2 * count)
        throw new UsageError(
          `--count ${count}: the dataset ${ds.spec} has ${ds.size} examples, fewer than 2 × count`,
        );
      // Examples spread evenly over the dataset: `count` of them are the second draw, the rest the reference.
      const m = Math.min(ds.size, refSize + count);
      const picks = Array.from({ length: m }, (_, i) => Math.floor((i * ds.size) / m));
      const isSecond = new Uint8Array(m);
      for (let i = 0; i < count; i++) isSecond[Math.floor((i * m) / count)] = 1;
      const rows = (keep: number) => {
        const chosen = picks.filter((_, i) => isSecond[i] === keep);
        const out = new Float32Array(chosen.length * D);
        chosen.forEach((p, i) => out.set(ds.get(p).x, i * D));
        return out;
      };
      target = { reference: rows(0), second: rows(1), mixture: null };
      what = `${src.what} against ${ds.spec}, ${count} samples`;
    }
    const proc = processOf(cfg.diffusion);
    const discreteOnly: SamplerName[] = samplers.filter((n) => n === 'ddpm' || n === 'ddim');
    if (proc && o.samplers && discreteOnly.length > 0)
      throw new UsageError(
        `--samplers: ${discreteOnly.join(', ')} walk the timesteps of objective ddpm; the model's objective is ${cfg.diffusion.objective}`,
      );
    const runs = benchRuns(
      proc ? samplers.filter((n) => !discreteOnly.includes(n)) : samplers,
      steps,
      tolerances,
      schedule.T,
    );
    const rows = runSampleBench({
      model,
      params,
      schedule,
      prediction: cfg.diffusion.prediction,
      learnSigma: cfg.diffusion.learn_sigma,
      process: proc,
      clip: dataShape.length === 3 && cfg.diffusion.clip_denoised,
      target,
      runs,
      count,
      seed,
      chunk: o.chunk ?? 4096,
      settings,
      odeReference: o.odeError !== false,
      log: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
    });
    const floor = slicedWasserstein(target.second, target.reference, D);
    writeFileSync(plot, `${benchPlot(rows, floor, what)}\n`);
    process.stdout.write(
      o.json
        ? `${JSON.stringify({ target: what, sw2_floor: floor, plot, rows }, null, 2)}\n`
        : `${formatBenchTable(rows, floor, what)}\nplot: ${plot}\n`,
    );
    return rows;
  } finally {
    disposeParams(params);
  }
}

const COLORS = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf',
];

/**
 * The bench as one SVG of two panels, NFE on a log axis: sliced W₂ to the target for every run (the
 * noise floor in grey), and the distance to the PF-ODE solution for the runs that solve it.
 */
export function benchPlot(rows: readonly BenchRow[], floor: number, what: string): string {
  const names = [...new Set(rows.map((r) => r.sampler))];
  const color = (name: string) => COLORS[names.indexOf(name as SamplerName) % COLORS.length] as string;
  const series = (value: (r: BenchRow) => number | null) =>
    names
      .map((name) => ({
        name: name as string,
        color: color(name),
        points: rows
          .filter((r) => r.sampler === name && value(r) !== null)
          .map((r) => [r.nfe, value(r) as number] as [number, number])
          .sort((a, b) => a[0] - b[0]),
      }))
      .filter((s) => s.points.length > 0);
  const nfes = rows.map((r) => r.nfe);
  const sw2 = series((r) => r.sw2);
  sw2.push({
    name: 'noise floor',
    color: '#999999',
    points: [
      [Math.min(...nfes), floor],
      [Math.max(...nfes), floor],
    ],
  });
  const W = 720;
  const H = 420;
  const top = lineChart(sw2, {
    title: `Sliced W2 to the target vs NFE (${what})`,
    xLabel: 'model evaluations per sample (NFE)',
    yLabel: 'sliced W2',
    logX: true,
    logY: true,
    markers: true,
    width: W,
    height: H,
  });
  const ode = series((r) => r.odeErr);
  const bottom = lineChart(ode, {
    title: 'Distance to the probability-flow ODE solution of the same noise (deterministic runs)',
    xLabel: 'model evaluations per sample (NFE)',
    yLabel: 'RMS distance',
    logX: true,
    logY: true,
    markers: true,
    width: W,
    height: H,
  });
  // Nested <svg> elements, the second moved down by one panel.
  const place = (svg: string, y: number) =>
    svg.startsWith('<svg')
      ? svg.replace('<svg ', `<svg y="${y}" `)
      : `<svg y="${y}" width="${W}" height="40"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${2 * H}" viewBox="0 0 ${W} ${2 * H}">${place(top, 0)}${place(bottom, H)}</svg>`;
}
