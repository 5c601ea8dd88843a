/**
 * What tests need from the machine beyond `npm ci` — root, a kernel feature, a Debian package that
 * `.ci/run` installs — and the one line a test skips with where it is missing (no tests in this
 * file). Every check returns null when the requirement is met, else `needs WHAT (DETAIL): WHY`,
 * e.g. `needs iproute2 (ip): not installed`. Use them as `{ skip: skipUnless(check, …) }` or
 * `return t.skip(reason)`; every check runs at most once per process.
 *
 * CI (`.ci/run`, as root) installs every package named here and sets RINGDIFF_TEST_STRICT=1: a
 * missing package then throws instead of skipping, so that CI cannot silently run less.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import * as path from 'node:path';

/** Set by .ci/run: missing packages are errors, not skips. */
const STRICT = process.env.RINGDIFF_TEST_STRICT === '1';

const cache = new Map<string, string | null>();
function once(key: string, check: () => string | null): string | null {
  if (!cache.has(key)) cache.set(key, check());
  return cache.get(key) as string | null;
}

/** A missing package: a skip reason, or (RINGDIFF_TEST_STRICT=1) an error. */
function missingPackage(reason: string): string {
  if (STRICT) throw new Error(`RINGDIFF_TEST_STRICT=1 and ${reason}`);
  return reason;
}

/** The first line of a command's complaint. */
function firstLine(s: string): string {
  return s.trim().split('\n')[0] ?? '';
}

/** Whether an executable file `cmd` is in some directory of PATH. */
function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    if (dir === '') return false;
    try {
      accessSync(path.join(dir, cmd), constants.X_OK);
      return statSync(path.join(dir, cmd)).isFile();
    } catch {
      return false;
    }
  });
}

/**
 * `cmd` of Debian package `pkg` runs (`cmd …versionArgs` exits 0): null, else
 * `needs PKG (CMD): not installed` (or `not usable: …` when it is there but fails).
 */
export function missingCommand(
  cmd: string,
  pkg: string,
  versionArgs: string[] = ['--version'],
): string | null {
  return once(`cmd:${cmd}`, () => {
    const r = spawnSync(cmd, versionArgs, { encoding: 'utf8', timeout: 30_000 });
    // ENOENT, or EACCES from a directory of PATH this user may not search (root's ~/.cargo/bin …).
    if (r.error && !onPath(cmd)) return missingPackage(`needs ${pkg} (${cmd}): not installed`);
    if (r.error || r.status !== 0)
      return missingPackage(
        `needs ${pkg} (${cmd}): not usable: ${r.error?.message ?? (firstLine(`${r.stderr}${r.stdout}`) || `exit status ${r.status}`)}`,
      );
    return null;
  });
}

/** `file` of Debian package `pkg` exists: null, else `needs PKG (FILE): not installed`. */
export function missingFile(file: string, pkg: string): string | null {
  return once(`file:${file}`, () =>
    existsSync(file) ? null : missingPackage(`needs ${pkg} (${file}): not installed`),
  );
}

/** Running as root: null, else `needs root (WHAT): running as uid N`. */
export function missingRoot(what: string): string | null {
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  if (process.platform !== 'linux') return `needs root on Linux (${what}): this is ${process.platform}`;
  return uid === 0 ? null : `needs root (${what}): running as uid ${uid}`;
}

/** A private mount namespace (root and util-linux's `unshare -m`). */
export function missingMountNamespace(): string | null {
  return (
    missingRoot('a private mount namespace') ??
    once('unshare', () => {
      const r = spawnSync('unshare', ['-m', 'true'], { encoding: 'utf8' });
      if (r.error || r.status !== 0)
        return `needs a mount namespace (unshare -m): ${r.error?.message ?? firstLine(r.stderr)}`;
      return null;
    })
  );
}

/** Why the emulated cluster (test/netns-harness.ts) cannot run here (null: it can). */
export function netnsUnavailable(): string | null {
  return (
    missingRoot('network namespaces, veth, tc') ??
    missingCommand('ip', 'iproute2', ['-V']) ??
    missingCommand('tc', 'iproute2', ['-V']) ??
    once('netns', () => {
      const probe = `rdf${process.pid.toString(36)}x0-probe`;
      const r = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
      if (r.status !== 0) return `needs network namespaces (ip netns add): ${firstLine(r.stderr)}`;
      spawnSync('ip', ['netns', 'del', probe]);
      return null;
    })
  );
}

/** The first reason among `reasons` (a test's `skip` option), or false when there is none. */
export function skipUnless(...reasons: (string | null)[]): string | false {
  return reasons.find((r) => r !== null) ?? false;
}
