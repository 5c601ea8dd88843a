/** `ringdiff eval train-features`: trains the built-in feature network on a labelled dataset. */
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { imageDataset } from '../data/preprocess.js';
import { openSource } from '../data/spec.js';
import { initBackend } from '../model/backend/index.js';
import { disposeParams } from '../model/params.js';
import { saveFeatureNet, trainFeatureNet, type TrainFeatureOptions } from '../eval/features.js';
import { UsageError } from './common.js';

/** Options of `ringdiff eval train-features` (commander names): the training options plus where. */
export interface TrainFeaturesOptions extends Omit<TrainFeatureOptions, 'onStep'> {
  data: string;
  out: string;
  json?: boolean;
  backend?: string;
}

/** Trains mnistcnn on `--data` and writes it to `--out` (safetensors); prints a summary line or JSON. */
export async function trainFeatures(o: TrainFeaturesOptions): Promise<void> {
  if (!o.out.toLowerCase().endsWith('.safetensors'))
    throw new UsageError(`--out ${o.out}: the weights file must end in .safetensors`);
  if (!(o.lr > 0)) throw new UsageError(`--lr must be > 0, got ${o.lr}`);
  if (!(o.valFraction >= 0 && o.valFraction < 1))
    throw new UsageError(`--val-fraction must be in [0, 1), got ${o.valFraction}`);
  // Before training, so that a bad --out costs no training time.
  await mkdir(dirname(resolve(o.out)), { recursive: true });
  let ds;
  try {
    ds = imageDataset(openSource(o.data), { imageSize: 32, channels: 1 });
  } catch (e) {
    throw new UsageError(`--data ${o.data}: ${(e as Error).message}`);
  }
  try {
    if (ds.shape.length !== 3) throw new UsageError(`--data ${o.data}: examples are not images`);
    if (ds.numClasses < 2)
      throw new UsageError(`--data ${o.data}: has no class labels; the feature network is a classifier`);
    await initBackend(o.backend, { quiet: true });
    const t0 = Date.now();
    const every = 50;
    let window = 0;
    const trained = await trainFeatureNet(ds, {
      epochs: o.epochs,
      steps: o.steps,
      batch: o.batch,
      lr: o.lr,
      seed: o.seed,
      valFraction: o.valFraction,
      onStep: (step, loss) => {
        window += loss;
        if (!o.json && (step + 1) % every === 0) {
          process.stderr.write(`step ${step + 1}: loss ${(window / every).toFixed(4)}\n`);
          window = 0;
        }
      },
    });
    try {
      const last = trained.losses.slice(-50);
      const finalLoss = last.reduce((a, b) => a + b, 0) / Math.max(1, last.length);
      await saveFeatureNet(o.out, trained, {
        dataset: o.data,
        steps: String(trained.losses.length),
        batch: String(o.batch),
        lr: String(o.lr),
        seed: String(o.seed),
        train_examples: String(trained.trainCount),
        val_examples: String(trained.valCount),
        val_accuracy: Number.isNaN(trained.valAccuracy) ? 'none' : trained.valAccuracy.toFixed(4),
        final_loss: finalLoss.toFixed(4),
      });
      const summary = {
        out: o.out,
        dataset: o.data,
        steps: trained.losses.length,
        first_loss: trained.losses[0],
        final_loss: finalLoss,
        val_accuracy: Number.isNaN(trained.valAccuracy) ? null : trained.valAccuracy,
        seconds: (Date.now() - t0) / 1000,
      };
      process.stdout.write(
        o.json
          ? `${JSON.stringify(summary)}\n`
          : `wrote ${o.out}: mnistcnn on ${o.data}, ${summary.steps} steps, loss ${finalLoss.toFixed(4)}, held-out accuracy ${summary.val_accuracy ?? 'n/a'} (${summary.seconds.toFixed(0)} s)\n`,
      );
    } finally {
      disposeParams(trained.params);
    }
  } finally {
    ds.close();
  }
}
