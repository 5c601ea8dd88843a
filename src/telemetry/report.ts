/**
 * The run report: one self-contained HTML page (`<out_dir>/report.html`) with the loss curves,
 * samples/s, a sample grid drawn from the EMA of each checkpoint, the end-of-run samples and the
 * final timestep-sampling weights. Charts are inline SVG, pictures are embedded PNGs, so the page
 * can be mailed or archived on its own.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { validateConfig } from '../config/load.js';
import { requireResolved, type ResolvedConfig } from '../config/resolve.js';
import type { Config } from '../config/schema.js';
import { encodeGrid, encodeScatter } from '../data/image.js';
import { CHECKPOINT_FILES, listCheckpoints, loadCheckpoint } from '../model/checkpoint.js';
import { jobDenoiser } from '../model/nets/factory.js';
import { disposeParams, paramsFromHost } from '../model/params.js';
import { drawSamples } from '../model/sampling/sample.js';
import { scheduleOf } from '../model/diffusion/schedule.js';
import { processOf } from '../model/diffusion/continuous.js';
import { createSampler, type SamplerState } from '../model/diffusion/timesteps.js';
import { writeFileAtomic } from '../util/atomic.js';
import { readEvalHistory, readHistory, type HistoryEntry } from './history.js';

export interface Series {
  name: string;
  color: string;
  points: Array<[number, number]>;
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** An SVG line chart (x and y each linear or log10), with axes, ticks and a legend. */
export function lineChart(
  series: Series[],
  o: {
    title: string;
    xLabel: string;
    yLabel: string;
    logX?: boolean;
    logY?: boolean;
    width?: number;
    height?: number;
    /** Draw a dot at every point (for sparse series). */
    markers?: boolean;
  },
): string {
  const W = o.width ?? 640;
  const H = o.height ?? 300;
  const m = { l: 60, r: 16, t: 28, b: 40 };
  const fy = (y: number) => (o.logY ? Math.log10(y) : y);
  const fx = (x: number) => (o.logX ? Math.log10(x) : x);
  const ok = ([x, y]: [number, number]) => Number.isFinite(fy(y)) && Number.isFinite(fx(x));
  const pts = series.flatMap((s) => s.points).filter(ok);
  if (pts.length === 0) return `<p><em>${esc(o.title)}: no data</em></p>`;
  const xs = pts.map(([x]) => fx(x));
  const ys = pts.map(([, y]) => fy(y));
  const x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x: number) => m.l + ((fx(x) - x0) / (x1 - x0)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((fy(y) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const ticks = (a: number, b: number, n: number) =>
    Array.from({ length: n + 1 }, (_, i) => a + ((b - a) * i) / n);
  const fmt = (v: number) =>
    Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : v.toPrecision(3);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="#444"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#444"/>`,
  ];
  for (const xv of ticks(x0, x1, 5)) {
    const x = o.logX ? 10 ** xv : xv;
    parts.push(
      `<text x="${px(x)}" y="${H - m.b + 14}" text-anchor="middle">${fmt(Math.round(x))}</text>`,
      `<line x1="${px(x)}" y1="${m.t}" x2="${px(x)}" y2="${H - m.b}" stroke="#eee"/>`,
    );
  }
  for (const yv of ticks(y0, y1, 4)) {
    const y = o.logY ? 10 ** yv : yv;
    parts.push(
      `<text x="${m.l - 4}" y="${py(y) + 4}" text-anchor="end">${fmt(y)}</text>`,
      `<line x1="${m.l}" y1="${py(y)}" x2="${W - m.r}" y2="${py(y)}" stroke="#eee"/>`,
    );
  }
  parts.push(
    `<text x="${W / 2}" y="${H - 6}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(14 ${H / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const shown = s.points.filter(ok);
    const d = shown
      .map(([x, y], k) => `${k === 0 ? 'M' : 'L'}${px(x).toFixed(1)},${py(y).toFixed(1)}`)
      .join('');
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.3"/>`);
    if (o.markers)
      for (const [x, y] of shown)
        parts.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="2.5" fill="${s.color}"/>`);
    parts.push(
      `<rect x="${m.l + 10}" y="${m.t + 4 + 14 * i}" width="10" height="3" fill="${s.color}"/>`,
      `<text x="${m.l + 24}" y="${m.t + 9 + 14 * i}">${esc(s.name)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('');
}

/** An SVG bar chart of p(t), t = 0…T−1, averaged into at most `bars` bars. */
export function weightsChart(p: ArrayLike<number>, bars = 50): string {
  const T = p.length;
  const n = Math.min(bars, T);
  const vals = Array.from({ length: n }, (_, b) => {
    const from = Math.floor((b * T) / n);
    const to = Math.floor(((b + 1) * T) / n);
    let s = 0;
    for (let t = from; t < to; t++) s += p[t] as number;
    return (s / (to - from)) * T; // relative to uniform (1 = uniform)
  });
  const pts: Array<[number, number]> = vals.map((v, b) => [Math.floor(((b + 0.5) * T) / n), v]);
  return lineChart([{ name: 'p(t) · T (1 = uniform)', color: '#c0392b', points: pts }], {
    title: 'Timestep-sampling weights at the end of the run',
    xLabel: 'timestep t',
    yLabel: 'relative weight',
  });
}

/** What the report reads of an `eval nll` file (<out_dir>/eval/nll-*.json). */
interface NllFile {
  step: number | null;
  variance: string;
  timesteps: number;
  T: number;
  count: number;
  decoder: string;
  bits_per_dim: { mean: number; se: number | null };
  terms_bits_per_dim: Record<'prior' | 'kl' | 'decoder', { mean: number }>;
  curve: Array<{ from: number; to: number; bits: number }>;
}

/** The likelihood section: a table of every `eval nll` file and the per-term curves ('' if none). */
export function nllSection(outDir: string): string {
  const evalDir = path.join(outDir, 'eval');
  const names = existsSync(evalDir) ? readdirSync(evalDir).filter((n) => /^nll-.*\.json$/.test(n)) : [];
  const files: Array<[string, NllFile]> = [];
  for (const n of names.sort()) {
    try {
      const j = JSON.parse(readFileSync(path.join(evalDir, n), 'utf8')) as NllFile;
      if (Array.isArray(j.curve) && typeof j.bits_per_dim?.mean === 'number') files.push([n, j]);
    } catch {
      // A file being written or foreign: the next report shows it.
    }
  }
  if (files.length === 0) return '';
  files.sort(([, a], [, b]) => (a.step ?? 0) - (b.step ?? 0));
  const f = (v: number) => v.toFixed(4);
  const rows = files.map(
    ([, j]) =>
      `<tr><td>${j.step ?? '–'}</td><td>${esc(j.variance)}</td><td>${j.timesteps === j.T ? `all ${j.T}` : `${j.timesteps} of ${j.T}`}</td><td>${j.count}</td><td><b>${f(j.bits_per_dim.mean)}</b> ± ${j.bits_per_dim.se === null ? '–' : f(j.bits_per_dim.se)}</td><td>${f(j.terms_bits_per_dim.prior.mean)}</td><td>${f(j.terms_bits_per_dim.kl.mean)}</td><td>${f(j.terms_bits_per_dim.decoder.mean)}</td><td>${esc(j.decoder)}</td></tr>`,
  );
  const colors = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b'];
  // t = 0 is the decoder (a different quantity, often negative for continuous data): in the table only.
  const series: Series[] = files.map(([, j], i) => ({
    name: `step ${j.step ?? '–'}, ${j.variance}`,
    color: colors[i % colors.length] as string,
    points: j.curve.filter((c) => c.from > 0).map((c): [number, number] => [(c.from + c.to) / 2, c.bits]),
  }));
  const chart = lineChart(series, {
    title: 'Where the bits go: mean L_t per timestep (bits/dim)',
    xLabel: 'timestep t',
    yLabel: 'bits/dim',
    logY: true,
    markers: files.some(([, j]) => j.timesteps < j.T),
  });
  return `<h2>Likelihood (ringdiff eval nll)</h2>
<table><tr><td>step</td><td>variance</td><td>timesteps</td><td>examples</td><td>bound, bits/dim ± SE</td><td>prior L_T</td><td>Σ KL L_t</td><td>decoder L_0</td><td>decoder</td></tr>
${rows.join('\n')}</table>
<div class="charts">${chart}</div>`;
}

/**
 * The evaluations during training (eval.* lines of history.jsonl): one chart of each metric against
 * the step (standard errors and the IS spread are in the table only), and the last values ('' if none).
 */
export function evalSection(outDir: string): string {
  const evals = readEvalHistory(outDir);
  if (evals.length === 0) return '';
  const names = [...new Set(evals.flatMap((e) => Object.keys(e.eval)))].filter(
    (n) => !n.endsWith('_se') && !n.endsWith('_std'),
  );
  const charts = names.map((n) =>
    lineChart(
      [
        {
          name: n,
          color: '#d62728',
          points: evals
            .filter((e) => typeof e.eval[n] === 'number')
            .map((e): [number, number] => [e.step, e.eval[n] as number]),
        },
      ],
      { title: `${n} vs step`, xLabel: 'step', yLabel: n, markers: true, width: 420, height: 240 },
    ),
  );
  const last = evals.at(-1) as (typeof evals)[number];
  const rows = Object.entries(last.eval).map(
    ([k, v]) => `<tr><td>${esc(k)}</td><td>${v.toPrecision(5)}</td></tr>`,
  );
  return `<h2>Evaluation during training (eval.*)</h2>
<p>${evals.length} evaluations on the EMA weights; the last at step ${last.step}:</p>
<table>${rows.join('')}</table>
<div class="charts">${charts.join('\n')}</div>`;
}

const pngTag = (buf: Buffer, alt: string) =>
  `<img alt="${esc(alt)}" src="data:image/png;base64,${buf.toString('base64')}" style="image-rendering:pixelated;max-width:100%"/>`;

/** Smoothed copy of a series (EMA with the given weight of the past). */
function smooth(points: Array<[number, number]>, w = 0.9): Array<[number, number]> {
  let acc = NaN;
  return points.map(([x, y]) => {
    acc = Number.isNaN(acc) ? y : w * acc + (1 - w) * y;
    return [x, acc];
  });
}

/** A grid of samples from a checkpoint's EMA (cheap: few samples, few DDIM steps). */
async function checkpointGrid(dir: string, cfg: ResolvedConfig): Promise<Buffer> {
  const ckpt = await loadCheckpoint(dir);
  const shape = ckpt.state.data_shape as number[];
  const model = jobDenoiser(cfg, shape);
  const ema = paramsFromHost(ckpt.ema);
  try {
    const K = model.numClasses;
    const count = K > 0 ? 2 * K : 16;
    const data = drawSamples(model, ema, scheduleOf(cfg.diffusion), {
      count: shape.length === 3 ? count : 512,
      sampler: 'ddim',
      steps: Math.min(25, cfg.diffusion.timesteps),
      eta: 1,
      guidance: K > 0 ? cfg.sample.guidance : 0,
      classLabel: null,
      seed: cfg.run.seed,
      sigma: cfg.diffusion.sigma,
      prediction: cfg.diffusion.prediction,
      learnSigma: cfg.diffusion.learn_sigma,
      process: processOf(cfg.diffusion),
      clip: shape.length === 3 && cfg.diffusion.clip_denoised,
      chunk: 256,
    });
    return shape.length === 3
      ? encodeGrid(data, [count, ...shape], K > 0 ? K : 8)
      : encodeScatter(data, 4, 256);
  } finally {
    disposeParams(ema);
  }
}

/**
 * Where a checkpoint's sample grid is kept, so that it is drawn once, not at every report:
 * `<outDir>/report/step-<N>-<key>.png`, the key a hash of the EMA file's sha256 and of the settings
 * the drawing depends on (a checkpoint written again, or other settings, get a new file).
 */
function gridCachePath(outDir: string, ckptDir: string, step: number, cfg: Config): string | null {
  try {
    const state = JSON.parse(readFileSync(path.join(ckptDir, 'state.json'), 'utf8')) as {
      files?: Record<string, { sha256?: string }>;
    };
    const ema = state.files?.[CHECKPOINT_FILES.ema]?.sha256;
    if (!ema) return null;
    const key = createHash('sha256')
      .update(JSON.stringify([ema, cfg.model, cfg.diffusion, cfg.sample.guidance, cfg.run.seed]))
      .digest('hex')
      .slice(0, 12);
    return path.join(outDir, 'report', `step-${step}-${key}.png`);
  } catch {
    return null;
  }
}

/** Options of `writeReport`. */
export interface ReportOptions {
  /**
   * Draw the sample grids of checkpoints that have none yet (default). False after a stop: on a
   * slow backend drawing takes minutes, so only grids drawn before are shown.
   */
  draw?: boolean;
}

/** Writes `<outDir>/report.html`; returns its path. */
export async function writeReport(outDir: string, opts: ReportOptions = {}): Promise<string> {
  const draw = opts.draw ?? true;
  const ckpts = await listCheckpoints(outDir);
  const newest = ckpts.at(-1);
  if (!newest) throw new Error(`${outDir}: no checkpoint to report on`);
  const last = await loadCheckpoint(newest.dir);
  const source = `${newest.dir}/state.json config`;
  const cfg = requireResolved(validateConfig(last.state.config, source), source);
  const hist: HistoryEntry[] = readHistory(outDir);
  const at = (f: (e: HistoryEntry) => number): Array<[number, number]> => hist.map((e) => [e.step, f(e)]);
  const lossPts = at((e) => e.loss);
  const colors = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728'];
  const sections: string[] = [];
  sections.push(
    lineChart(
      [
        { name: 'loss', color: '#9ecae1', points: lossPts },
        { name: 'loss (smoothed)', color: '#08519c', points: smooth(lossPts) },
      ],
      { title: 'Training loss', xLabel: 'step', yLabel: 'loss', logY: true },
    ),
    lineChart(
      [0, 1, 2, 3].map((q) => ({
        name: `t in quarter ${q}`,
        color: colors[q] as string,
        points: smooth(at((e) => e.loss_q[q] ?? NaN).filter(([, y]) => y !== null && Number.isFinite(y))),
      })),
      { title: 'Loss per timestep quarter (smoothed)', xLabel: 'step', yLabel: 'loss', logY: true },
    ),
    lineChart(
      [
        {
          name: 'samples/s',
          color: '#2ca02c',
          points: smooth(
            at((e) => e.samples_per_s),
            0.8,
          ),
        },
      ],
      {
        title: 'Throughput',
        xLabel: 'step',
        yLabel: 'samples/s',
      },
    ),
  );
  const grids: string[] = [];
  for (const c of ckpts) {
    const cached = gridCachePath(outDir, c.dir, c.step, cfg);
    try {
      let png: Buffer | null = cached && existsSync(cached) ? readFileSync(cached) : null;
      if (!png && draw) {
        png = await checkpointGrid(c.dir, cfg);
        if (cached) {
          mkdirSync(path.dirname(cached), { recursive: true });
          await writeFileAtomic(cached, png);
        }
      }
      grids.push(
        png
          ? `<figure>${pngTag(png, `samples at step ${c.step}`)}<figcaption>step ${c.step}</figcaption></figure>`
          : `<figure><figcaption>step ${c.step}: not drawn (the job was stopped; <code>ringdiff report</code> draws it)</figcaption></figure>`,
      );
    } catch (e) {
      grids.push(`<figure><figcaption>step ${c.step}: ${esc((e as Error).message)}</figcaption></figure>`);
    }
  }
  const finalPng = path.join(outDir, 'samples.png');
  const d = cfg.diffusion;
  let weights = '';
  try {
    const s = createSampler(
      d.timestep_sampler,
      d.timesteps,
      { historyPerTerm: d.history_per_term, uniformProb: d.uniform_prob },
      last.state.sampler as SamplerState | undefined,
    );
    weights = weightsChart(s.probs());
  } catch (e) {
    weights = `<p>${esc((e as Error).message)}</p>`;
  }
  const first = hist[0];
  const end = hist.at(-1);
  const hours = first && end ? (end.t - first.t) / 3.6e6 : NaN;
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>ringdiff report: ${esc(cfg.run.name)}</title>
<style>body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}figure{display:inline-block;margin:.5em;text-align:center}
.charts svg{margin:.5em;border:1px solid #ddd}table{border-collapse:collapse}td{padding:2px 8px;border-bottom:1px solid #eee}</style></head>
<body><h1>${esc(cfg.run.name)}</h1>
<table>
<tr><td>dataset</td><td>${esc(cfg.data.dataset)} (${cfg.data.image_size}px)</td></tr>
<tr><td>model</td><td>${esc(cfg.model.kind)} ${cfg.model.kind === 'unet' ? esc(JSON.stringify(cfg.model.channels)) : `hidden ${cfg.model.hidden}`}, classes ${cfg.model.num_classes}</td></tr>
<tr><td>steps</td><td>${last.step} of ${cfg.train.steps}, global batch ${cfg.train.global_batch}</td></tr>
<tr><td>final loss</td><td>${end ? end.loss.toPrecision(4) : '–'}</td></tr>
<tr><td>wall time in history</td><td>${Number.isFinite(hours) ? `${(hours * 60).toFixed(1)} min` : '–'}</td></tr>
</table>
<h2>Curves</h2><div class="charts">${sections.join('\n')}</div>
<h2>Samples from the EMA of each checkpoint</h2><p>DDIM, 25 steps, η = 1${cfg.model.num_classes > 0 ? `, guidance w = ${cfg.sample.guidance}, column k = class k` : ''}.</p>
${grids.join('\n')}
${existsSync(finalPng) ? `<h2>End-of-run samples</h2>${pngTag(readFileSync(finalPng), 'end-of-run samples')}` : ''}
<h2>Timestep sampling</h2><div class="charts">${weights}</div>
${evalSection(outDir)}
${nllSection(outDir)}
</body></html>
`;
  const file = path.join(outDir, 'report.html');
  await writeFileAtomic(file, Buffer.from(html, 'utf8'));
  return file;
}
