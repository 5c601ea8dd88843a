/** `ringdiff status`: what a running job's coordinator knows (workers, ranks, generation, step, throughput). */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { UsageError } from './common.js';
import { CoordinatorClient } from '../worker/client.js';
import { clientCredentials } from '../config/credentials.js';

export interface StatusOptions {
  coordinator: string;
  config?: string;
  set?: string[];
  json?: boolean;
}

/**
 * The token Status needs: RINGDIFF_TOKEN, else cluster.token, else the one `launch` wrote to
 * `<out_dir>/token` for a job on this machine.
 */
function statusToken(cfg: Config): string {
  const t = process.env.RINGDIFF_TOKEN || cfg.cluster.token;
  if (t) return t;
  const file = path.join(cfg.run.out_dir, 'token');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  throw new UsageError(
    `no join token: set RINGDIFF_TOKEN or cluster.token (launch writes its job's to ${file})`,
  );
}

/** Prints the coordinator's status (a table, or one JSON object). */
export async function status(o: StatusOptions): Promise<void> {
  const cfg = loadConfig(o.config, o.set ?? []);
  const client = new CoordinatorClient(o.coordinator, statusToken(cfg), clientCredentials(cfg), 5000);
  try {
    const s = await client.status().catch((e: Error) => {
      throw new Error(`coordinator ${o.coordinator}: ${e.message}`);
    });
    const workers = s.workers.map((w) => ({
      id: w.workerId ?? '',
      host: w.host ?? '',
      rank: w.rank ?? -1,
      backend: w.backend ?? '',
      heartbeat_age_ms: w.heartbeatAgeMs ?? 0,
      samples_per_s: w.samplesPerS ?? 0,
      last_step: Number(w.lastStep ?? 0),
    }));
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({
          job: s.jobId,
          state: s.state,
          generation: s.generation,
          step: Number(s.step),
          total_steps: Number(s.totalSteps),
          loss: s.loss,
          samples_per_s: s.samplesPerS,
          workers,
        })}\n`,
      );
      return;
    }
    const lines = [
      `job ${s.jobId}: ${s.state}, generation ${s.generation}, step ${s.step}/${s.totalSteps}, loss ${s.loss.toFixed(4)}, ${s.samplesPerS.toFixed(1)} samples/s`,
      'rank  worker                                host                  backend      samples/s  last step  heartbeat',
      ...workers
        .sort((a, b) => a.rank - b.rank)
        .map(
          (w) =>
            `${String(w.rank).padStart(4)}  ${w.id.padEnd(36)}  ${w.host.padEnd(20)}  ${w.backend.padEnd(11)}  ${w.samples_per_s.toFixed(1).padStart(9)}  ${String(w.last_step).padStart(9)}  ${(w.heartbeat_age_ms / 1000).toFixed(1)} s ago`,
        ),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    client.close();
  }
}
