/**
 * Reading, overriding and printing job configs. Every failure is a one-line `ConfigError`
 * naming the file and the key path.
 */
import { readFileSync } from 'node:fs';
import {
  Document,
  isMap,
  isScalar,
  isSeq,
  parse as parseYaml,
  parseDocument,
  type Pair,
  type YAMLMap,
} from 'yaml';
import { z } from 'zod';
import { ConfigSchema, type Config } from './schema.js';

/** A user mistake in a config, its file or an override; the message is one line. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(message: string) {
    // Keys and values quoted in messages may hold line breaks (a YAML key "a\nb"): escape them.
    super(escapeControl(message));
  }
}

/** `s` with control characters and line separators escaped (\n, \u0000, \u2028, ...). */
export function escapeControl(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (c < 0x20) out += JSON.stringify(ch).slice(1, -1);
    else if (c === 0x7f || c === 0x85 || c === 0x2028 || c === 0x2029)
      out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return out;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const path = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => (path ? `${path}.${k}` : k));
    return `unknown key${keys.length > 1 ? 's' : ''} ${keys.join(', ')}${keys.length === 1 ? didYouMean(keys[0] as string) : ''}`;
  }
  const msg = issue.message.replace(/^Invalid input: /, '');
  return `${path || '(root)'}: ${msg}`;
}

/** Validates a raw object; `source` names where it came from in error messages. */
export function validateConfig(raw: unknown, source: string): Config {
  const r = ConfigSchema.safeParse(raw ?? {});
  if (!r.success) {
    const first = r.error.issues[0];
    const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more)` : '';
    throw new ConfigError(`${source}: ${first ? describeIssue(first) : 'invalid config'}${more}`);
  }
  return r.data;
}

/** Parses YAML text; syntax errors name the line and column. */
export function parseConfigText(text: string, source: string): unknown {
  // logLevel 'error': no process warning (an extra stderr line) for keys that are collections.
  const doc = parseDocument(text, { prettyErrors: true, logLevel: 'error' });
  const err = doc.errors[0];
  if (err) {
    const pos = err.linePos?.[0];
    const where = pos ? ` at line ${pos.line}, column ${pos.col}` : '';
    throw new ConfigError(
      `${source}: invalid YAML${where}: ${err.message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '')}`,
    );
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (e) {
    // e.g. "Excessive alias count indicates a resource exhaustion attack" (a billion-laughs file).
    throw new ConfigError(`${source}: invalid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (value !== null && value !== undefined && (typeof value !== 'object' || Array.isArray(value))) {
    throw new ConfigError(`${source}: the top level must be a mapping of sections (run, data, model, ...)`);
  }
  return value ?? {};
}

