/**
 * The deploy/ observability files against a real job: a local `ringdiff launch` with metrics, a real
 * Prometheus scraping it every second (with the alerting rules of deploy/prometheus/rules loaded),
 * then every query of the Grafana dashboard must return data and every alert expression must be
 * valid PromQL. Also `promtool check metrics|config|rules` and yamllint on deploy/.
 *
 * Needs `prometheus`, `promtool` and `yamllint` on PATH (Debian: apt-get install prometheus
 * yamllint; CI installs them): without them those checks skip with a line naming the missing
 * package (the dashboard's structure is checked everywhere). Linux only (/proc is read to stop the
 * job's process tree).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  accessSync,
  constants,
  createWriteStream,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { freePort } from '../src/util/net.js';
import { missingCommand, skipUnless } from './requirements.js';

/** The repository (this file runs as dist/test/observability.test.js). */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/ringdiff.js');
const DASHBOARD = path.join(ROOT, 'deploy/grafana/dashboards/ringdiff-training.json');
const PROM_CONFIG = path.join(ROOT, 'deploy/prometheus/prometheus.yml');
const RULES = path.join(ROOT, 'deploy/prometheus/rules/ringdiff.rules.yml');
const YAMLLINT_CONFIG = path.join(ROOT, 'deploy/.yamllint');

/** The job's `run.name`: the `job` label of every series. */
const JOB = 'obstest';
/** Scrape job name in the test's Prometheus (what `up{job=…}` carries). */
const SCRAPE_JOB = 'ringdiff-coordinator';
/** What Grafana's interval variables become here (1 s scrapes: a 30 s rate window holds plenty). */
const INTERVALS: Record<string, string> = {
  __rate_interval: '30s',
  __interval: '5s',
  __range: '5m',
  __range_s: '300',
  __interval_ms: '5000',
  __range_ms: '300000',
};
/** Alerts whose expression must return nothing while a healthy job trains. */
const QUIET_ALERTS = [
  'RingdiffLossNaN',
  'RingdiffGenerationChurn',
  'RingdiffStepStalled',
  'RingdiffCheckpointStale',
];

// ---------------------------------------------------------------------------------------------
// Small helpers

/** The absolute path of an executable on PATH, or null. */
function which(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}

