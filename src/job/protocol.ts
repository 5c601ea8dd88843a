/**
 * What both sides of the coordinator protocol agree on beyond the .proto file: the metadata entry
 * of a worker's secret and the bounds of free-text fields. Shared here so that the worker and the
 * coordinator never import each other.
 */

/** The metadata entry that carries a worker's secret (issued by Register). */
export const WORKER_SECRET_HEADER = 'ringdiff-worker-secret';

/** Longest free-text reason of a failure report or a Leave (bytes). */
export const MAX_REASON_BYTES = 1024;
