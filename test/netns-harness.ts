/**
 * An emulated multi-host cluster for fault tests (no tests in this file): a coordinator host and K
 * worker hosts, each a network namespace with its own address in 10.77.0.0/24, linked by a veth
 * pair to a bridge in a further "switch" namespace. Nothing is added to or changed in the caller's
 * own network namespace; addresses exist only inside the namespaces created here.
 *
 *   coordinator  10.77.0.1   (namespace <id>-c)
 *   host i       10.77.0.10+i (namespace <id>-h<i>)
 *   switch       bridge br0, ports p<n> (namespace <id>-sw)
 *
 * Processes run inside the namespaces (`ip netns exec <ns> node bin/ringdiff.js …`); workers bind
 * their ring on their host's address and give `--host <namespace>`. A probe process in the
 * coordinator's namespace polls `Status` and reports it on stdout (the test process itself has no
 * route into the emulated network).
 *
 * Link faults: `linkDown`/`linkUp` (the host's eth0), `shape` (delay, loss, rate on both
 * directions of a host's link). With `sch_netem` in the kernel, delay and loss are netem on both
 * veth ends; kernels without it (this project's CI machines have only tbf/htb/fifo and cls_bpf)
 * get loss from a classic-BPF filter in direct-action mode on clsact egress (`ld rand`: real random
 * packet drops in the kernel) and delay from relays: with `relays: true` every TCP connection into
 * a host (ring and gRPC) goes through a relay process in that host's namespace that holds each
 * chunk of data for the host's delay in both directions (so a connection between two hosts sees
 * the receiving host's delay added each way, like netem on that host's link). Rate limits are tbf.
 *
 * Clean-up: `stop()` kills every process (SIGCONT first, so stopped ones die too), deletes the
 * namespaces and unmounts tmpfs mounts; an exit hook does the same if a test dies, and
 * `NetnsCluster.cleanupStale()` (run by `up()`) removes what a crashed earlier run left behind
 * (names carry the creating pid).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { createServer, connect, type Socket } from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoordinatorClient } from '../src/worker/client.js';

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/ringdiff.js');
const SELF = fileURLToPath(import.meta.url);
export const TOKEN = 'netns-test-token-0123456789';
const SUBNET = '10.77.0';
const COORD_PORT = 7070;
const COORD_RELAY_PORT = 7071;
const RING_PORT = 7100;
const RING_RELAY_PORT = 7300;
const NAME_RE = /^rdf([0-9a-z]+)x\d+-/;

/** Why the emulated cluster cannot run here (null: it can); see requirements.ts. */
export { netnsUnavailable } from './requirements.js';

