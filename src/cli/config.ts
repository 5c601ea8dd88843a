/** `ringdiff config --print`: the resolved config, with each key's description. */
import { configToYaml, loadConfig } from '../config/load.js';

/** Prints the config that `--config`/`--set` resolve to. */
export function printConfig(opts: { config?: string; set?: string[] }): void {
  const cfg = loadConfig(opts.config, opts.set ?? []);
  process.stdout.write(configToYaml(cfg));
}