/** `name` from PATH, or a failed assertion that says how to install it. */
function requireTool(name: string, pkg: string): string {
  const file = which(name);
  if (file === null)
    assert.fail(
      `${name} is not installed (it is on no directory of PATH): apt-get install ${pkg} — CI installs it`,
    );
  return file;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** An error that ends a wait at once (a process died), unlike the probe errors `until` retries on. */
class Fatal extends Error {}

/**
 * Polls `probe` every `everyMs` until it returns a value other than undefined, or throws after `ms`
 * (probe errors count as "not yet", except `Fatal` ones).
 */
async function until<T>(
  what: string,
  ms: number,
  probe: () => Promise<T | undefined>,
  everyMs = 500,
  detail: () => string = () => '',
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe().catch((e: unknown) => {
      if (e instanceof Fatal) throw e;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${ms / 1000} s waiting for ${what}${detail()}`);
    await sleep(everyMs);
  }
}

/** The last `n` lines of a file ('' if it does not exist). */
function tail(file: string, n = 25): string {
  if (!existsSync(file)) return '';
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
}

/** Runs `cmd args…` to completion; returns its exit status and output. */
function run(cmd: string, args: string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

/** Every process descended from `pid` (from /proc; empty where there is no /proc). */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return [];
  }
  for (const e of entries) {
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // "pid (comm) state ppid …": comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(e));
      children.set(ppid, list);
    } catch {
      // the process is gone
    }
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift() as number;
    for (const c of children.get(p) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

function kill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

interface Spawned {
  child: ChildProcess;
  exit: Promise<number>;
  log: string;
  running(): boolean;
}

function spawnLogged(cmd: string, args: string[], log: string): Spawned {
  const out = createWriteStream(log, { flags: 'a' });
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  let done = false;
  const exit = new Promise<number>((resolve) =>
    child.on('exit', (code, sig) => {
      done = true;
      resolve(code ?? (sig ? 128 : 1));
    }),
  );
  return { child, exit, log, running: () => !done };
}

/** SIGTERM, then SIGKILL after `graceMs` to the process and everything it started (collected first). */
async function stopTree(p: Spawned, graceMs: number): Promise<number | null> {
  const pid = p.child.pid;
  if (pid === undefined || !p.running()) return p.running() ? null : await p.exit;
  const tree = descendants(pid);
  kill(pid, 'SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    p.exit,
    new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), graceMs))),
  ]);
  clearTimeout(timer);
  for (const c of [pid, ...tree]) kill(c, 'SIGKILL');
  return code;
}

// ---------------------------------------------------------------------------------------------
// The Prometheus HTTP API

interface PromSample {
  metric: Record<string, string>;
  value?: [number, string];
}
interface PromQueryResponse {
  status: 'success' | 'error';
  data?: { resultType: string; result: PromSample[] | [number, string] };
  errorType?: string;
  error?: string;
}
interface PromRule {
  name: string;
  type: string;
  query: string;
  health: string;
  lastError?: string;
}
interface PromRulesResponse {
  status: string;
  data?: { groups: Array<{ name: string; rules: PromRule[] }> };
}

class Prometheus {
  constructor(readonly url: string) {}

  private async get(pathAndQuery: string): Promise<unknown> {
    const res = await fetch(`${this.url}${pathAndQuery}`, { signal: AbortSignal.timeout(10_000) });
    const text = await res.text();
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new Error(`GET ${pathAndQuery}: HTTP ${res.status}: ${text.slice(0, 300)}`);
    }
  }

  /** An instant query at the current time. */
  async query(expr: string): Promise<PromQueryResponse> {
    return (await this.get(`/api/v1/query?query=${encodeURIComponent(expr)}`)) as PromQueryResponse;
  }

  /** Number of series (or 1 for a scalar) an instant query returns; throws on a query error. */
  async count(expr: string): Promise<number> {
    const r = await this.query(expr);
    if (r.status !== 'success' || r.data === undefined)
      throw new Error(`query ${expr} failed: ${r.errorType ?? ''} ${r.error ?? ''}`);
    if (r.data.resultType === 'scalar' || r.data.resultType === 'string') return 1;
    return (r.data.result as PromSample[]).length;
  }

  /** The value of a query returning one series/scalar (NaN if it returns none). */
  async scalar(expr: string): Promise<number> {
    const r = await this.query(expr);
    if (r.status !== 'success' || r.data === undefined) return NaN;
    if (r.data.resultType === 'scalar') return Number((r.data.result as [number, string])[1]);
    const first = (r.data.result as PromSample[])[0];
    return first?.value ? Number(first.value[1]) : NaN;
  }

  /** label_values(selector, label) as Grafana computes it (GET /api/v1/label/<label>/values). */
  async labelValues(selector: string, label: string): Promise<string[]> {
    const r = (await this.get(
      `/api/v1/label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(selector)}`,
    )) as { status: string; data?: string[]; error?: string };
    if (r.status !== 'success')
      throw new Error(`label_values(${selector}, ${label}): ${r.error ?? r.status}`);
    return r.data ?? [];
  }

  async rules(): Promise<PromRule[]> {
    const r = (await this.get('/api/v1/rules')) as PromRulesResponse;
    return (r.data?.groups ?? []).flatMap((g) => g.rules);
  }
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the rules

interface Target {
  refId?: string;
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
  repeat?: string;
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  definition?: string;
  multi?: boolean;
  includeAll?: boolean;
  allValue?: string;
}
interface Dashboard {
  schemaVersion: number;
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Variable[] };
  annotations?: { list: Array<{ name: string; expr?: string }> };
}
interface RuleFile {
  groups: Array<{
    name: string;
    rules: Array<{ alert?: string; record?: string; expr: string; for?: string }>;
  }>;
}

/** Every panel, rows' nested panels included. */
function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

/** A variable's query text (Grafana stores it as a string or as { query }). */
function variableQuery(v: Variable): string {
  const q = typeof v.query === 'string' ? v.query : (v.query?.query ?? '');
  return q || v.definition || '';
}

/** `label_values(selector, label)` → its parts. */
function parseLabelValues(q: string): { selector: string; label: string } {
  const m = /^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$/s.exec(q);
  assert.ok(m, `variable query "${q}" is not label_values(selector, label)`);
  return { selector: m[1] ?? '', label: m[2] ?? '' };
}

/** A value as Grafana formats it inside a PromQL regex matcher. */
function regexEscape(s: string): string {
  return s.replace(/[\\^$*+?.()|[\]{}]/g, '\\$&');
}

/** Substitutes `$name`, `${name}` and `[[name]]`; throws on a variable it does not know. */
function substitute(expr: string, vars: Record<string, string>): string {
  return expr.replace(
    /\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)/g,
    (whole, a?: string, b?: string, c?: string) => {
      const name = a ?? b ?? c ?? '';
      const v = vars[name];
      if (v === undefined) throw new Error(`unknown variable ${whole} in ${expr}`);
      return v;
    },
  );
}

// ---------------------------------------------------------------------------------------------

/** Where promtool and prometheus are missing: the skip line (see requirements.ts). */
const noPrometheus = () =>
  skipUnless(missingCommand('prometheus', 'prometheus'), missingCommand('promtool', 'prometheus'));

test('deploy files: promtool check config and rules', { skip: noPrometheus() }, () => {
  const promtool = requireTool('promtool', 'prometheus');
  const config = run(promtool, ['check', 'config', PROM_CONFIG]);
  assert.equal(config.status, 0, `promtool check config ${PROM_CONFIG}:\n${config.output}`);
  assert.doesNotMatch(config.output, /WARNING/, config.output);
  const rules = run(promtool, ['check', 'rules', RULES]);
  assert.equal(rules.status, 0, `promtool check rules ${RULES}:\n${rules.output}`);
});

test(
  'deploy files: yamllint --strict on deploy/',
  { skip: skipUnless(missingCommand('yamllint', 'yamllint')) },
  () => {
    const yamllint = requireTool('yamllint', 'yamllint');
    const lint = run(yamllint, ['--strict', '-c', YAMLLINT_CONFIG, path.join(ROOT, 'deploy')]);
    assert.equal(lint.status, 0, `yamllint deploy/:\n${lint.output}`);
  },
);

test('deploy files: the Grafana dashboard structure (variables, panels, datasources, queries)', () => {
  const d = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
  assert.ok(d.schemaVersion >= 36, `schemaVersion ${d.schemaVersion}`);
  assert.ok(d.uid && d.title);
  const vars = new Map(d.templating.list.map((v) => [v.name, v]));
  assert.equal(vars.get('datasource')?.type, 'datasource');
  assert.equal(vars.get('datasource')?.query, 'prometheus');
  assert.match(variableQuery(vars.get('job') as Variable), /^label_values\(ringdiff_step, job\)$/);
  const worker = vars.get('worker') as Variable;
  assert.match(
    variableQuery(worker),
    /^label_values\(ringdiff_worker_step_seconds\{job="\$job".*\}, worker\)$/,
  );
  assert.ok(worker.multi && worker.includeAll);
  const panels = allPanels(d.panels);
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  for (const p of panels.filter((x) => x.type !== 'row')) {
    assert.deepEqual(
      p.datasource,
      { type: 'prometheus', uid: '${datasource}' },
      `datasource of "${p.title}"`,
    );
    assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has queries`);
    for (const t of p.targets ?? []) {
      assert.ok(t.expr, `panel "${p.title}" ${t.refId ?? ''} has an expr`);
      assert.equal(t.datasource?.uid ?? '${datasource}', '${datasource}', `datasource of "${p.title}"`);
    }
  }
});

