/** `ringdiff doctor`: which compute backends load here, and why the others do not. */
import { probeBackends } from '../model/backend/index.js';
import { nativeGemmCalibration } from '../model/backend/native.js';

/** Prints the backend report as text or one JSON object; always exits 0. */
export async function doctor(opts: { json?: boolean; backend?: string }): Promise<void> {
  const r = await probeBackends(opts.backend);
  // Measured here for the user's information; the choice of GEMM is a fixed rule (gemm.h).
  const gemmTiming = r.native?.built ? nativeGemmCalibration() : null;
  const report = {
    chosen: r.chosen,
    tfjs_version: r.tfjsVersion,
    tf_backend: r.tfBackend,
    forced_by: r.forcedBy,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    candidates: r.candidates,
    native: r.native,
    gemm_timing_ms: gemmTiming,
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  const lines = [
    `ringdiff doctor (node ${process.version}, ${report.platform}, tfjs ${r.tfjsVersion})`,
    'backends, in order of preference:',
  ];
  for (const c of r.candidates) {
    const mark = c.loaded ? 'ok ' : '-- ';
    lines.push(
      `  ${mark} ${c.name.padEnd(15)} ${c.package ?? '(built in)'}${c.reason ? `: ${c.reason}` : ''}`,
    );
    const n = c.native;
    if (n) {
      lines.push(
        n.built
          ? `       native addon built; GEMM: ${n.gemm ?? 'unknown'}; ${n.threads ?? '?'} thread(s) (RINGDIFF_THREADS)`
          : `       native addon not available: ${n.reason ?? 'unknown reason'}`,
      );
      if (n.built && gemmTiming)
        lines.push(
          `       matmul timing here, 1 thread: ours ${gemmTiming.oursMs.toFixed(2)} ms` +
            (gemmTiming.openblasMs === null ? '' : `, OpenBLAS ${gemmTiming.openblasMs.toFixed(2)} ms`),
        );
    }
  }
  lines.push(
    `chosen: ${r.chosen}${r.forcedBy ? ` (forced by ${r.forcedBy === 'flag' ? '--backend' : 'RINGDIFF_BACKEND'})` : ''}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}
