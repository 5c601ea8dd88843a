// Builds the native CPU backend (`npm run build:native`, run by `prepare` on every install).
// It needs only a C++ compiler, make, python3 and Node's headers (no BLAS: the GEMM is our own).
// It must never break an install: without a compiler, ringdiff still runs on TF.js's pure-JS cpu
// backend, so any failure prints one warning line and exits 0.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const built = join(here, 'build', 'Release', 'ringdiff_native.node');

// node-gyp downloads Node's headers unless told where they are; there is no network here, and
// Node's packages ship the headers under <prefix>/include/node.
const prefix = dirname(dirname(process.execPath));
const args = ['rebuild'];
if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);

// Under npm, npm_config_node_gyp points at npm's bundled node-gyp; otherwise try the PATH.
const gypJs = process.env.npm_config_node_gyp;
const [cmd, cmdArgs] = gypJs && existsSync(gypJs) ? [process.execPath, [gypJs, ...args]] : ['node-gyp', args];

const res = spawnSync(cmd, cmdArgs, { cwd: here, encoding: 'utf8', maxBuffer: 64 << 20 });
const log = `${res.stdout ?? ''}${res.stderr ?? ''}${res.error ? `\n${res.error.message}\n` : ''}`;

// `rebuild` wipes build/ first, so the log is written only once the build has finished.
let logPath = join(here, 'build', 'build.log');
try {
  mkdirSync(dirname(logPath), { recursive: true });
  writeFileSync(logPath, log);
} catch {
  logPath = join(tmpdir(), 'ringdiff-native-build.log');
  writeFileSync(logPath, log);
}

if (res.status === 0 && existsSync(built)) {
  console.log(`ringdiff: native CPU backend built (${built})`);
} else {
  const reason = res.error ? res.error.message : firstError(log, res.status);
  console.warn(
    `ringdiff: warning: native CPU backend not built (${reason}); training will use the slow pure-JS cpu ` +
      `backend. Install g++, make and python3, then run npm run build:native (log: ${logPath})`,
  );
}
process.exit(0);

/** The line of the build log most likely to say what is missing. */
function firstError(text, status) {
  const lines = text.split('\n');
  const hit =
    lines.find((l) => /fatal error|cannot find -l|not found|No such file/i.test(l)) ??
    lines.find((l) => /\berror\b/i.test(l) && !/^gyp ERR! (stack|System|command|cwd|node|not ok)/.test(l));
  return (hit ?? `node-gyp exited with status ${status}`).trim().slice(0, 200);
}