test(
  'a real job scraped by a real Prometheus: every dashboard query has data, every alert parses',
  { skip: noPrometheus(), timeout: 240_000 },
  async (t: TestContext) => {
    const prometheusBin = requireTool('prometheus', 'prometheus');
    const promtool = requireTool('promtool', 'prometheus');
    const t0 = Date.now();
    const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
    const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-obs-'));
    const [metricsPort, promPort] = [await freePort(), await freePort()];
    const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    const procs: Spawned[] = [];
    let ok = false;

    const logs = () =>
      ['launch.log', 'logs/coordinator.log', 'logs/worker-0.log', 'prometheus.log']
        .map((f) => [f, tail(path.join(dir, f.startsWith('logs/') ? `run/${f}` : f), 15)] as const)
        .filter(([, text]) => text !== '')
        .map(([f, text]) => `\n--- ${f}:\n${text}`)
        .join('');
    t.after(async () => {
      // Prometheus first (we are done querying), then the job: a clean stop with a final checkpoint.
      const job = procs[0];
      const prom = procs[1];
      if (prom) await stopTree(prom, 5_000);
      if (job) {
        const code = await stopTree(job, 30_000);
        t.diagnostic(`launch stopped with exit code ${code ?? 'none (killed)'} at ${elapsed()}`);
      }
      if (ok) rmSync(dir, { recursive: true, force: true });
      else t.diagnostic(`logs kept in ${dir}`);
    });

    // The job: never finishes by itself within the test (the test stops it).
    const sets = [
      `run.name=${JOB}`,
      `run.out_dir=${path.join(dir, 'run')}`,
      'data.dataset=toy:8gaussians',
      'model.kind=mlp',
      'model.num_classes=0',
      'model.hidden=32',
      'diffusion.timesteps=100',
      'diffusion.timestep_sampler=loss-second-moment',
      'train.global_batch=64',
      'train.steps=1000000',
      'train.warmup_steps=10',
      'train.checkpoint_every=20',
      'train.ema_sync_every=5',
      'train.log_every=100',
      'sample.count=0',
      // The evaluation panel's series: the bound needs no feature network, toy data no test split.
      'eval.every=10',
      'eval.nll_count=8',
      'eval.nll_timesteps=2',
      'eval.ref=toy:8gaussians',
    ];
    procs.push(
      spawnLogged(
        process.execPath,
        [
          BIN,
          'launch',
          '--workers',
          '2',
          '--no-progress',
          '--metrics',
          `127.0.0.1:${metricsPort}`,
          ...sets.flatMap((s) => ['--set', s]),
        ],
        path.join(dir, 'launch.log'),
      ),
    );

    // Prometheus: the coordinator every second, the deploy rules evaluated every second.
    const promConfig = path.join(dir, 'prometheus.yml');
    writeFileSync(
      promConfig,
      JSON.stringify(
        {
          global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
          rule_files: [RULES],
          scrape_configs: [
            {
              job_name: SCRAPE_JOB,
              honor_labels: true,
              static_configs: [{ targets: [`127.0.0.1:${metricsPort}`] }],
            },
          ],
        },
        null,
        2,
      ),
    );
    const checked = run(promtool, ['check', 'config', promConfig]);
    assert.equal(checked.status, 0, `promtool check config (test config):\n${checked.output}`);
    procs.push(
      spawnLogged(
        prometheusBin,
        [
          `--config.file=${promConfig}`,
          `--storage.tsdb.path=${path.join(dir, 'tsdb')}`,
          `--web.listen-address=127.0.0.1:${promPort}`,
          '--log.level=warn',
        ],
        path.join(dir, 'prometheus.log'),
      ),
    );
    const prom = new Prometheus(`http://127.0.0.1:${promPort}`);
    const alive = (): void => {
      for (const p of procs)
        if (!p.running()) throw new Fatal(`${path.basename(p.log, '.log')} exited early`);
    };

    try {
      await until(
        'Prometheus to be ready',
        30_000,
        async () => {
          alive();
          const r = await fetch(`${prom.url}/-/ready`, { signal: AbortSignal.timeout(2000) });
          return r.ok ? true : undefined;
        },
        250,
        logs,
      );
      const metricsText = await until(
        'the coordinator to serve /metrics with training progress',
        90_000,
        async () => {
          alive();
          const r = await fetch(metricsUrl, { signal: AbortSignal.timeout(2000) });
          const text = await r.text();
          return /^ringdiff_checkpoint_last_step\{[^}]*\} [1-9]/m.test(text) &&
            /^ringdiff_worker_step_seconds\{/m.test(text)
            ? text
            : undefined;
        },
        500,
        logs,
      );
      t.diagnostic(`job training at ${elapsed()}`);

      // promtool must accept the exposition as it is (exit 0; lint findings make it exit 3).
      const lint = run(promtool, ['check', 'metrics'], metricsText);
      assert.equal(lint.status, 0, `promtool check metrics on the coordinator's /metrics:\n${lint.output}`);

      // Several scrapes with training in progress.
      await until(
        'Prometheus to scrape the job several times',
        60_000,
        async () => {
          alive();
          const n = await prom.scalar(`count_over_time(ringdiff_step{job="${JOB}"}[5m])`);
          const up = await prom.scalar(`up{job="${SCRAPE_JOB}"}`);
          return n >= 8 && up === 1 ? true : undefined;
        },
        500,
        logs,
      );
      t.diagnostic(`scraped at ${elapsed()}`);

      // Template variables, as Grafana would resolve them.
      const d = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
      const varDefs = new Map(d.templating.list.map((v) => [v.name, v]));
      const jobQ = parseLabelValues(variableQuery(varDefs.get('job') as Variable));
      const jobs = await prom.labelValues(jobQ.selector, jobQ.label);
      assert.ok(
        jobs.includes(JOB),
        `variable job = label_values(${jobQ.selector}, job) → ${jobs.join(', ')}`,
      );
      const workerVar = varDefs.get('worker') as Variable;
      const workerQ = parseLabelValues(variableQuery(workerVar));
      const workers = await until('both workers to report', 60_000, async () => {
        alive();
        const w = await prom.labelValues(substitute(workerQ.selector, { job: JOB }), workerQ.label);
        return w.length === 2 ? w : undefined;
      });

      // Every panel query, with $worker = all workers (multi-value regex) and = the "All" value.
      const base = { ...INTERVALS, job: JOB };
      const workerValues = [`(${workers.map(regexEscape).join('|')})`, workerVar.allValue ?? '.+'];
      const queries: Array<{ where: string; expr: string }> = [];
      for (const p of allPanels(d.panels))
        for (const tg of p.targets ?? []) {
          if (!tg.expr) continue;
          const exprs = tg.expr.includes('worker')
            ? workerValues.map((w) => substitute(tg.expr as string, { ...base, worker: w }))
            : [substitute(tg.expr, base)];
          for (const expr of new Set(exprs))
            queries.push({ where: `panel "${p.title}" ${tg.refId ?? ''}`, expr });
        }
      assert.ok(queries.length >= 30, `${queries.length} panel queries`);
      let empty: typeof queries = [];
      await until(
        'every panel query to return data',
        60_000,
        async () => {
          alive();
          empty = [];
          for (const q of queries) if ((await prom.count(q.expr)) === 0) empty.push(q);
          return empty.length === 0 ? true : undefined;
        },
        1000,
        () => `; still empty:\n${empty.map((q) => `  ${q.where}: ${q.expr}`).join('\n')}`,
      );
      t.diagnostic(`${queries.length} panel queries have data at ${elapsed()}`);

      // Annotation queries: valid PromQL (they have data only after events).
      for (const a of d.annotations?.list ?? [])
        if (a.expr)
          await prom
            .count(substitute(a.expr, base))
            .catch((e: Error) => assert.fail(`annotation "${a.name}": ${e.message}`));

      // Alerts: every expression is valid PromQL, evaluates without error in Prometheus, and the
      // ones that must not fire during healthy training return nothing.
      const ruleFile = parseYaml(readFileSync(RULES, 'utf8')) as RuleFile;
      const alerts = ruleFile.groups.flatMap((g) => g.rules).filter((r) => r.alert !== undefined);
      assert.ok(alerts.length >= 6, `${alerts.length} alerts`);
      for (const a of alerts) {
        const r = await prom.query(a.expr);
        assert.equal(
          r.status,
          'success',
          `alert ${a.alert}: ${a.expr}: ${r.errorType ?? ''} ${r.error ?? ''}`,
        );
        if (QUIET_ALERTS.includes(a.alert as string))
          assert.equal(await prom.count(a.expr), 0, `alert ${a.alert} fires on a healthy job: ${a.expr}`);
      }
      for (const name of QUIET_ALERTS)
        assert.ok(
          alerts.some((a) => a.alert === name),
          `alert ${name} exists`,
        );
      const loaded = await until('Prometheus to evaluate every rule', 30_000, async () => {
        const rules = await prom.rules();
        return rules.length === alerts.length && rules.every((r) => r.health !== 'unknown')
          ? rules
          : undefined;
      });
      for (const r of loaded)
        assert.equal(r.health, 'ok', `rule ${r.name} in Prometheus: ${r.lastError ?? ''}`);
      t.diagnostic(`${alerts.length} alerts checked at ${elapsed()}`);
      ok = true;
    } catch (e) {
      if (e instanceof Fatal) e.message += logs();
      throw e;
    }
  },
);
