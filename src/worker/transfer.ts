/**
 * A training-state snapshot as one byte buffer, for moving state between processes (a joining
 * worker receiving it over the ring's broadcast, checkpoints streamed to the coordinator):
 * `RDSNAP1\0`, then four length-prefixed sections (u64 LE): state JSON, model, EMA and optimizer
 * as safetensors. The same encodings as a checkpoint directory, so nothing is defined twice.
 */
import { decodeSafetensors, encodeSafetensors } from '../model/safetensors.js';
import type { HostTensor } from '../model/params.js';
import type { Snapshot } from './local.js';

const MAGIC = Buffer.from('RDSNAP1\0', 'latin1');
const PARTS = ['model', 'ema', 'optimizer'] as const;

/** Encodes a snapshot as one buffer. */
export function encodeSnapshot(s: Snapshot): Buffer {
  const sections = [
    Buffer.from(JSON.stringify(s.state), 'utf8'),
    ...PARTS.map((p) => encodeSafetensors(s.parts[p])),
  ];
  const out = Buffer.alloc(MAGIC.length + sections.reduce((a, b) => a + 8 + b.length, 0));
  MAGIC.copy(out, 0);
  let off = MAGIC.length;
  for (const sec of sections) {
    out.writeBigUInt64LE(BigInt(sec.length), off);
    sec.copy(out, off + 8);
    off += 8 + sec.length;
  }
  return out;
}

/** Decodes a buffer made by `encodeSnapshot`; `label` names the source in errors. */
export function decodeSnapshot(buf: Buffer, label: string): Snapshot {
  if (buf.length < MAGIC.length || !buf.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new Error(`${label}: not a ringdiff state snapshot (bad magic at offset 0)`);
  }
  let off = MAGIC.length;
  const next = (what: string): Buffer => {
    if (off + 8 > buf.length)
      throw new Error(`${label}: truncated before the ${what} section at offset ${off}`);
    const len = Number(buf.readBigUInt64LE(off));
    if (off + 8 + len > buf.length)
      throw new Error(`${label}: ${what} section at offset ${off} overruns the buffer`);
    const sec = buf.subarray(off + 8, off + 8 + len);
    off += 8 + len;
    return sec;
  };
  let state: Snapshot['state'];
  try {
    state = JSON.parse(next('state').toString('utf8')) as Snapshot['state'];
  } catch (e) {
    throw new Error(`${label}: state section is not valid JSON (${(e as Error).message})`);
  }
  if (typeof state.step !== 'number') throw new Error(`${label}: state section has no step`);
  const parts = {} as Snapshot['parts'];
  for (const p of PARTS) {
    const { tensors } = decodeSafetensors(next(p), `${label} (${p})`);
    const m = new Map<string, HostTensor>();
    for (const [name, t] of tensors) {
      if (!(t.data instanceof Float32Array))
        throw new Error(`${label} (${p}): tensor '${name}' is ${t.dtype}, not F32`);
      m.set(name, { shape: t.shape, data: t.data });
    }
    parts[p] = m;
  }
  if (off !== buf.length) throw new Error(`${label}: ${buf.length - off} trailing bytes at offset ${off}`);
  return { state, parts };
}
