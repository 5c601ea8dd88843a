/**
 * The deployment files of deploy/: the Kubernetes manifests (as written, as kustomize would render
 * them, and rendered by `kubectl kustomize` when kubectl is installed), the Docker Compose file and
 * the Dockerfiles, yamllint on all of their YAML (skipped where yamllint is not installed), and the
 * Slurm batch script (`bash -n`, and a real run with fake Slurm variables and
 * deploy/slurm/local-srun.sh: a coordinator and 2 workers of the real binary train a toy job on
 * loopback).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { freePort } from '../src/util/net.js';
import { missingCommand, skipUnless } from './requirements.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/ringdiff.js');
const DEPLOY = path.join(ROOT, 'deploy');
const K8S = path.join(DEPLOY, 'k8s');
const DOCKER = path.join(DEPLOY, 'docker');
const SLURM = path.join(DEPLOY, 'slurm');
const SBATCH = path.join(SLURM, 'ringdiff.sbatch');
const LOCAL_SRUN = path.join(SLURM, 'local-srun.sh');
const YAMLLINT_CONFIG = path.join(K8S, '.yamllint');

const tmp = mkdtempSync(path.join(tmpdir(), 'ringdiff-deploy-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// Kubernetes objects: the few fields the checks read.

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string };
    configMapKeyRef?: { name: string; key: string };
    fieldRef?: { fieldPath: string };
  };
}
interface Port {
  name?: string;
  port?: number;
  containerPort?: number;
  targetPort?: number | string;
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: Port[];
  resources?: { limits?: Record<string, string | number>; requests?: Record<string, string | number> };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  subdomain?: string;
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsUser?: number };
  volumes?: { name: string; configMap?: { name: string }; persistentVolumeClaim?: { claimName: string } }[];
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  spec?: {
    parallelism?: number;
    completions?: number;
    completionMode?: string;
    clusterIP?: string;
    selector?: Record<string, unknown>;
    ports?: Port[];
    template?: { metadata?: { labels?: Record<string, string> }; spec: PodSpec };
    endpoints?: { port?: string; honorLabels?: boolean }[];
    podMetricsEndpoints?: { port?: string; honorLabels?: boolean }[];
    podSelector?: { matchLabels?: Record<string, string> };
    policyTypes?: string[];
    ingress?: {
      from?: { podSelector?: { matchLabels?: Record<string, string> } }[];
      ports?: { port?: string | number }[];
    }[];
  };
}
interface Selector {
  kind: string;
  name: string;
  group?: string;
}
interface Kustomization {
  resources: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
  configMapGenerator?: { name: string; files?: string[]; literals?: string[] }[];
  replacements?: {
    source: Selector & { fieldPath: string };
    targets: { select: Selector; fieldPaths: string[] }[];
  }[];
  patches?: { target: Selector; patch?: string; path?: string }[];
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function asK8s(x: unknown, where: string): K8sObject {
  assert.ok(isRecord(x), `${where}: a document is not a mapping`);
  const meta = x.metadata;
  assert.ok(
    typeof x.apiVersion === 'string' &&
      typeof x.kind === 'string' &&
      isRecord(meta) &&
      typeof meta.name === 'string',
    `${where}: apiVersion, kind and metadata.name are required`,
  );
  return x as unknown as K8sObject;
}

/** Every document of a YAML file (or text), parsed; a syntax error fails the test. */
function yamlDocs(text: string, where: string): unknown[] {
  return parseAllDocuments(text)
    .filter((d) => d.contents !== null)
    .map((d) => {
      assert.deepEqual(d.errors, [], `${where}: ${d.errors.map((e) => e.message).join('; ')}`);
      return d.toJS() as unknown;
    });
}

function loadKustomization(): Kustomization {
  const k = parse(readFileSync(path.join(K8S, 'kustomization.yaml'), 'utf8')) as unknown;
  assert.ok(isRecord(k) && Array.isArray(k.resources), 'kustomization.yaml lists its resources');
  return k as unknown as Kustomization;
}

function loadResources(k: Kustomization): K8sObject[] {
  return k.resources.flatMap((f) =>
    yamlDocs(readFileSync(path.join(K8S, f), 'utf8'), `deploy/k8s/${f}`).map((d) => asK8s(d, f)),
  );
}

function groupOf(o: K8sObject): string {
  const i = o.apiVersion.indexOf('/');
  return i < 0 ? '' : o.apiVersion.slice(0, i);
}

function select(objs: K8sObject[], s: Selector): K8sObject[] {
  return objs.filter(
    (o) =>
      o.kind === s.kind && o.metadata.name === s.name && (s.group === undefined || groupOf(o) === s.group),
  );
}

function one(objs: K8sObject[], kind: string, name: string): K8sObject {
  const found = select(objs, { kind, name });
  assert.equal(found.length, 1, `exactly one ${kind} ${name}`);
  return found[0] as K8sObject;
}

function podSpec(o: K8sObject): PodSpec {
  const spec = o.spec?.template?.spec;
  assert.ok(spec, `${o.kind} ${o.metadata.name} has a pod template`);
  return spec;
}

function allContainers(objs: K8sObject[]): { owner: string; c: Container }[] {
  return objs
    .filter((o) => o.spec?.template?.spec)
    .flatMap((o) =>
      [...podSpec(o).containers, ...(podSpec(o).initContainers ?? [])].map((c) => ({
        owner: `${o.kind} ${o.metadata.name}`,
        c,
      })),
    );
}

function container(o: K8sObject, name?: string): Container {
  const cs = podSpec(o).containers;
  const c = name === undefined ? cs[0] : cs.find((x) => x.name === name);
  assert.ok(c, `${o.kind} ${o.metadata.name} has container ${name ?? '0'}`);
  return c;
}

