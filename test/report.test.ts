import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { HistoryWriter, readHistory, HISTORY_FILE } from '../src/telemetry/history.js';
import { lineChart, weightsChart } from '../src/telemetry/report.js';

test('history: one line per step, newest entry of a repeated step wins, a torn line is skipped', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringdiff-history-'));
  try {
    const e = (step: number, loss: number) => ({
      step,
      t: step * 10,
      loss,
      loss_q: [1, NaN, 3, 4],
      lr: 0.1,
      grad_norm: 1,
      samples_per_s: 5,
    });
    const w = new HistoryWriter(dir);
    w.add(e(1, 0.5));
    w.add(e(1, 0.7)); // a second worker's report of the same step: ignored
    w.add(e(2, 0.4));
    // A resumed run repeats step 2 from a new writer, then a crash tears the last line.
    new HistoryWriter(dir).add(e(2, 0.3));
    appendFileSync(path.join(dir, HISTORY_FILE), '{"step":3,"t":');
    const h = readHistory(dir);
    assert.deepEqual(
      h.map((x) => [x.step, x.loss]),
      [
        [1, 0.5],
        [2, 0.3],
      ],
    );
    assert.equal(h[0]?.loss_q[1], null, 'NaN quarters are stored as null');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('charts: one path per series with one vertex per finite point; log scale drops non-positive values', () => {
  const svg = lineChart(
    [
      {
        name: 'a',
        color: '#000',
        points: [
          [0, 1],
          [1, 0.1],
          [2, 0.01],
        ],
      },
      {
        name: 'b',
        color: '#111',
        points: [
          [0, 2],
          [1, -1],
          [2, 0],
        ],
      },
    ],
    { title: 't', xLabel: 'x', yLabel: 'y', logY: true },
  );
  const paths = [...svg.matchAll(/<path d="([^"]*)"/g)].map(
    (m) => (m[1] ?? '').split(/[ML]/).filter(Boolean).length,
  );
  assert.deepEqual(paths, [3, 1]);
  assert.match(lineChart([], { title: 'empty', xLabel: 'x', yLabel: 'y' }), /no data/);
  const p = new Float64Array(100).fill(0.01);
  p[0] = 0.5;
  const bars = weightsChart(p, 10);
  assert.equal([...bars.matchAll(/<path d="([^"]*)"/g)][0]?.[1]?.split(/[ML]/).filter(Boolean).length, 10);
});
