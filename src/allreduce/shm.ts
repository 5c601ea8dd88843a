/**
 * Shared-memory segments for the ring's same-host payload path (see "Shared memory" in transport.ts).
 *
 * A rank whose successor is on the same host writes its all-reduce payloads into a segment it
 * creates in /dev/shm and sends only headers over ZeroMQ; the successor maps the segment read-only
 * and reads the payloads from it. The segments are files of /dev/shm mapped by the native addon
 * (native/src/shm.cc): without the addon the ring uses its sockets only.
 *
 * Names: `ringdiff-<job tag>-g<generation>-r<rank>-p<pid>-<16 hex nonce>`, where the job tag is
 * the job id reduced to [A-Za-z0-9_] (at most 24 characters) plus 8 hex digits of a hash of the
 * whole job id. A receiver accepts only the one name pattern its predecessor can produce (its job,
 * its generation, the predecessor's rank), and the addon opens only a regular file of this user
 * with mode 0600 directly in /dev/shm, never following a symlink — a local process cannot make a
 * receiver open anything else.
 *
 * Cleanup: a segment is unlinked when its ring closes, by the receiver's ring when it closes (the
 * sender may have died), on process exit (the 'exit' event: a normal exit, process.exit, an
 * uncaught exception), and, for processes that died without any of these (SIGKILL), by the next
 * segment created on this host: it removes this user's ringdiff segments whose process no longer
 * exists and that have not been modified for a minute.
 */
import { randomBytes } from 'node:crypto';
import { lstatSync, readdirSync } from 'node:fs';
import { SEGMENT_NAME_RE } from './frame.js';
import { loadShmAddon, type ShmAddon } from './native.js';

/** Where the segments live (the addon hard-codes it too). */
export const SHM_DIR = '/dev/shm';

/** Largest segment a receiver maps, bytes (a sanity bound; the sender's cap is usually far lower). */
export const MAX_PEER_SEGMENT_BYTES = 2 ** 40;

/** Alignment of every step's region in a segment, bytes (a cache line; keeps typed views aligned). */
export const SLOT_ALIGN = 64;

/** 32-bit FNV-1a of a string's UTF-16 code units, as 8 hex digits. */
function fnv8(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

/** The job part of segment names: a readable prefix of the job id plus a hash of all of it. */
export function jobTag(jobId: string): string {
  const readable = jobId.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 24) || '_';
  return `${readable}_${fnv8(jobId)}`;
}

/** A fresh segment name for (job, generation, rank) of this process. */
export function segmentName(jobId: string, generation: number, rank: number): string {
  return `ringdiff-${jobTag(jobId)}-g${generation}-r${rank}-p${process.pid}-${randomBytes(8).toString('hex')}`;
}

/** The names a segment of (job, generation) may have, from any rank; group 1 is the rank. */
export function segmentPattern(jobId: string, generation: number): RegExp {
  return new RegExp(`^ringdiff-${jobTag(jobId)}-g${generation}-r(\\d{1,5})-p\\d{1,10}-[0-9a-f]{16}$`);
}

let shmAddon: ShmAddon | null | undefined;
let shmReason: string | null = null;

/** The addon's segment functions, or null (see `shmUnavailableReason`). */
export function shmApi(): ShmAddon | null {
  if (shmAddon === undefined) {
    const r = loadShmAddon();
    shmAddon = r.shm;
    shmReason = r.reason;
  }
  return shmAddon;
}

/** Why `shmApi()` is null (null when it is available). */
export function shmUnavailableReason(): string | null {
  shmApi();
  return shmReason;
}

/**
 * Whether the ring may send through shared memory, from the option and the environment:
 * RINGDIFF_RING_SHM=off forces the socket path in this process (for benchmarks of both paths).
 */
export function shmWanted(option: 'auto' | 'off', env: NodeJS.ProcessEnv = process.env): boolean {
  return option !== 'off' && (env.RINGDIFF_RING_SHM ?? 'auto').toLowerCase() !== 'off';
}

// ---------------------------------------------------------------------------------------------
// Cleanup of segments this process created

const ownSegments = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    const api = shmAddon;
    if (!api) return;
    for (const name of ownSegments) {
      try {
        api.shmUnlink(name);
      } catch {
        // Nothing more to do while exiting.
      }
    }
  });
}

/** How old (by mtime) a dead process's segment must be before another process removes it, ms. */
const STALE_AFTER_MS = 60_000;

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

/**
 * Removes this user's ringdiff segments left by processes that no longer exist (SIGKILL, OOM) and
 * were not modified for a minute (the age guards against a process of another PID namespace that
 * shares /dev/shm). Returns how many it removed. Never throws.
 */
export function sweepStaleSegments(now = Date.now()): number {
  const api = shmApi();
  if (!api) return 0;
  let names: string[];
  try {
    names = readdirSync(SHM_DIR);
  } catch {
    return 0;
  }
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  let removed = 0;
  for (const name of names) {
    if (!SEGMENT_NAME_RE.test(name)) continue;
    const pid = Number(/-p(\d+)-[0-9a-f]{16}$/.exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid === process.pid || processAlive(pid)) continue;
    try {
      const st = lstatSync(`${SHM_DIR}/${name}`);
      if (!st.isFile() || st.uid !== uid || now - st.mtimeMs < STALE_AFTER_MS) continue;
      if (api.shmUnlink(name)) removed++;
    } catch {
      // Gone already, or not ours to remove.
    }
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Segments

/** A segment this process created: read-write, unlinked by `close()`. */
export class OwnSegment {
  private constructor(
    readonly name: string,
    readonly buffer: ArrayBuffer,
    /** Capacity in bytes. */
    readonly bytes: number,
  ) {}

  /** Creates a segment of `bytes` bytes; throws (e.g. ENOSPC when /dev/shm is full). */
  static create(api: ShmAddon, name: string, bytes: number): OwnSegment {
    installExitHook();
    sweepStaleSegments();
    ownSegments.add(name);
    try {
      return new OwnSegment(name, api.shmCreate(name, bytes), bytes);
    } catch (e) {
      ownSegments.delete(name);
      throw e;
    }
  }

  /** Unlinks the file and unmaps it (every view of it becomes empty). Idempotent. */
  close(api: ShmAddon): void {
    if (!ownSegments.delete(this.name)) return;
    try {
      api.shmUnlink(this.name);
    } finally {
      api.shmUnmap(this.buffer);
    }
  }
}

/** A predecessor's segment, mapped read-only. */
export class PeerSegment {
  private unmapped = false;
  private constructor(
    readonly name: string,
    readonly buffer: ArrayBuffer,
  ) {}

  /** Size of the mapping in bytes (0 once unmapped). */
  get bytes(): number {
    return this.buffer.byteLength;
  }

  /** Maps /dev/shm/<name>; throws if it is not an acceptable segment (see the addon). */
  static open(api: ShmAddon, name: string): PeerSegment {
    return new PeerSegment(name, api.shmOpen(name, MAX_PEER_SEGMENT_BYTES));
  }

  /** Unmaps (views become empty) and, with `unlink`, removes the file too. Idempotent. */
  close(api: ShmAddon, unlink: boolean): void {
    if (this.unmapped) return;
    this.unmapped = true;
    try {
      if (unlink) api.shmUnlink(this.name);
    } catch {
      // Already gone.
    } finally {
      api.shmUnmap(this.buffer);
    }
  }
}
