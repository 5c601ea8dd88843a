#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ by `npm run build` (run by `prepare` on install).
import { main } from '../dist/src/cli/main.js';

main(process.argv).catch((err) => {
  process.stderr.write(`ringdiff: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