/** `image` without its tag or digest. */
function imageName(image: string): string {
  const at = image.split('@')[0] as string;
  const slash = at.lastIndexOf('/');
  const colon = at.lastIndexOf(':');
  return colon > slash ? at.slice(0, colon) : at;
}

function labelsMatch(selector: Record<string, unknown>, labels: Record<string, string> | undefined): boolean {
  const entries = Object.entries(selector);
  return entries.length > 0 && entries.every(([k, v]) => labels?.[k] === v);
}

function matchLabels(o: K8sObject): Record<string, unknown> {
  const m = o.spec?.selector?.matchLabels;
  assert.ok(isRecord(m), `${o.kind} ${o.metadata.name} has spec.selector.matchLabels`);
  return m;
}

function env(c: Container, name: string): EnvVar {
  const e = c.env?.find((x) => x.name === name);
  assert.ok(e, `container ${c.name} sets ${name}`);
  return e;
}

/** Value of `--flag VALUE` in an argument list. */
function flag(args: string[], name: string): string {
  const i = args.indexOf(name);
  assert.ok(i >= 0 && i + 1 < args.length, `${name} VALUE in [${args.join(' ')}]`);
  return args[i + 1] as string;
}

/** Every VALUE of a repeated `--flag VALUE`. */
function flags(args: string[], name: string): string[] {
  return args.flatMap((a, i) => (a === name && i + 1 < args.length ? [args[i + 1] as string] : []));
}

/** Kubernetes' $(VAR) expansion of a container argument. */
function expandArg(arg: string, vars: Record<string, string>): string {
  return arg.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string) => vars[v] ?? m);
}

// ---------------------------------------------------------------------------------------------
// A local rendering of kustomization.yaml: exactly the features it uses (resources,
// configMapGenerator, images, replacements of plain field paths, JSON 6902 patches), so that the
// rendered invariants are checked even where kubectl is not installed.

function getAt(obj: unknown, keys: string[]): unknown {
  let cur = obj;
  for (const k of keys) {
    if (Array.isArray(cur)) cur = cur[Number(k)];
    else if (isRecord(cur)) cur = cur[k];
    else return undefined;
  }
  return cur;
}

function setAt(obj: unknown, keys: string[], value: unknown, where: string): void {
  const parent = getAt(obj, keys.slice(0, -1));
  const last = keys.at(-1) as string;
  if (Array.isArray(parent)) parent[Number(last)] = value;
  else if (isRecord(parent)) parent[last] = value;
  else assert.fail(`${where}: no field at ${keys.join('.')}`);
}

function pointer(p: string): string[] {
  return p
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function renderLocally(k: Kustomization): K8sObject[] {
  const objs = loadResources(k);
  for (const g of k.configMapGenerator ?? []) {
    const data: Record<string, string> = {};
    for (const f of g.files ?? []) data[path.basename(f)] = readFileSync(path.join(K8S, f), 'utf8');
    for (const l of g.literals ?? []) {
      const i = l.indexOf('=');
      data[l.slice(0, i)] = l.slice(i + 1);
    }
    objs.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: g.name }, data });
  }
  for (const img of k.images ?? []) {
    for (const { c } of allContainers(objs)) {
      if (imageName(c.image) === img.name)
        c.image = `${img.newName ?? img.name}${img.newTag ? `:${img.newTag}` : ''}`;
    }
  }
  for (const r of k.replacements ?? []) {
    const [src] = select(objs, r.source);
    assert.ok(src, `replacement source ${r.source.kind} ${r.source.name} exists`);
    const value = getAt(src, r.source.fieldPath.split('.'));
    assert.notEqual(value, undefined, `replacement source field ${r.source.fieldPath} exists`);
    for (const t of r.targets) {
      const targets = select(objs, t.select);
      assert.ok(targets.length > 0, `replacement target ${t.select.kind} ${t.select.name} exists`);
      for (const o of targets) {
        for (const fp of t.fieldPaths) {
          const keys = fp.split('.');
          const cur = getAt(o, keys);
          assert.notEqual(cur, undefined, `replacement target field ${fp} exists in ${o.metadata.name}`);
          // Like kustomize: a string replacing a number keeps the target's type.
          setAt(o, keys, typeof cur === 'number' ? Number(value) : value, fp);
        }
      }
    }
  }
  for (const p of k.patches ?? []) {
    const text = p.patch ?? readFileSync(path.join(K8S, p.path ?? ''), 'utf8');
    const ops = parse(text) as unknown;
    assert.ok(Array.isArray(ops), 'the patches are JSON 6902 operation lists');
    const targets = select(objs, p.target);
    assert.ok(targets.length > 0, `patch target ${p.target.kind} ${p.target.name} exists`);
    for (const op of ops as { op: string; path: string; value?: unknown }[]) {
      for (const o of targets) {
        const keys = pointer(op.path);
        if (op.op === 'replace')
          assert.notEqual(getAt(o, keys), undefined, `patch path ${op.path} exists (replace)`);
        assert.ok(op.op === 'replace' || op.op === 'add', `patch op ${op.op} is replace or add`);
        setAt(o, keys, op.value, op.path);
      }
    }
  }
  return objs;
}

