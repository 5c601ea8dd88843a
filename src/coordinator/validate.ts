/**
 * Bounds of the fields of coordinator requests. Every check throws a `FieldError` whose message
 * is one line that starts with the field's name in the proto ("ring_endpoint: …"); the server
 * answers it as INVALID_ARGUMENT. Pure functions, so the rules are tested without a server.
 */
import { ringdiff } from '../proto-gen/coordinator.js';

import pb = ringdiff.v1;
import { MAX_REASON_BYTES } from '../job/protocol.js';

/** A request field outside its bounds; `message` is "<field>: <why>". */
export class FieldError extends Error {}

/** Longest host, backend and device strings a worker may register (bytes, UTF-8). */
export const MAX_LABEL_BYTES = 256;
/** Longest worker id accepted anywhere (ids are UUIDs, 36 characters). */
export const MAX_WORKER_ID = 64;
/** ZeroMQ's ipc:// paths are bound by sun_path: 108 bytes on Linux, one of them the NUL. */
export const MAX_IPC_PATH_BYTES = 107;
export { MAX_REASON_BYTES };
/** Timings beyond a day in ms are not measurements. */
const MAX_MS = 86_400_000;

const Z85_KEY = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;
const HEX_CHECKSUM = /^[0-9a-f]{0,128}$/;
const EVAL_METRIC_NAME = /^[a-z0-9_]{1,64}$/;
const MAX_EVAL_METRICS = 32;
// Control characters would forge lines in logs and tables that print these strings.
// eslint-disable-next-line no-control-regex -- control characters are what it looks for
const CONTROL = /[\u0000-\u001f\u007f]/;
const WILDCARD_HOSTS = new Set(['*', '0.0.0.0', '::', '[::]', '0', '[::0]', '::0']);

function fail(field: string, why: string): never {
  throw new FieldError(`${field}: ${why}`);
}

/** A printable string of at most `maxBytes` UTF-8 bytes (`required`: not empty). */
export function checkLabel(field: string, v: string, maxBytes: number, required = false): void {
  if (required && !v) fail(field, 'required');
  const n = Buffer.byteLength(v, 'utf8');
  if (n > maxBytes) fail(field, `${n} bytes, at most ${maxBytes}`);
  if (CONTROL.test(v)) fail(field, 'contains control characters');
}

/** An integer within [lo, hi]. */
export function checkInt(field: string, v: number, lo: number, hi: number): void {
  if (!Number.isSafeInteger(v) || v < lo || v > hi) fail(field, `${v} is outside ${lo}…${hi}`);
}

/** A finite number within [lo, hi]. */
export function checkFinite(field: string, v: number, lo: number, hi: number): void {
  if (!Number.isFinite(v) || v < lo || v > hi) fail(field, `${v} is outside ${lo}…${hi}`);
}

/** A worker id as the coordinator hands them out: present and short. */
export function checkWorkerId(id: string): void {
  if (!id) fail('worker_id', 'required');
  if (id.length > MAX_WORKER_ID) fail('worker_id', `${id.length} characters, at most ${MAX_WORKER_ID}`);
}

/**
 * A ring endpoint other workers can connect to: `tcp://HOST:PORT` with a concrete host (not a
 * wildcard) and a port in 1…65535, or `ipc://PATH` with a path that fits a socket address.
 */
export function checkRingEndpoint(v: string): void {
  const field = 'ring_endpoint';
  if (v.length > MAX_LABEL_BYTES) fail(field, `${v.length} characters, at most ${MAX_LABEL_BYTES}`);
  if (CONTROL.test(v) || /\s/.test(v)) fail(field, 'contains whitespace or control characters');
  if (v.startsWith('ipc://')) {
    const p = v.slice(6);
    const n = Buffer.byteLength(p, 'utf8');
    if (n === 0) fail(field, 'ipc:// needs a path');
    if (n > MAX_IPC_PATH_BYTES)
      fail(field, `ipc path of ${n} bytes, a socket path holds at most ${MAX_IPC_PATH_BYTES}`);
    return;
  }
  const m = /^tcp:\/\/(.*):([^:\]]*)$/.exec(v);
  if (!m) fail(field, `'${v}' is not tcp://host:port or ipc://path`);
  const host = m[1] as string;
  const port = m[2] as string;
  if (!host) fail(field, 'tcp:// needs a host');
  if (WILDCARD_HOSTS.has(host)) fail(field, `${host} is a wildcard address, not one peers can connect to`);
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)$/.test(host))
    fail(field, `'${host}' is not a host name or address`);
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)
    fail(field, `port '${port}' is outside 1…65535`);
}

