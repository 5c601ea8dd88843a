/**
 * Crash-safe file and directory replacement: readers see either the old content or the complete new
 * content, never a torn write, even across power loss (write to a temp name, fsync, rename, fsync
 * the directory that holds the name).
 *
 * Temp names are `.<name>.tmp-<pid>-<random>` (new content) and `.<name>.old-<pid>-<random>`
 * (previous directory moved aside while being replaced); `removeStaleTemps` cleans up after
 * writers that died, restoring a moved-aside directory if its replacement never arrived.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

type Data = string | Uint8Array;

const TEMP_RE = /^\.(.+)\.(tmp|old)-(\d+)-([0-9a-f]+)$/;

/**
 * Temp paths this process is writing right now. Needed because a crashed writer in a previous
 * container can have had our very pid, so "pid is alive" alone would keep its leftovers forever.
 */
const active = new Set<string>();

function tempPath(dir: string, name: string, kind: 'tmp' | 'old'): string {
  return path.join(dir, `.${name}.${kind}-${process.pid}-${randomBytes(6).toString('hex')}`);
}

function hasCode(e: unknown, ...codes: string[]): boolean {
  return typeof e === 'object' && e !== null && codes.includes((e as NodeJS.ErrnoException).code ?? '');
}

/** fsync a directory so that renames and creations inside it survive a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  // Windows cannot open a directory for fsync; NTFS journals metadata anyway.
  if (process.platform === 'win32') return;
  const h = await fs.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

async function writeSynced(file: string, data: Data): Promise<void> {
  const h = await fs.open(file, 'wx');
  try {
    await h.writeFile(data);
    await h.sync();
  } finally {
    await h.close();
  }
}

/** Replaces `file` with `data` atomically and durably (temp file in the same dir, fsync, rename, fsync dir). */
export async function writeFileAtomic(file: string, data: Data): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const tmp = tempPath(dir, path.basename(file), 'tmp');
  active.add(tmp);
  try {
    await writeSynced(tmp, data);
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  } finally {
    active.delete(tmp);
  }
  await fsyncDir(dir);
}

function checkFileName(name: string): void {
  if (name === '' || name === '.' || name === '..' || /[/\\\0]/.test(name)) {
    throw new Error(`writeDirAtomic: invalid file name ${JSON.stringify(name)}`);
  }
}

/**
 * Replaces directory `finalDir` by one holding exactly `files` (name → content), atomically: on any
 * error the temp dir is removed, the previous content stays intact, and the error is rethrown.
 */
export async function writeDirAtomic(finalDir: string, files: ReadonlyMap<string, Data>): Promise<void> {
  for (const name of files.keys()) checkFileName(name);
  const target = path.resolve(finalDir);
  const parent = path.dirname(target);
  const name = path.basename(target);
  await fs.mkdir(parent, { recursive: true });
  const tmp = tempPath(parent, name, 'tmp');
  let aside: string | undefined;
  active.add(tmp);
  try {
    await fs.mkdir(tmp);
    for (const [file, data] of files) await writeSynced(path.join(tmp, file), data);
    await fsyncDir(tmp);
    try {
      await fs.rename(tmp, target);
    } catch (e) {
      // rename(2) only replaces an empty directory; anything else must be moved aside first.
      if (!hasCode(e, 'ENOTEMPTY', 'EEXIST', 'ENOTDIR', 'EISDIR', 'EPERM')) throw e;
      aside = tempPath(parent, name, 'old');
      active.add(aside);
      await fs.rename(target, aside);
      try {
        await fs.rename(tmp, target);
      } catch (e2) {
        await fs.rename(aside, target).catch(() => undefined);
        throw e2;
      }
    }
    await fsyncDir(parent);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true });
    if (aside !== undefined) active.delete(aside);
    throw e;
  } finally {
    active.delete(tmp);
  }
  if (aside !== undefined) {
    try {
      await fs.rm(aside, { recursive: true, force: true });
    } finally {
      active.delete(aside);
    }
  }
}

/**
 * Removes directory `dir` so that a crash midway never leaves a half-deleted directory under its
 * real name: it is first renamed to a temp name, which `removeStaleTemps` finishes off later.
 */
export async function removeDirAtomic(dir: string): Promise<void> {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  const doomed = tempPath(parent, path.basename(target), 'tmp');
  active.add(doomed);
  try {
    try {
      await fs.rename(target, doomed);
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return;
      throw e;
    }
    await fsyncDir(parent);
    await fs.rm(doomed, { recursive: true, force: true });
  } finally {
    active.delete(doomed);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else.
    return !hasCode(e, 'ESRCH');
  }
}

/** A temp entry as named by this module, or undefined for any other name. */
export function parseTempName(entry: string): { name: string; kind: 'tmp' | 'old'; pid: number } | undefined {
  const m = TEMP_RE.exec(entry);
  if (m === null) return undefined;
  return { name: m[1] as string, kind: m[2] as 'tmp' | 'old', pid: Number(m[3]) };
}

/**
 * Cleans up temp entries of dead writers in `dir` (only those whose target name passes `filter`):
 * removes them, except that a moved-aside directory whose target is missing is renamed back.
 * Liveness is judged by pid on this host. Returns what was done, for logging.
 */
export async function removeStaleTemps(
  dir: string,
  filter: (name: string) => boolean = () => true,
): Promise<{ removed: string[]; restored: string[] }> {
  const removed: string[] = [];
  const restored: string[] = [];
  let entries: string[];
  try {
    entries = await fs.readdir(dir);
  } catch (e) {
    if (hasCode(e, 'ENOENT')) return { removed, restored };
    throw e;
  }
  const stale = entries
    .map((entry) => ({ entry, full: path.join(dir, entry), info: parseTempName(entry) }))
    .filter(({ full, info }) => {
      if (info === undefined || !filter(info.name) || active.has(full)) return false;
      return info.pid === process.pid || !pidAlive(info.pid);
    });
  // Moved-aside directories first: restoring one must happen before its name is reused.
  stale.sort((a, b) => (a.info?.kind === 'old' ? 0 : 1) - (b.info?.kind === 'old' ? 0 : 1));
  for (const { full, info } of stale) {
    if (info?.kind === 'old') {
      const target = path.join(dir, info.name);
      try {
        await fs.rename(full, target);
        restored.push(target);
        continue;
      } catch (e) {
        // The replacement did arrive (the writer died before removing the old copy).
        if (!hasCode(e, 'ENOTEMPTY', 'EEXIST', 'ENOTDIR', 'EISDIR', 'EPERM')) throw e;
      }
    }
    await fs.rm(full, { recursive: true, force: true });
    removed.push(full);
  }
  if (restored.length > 0 || removed.length > 0) await fsyncDir(dir);
  return { removed, restored };
}
