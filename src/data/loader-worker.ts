/**
 * The data loader's thread: opens the dataset itself and answers batch requests, so decoding
 * overlaps the training step running on the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { LoaderInit, LoaderRequest, LoaderReply } from './prefetch.js';
import { readShard } from './prefetch.js';
import type { Dataset } from './dataset.js';
import { GlobalBatches } from './batches.js';

const init = workerData as LoaderInit;
const mod = (await import(init.module)) as { openDataset: (d: LoaderInit['data']) => Dataset };
const dataset = mod.openDataset(init.data);
// Built once: it caches the epoch's permutation, which every shard of the epoch reads.
const batches = new GlobalBatches(dataset.size, init.globalBatch, init.seed, init.data.drop_last);
const port = parentPort;
if (!port) throw new Error('loader-worker must run in a worker thread');
port.on('message', (req: LoaderRequest) => {
  try {
    const shard = readShard(dataset, init, req, batches);
    const reply: LoaderReply = { id: req.id, ok: true, ...shard };
    const transfer = [shard.x0.buffer as ArrayBuffer];
    if (shard.labels) transfer.push(shard.labels.buffer as ArrayBuffer);
    port.postMessage(reply, transfer);
  } catch (e) {
    const reply: LoaderReply = { id: req.id, ok: false, error: e instanceof Error ? e.message : String(e) };
    port.postMessage(reply);
  }
});
port.postMessage({ ready: true, size: dataset.size, shape: dataset.shape, numClasses: dataset.numClasses });