/** Register: every field but last_generation (bounded by the coordinator's own counter). */
export function checkRegister(r: pb.RegisterRequest, job: { totalSteps: number; curve: boolean }): void {
  checkLabel('host', r.host, MAX_LABEL_BYTES, true);
  checkLabel('backend', r.backend, MAX_LABEL_BYTES);
  checkLabel('device', r.device, MAX_LABEL_BYTES);
  checkRingEndpoint(r.ringEndpoint);
  if (
    job.curve ? !Z85_KEY.test(r.curvePublicKey) : r.curvePublicKey !== '' && !Z85_KEY.test(r.curvePublicKey)
  )
    fail('curve_public_key', job.curve ? 'a 40-character Z85 key is required' : 'not a 40-character Z85 key');
  checkInt('committed_step', r.committedStep, -1, job.totalSteps);
  if (!HEX_CHECKSUM.test(r.weightsChecksum))
    fail('weights_checksum', 'not a hex digest of at most 128 digits');
}

/** Heartbeat: generation up to the newest the coordinator knows of, step within the job. */
export function checkHeartbeat(
  r: pb.HeartbeatRequest,
  job: { totalSteps: number; knownGeneration: number },
): void {
  checkWorkerId(r.workerId);
  checkGenerationKnown(r.generation, job.knownGeneration);
  checkInt('step', r.step, -1, job.totalSteps);
}

/** A generation no newer than the newest the coordinator numbered or was told of. */
export function checkGenerationKnown(g: number, known: number): void {
  if (g > known) fail('generation', `${g} is ahead of the coordinator's ${known}`);
}

/** Report: a step of the job, finite measurements within physical bounds, examples within the batch. */
export function checkReport(r: pb.StepReport, job: { totalSteps: number; globalBatch: number }): void {
  checkWorkerId(r.workerId);
  checkInt('step', r.step, 1, job.totalSteps);
  checkFinite('loss', r.loss, 0, Number.MAX_VALUE);
  if (r.lossQuarters.length !== 0 && r.lossQuarters.length !== 4)
    fail('loss_quarters', `expected 4 values, got ${r.lossQuarters.length}`);
  // NaN is how a worker says that no example of its batch fell in that quarter.
  for (const v of r.lossQuarters) if (!Number.isNaN(v)) checkFinite('loss_quarters', v, 0, Number.MAX_VALUE);
  checkFinite('grad_norm', r.gradNorm, 0, Number.MAX_VALUE);
  checkFinite('lr', r.lr, 0, Number.MAX_VALUE);
  checkFinite('data_wait_ms', r.dataWaitMs, 0, MAX_MS);
  checkFinite('forward_backward_ms', r.forwardBackwardMs, 0, MAX_MS);
  checkFinite('allreduce_ms', r.allreduceMs, 0, MAX_MS);
  checkFinite('optimizer_ms', r.optimizerMs, 0, MAX_MS);
  checkFinite('step_ms', r.stepMs, 0, MAX_MS);
  checkInt('allreduce_bytes', r.allreduceBytes, 0, Number.MAX_SAFE_INTEGER);
  checkFinite('allreduce_busbw_gbps', r.allreduceBusbwGbps, 0, 1e6);
  if (!HEX_CHECKSUM.test(r.weightsChecksum))
    fail('weights_checksum', 'not a hex digest of at most 128 digits');
  checkInt('examples', r.examples, 0, job.globalBatch);
  // Metric names become Prometheus label values and history keys: short, plain, few.
  const names = Object.keys(r.evalMetrics ?? {});
  if (names.length > MAX_EVAL_METRICS) fail('eval_metrics', `more than ${MAX_EVAL_METRICS} metrics`);
  for (const name of names) {
    if (!EVAL_METRIC_NAME.test(name))
      fail('eval_metrics', `name '${name.slice(0, 80)}' is not [a-z0-9_]{1,64}`);
    checkFinite(`eval_metrics.${name}`, r.evalMetrics[name] as number, -Number.MAX_VALUE, Number.MAX_VALUE);
  }
}

/** ReportFailure: a step of the job, a rank of the current ring (or −1), a bounded reason. */
export function checkFailure(r: pb.FailureReport, job: { totalSteps: number; worldSize: number }): void {
  checkWorkerId(r.workerId);
  checkInt('step', r.step, -1, job.totalSteps);
  checkInt('suspect_rank', r.suspectRank, -1, job.worldSize - 1);
  checkLabel('reason', r.reason, MAX_REASON_BYTES);
}