function kubectlAvailable(): boolean {
  const r = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

function renderWithKubectl(): K8sObject[] {
  const r = spawnSync('kubectl', ['kustomize', K8S], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, `kubectl kustomize deploy/k8s failed:\n${r.stderr}`);
  return yamlDocs(r.stdout, 'kubectl kustomize').map((d) => asK8s(d, 'kubectl kustomize'));
}

/** The worker count: the `workers=N` literal of the ringdiff-job ConfigMap generator. */
function workerCount(k: Kustomization): number {
  const lit = k.configMapGenerator
    ?.find((g) => g.name === 'ringdiff-job')
    ?.literals?.find((l) => l.startsWith('workers='));
  assert.ok(lit, 'kustomization.yaml: configMapGenerator ringdiff-job has a workers=N literal');
  const n = Number(lit.slice('workers='.length));
  assert.ok(Number.isInteger(n) && n >= 1, `workers=${n} is a positive integer`);
  return n;
}

/** The JSON-patched GPU count of the worker Job. */
function gpuPatch(k: Kustomization): unknown {
  for (const p of k.patches ?? []) {
    if (p.target.kind !== 'Job') continue;
    const ops = parse(p.patch ?? '') as { path: string; value?: unknown }[];
    const op = ops.find((o) => o.path.endsWith('/resources/limits/nvidia.com~1gpu'));
    if (op) return op.value;
  }
  return assert.fail('kustomization.yaml: a patch sets the workers’ nvidia.com/gpu limit');
}

/** The resolved config the coordinator runs with: the real binary's `config --print`. */
function coordinatorConfig(objs: K8sObject[], coord: Container, dir: string): Record<string, unknown> {
  const vars: Record<string, string> = {};
  for (const e of coord.env ?? []) {
    if (e.value !== undefined) vars[e.name] = e.value;
    const ref = e.valueFrom?.configMapKeyRef;
    if (ref) {
      const value = one(objs, 'ConfigMap', ref.name).data?.[ref.key];
      assert.ok(value !== undefined, `ConfigMap ${ref.name} has key ${ref.key}`);
      vars[e.name] = value;
    }
  }
  const args = (coord.args ?? []).map((a) => expandArg(a, vars));
  // The --config file comes from a ConfigMap volume.
  const configPath = flag(args, '--config');
  const mount = coord.volumeMounts?.find((m) => m.mountPath === path.dirname(configPath));
  assert.ok(mount, `the coordinator mounts ${path.dirname(configPath)}`);
  const coordObj = objs.find((o) => o.spec?.template?.spec.containers.includes(coord)) as K8sObject;
  const vol = podSpec(coordObj).volumes?.find((v) => v.name === mount.name);
  assert.ok(vol?.configMap, `volume ${mount.name} is a ConfigMap`);
  const text = one(objs, 'ConfigMap', vol.configMap.name).data?.[path.basename(configPath)];
  assert.ok(text !== undefined, `ConfigMap ${vol.configMap.name} has ${path.basename(configPath)}`);
  const file = path.join(dir, 'job.yaml');
  writeFileSync(file, text);
  const sets = flags(args, '--set').flatMap((s) => ['--set', s]);
  const r = spawnSync(process.execPath, [BIN, 'config', '--print', '--config', file, ...sets], {
    encoding: 'utf8',
    timeout: 60000,
  });
  assert.equal(r.status, 0, `ringdiff config --print on the rendered job config failed:\n${r.stderr}`);
  const cfg = parse(r.stdout) as unknown;
  assert.ok(isRecord(cfg));
  return cfg;
}

/** The invariants of a rendered deploy/k8s. */
function checkRendered(objs: K8sObject[], k: Kustomization, what: string): void {
  const img = k.images?.find((i) => i.name === 'ringdiff');
  assert.ok(img?.newName, 'kustomization.yaml sets the ringdiff image (images: name ringdiff, newName)');
  const image = `${img.newName}${img.newTag ? `:${img.newTag}` : ''}`;
  const containers = allContainers(objs);
  assert.ok(containers.length >= 2, `${what}: containers found`);
  for (const { owner, c } of containers) assert.equal(c.image, image, `${what}: ${owner}/${c.name} image`);

  const deploy = one(objs, 'Deployment', 'ringdiff-coordinator');
  const job = one(objs, 'Job', 'ringdiff-worker');
  const svc = one(objs, 'Service', 'ringdiff-coordinator');
  const coord = container(deploy, 'coordinator');
  const worker = container(job, 'worker');
  const coordLabels = deploy.spec?.template?.metadata?.labels;
  const workerLabels = job.spec?.template?.metadata?.labels;

  // The coordinator Service: 7070 and 9464, onto the coordinator pods only.
  const sel = svc.spec?.selector ?? {};
  assert.ok(labelsMatch(sel, coordLabels), `${what}: the coordinator Service selects the coordinator pods`);
  assert.ok(!labelsMatch(sel, workerLabels), `${what}: the coordinator Service does not select workers`);
  assert.ok(labelsMatch(matchLabels(deploy), coordLabels), `${what}: the Deployment selects its pods`);
  const byPort = new Map((svc.spec?.ports ?? []).map((p) => [p.port, p]));
  for (const [port, name] of [
    [7070, 'grpc'],
    [9464, 'metrics'],
  ] as const) {
    const p = byPort.get(port);
    assert.ok(p, `${what}: the coordinator Service exposes ${port}`);
    assert.equal(p.name, name, `${what}: Service port ${port} is named ${name}`);
    const target = coord.ports?.find((cp) => cp.name === p.targetPort || cp.containerPort === p.targetPort);
    assert.equal(target?.containerPort, port, `${what}: Service port ${port} reaches container port ${port}`);
  }
  const coordArgs = coord.args ?? [];
  assert.equal(flag(coordArgs, '--listen'), '0.0.0.0:7070');
  assert.equal(flag(coordArgs, '--metrics'), '0.0.0.0:9464');

  // Workers dial the coordinator's Service by its DNS name.
  const wargs = worker.args ?? [];
  assert.equal(wargs[0], 'worker');
  const grpcPort = byPort.get(7070)?.port;
  assert.equal(
    flag(wargs, '--coordinator'),
    `${svc.metadata.name}:${grpcPort}`,
    `${what}: workers dial the Service`,
  );
  assert.equal(coordArgs[0], 'coordinator');
  for (const c of [coord, worker])
    assert.deepEqual(c.command, ['ringdiff'], `${what}: ${c.name} runs ringdiff`);

  // The ring: bind 7100, advertise the pod IP, group by node; a headless Service of the peers.
  assert.equal(flag(wargs, '--ring-bind'), 'tcp://0.0.0.0:7100');
  assert.equal(flag(wargs, '--ring-advertise'), 'tcp://$(POD_IP):7100');
  assert.equal(flag(wargs, '--host'), '$(NODE_NAME)');
  assert.equal(env(worker, 'POD_IP').valueFrom?.fieldRef?.fieldPath, 'status.podIP');
  assert.equal(env(worker, 'NODE_NAME').valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
  assert.ok(worker.ports?.some((p) => p.containerPort === 7100 && p.name === 'ring'));
  const headless = one(objs, 'Service', podSpec(job).subdomain ?? '(no subdomain)');
  assert.equal(headless.spec?.clusterIP, 'None', `${what}: the ring peers' Service is headless`);
  assert.ok(
    labelsMatch(headless.spec?.selector ?? {}, workerLabels),
    `${what}: headless Service selects workers`,
  );
  assert.ok(!labelsMatch(headless.spec?.selector ?? {}, coordLabels));
  assert.ok(headless.spec?.ports?.some((p) => p.port === 7100));

  // NetworkPolicies: gRPC and ring ports only from workers; metrics from anywhere; each named port exists.
  for (const [policy, pod, labels, closed] of [
    ['ringdiff-coordinator', coord, coordLabels, 'grpc'],
    ['ringdiff-workers', worker, workerLabels, 'ring'],
  ] as const) {
    const np = one(objs, 'NetworkPolicy', policy);
    assert.ok(
      labelsMatch(np.spec?.podSelector?.matchLabels ?? {}, labels),
      `${what}: ${policy} selects its pods`,
    );
    assert.deepEqual(np.spec?.policyTypes, ['Ingress']);
    const rules = np.spec?.ingress ?? [];
    const forPort = (name: string) => rules.filter((r) => r.ports?.some((p) => p.port === name));
    const closedRules = forPort(closed);
    assert.ok(closedRules.length > 0, `${what}: ${policy} has a rule for ${closed}`);
    for (const r of closedRules) {
      assert.ok(r.from && r.from.length > 0, `${what}: ${policy}: ${closed} is not open to everyone`);
      for (const f of r.from)
        assert.ok(
          labelsMatch(f.podSelector?.matchLabels ?? {}, workerLabels) &&
            !labelsMatch(f.podSelector?.matchLabels ?? {}, coordLabels),
          `${what}: ${policy}: ${closed} is open to workers only`,
        );
    }
    assert.ok(
      forPort('metrics').some((r) => r.from === undefined),
      `${what}: ${policy}: metrics stays open to Prometheus`,
    );
    for (const r of rules)
      for (const p of r.ports ?? [])
        assert.ok(
          pod.ports?.some((cp) => cp.name === p.port),
          `${what}: ${policy}: port ${String(p.port)} is a named port of ${pod.name}`,
        );
  }

  // One join token: the same Secret key on both sides; no token value in the rendered objects.
  const ct = env(coord, 'RINGDIFF_TOKEN').valueFrom?.secretKeyRef;
  const wt = env(worker, 'RINGDIFF_TOKEN').valueFrom?.secretKeyRef;
  assert.ok(ct && wt, `${what}: RINGDIFF_TOKEN comes from a Secret`);
  assert.deepEqual(ct, wt, `${what}: coordinator and workers read the same Secret key`);
  for (const o of objs.filter((x) => x.kind === 'Secret'))
    assert.ok(
      !o.data?.[ct.key] && !o.stringData?.[ct.key],
      `${what}: no join token is kept in the manifests`,
    );

  // GPUs: an Indexed Job whose workers request nvidia.com/gpu (limits), as the patch says.
  assert.equal(job.spec?.completionMode, 'Indexed');
  const gpus = worker.resources?.limits?.['nvidia.com/gpu'];
  assert.ok(gpus !== undefined, `${what}: workers have an nvidia.com/gpu limit`);
  assert.equal(Number(gpus), Number(gpuPatch(k)), `${what}: the GPU patch sets the limit`);
  assert.ok(Number(gpus) >= 1, `${what}: workers request a GPU`);
  assert.equal(coord.resources?.limits?.['nvidia.com/gpu'], undefined, `${what}: no GPU for the coordinator`);
  assert.equal(env(coord, 'CUDA_VISIBLE_DEVICES').value, '');

  // The worker count: Job parallelism = completions = the config's min_workers = kustomization's.
  const n = workerCount(k);
  assert.equal(job.spec?.parallelism, n, `${what}: Job parallelism = workers=${n}`);
  assert.equal(job.spec?.completions, n, `${what}: Job completions = workers=${n}`);
  const dir = mkdtempSync(path.join(tmp, 'cfg-'));
  const cfg = coordinatorConfig(objs, coord, dir);
  const cluster = cfg.cluster as Record<string, unknown>;
  const run = cfg.run as Record<string, unknown>;
  assert.equal(cluster.min_workers, n, `${what}: the coordinator's cluster.min_workers = workers=${n}`);
  // Pod termination sends SIGTERM to every pod at once: the kubelet's SIGKILL must not come before
  // the cooperative stop is over (workers: cluster.stop_grace_s; the coordinator: that, then the
  // final checkpoint's write).
  const grace = Number(cluster.stop_grace_s);
  assert.ok(grace > 0, `${what}: cluster.stop_grace_s ${String(cluster.stop_grace_s)}`);
  const wGrace = podSpec(job).terminationGracePeriodSeconds ?? 30;
  const cGrace = podSpec(deploy).terminationGracePeriodSeconds ?? 30;
  assert.ok(
    wGrace >= grace + 5,
    `${what}: workers' terminationGracePeriodSeconds ${wGrace} < stop_grace_s ${grace} + 5`,
  );
  assert.ok(
    cGrace >= grace + 30,
    `${what}: coordinator's terminationGracePeriodSeconds ${cGrace} < stop_grace_s ${grace} + 30 (checkpoint write)`,
  );
  // Checkpoints go to the coordinator's PersistentVolumeClaim.
  const runs = coord.volumeMounts?.find((m) => String(run.out_dir).startsWith(`${m.mountPath}/`));
  assert.ok(runs, `${what}: run.out_dir ${String(run.out_dir)} is on a volume`);
  assert.ok(podSpec(deploy).volumes?.find((v) => v.name === runs.name)?.persistentVolumeClaim);
  // Workers mount the same job config (their run.name labels their metrics).
  const wcfg = flag(wargs, '--config');
  const wmount = worker.volumeMounts?.find((m) => m.mountPath === path.dirname(wcfg));
  const wvol = podSpec(job).volumes?.find((v) => v.name === wmount?.name);
  const cvol = podSpec(deploy).volumes?.find((v) => v.configMap);
  assert.equal(wvol?.configMap?.name, cvol?.configMap?.name, `${what}: workers mount the job ConfigMap`);

  // Prometheus Operator: the ServiceMonitor scrapes the coordinator Service's metrics port, the
  // PodMonitor the workers' metrics container port; both keep ringdiff's job label.
  const sm = objs.filter((o) => o.kind === 'ServiceMonitor');
  const pm = objs.filter((o) => o.kind === 'PodMonitor');
  assert.equal(sm.length, 1, `${what}: one ServiceMonitor`);
  assert.equal(pm.length, 1, `${what}: one PodMonitor`);
  for (const m of [...sm, ...pm]) assert.equal(m.apiVersion, 'monitoring.coreos.com/v1');
  const smo = sm[0] as K8sObject;
  const pmo = pm[0] as K8sObject;
  assert.ok(
    labelsMatch(matchLabels(smo), svc.metadata.labels),
    `${what}: ServiceMonitor selects the Service`,
  );
  assert.ok(!labelsMatch(matchLabels(smo), headless.metadata.labels));
  for (const e of smo.spec?.endpoints ?? []) {
    assert.ok(
      svc.spec?.ports?.some((p) => p.name === e.port && p.port === 9464),
      `ServiceMonitor port ${e.port}`,
    );
    assert.equal(e.honorLabels, true);
  }
  assert.ok(labelsMatch(matchLabels(pmo), workerLabels), `${what}: PodMonitor selects the worker pods`);
  assert.ok(
    !labelsMatch(matchLabels(pmo), coordLabels),
    `${what}: PodMonitor does not select the coordinator`,
  );
  const wmetrics = worker.ports?.find((p) => p.name === 'metrics');
  assert.equal(
    flag(wargs, '--metrics'),
    `0.0.0.0:${wmetrics?.containerPort}`,
    `${what}: worker metrics port`,
  );
  for (const e of pmo.spec?.podMetricsEndpoints ?? []) {
    assert.equal(e.port, 'metrics');
    assert.equal(e.honorLabels, true);
  }
  assert.ok((smo.spec?.endpoints ?? []).length > 0 && (pmo.spec?.podMetricsEndpoints ?? []).length > 0);
}

test('k8s: the raw manifests use the image name, Secret and ConfigMap that kustomization.yaml manages', () => {
  const k = loadKustomization();
  const objs = loadResources(k);
  const img = k.images?.find((i) => i.name === 'ringdiff');
  assert.ok(img, 'kustomization.yaml has an images entry for ringdiff');
  for (const { owner, c } of allContainers(objs))
    assert.equal(imageName(c.image), img.name, `${owner}/${c.name} uses the image name kustomize sets`);
  // The Secret of the token: secret.yaml (created by hand, not by kustomize) names the key the pods read.
  assert.ok(!k.resources.includes('secret.yaml'), 'the token Secret is not applied by kustomize');
  const secret = yamlDocs(readFileSync(path.join(K8S, 'secret.yaml'), 'utf8'), 'secret.yaml').map((d) =>
    asK8s(d, 'secret.yaml'),
  );
  const s = one(secret, 'Secret', 'ringdiff-token');
  for (const { c } of allContainers(objs)) {
    const ref = env(c, 'RINGDIFF_TOKEN').valueFrom?.secretKeyRef;
    assert.equal(ref?.name, s.metadata.name, `${c.name}: token Secret`);
    assert.ok(ref && s.stringData && ref.key in s.stringData, `${c.name}: token key in secret.yaml`);
    assert.equal(s.stringData?.[ref.key], '', 'secret.yaml keeps no token value');
  }
  // The ConfigMap the pods reference is generated by kustomize, with the job config and the count.
  const gen = k.configMapGenerator?.find((g) => g.name === 'ringdiff-job');
  assert.ok(gen?.files?.includes('job.yaml'));
  const job = one(objs, 'Job', 'ringdiff-worker');
  const rep = k.replacements?.find(
    (r) => r.source.name === 'ringdiff-job' && r.source.fieldPath === 'data.workers',
  );
  assert.ok(rep, 'a replacement copies data.workers');
  const fields = rep.targets.filter((t) => select([job], t.select).length > 0).flatMap((t) => t.fieldPaths);
  assert.deepEqual(
    fields.sort(),
    ['spec.completions', 'spec.parallelism'],
    'the count sets parallelism and completions',
  );
  const coord = container(one(objs, 'Deployment', 'ringdiff-coordinator'), 'coordinator');
  assert.deepEqual(env(coord, 'RINGDIFF_WORKERS').valueFrom?.configMapKeyRef, {
    name: 'ringdiff-job',
    key: 'workers',
  });
  assert.ok((coord.args ?? []).includes('cluster.min_workers=$(RINGDIFF_WORKERS)'));
  // The job config leaves min_workers to that wiring (one place for the count).
  const jobCfg = parse(readFileSync(path.join(K8S, 'job.yaml'), 'utf8')) as {
    cluster?: Record<string, unknown>;
  };
  assert.equal(jobCfg.cluster?.min_workers, undefined, 'job.yaml does not set cluster.min_workers itself');
});

test('k8s: invariants after rendering kustomization.yaml (locally, and with kubectl kustomize when installed)', (t) => {
  const k = loadKustomization();
  checkRendered(renderLocally(k), k, 'local rendering');
  if (!kubectlAvailable()) {
    t.diagnostic('kubectl is not installed: checked the local rendering of kustomization.yaml only');
    return;
  }
  const objs = renderWithKubectl();
  checkRendered(objs, k, 'kubectl kustomize');
  // kustomize's hash suffix: the references follow the generated ConfigMap's name.
  const cm = objs.filter((o) => o.kind === 'ConfigMap');
  assert.equal(cm.length, 1);
  assert.match((cm[0] as K8sObject).metadata.name, /^ringdiff-job-[a-z0-9]+$/);
});

// ---------------------------------------------------------------------------------------------
// Docker

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  networks?: Record<string, { aliases?: string[] } | null>;
}

function loadCompose(): Record<string, ComposeService> {
  const doc = parse(readFileSync(path.join(DOCKER, 'docker-compose.yml'), 'utf8'), {
    merge: true,
  }) as unknown;
  assert.ok(isRecord(doc) && isRecord(doc.services), 'docker-compose.yml has services');
  return doc.services as Record<string, ComposeService>;
}

test('docker compose: a coordinator, two workers, Prometheus and Grafana wired to each other', (t) => {
  const services = loadCompose();
  const ringdiff = Object.entries(services).filter(
    ([, s]) => s.command?.[0] === 'coordinator' || s.command?.[0] === 'worker',
  );
  const coords = ringdiff.filter(([, s]) => s.command?.[0] === 'coordinator');
  const workers = ringdiff.filter(([, s]) => s.command?.[0] === 'worker');
  assert.equal(coords.length, 1, 'one coordinator');
  assert.equal(workers.length, 2, 'two workers');
  assert.ok(services.prometheus && services.grafana, 'prometheus and grafana services');
  const [coordName, coord] = coords[0] as [string, ComposeService];
  const cargs = coord.command ?? [];
  assert.equal(flag(cargs, '--listen'), '0.0.0.0:7070');
  assert.equal(flag(cargs, '--metrics'), '0.0.0.0:9464');
  assert.ok(flags(cargs, '--set').includes(`cluster.min_workers=${workers.length}`), 'min_workers = workers');
  const images = new Set(ringdiff.map(([, s]) => s.image));
  assert.equal(images.size, 1, 'every ringdiff container runs one image');
  for (const [name, s] of ringdiff) {
    assert.match(
      s.environment?.RINGDIFF_TOKEN ?? '',
      /^\$\{RINGDIFF_TOKEN:\?/,
      `${name}: token from the environment`,
    );
    assert.equal(s.build?.dockerfile, 'deploy/docker/Dockerfile.cpu');
    assert.equal(
      path.resolve(DOCKER, s.build?.context ?? ''),
      ROOT,
      `${name}: the build context is the repo root`,
    );
  }
  for (const [name, s] of workers) {
    const args = s.command ?? [];
    assert.equal(flag(args, '--coordinator'), `${coordName}:7070`);
    const port = /:(\d+)$/.exec(flag(args, '--ring-bind'))?.[1];
    assert.equal(
      flag(args, '--ring-advertise'),
      `tcp://${name}:${port}`,
      `${name} advertises its service name`,
    );
    assert.equal(flag(args, '--metrics'), '0.0.0.0:9465');
  }
  // Bind mounts exist (the Prometheus and Grafana files are maintained beside this directory).
  const mounts = new Map<string, string>();
  for (const [name, s] of Object.entries(services)) {
    for (const v of s.volumes ?? []) {
      const [src, dst] = v.split(':') as [string, string];
      if (!src.startsWith('.')) continue;
      assert.ok(existsSync(path.resolve(DOCKER, src)), `${name}: mount source ${src} exists`);
      mounts.set(`${name}:${path.resolve(DOCKER, src)}`, dst);
    }
  }
  // Grafana: the dashboards land where the provisioning looks; the data source is a service here.
  const provDir = path.join(DEPLOY, 'grafana/provisioning');
  for (const f of readdirSync(path.join(provDir, 'dashboards')).filter((x) => /\.ya?ml$/.test(x))) {
    const prov = parse(readFileSync(path.join(provDir, 'dashboards', f), 'utf8')) as {
      providers?: { options?: { path?: string } }[];
    };
    for (const p of prov.providers ?? []) {
      assert.equal(
        p.options?.path,
        mounts.get(`grafana:${path.join(DEPLOY, 'grafana/dashboards')}`),
        `grafana/provisioning/dashboards/${f}: its path is where compose mounts the dashboards`,
      );
    }
  }
  const hosts = new Map<string, string>();
  for (const [name, s] of Object.entries(services)) {
    hosts.set(name, name);
    for (const a of s.networks?.default?.aliases ?? []) hosts.set(a, name);
  }
  for (const f of readdirSync(path.join(provDir, 'datasources')).filter((x) => /\.ya?ml$/.test(x))) {
    const ds = parse(readFileSync(path.join(provDir, 'datasources', f), 'utf8')) as {
      datasources?: { url?: string }[];
    };
    for (const d of ds.datasources ?? []) {
      const host = d.url ? new URL(d.url).hostname : '';
      assert.ok(hosts.has(host), `grafana data source ${d.url}: ${host} is a compose service`);
    }
  }
  // Prometheus: the ringdiff scrape targets are containers of this file, on their metrics ports.
  const metricsPort = (svc: string): string => {
    const args = services[svc]?.command ?? [];
    return /:(\d+)$/.exec(flag(args, '--metrics'))?.[1] ?? '';
  };
  const prom = parse(readFileSync(path.join(DEPLOY, 'prometheus/prometheus.yml'), 'utf8')) as {
    scrape_configs?: {
      job_name: string;
      static_configs?: { targets: string[] }[];
      file_sd_configs?: { files: string[] }[];
    }[];
  };
  const targets: string[] = [];
  for (const sc of (prom.scrape_configs ?? []).filter((s) => s.job_name.startsWith('ringdiff'))) {
    for (const st of sc.static_configs ?? []) targets.push(...st.targets);
    for (const fsd of sc.file_sd_configs ?? []) {
      for (const pattern of fsd.files) {
        const dir = path.join(DEPLOY, 'prometheus', path.dirname(pattern));
        const re = new RegExp(`^${path.basename(pattern).replace(/\./g, '\\.').replace(/\*/g, '.*')}$`);
        for (const f of existsSync(dir) ? readdirSync(dir).filter((x) => re.test(x)) : []) {
          const groups = parse(readFileSync(path.join(dir, f), 'utf8')) as { targets: string[] }[] | null;
          for (const g of groups ?? []) targets.push(...g.targets);
        }
      }
    }
  }
  assert.ok(targets.length > 0, 'prometheus.yml has ringdiff targets');
  for (const target of targets) {
    const [host, port] = target.split(':') as [string, string];
    const svc = hosts.get(host);
    assert.ok(svc, `Prometheus target ${target}: ${host} is a compose service or alias`);
    assert.equal(port, metricsPort(svc), `Prometheus target ${target} is ${svc}'s metrics port`);
  }
  // docker compose's own validation, where a compose binary is installed.
  const compose = [['docker', 'compose'], ['docker-compose']].find(([cmd, ...sub]) => {
    const r = spawnSync(cmd as string, [...sub, 'version'], { encoding: 'utf8' });
    return !r.error && r.status === 0;
  });
  if (!compose) {
    t.diagnostic('no docker compose here: the compose file was checked as YAML only');
    return;
  }
  for (const files of [['docker-compose.yml'], ['docker-compose.yml', 'docker-compose.gpu.yml']]) {
    const r: SpawnSyncReturns<string> = spawnSync(
      compose[0] as string,
      [...compose.slice(1), ...files.flatMap((f) => ['-f', path.join(DOCKER, f)]), 'config', '-q'],
      { encoding: 'utf8', env: { ...process.env, RINGDIFF_TOKEN: 'x'.repeat(32) }, timeout: 60000 },
    );
    assert.equal(r.status, 0, `${compose.join(' ')} config (${files.join(' + ')}):\n${r.stderr}`);
  }
});

test('Dockerfiles: pinned bases, npm ci, the entry point and user the manifests rely on', () => {
  const gpu = readFileSync(path.join(DOCKER, 'Dockerfile.gpu'), 'utf8');
  const cpu = readFileSync(path.join(DOCKER, 'Dockerfile.cpu'), 'utf8');
  // tfjs-node-gpu's libtensorflow needs CUDA 11.2 and cuDNN 8.
  assert.match(gpu, /^ARG BASE=nvidia\/cuda:11\.2\.\d+-cudnn8-runtime-ubuntu20\.04$/m);
  assert.match(gpu, /^FROM \$\{BASE\} AS node$/m);
  assert.match(gpu, /deb\.nodesource\.com\/node_\$\{NODE_MAJOR\}\.x/);
  assert.match(gpu, /^ARG NODE_MAJOR=20$/m);
  assert.match(gpu, /tfjs-node-gpu\/lib\/napi-v\*\/tfjs_binding\.node/, 'the GPU build checks the binding');
  assert.match(cpu, /^FROM node:20-bookworm-slim AS build$/m);
  // The addon's GEMM is its own: a compiler is all the build needs, and the image no BLAS.
  assert.match(cpu, /install -y --no-install-recommends python3 make g\+\+ \\$/m);
  assert.doesNotMatch(cpu, /openblas/i);
  assert.match(
    cpu,
    /test -f native\/build\/Release\/ringdiff_native\.node/,
    'the CPU build checks the addon',
  );
  const k = loadKustomization();
  const pods = renderLocally(k).filter((o) => o.spec?.template?.spec);
  for (const [name, text] of [
    ['Dockerfile.gpu', gpu],
    ['Dockerfile.cpu', cpu],
  ] as const) {
    assert.match(text, /RUN npm ci /, `${name} runs npm ci`);
    assert.match(text, /^ENTRYPOINT \["ringdiff"\]$/m, `${name}: entry point`);
    assert.match(
      text,
      /ln -s \/app\/bin\/ringdiff\.js \/usr\/local\/bin\/ringdiff/,
      `${name}: ringdiff on PATH`,
    );
    const uid = Number(/^USER (\d+)/m.exec(text)?.[1]);
    for (const o of pods)
      assert.equal(podSpec(o).securityContext?.runAsUser, uid, `${name}: uid of ${o.metadata.name}`);
    // The build context is the repo root: the ignore file must keep what `npm ci` builds from.
    const ignore = readFileSync(path.join(DOCKER, `${name}.dockerignore`), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const needed of [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'bin',
      'src',
      'proto',
      'native',
    ])
      assert.ok(!ignore.includes(needed), `${name}.dockerignore keeps ${needed}`);
    for (const f of [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'bin/ringdiff.js',
      'proto',
      'native/build.mjs',
    ])
      assert.ok(existsSync(path.join(ROOT, f)), `${f} exists for the image build`);
    assert.ok(
      ignore.includes('**/node_modules') && ignore.includes('.git'),
      `${name}.dockerignore drops node_modules`,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// yamllint and bash -n

test(
  'yamllint passes on deploy/k8s, deploy/docker and deploy/slurm',
  { skip: skipUnless(missingCommand('yamllint', 'yamllint')) },
  () => {
    const r = spawnSync(
      'yamllint',
      ['-c', YAMLLINT_CONFIG, '-f', 'parsable', '--strict', path.join(DEPLOY, 'k8s'), DOCKER, SLURM],
      { encoding: 'utf8', cwd: ROOT, timeout: 60000 },
    );
    assert.equal(r.status, 0, `yamllint found problems:\n${r.stdout}${r.stderr}`);
    // It did look at the files.
    const listed = spawnSync('yamllint', ['-c', YAMLLINT_CONFIG, '--list-files', K8S, DOCKER], {
      encoding: 'utf8',
    });
    if (listed.status === 0) {
      for (const f of ['kustomization.yaml', 'coordinator.yaml', 'workers.yaml', 'docker-compose.yml'])
        assert.ok(listed.stdout.includes(f), `yamllint checks ${f}`);
    }
  },
);

test('the Slurm script and the srun stand-in pass bash -n', () => {
  for (const f of [SBATCH, LOCAL_SRUN]) {
    const r = spawnSync('bash', ['-n', f], { encoding: 'utf8' });
    assert.equal(r.status, 0, `bash -n ${path.relative(ROOT, f)}:\n${r.stderr}`);
  }
  const sbatch = readFileSync(SBATCH, 'utf8');
  assert.match(sbatch, /^#SBATCH --gpus-per-node=\d+$/m);
  assert.match(sbatch, /^#SBATCH --signal=B:TERM@\d+$/m, 'Slurm asks for a checkpoint before the time limit');
});

// ---------------------------------------------------------------------------------------------
// The Slurm script for real, outside Slurm

test('ringdiff.sbatch with fake Slurm variables and local-srun.sh trains a toy job with 2 workers', async () => {
  const out = path.join(tmp, 'slurm-run');
  const config = path.join(tmp, 'slurm-job.yaml');
  writeFileSync(
    config,
    [
      'run: { name: slurm-toy, out_dir: ' + JSON.stringify(out) + ' }',
      'data: { dataset: "toy:8gaussians", size: 4096 }',
      'model: { kind: mlp, num_classes: 0, hidden: 32, layers: 2 }',
      'diffusion: { timesteps: 100 }',
      'train: { steps: 20, global_batch: 32, warmup_steps: 2, checkpoint_every: 10, ema_sync_every: 5, log_every: 5 }',
      'sample: { count: 0 }',
      'cluster: { heartbeat_timeout_ms: 10000, ring_timeout_ms: 20000 }',
      '',
    ].join('\n'),
  );
  const port = await freePort();
  const scriptEnv: Record<string, string> = {
    SLURM_JOB_ID: '4242',
    SLURM_JOB_NAME: 'ringdiff',
    SLURM_JOB_NODELIST: 'localhost',
    SLURM_NNODES: '1',
    SLURM_NTASKS: '2',
    SLURM_NTASKS_PER_NODE: '2',
    SCONTROL: path.join(tmp, 'no-scontrol'),
    SRUN: LOCAL_SRUN,
    RINGDIFF_BIN: `${process.execPath} ${BIN}`,
    RINGDIFF_CONFIG: config,
    RINGDIFF_COORD_HOST: '127.0.0.1',
    RINGDIFF_PORT: String(port),
    RINGDIFF_LISTEN: `127.0.0.1:${port}`,
    RINGDIFF_METRICS: '127.0.0.1:0',
    RINGDIFF_RING_BIND_HOST: '127.0.0.1',
    RINGDIFF_THREADS: '1',
  };
  const baseEnv = { ...process.env };
  // The script must generate the token itself.
  delete baseEnv.RINGDIFF_TOKEN;
  for (const k of Object.keys(baseEnv)) if (k.startsWith('SLURM_')) delete baseEnv[k];
  const child = spawn('bash', [SBATCH], {
    cwd: tmp,
    env: { ...baseEnv, ...scriptEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setTimeout(() => {
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {
      // already gone
    }
  }, 90000);
  const code = await new Promise<number>((resolve) =>
    child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1))),
  );
  clearTimeout(timer);
  const logs = path.join(out, 'logs');
  const tail = () =>
    existsSync(logs)
      ? readdirSync(logs)
          .map(
            (f) => `--- ${f}\n${readFileSync(path.join(logs, f), 'utf8').split('\n').slice(-8).join('\n')}`,
          )
          .join('\n')
      : '(no logs)';
  assert.equal(code, 0, `ringdiff.sbatch exited ${code}:\n${output}\n${tail()}`);
  assert.ok(
    existsSync(path.join(out, 'ckpt-20', 'state.json')),
    `final checkpoint missing:\n${output}\n${tail()}`,
  );
  // The generated token: mode 0600 in the run directory.
  const token = path.join(out, 'token');
  assert.ok(existsSync(token), 'the token file exists');
  assert.equal(statSync(token).mode & 0o777, 0o600, 'the token file has mode 0600');
  assert.ok(readFileSync(token, 'utf8').trim().length >= 16);
  // A coordinator waiting for 2 workers, and 2 workers that registered over loopback.
  const coordLog = readFileSync(path.join(logs, 'coordinator.log'), 'utf8');
  assert.match(coordLog, /"min_workers":2\b/);
  assert.match(coordLog, /"world":2\b/);
  for (const rank of [0, 1]) {
    const w = readFileSync(path.join(logs, `worker-${rank}.log`), 'utf8');
    assert.match(w, /"ring":"tcp:\/\/127\.0\.0\.1:\d+"/, `worker ${rank} binds the ring on loopback`);
    assert.match(w, /worker done/, `worker ${rank} finished`);
  }
  assert.match(output, /done; run directory/);
});