let netemKnown: boolean | undefined;
/** Whether the kernel has sch_netem (checked once, on a throw-away namespace). */
export function hasNetem(): boolean {
  if (netemKnown !== undefined) return netemKnown;
  const ns = `rdf${process.pid.toString(36)}x0-netem`;
  spawnSync('ip', ['netns', 'add', ns]);
  const r = spawnSync('ip', [
    'netns',
    'exec',
    ns,
    'tc',
    'qdisc',
    'add',
    'dev',
    'lo',
    'root',
    'netem',
    'delay',
    '1ms',
  ]);
  spawnSync('ip', ['netns', 'del', ns]);
  netemKnown = r.status === 0;
  return netemKnown;
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
  return r.stdout;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Classic BPF for cls_bpf direct-action: drop IPv4 packets with probability `p` (ld rand). */
export function lossBytecode(p: number): string {
  const t = Math.min(0xffffffff, Math.max(0, Math.round(p * 2 ** 32)));
  const ins = [
    '32 0 0 4294963200', // A = skb->protocol (SKF_AD_PROTOCOL)
    '21 0 3 2048', // not IPv4 (ARP…): pass
    '32 0 0 4294963256', // A = random u32 (SKF_AD_RANDOM)
    `37 1 0 ${t}`, // A > t: pass
    '6 0 0 2', // TC_ACT_SHOT
    '6 0 0 0', // TC_ACT_OK
  ];
  return `${ins.length},${ins.join(',')}`;
}

/** What a status probe reports (numbers, not Longs). */
export interface NetStatus {
  generation: number;
  step: number;
  state: string;
  workers: { workerId: string; host: string; rank: number; lastStep: number }[];
}

export interface NetProc {
  name: string;
  role: 'coordinator' | 'worker';
  /** Namespace (host) it runs in. */
  ns: string;
  child: ChildProcess;
  exit: Promise<number>;
  log: string;
  /** True once it exited. */
  exited: boolean;
  /** Exit code once it exited (128 for a signal). */
  exitCode: number | null;
}

export interface LinkShape {
  /** One-way delay added on this host's link, ms (each direction). */
  delayMs?: number;
  /** Packet loss on this host's link, percent (each direction). */
  lossPct?: number;
  /** tc rate of this host's link, e.g. '10mbit' (each direction). */
  rate?: string;
}

export interface NetnsClusterOptions {
  /** Directory for the config file and process logs. */
  dir: string;
  configYaml: string;
  sets?: string[];
  /** Worker hosts (namespaces); the coordinator gets one more. */
  hosts: number;
  /** Route TCP into every host through a relay (needed for delay without sch_netem). */
  relays?: boolean;
  /** Extra environment of every ringdiff process. */
  env?: Record<string, string>;
}

interface Host {
  ns: string;
  addr: string;
  /** Switch-side port of its veth. */
  port: string;
  relay: Relay | null;
  /** Relay ports already mapped (a restarted coordinator reuses its mapping). */
  mapped: Set<number>;
  nextRing: number;
}

let clusterSeq = 0;
const live = new Set<NetnsCluster>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) c.teardownSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      for (const c of live) c.teardownSync();
      process.exit(130);
    });
}

/** A relay process in one namespace: `map` listeners, `delay` for all of them. */
class Relay {
  private readonly child: ChildProcess;
  private readonly acks: Array<() => void> = [];
  readonly exit: Promise<void>;

  constructor(ns: string, log: string) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, SELF, '__netns_relay'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out = createWriteStream(log, { flags: 'a' });
    this.child.stderr?.pipe(out);
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      if (l.startsWith('ok')) this.acks.shift()?.();
      else out.write(`${l}\n`);
    });
    this.exit = new Promise((r) => this.child.on('exit', () => r()));
  }

  command(line: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`relay did not answer '${line}'`)), 10000);
      this.acks.push(() => {
        clearTimeout(t);
        resolve();
      });
      this.child.stdin?.write(`${line}\n`);
    });
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** The emulated cluster; see the module comment. */
export class NetnsCluster {
  readonly id: string;
  readonly sw: string;
  readonly coord: Host;
  readonly hosts: Host[] = [];
  readonly procs: NetProc[] = [];
  coordinator: NetProc | null = null;
  /** Newest status from the probe (null: none yet or the coordinator is down) and when. */
  status: NetStatus | null = null;
  statusAt = 0;
  private probe: ChildProcess | null = null;
  private readonly created: string[] = [];
  private readonly mounts: string[] = [];
  private readonly configFile: string;
  private readonly shaped = new Map<Host, LinkShape>();
  private torn = false;

  constructor(readonly o: NetnsClusterOptions) {
    this.id = `rdf${process.pid.toString(36)}x${++clusterSeq}`;
    this.sw = `${this.id}-sw`;
    const host = (ns: string, addr: string, port: string): Host => ({
      ns,
      addr,
      port,
      relay: null,
      mapped: new Set(),
      nextRing: 0,
    });
    this.coord = host(`${this.id}-c`, `${SUBNET}.1`, 'pc');
    for (let i = 0; i < o.hosts; i++)
      this.hosts.push(host(`${this.id}-h${i}`, `${SUBNET}.${10 + i}`, `p${i}`));
    mkdirSync(o.dir, { recursive: true });
    this.configFile = path.join(o.dir, 'job.yaml');
    writeFileSync(this.configFile, o.configYaml);
  }