/** Applies `a.b.c=value` overrides (value parsed as YAML: numbers, booleans, lists) to a raw object. */
export function applyOverrides(raw: unknown, sets: readonly string[]): Record<string, unknown> {
  const root: Record<string, unknown> = structuredClone((raw ?? {}) as Record<string, unknown>);
  for (const s of sets) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--set ${s}: expected key.path=value`);
    const key = s.slice(0, eq).trim();
    const text = s.slice(eq + 1);
    let value: unknown;
    try {
      value = text === '' ? '' : parseYaml(text);
    } catch (e) {
      throw new ConfigError(
        `--set ${key}: cannot parse value '${text}': ${(e as Error).message.split('\n')[0]}`,
      );
    }
    const parts = key.split('.');
    if (parts.some((p) => p === '')) throw new ConfigError(`--set ${s}: empty key segment`);
    checkKeyPath(key, parts);
    let node = root;
    for (const p of parts.slice(0, -1)) {
      const child = node[p];
      if (child === undefined) node[p] = {};
      else if (typeof child !== 'object' || child === null || Array.isArray(child)) {
        throw new ConfigError(`--set ${key}: ${p} is not a section`);
      }
      node = node[p] as Record<string, unknown>;
    }
    node[parts[parts.length - 1] as string] = value;
  }
  return root;
}

/** The schema of an object, or null for a value (defaults and optionals unwrapped). */
function objectShape(schema: z.ZodType): Record<string, z.ZodType> | null {
  const inner = unwrap(schema);
  return inner instanceof z.ZodObject ? (inner.shape as Record<string, z.ZodType>) : null;
}

/** Throws a ConfigError for an override path the schema does not have, naming the whole path. */
function checkKeyPath(key: string, parts: readonly string[]): void {
  let shape = objectShape(ConfigSchema);
  for (const [i, p] of parts.entries()) {
    if (!shape)
      throw new ConfigError(`--set ${key}: ${parts.slice(0, i).join('.')} is a value, not a section`);
    const child = shape[p];
    if (!child) throw new ConfigError(`--set ${key}: unknown key ${key}${didYouMean(key)}`);
    shape = objectShape(child);
  }
}

/** Every key path of the schema: sections and values (`train`, `train.steps`, ...). */
function keyPaths(
  shape: Record<string, z.ZodType> | null = objectShape(ConfigSchema),
  prefix = '',
): string[] {
  if (!shape) return [];
  return Object.entries(shape).flatMap(([k, v]) => [
    `${prefix}${k}`,
    ...keyPaths(objectShape(v), `${prefix}${k}.`),
  ]);
}

/** Edit distance with adjacent transpositions (optimal string alignment). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) (d[0] as number[])[j] = j;
  for (let i = 1; i <= a.length; i++) {
    const row = d[i] as number[];
    const prev = d[i - 1] as number[];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, ((d[i - 2] as number[])[j - 2] as number) + 1);
      row[j] = v;
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/**
 * `; did you mean X?` for an unknown key path: the known paths within a few edits of it, or with
 * the same last name in another section (`train.timesteps` → `diffusion.timesteps`); '' if none.
 */
export function didYouMean(key: string): string {
  const parts = key.split('.');
  const last = parts.pop() as string;
  const paths = keyPaths();
  // The same name in another section when the given section exists (a misplaced key) or none was
  // given (`lr` → `train.lr`).
  const sectionKnown = parts.length === 0 || paths.includes(parts.join('.'));
  const limit = Math.max(2, Math.floor(key.length / 4));
  const scored = paths
    .map((p) => ({ p, d: editDistance(key, p) }))
    .map(({ p, d }) => ({ p, d: sectionKnown && p.split('.').pop() === last ? Math.min(d, 1) : d }))
    .filter(({ d }) => d <= limit)
    .sort((x, y) => x.d - y.d || x.p.localeCompare(y.p))
    .slice(0, 2)
    .map(({ p }) => p);
  return scored.length > 0 ? `; did you mean ${scored.join(' or ')}?` : '';
}

/** Loads a config file (or the defaults when `path` is undefined) and applies overrides. */
export function loadConfig(path: string | undefined, sets: readonly string[] = []): Config {
  let raw: unknown = {};
  const source = path ?? 'config';
  if (path !== undefined) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new ConfigError(`${path}: cannot read config (${code ?? (e as Error).message})`);
    }
    raw = parseConfigText(text, path);
  }
  const merged = applyOverrides(raw, sets);
  return validateConfig(merged, sets.length > 0 ? `${source} (with --set)` : source);
}

/** The resolved config as YAML, each key followed by its one-line description. */
export function configToYaml(cfg: Config): string {
  const doc = new Document(cfg);
  if (isMap(doc.contents)) annotate(doc.contents, ConfigSchema);
  return doc.toString({ lineWidth: 0 });
}

/** Puts each key's schema description beside it, descending into nested sections. */
function annotate(map: YAMLMap, schema: z.ZodType): void {
  const inner = unwrap(schema);
  if (!(inner instanceof z.ZodObject)) return;
  for (const pair of map.items as Pair[]) {
    const key = isScalar(pair.key) ? String(pair.key.value) : '';
    const child = (inner.shape as Record<string, z.ZodType>)[key];
    if (!child) continue;
    if (isMap(pair.value)) {
      annotate(pair.value, child);
      continue;
    }
    // Flow style keeps a list on one line, so its description stays beside it.
    if (isSeq(pair.value)) pair.value.flow = true;
    const desc = child.description ?? unwrap(child).description;
    if (desc && pair.value) (pair.value as { comment?: string }).comment = ` ${desc}`;
  }
}

function unwrap(s: z.ZodType): z.ZodType {
  let cur: z.ZodType = s;
  for (let i = 0; i < 5; i++) {
    const def = (cur as unknown as { def: { innerType?: z.ZodType } }).def;
    if (!def.innerType) break;
    cur = def.innerType;
  }
  return cur;
}
