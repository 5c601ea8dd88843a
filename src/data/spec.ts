/** Opens a dataset from its config spec string (`mnist`, `cifar10:<dir>`, `toy:<name>`, ...). */
import { isAbsolute, join as joinPath } from 'node:path';
import type { Config } from '../config/schema.js';
import type { Dataset } from './dataset.js';
import { openCifar10 } from './cifar.js';
import { openFolder } from './folder.js';
import { openIdx } from './idx.js';
import { openFashionMnist, openMnist } from './mnist.js';
import { openNpy } from './npy.js';
import { imageDataset, type Source } from './preprocess.js';
import { toyDataset } from './toy.js';

const TOY_DATA_SEED = 0x7079;

/** Every spec form, for messages. */
export const DATASET_SPECS = [
  'mnist[:train|:test]',
  'fashion-mnist[:test]',
  'idx:<images>[,<labels>]',
  'cifar10:<dir>[:test]',
  'folder:<dir>',
  'npy:<file>[,<labels>]',
  'toy:<name>',
] as const;

/** Splits `spec` into its kind and argument (everything after the first ':'). */
export function parseSpec(spec: string): { kind: string; arg: string } {
  const colon = spec.indexOf(':');
  return colon < 0 ? { kind: spec, arg: '' } : { kind: spec.slice(0, colon), arg: spec.slice(colon + 1) };
}

function unknown(spec: string, kind: string): Error {
  return new Error(
    `data.dataset: unknown dataset kind '${kind}' in '${spec}' (known: ${DATASET_SPECS.join(', ')})`,
  );
}

/** `<file>[,<labels>]` → the two paths (paths with commas are not supported). */
function fileAndLabels(spec: string, kind: string, arg: string): [string, string | undefined] {
  const parts = arg.split(',');
  if (arg === '' || parts.length > 2 || parts.some((p) => p === ''))
    throw new Error(
      `data.dataset: '${spec}' is not ${kind}:<file>[,<labels>]${parts.length > 2 ? ' (paths must not contain commas)' : ''}`,
    );
  return [parts[0] as string, parts[1]];
}

/** The stored (unpreprocessed) examples of any spec but `toy:` (which has no stored form). */
export function openSource(spec: string): Source {
  const { kind, arg } = parseSpec(spec);
  switch (kind) {
    case 'mnist':
      if (arg !== '' && arg !== 'train' && arg !== 'test')
        throw new Error(`data.dataset: '${spec}' is not mnist, mnist:train or mnist:test`);
      return openMnist(spec, arg === '' ? 'all' : arg);
    case 'fashion-mnist':
      if (arg !== '' && arg !== 'train' && arg !== 'test')
        throw new Error(`data.dataset: '${spec}' is not fashion-mnist or fashion-mnist:test`);
      return openFashionMnist(arg === 'test' ? 'test' : 'train');
    case 'idx': {
      const [images, labels] = fileAndLabels(spec, kind, arg);
      return openIdx(images, labels, spec);
    }
    case 'npy': {
      const [file, labels] = fileAndLabels(spec, kind, arg);
      return openNpy(file, labels, spec);
    }
    case 'cifar10': {
      // The split goes last so that directories containing ':' still work.
      const m = /^(.*):(train|test)$/.exec(arg);
      const dir = m ? (m[1] as string) : arg;
      if (dir === '') throw new Error(`data.dataset: '${spec}' is not cifar10:<dir>[:test]`);
      return openCifar10(dir, m?.[2] === 'test' ? 'test' : 'train', spec);
    }
    case 'folder':
      if (arg === '') throw new Error(`data.dataset: '${spec}' is not folder:<dir>`);
      return openFolder(arg, spec);
    default:
      throw unknown(spec, kind);
  }
}

/** The dataset named by `data.dataset`; images come preprocessed to [image_size, image_size, channels]. */
export function openDataset(data: Config['data']): Dataset {
  const spec = data.dataset;
  const { kind, arg } = parseSpec(spec);
  // Toy points have a fixed seed of their own: changing run.seed changes training, not the data.
  if (kind === 'toy') return toyDataset(arg, data.size, TOY_DATA_SEED);
  // Checked before opening: loading a dataset only to reject the config wastes seconds.
  if (data.channels !== 1 && data.channels !== 3)
    throw new Error(`data.channels: images have 1 (grey) or 3 (RGB) channels, got ${data.channels}`);
  return imageDataset(openSource(spec), { imageSize: data.image_size, channels: data.channels });
}

/**
 * The spec with its relative paths resolved against `root` (a worker's `--data-root`): datasets
 * live at different mount points on different hosts, the job config names them once.
 */
export function resolveSpec(spec: string, root: string | undefined): string {
  if (!root) return spec;
  const { kind, arg } = parseSpec(spec);
  const abs = (p: string) => (p === '' || isAbsolute(p) ? p : joinPath(root, p));
  switch (kind) {
    case 'idx':
    case 'npy':
      return `${kind}:${arg.split(',').map(abs).join(',')}`;
    case 'folder':
      return `${kind}:${abs(arg)}`;
    case 'cifar10': {
      const m = /^(.*?)(:test)?$/.exec(arg);
      return `${kind}:${abs(m?.[1] ?? arg)}${m?.[2] ?? ''}`;
    }
    default:
      return spec;
  }
}

/** The held-out split of a training spec (mnist → mnist:test, …), or null when it has none. */
export function heldOutSpec(spec: string): string | null {
  const { kind, arg } = parseSpec(spec);
  if ((kind === 'mnist' || kind === 'fashion-mnist') && (arg === '' || arg === 'train'))
    return `${kind}:test`;
  if (kind === 'cifar10') {
    const m = /^(.*?)(:train|:test)?$/.exec(arg);
    if (m && m[2] !== ':test' && m[1] !== '') return `cifar10:${m[1]}:test`;
  }
  return null;
}