  /** Removes namespaces (and their processes) left by harness processes that no longer run. */
  static cleanupStale(): void {
    const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
    for (const line of list.split('\n')) {
      const ns = line.split(' ')[0] ?? '';
      const m = NAME_RE.exec(ns);
      if (!m || pidAlive(parseInt(m[1] as string, 36))) continue;
      killNamespace(ns);
    }
  }

  /** Builds the network. */
  up(): this {
    NetnsCluster.cleanupStale();
    hookExit();
    live.add(this);
    try {
      sh('ip', ['netns', 'add', this.sw]);
      this.created.push(this.sw);
      sh('ip', ['-n', this.sw, 'link', 'add', 'br0', 'type', 'bridge']);
      sh('ip', ['-n', this.sw, 'link', 'set', 'br0', 'up']);
      for (const h of [this.coord, ...this.hosts]) {
        sh('ip', ['netns', 'add', h.ns]);
        this.created.push(h.ns);
        sh('ip', [
          'link',
          'add',
          'eth0',
          'netns',
          h.ns,
          'type',
          'veth',
          'peer',
          'name',
          h.port,
          'netns',
          this.sw,
        ]);
        sh('ip', ['-n', h.ns, 'addr', 'add', `${h.addr}/24`, 'dev', 'eth0']);
        sh('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up']);
        sh('ip', ['-n', h.ns, 'link', 'set', 'eth0', 'up']);
        sh('ip', ['-n', this.sw, 'link', 'set', h.port, 'master', 'br0']);
        sh('ip', ['-n', this.sw, 'link', 'set', h.port, 'up']);
      }
    } catch (e) {
      this.teardownSync();
      throw e;
    }
    return this;
  }

  /** Relays TCP port `listen` of host `h` to its port `target` (once). */
  private async map(h: Host, listen: number, target: number): Promise<void> {
    if (h.mapped.has(listen)) return;
    await (await this.relayOf(h)).command(`map ${h.addr} ${listen} ${target}`);
    h.mapped.add(listen);
  }

  private async relayOf(h: Host): Promise<Relay> {
    if (!h.relay) {
      h.relay = new Relay(h.ns, path.join(this.o.dir, `relay-${h.ns}.log`));
      await h.relay.command('ping');
    }
    return h.relay;
  }

  /** Spawns `node args…` in namespace `ns`, output in `<dir>/<name>.log`. */
  spawnIn(
    ns: string,
    name: string,
    role: NetProc['role'],
    args: string[],
    env: Record<string, string> = {},
  ): NetProc {
    const log = path.join(this.o.dir, `${name}.log`);
    const out = createWriteStream(log, { flags: 'a' });
    // `ip netns exec` execs node in place: the child's pid is node's (signals reach it directly).
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], {
      env: { ...process.env, RINGDIFF_TOKEN: TOKEN, RINGDIFF_THREADS: '1', ...this.o.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.pipe(out);
    child.stderr?.pipe(out);
    const p: NetProc = {
      name,
      role,
      ns,
      child,
      log,
      exited: false,
      exitCode: null,
      exit: new Promise<number>((resolve) =>
        child.on('exit', (code, sig) => {
          p.exited = true;
          p.exitCode = code ?? (sig ? 128 : 1);
          resolve(p.exitCode);
        }),
      ),
    };
    this.procs.push(p);
    return p;
  }

  private jobArgs(): string[] {
    return ['--config', this.configFile, ...(this.o.sets ?? []).flatMap((s) => ['--set', s])];
  }

  /** Address workers use for the coordinator (through its relay when relays are on). */
  get coordinatorAddress(): string {
    return `${this.coord.addr}:${this.o.relays ? COORD_RELAY_PORT : COORD_PORT}`;
  }

  /** Starts (or restarts, on the same address) the coordinator, and the status probe. */
  async startCoordinator(name = 'coordinator'): Promise<NetProc> {
    if (this.o.relays) await this.map(this.coord, COORD_RELAY_PORT, COORD_PORT);
    this.coordinator = this.spawnIn(this.coord.ns, name, 'coordinator', [
      BIN,
      'coordinator',
      ...this.jobArgs(),
      '--listen',
      `${this.coord.addr}:${COORD_PORT}`,
    ]);
    if (!this.probe) this.startProbe();
    return this.coordinator;
  }

  private startProbe(): void {
    const child = spawn(
      'ip',
      [
        'netns',
        'exec',
        this.coord.ns,
        process.execPath,
        SELF,
        '__netns_probe',
        `${this.coord.addr}:${COORD_PORT}`,
      ],
      { env: { ...process.env, RINGDIFF_TOKEN: TOKEN }, stdio: ['ignore', 'pipe', 'ignore'] },
    );
    this.probe = child;
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      try {
        this.status = JSON.parse(l) as NetStatus | null;
        this.statusAt = Date.now();
      } catch {
        // a torn line
      }
    });
  }

  /** Starts a worker on host `i` (a fresh ring port on that host for every process). */
  async startWorker(i: number, name?: string, extra: string[] = []): Promise<NetProc> {
    const h = this.hosts[i];
    if (!h) throw new Error(`no host ${i}`);
    const k = h.nextRing++;
    const bind = `tcp://${h.addr}:${RING_PORT + k}`;
    let advertise: string[] = [];
    if (this.o.relays) {
      await this.map(h, RING_RELAY_PORT + k, RING_PORT + k);
      advertise = ['--ring-advertise', `tcp://${h.addr}:${RING_RELAY_PORT + k}`];
    }
    return this.spawnIn(h.ns, name ?? `worker-h${i}-${k}`, 'worker', [
      BIN,
      'worker',
      '--coordinator',
      this.coordinatorAddress,
      '--ring-bind',
      bind,
      ...advertise,
      '--host',
      h.ns,
      '--retry-for',
      '300',
      ...extra,
    ]);
  }

  /** Index of the host whose namespace is `ns` (worker hosts only; −1 if none). */
  hostIndex(ns: string): number {
    return this.hosts.findIndex((h) => h.ns === ns);
  }

  /** Running worker processes. */
  workers(): NetProc[] {
    return this.procs.filter((p) => !p.exited && p.role === 'worker');
  }

  /** Sends `sig` to a process (no-op once it exited). */
  signal(p: NetProc, sig: NodeJS.Signals): void {
    if (!p.exited) p.child.kill(sig);
  }

  /** Polls the probe's status until `pred` holds. */
  async waitFor(pred: (s: NetStatus) => boolean, what: string, timeoutMs = 120000): Promise<NetStatus> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = this.status;
      if (s && Date.now() - this.statusAt < 2000 && pred(s)) return s;
      if (Date.now() > end)
        throw new Error(`timed out waiting for ${what} (last status: ${JSON.stringify(s)?.slice(0, 400)})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Waits until a log file matches `re`; resolves with the match. */
  async waitForLog(p: NetProc | string, re: RegExp, timeoutMs = 120000): Promise<RegExpMatchArray> {
    const file = typeof p === 'string' ? p : p.log;
    const end = Date.now() + timeoutMs;
    for (;;) {
      let text = '';
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        // not yet written
      }
      const m = text.match(re);
      if (m) return m;
      if (Date.now() > end) throw new Error(`timed out waiting for ${re} in ${file}`);
      await new Promise((r) => setTimeout(r, 15));
    }
  }

  private host(i: number | 'coordinator'): Host {
    const h = i === 'coordinator' ? this.coord : this.hosts[i];
    if (!h) throw new Error(`no host ${i}`);
    return h;
  }

  /** Cuts host `i` off (its eth0 down) or restores it. */
  link(i: number | 'coordinator', up: boolean): void {
    sh('ip', ['-n', this.host(i).ns, 'link', 'set', 'eth0', up ? 'up' : 'down']);
  }

  /** Sets (replaces) delay, loss and rate of host `i`'s link, both directions; `{}` clears them. */
  async shape(i: number | 'coordinator', s: LinkShape): Promise<void> {
    const h = this.host(i);
    const ends: [string, string][] = [
      [h.ns, 'eth0'],
      [this.sw, h.port],
    ];
    const tc = (ns: string, ...args: string[]) => sh('ip', ['netns', 'exec', ns, 'tc', ...args]);
    const quiet = (ns: string, ...args: string[]) => spawnSync('ip', ['netns', 'exec', ns, 'tc', ...args]);
    const delay = s.delayMs ?? 0;
    const loss = s.lossPct ?? 0;
    const netem = hasNetem();
    if (delay > 0 && !netem && !this.o.relays)
      throw new Error('link delay needs sch_netem in the kernel or a cluster started with relays: true');
    for (const [ns, dev] of ends) {
      quiet(ns, 'qdisc', 'del', 'dev', dev, 'root');
      quiet(ns, 'qdisc', 'del', 'dev', dev, 'clsact');
      // The root qdisc of this end of the link: netem when it can do delay and loss, else tbf.
      const root = (...qdisc: string[]) => tc(ns, 'qdisc', 'add', 'dev', dev, 'root', ...qdisc);
      if (netem && (delay > 0 || loss > 0)) {
        root(
          'handle',
          '1:',
          'netem',
          ...(delay > 0 ? ['delay', `${delay}ms`] : []),
          ...(loss > 0 ? ['loss', `${loss}%`] : []),
          ...(s.rate ? ['rate', s.rate] : []),
        );
      } else {
        if (s.rate) root('tbf', 'rate', s.rate, 'burst', '64kb', 'latency', '400ms');
        if (loss > 0) {
          tc(ns, 'qdisc', 'add', 'dev', dev, 'clsact');
          tc(ns, 'filter', 'add', 'dev', dev, 'egress', 'bpf', 'da', 'bytecode', lossBytecode(loss / 100));
        }
      }
    }
    if (!netem && h.relay) await h.relay.command(`delay ${delay}`);
    else if (!netem && delay > 0) await (await this.relayOf(h)).command(`delay ${delay}`);
    this.shaped.set(h, s);
  }

  /** Mounts a tmpfs of `size` (tc-style: '4m') at `dir` (unmounted by stop()). */
  mountTmpfs(dir: string, size: string): void {
    mkdirSync(dir, { recursive: true });
    sh('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, `rd-${this.id}`, dir]);
    this.mounts.push(dir);
  }

  /** Remounts a tmpfs of this cluster read-only or read-write. */
  remount(dir: string, readOnly: boolean): void {
    sh('mount', ['-o', `remount,${readOnly ? 'ro' : 'rw'}`, dir]);
  }

  /** Kills every process, deletes the network, unmounts tmpfs mounts. */
  async stop(): Promise<void> {
    const all = [...this.procs];
    for (const p of all) {
      this.signal(p, 'SIGCONT');
      this.signal(p, 'SIGKILL');
    }
    await Promise.all(all.map((p) => p.exit));
    this.teardownSync();
  }

  /** Synchronous part of `stop` (also the exit hook). */
  teardownSync(): void {
    if (this.torn) return;
    this.torn = true;
    live.delete(this);
    for (const p of this.procs)
      if (!p.exited) {
        try {
          p.child.kill('SIGCONT');
          p.child.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    this.probe?.kill('SIGKILL');
    for (const h of [this.coord, ...this.hosts]) h.relay?.kill();
    for (const ns of [...this.created].reverse()) killNamespace(ns);
    for (const m of this.mounts.reverse()) spawnSync('umount', ['-l', m]);
  }
}

/** Kills what still runs in namespace `ns`, then deletes it. */
function killNamespace(ns: string): void {
  const pids = (spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '')
    .split('\n')
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGCONT');
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  spawnSync('ip', ['netns', 'del', ns]);
}

// ---------------------------------------------------------------------------------------------
// Helper processes (run inside a namespace by the harness; importing this file starts nothing).

/** A TCP relay: `map HOST LISTEN_PORT TARGET_PORT` and `delay MS` on stdin, "ok" after each. */
function runRelay(): void {
  let delayMs = 0;
  const HIGH = 4 << 20;
  const pipe = (from: Socket, to: Socket) => {
    const q: { buf: Buffer; due: number }[] = [];
    let queued = 0;
    let last = 0;
    let timer: NodeJS.Timeout | null = null;
    let ended = false;
    const flush = () => {
      timer = null;
      const now = Date.now();
      while (q.length > 0 && (q[0] as { due: number }).due <= now) {
        const item = q.shift() as { buf: Buffer; due: number };
        queued -= item.buf.length;
        to.write(item.buf);
      }
      if (queued < HIGH / 4 && from.isPaused()) from.resume();
      if (q.length > 0) timer = setTimeout(flush, Math.max(0, (q[0] as { due: number }).due - Date.now()));
      else if (ended) to.end();
    };
    from.on('data', (buf: Buffer) => {
      if (delayMs <= 0 && q.length === 0) {
        to.write(buf);
        return;
      }
      last = Math.max(last, Date.now() + delayMs);
      q.push({ buf, due: last });
      queued += buf.length;
      if (queued > HIGH) from.pause();
      timer ??= setTimeout(flush, Math.max(0, last - Date.now()));
    });
    from.on('end', () => {
      ended = true;
      if (q.length === 0) to.end();
    });
  };
  const map = (host: string, listen: number, target: number) =>
    new Promise<void>((resolve, reject) => {
      const srv = createServer((client) => {
        const upstream = connect(target, host);
        const kill = () => {
          client.destroy();
          upstream.destroy();
        };
        client.setNoDelay(true);
        upstream.setNoDelay(true);
        client.on('error', kill).on('close', kill);
        upstream.on('error', kill).on('close', kill);
        pipe(client, upstream);
        pipe(upstream, client);
      });
      srv.once('error', reject);
      srv.listen(listen, host, () => resolve());
    });
  createInterface({ input: process.stdin }).on('line', (line) => {
    const [cmd, ...a] = line.trim().split(/\s+/);
    const done = (p: Promise<void> | void) =>
      Promise.resolve(p).then(
        () => process.stdout.write('ok\n'),
        (e: unknown) => process.stdout.write(`error ${(e as Error).message}\nok\n`),
      );
    if (cmd === 'map') void done(map(a[0] ?? '', Number(a[1]), Number(a[2])));
    else {
      if (cmd === 'delay') delayMs = Number(a[0]) || 0;
      void done();
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

/** Prints the coordinator's status (or null) as one JSON line every 100 ms. */
function runProbe(address: string): void {
  const client = new CoordinatorClient(address, process.env.RINGDIFF_TOKEN ?? '', undefined, 1000);
  const poll = () => {
    client
      .status()
      .then((s) => {
        const out: NetStatus = {
          generation: s.generation,
          step: Number(s.step),
          state: s.state,
          workers: s.workers.map((w) => ({
            workerId: w.workerId ?? '',
            host: w.host ?? '',
            rank: w.rank ?? -1,
            lastStep: Number(w.lastStep),
          })),
        };
        process.stdout.write(`${JSON.stringify(out)}\n`);
      })
      .catch(() => process.stdout.write('null\n'))
      .finally(() => setTimeout(poll, 100));
  };
  poll();
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  if (process.argv[2] === '__netns_relay') runRelay();
  else if (process.argv[2] === '__netns_probe') runProbe(process.argv[3] ?? '');
}
