/**
 * The ring's all-reduce against a plain JavaScript reference that follows the summation order
 * ring.ts documents, bit for bit: segment k = [⌊kL/N⌋, ⌊(k+1)L/N⌋) is summed in float32 as
 * ((x_k + x_{k+1}) + x_{k+2}) + … (ranks mod N), `mean` divides that float32 sum by N once; with fp16
 * on the wire every partial sum is rounded to fp16 for the next hop and the final value (after the
 * division) is rounded to fp16 too. Rings of 2 and 3 ranks in this process, over tcp://, ipc://
 * without shared memory, and shared memory (small frames, and a cap small enough that some steps
 * overflow to the socket), with the native kernels and with the pure-JS ones, with and without a
 * secret. Inputs span many magnitudes (bench.ts `fillInput`), so any other order changes bits.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Ring, ringKernelStatus, type RingOptions } from '../src/allreduce/ring.js';
import { fillInput } from '../src/allreduce/bench.js';
import { halfTable, toHalf } from '../src/allreduce/fp16.js';
import { jsKernels, setKernels } from '../src/allreduce/reduce.js';
import { shmApi } from '../src/allreduce/shm.js';
import { freePort } from '../src/util/net.js';
import { ringOpts } from './ring-peers.js';

const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-ref-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** The float32 value of the fp16 nearest to `v` (ties to even). */
function half(v: number): number {
  return halfTable()[toHalf(v)] as number;
}

/** What every rank must hold after an all-reduce of `inputs` (one per rank), in the ring's order. */
function reference(inputs: Float32Array[], op: 'sum' | 'mean', fp16: boolean): Float32Array {
  const n = inputs.length;
  const len = (inputs[0] as Float32Array).length;
  const out = new Float32Array(len);
  const f = Math.fround;
  for (let k = 0; k < n; k++) {
    const lo = Math.floor((k * len) / n);
    const hi = Math.floor(((k + 1) * len) / n);
    for (let i = lo; i < hi; i++) {
      // Rank k sends its own value; each following rank adds its own to what it received.
      let s = (inputs[k] as Float32Array)[i] as number;
      for (let j = 1; j < n; j++) {
        const wire = fp16 ? half(s) : s;
        s = f(wire + ((inputs[(k + j) % n] as Float32Array)[i] as number));
      }
      if (op === 'mean') s = f(s / n);
      out[i] = fp16 ? half(s) : s;
    }
  }
  return out;
}

interface Mode {
  name: string;
  transport: 'tcp' | 'ipc';
  options: Partial<RingOptions>;
  /** Whether the ranks must be sending through shared memory. */
  shm?: boolean;
}

const SECRET = Uint8Array.from({ length: 16 }, (_, i) => i * 7 + 1);
const noShm = shmApi() === null;

const MODES: Mode[] = [
  { name: 'tcp', transport: 'tcp', options: {} },
  { name: 'tcp fp16', transport: 'tcp', options: { compression: 'fp16' } },
  { name: 'tcp secret', transport: 'tcp', options: { secret: SECRET } },
  { name: 'ipc socket', transport: 'ipc', options: { sharedMemory: 'off' } },
  { name: 'ipc socket fp16', transport: 'ipc', options: { sharedMemory: 'off', compression: 'fp16' } },
  ...(noShm
    ? []
    : ([
        // Frames of two chunks: spans within a step, split into chunks when passed on.
        { name: 'shm', transport: 'ipc', options: { sharedMemoryFrameBytes: 8200 }, shm: true },
        { name: 'shm fp16', transport: 'ipc', options: { compression: 'fp16' }, shm: true },
        // A 1 MiB cap: the larger calls send some steps through the socket.
        { name: 'shm overflow', transport: 'ipc', options: { sharedMemoryBytes: 1 << 20 }, shm: true },
        {
          name: 'shm overflow secret',
          transport: 'ipc',
          options: { sharedMemoryBytes: 1 << 20, secret: SECRET },
          shm: true,
        },
      ] satisfies Mode[])),
];

const LENGTHS = [0, 1, 2, 3, 7, 1009, 65_537, 400_003];

let ipcSeq = 0;
async function addresses(transport: 'tcp' | 'ipc', n: number): Promise<string[]> {
  if (transport === 'ipc') {
    const g = ++ipcSeq;
    return Array.from({ length: n }, (_, r) => `ipc://${path.join(dir, `g${g}-r${r}.sock`)}`);
  }
  return Promise.all(Array.from({ length: n }, async () => `tcp://127.0.0.1:${await freePort()}`));
}

/** Runs every length × op on one ring of `n` ranks and checks each result against the reference. */
async function check(n: number, mode: Mode): Promise<void> {
  const addrs = await addresses(mode.transport, n);
  const rings = await Promise.all(
    // Odd chunk size: segments are not whole chunks, chunks not powers of two.
    addrs.map((_, r) => Ring.open({ ...ringOpts(addrs, r), chunkBytes: 4100, ...mode.options })),
  );
  try {
    let seed = 11;
    for (const length of LENGTHS) {
      for (const op of ['sum', 'mean'] as const) {
        const inputs = rings.map((_, r) => {
          const x = new Float32Array(length);
          fillInput(x, seed, r);
          return x;
        });
        const bufs = inputs.map((x) => x.slice());
        await Promise.all(rings.map((ring, r) => ring.allReduce(bufs[r] as Float32Array, { op })));
        const want = reference(inputs, op, mode.options.compression === 'fp16');
        for (let r = 0; r < n; r++) {
          const got = bufs[r] as Float32Array;
          // Compare bits (NaN-safe, and -0 ≠ +0).
          const a = new Uint32Array(got.buffer);
          const b = new Uint32Array(want.buffer);
          let bad = -1;
          for (let i = 0; i < length && bad < 0; i++) if (a[i] !== b[i]) bad = i;
          assert.equal(
            bad,
            -1,
            `${mode.name} N=${n} length ${length} ${op}: rank ${r} element ${bad} is ${got[bad]}, the reference ${want[bad]}`,
          );
        }
        seed++;
      }
    }
    for (const ring of rings) {
      const s = ring.stats();
      if (mode.shm) assert.ok(s.shm.active && s.shm.framesSent > 0, `${mode.name}: shared memory in use`);
      else assert.equal(s.shm.framesSent, 0, `${mode.name}: no shared memory`);
      if (mode.name.includes('overflow')) assert.ok(s.shm.overflowFrames > 0, `${mode.name}: overflow`);
    }
  } finally {
    await Promise.all(rings.map((x) => x.close()));
  }
}

const kernelSets: Array<['native' | 'js', string | false]> = [
  ['native', ringKernelStatus.ok ? false : 'native ring kernels not installed'],
  ['js', false],
];

for (const [kind, skip] of kernelSets) {
  describe(
    `all-reduce equals the reference in the ring's order (${kind} kernels)`,
    { skip, timeout: 300_000 },
    () => {
      for (const n of [2, 3]) {
        for (const mode of MODES) {
          test(`N = ${n}, ${mode.name}`, async () => {
            // Kernels are per process: every rank of these in-process rings uses the same set.
            const prev = kind === 'js' ? setKernels({ ...jsKernels(), release: undefined }) : null;
            try {
              await check(n, mode);
            } finally {
              if (prev) setKernels(prev);
            }
          });
        }
      }
    },
  );
}
