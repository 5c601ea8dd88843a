/**
 * The one record of a committed step's figures, as the worker that ran it saw them, and one
 * converter per format it travels in: the gRPC `StepReport` (worker → coordinator) and a line of
 * `history.jsonl`. Metrics take the record itself. Times in ms, bytes, GB/s.
 */
import { ringdiff } from '../proto-gen/coordinator.js';
import type { HistoryEntry } from './history.js';

import pb = ringdiff.v1;

/** One committed step on one worker. */
export interface StepRecord {
  step: number;
  generation: number;
  /** This worker's rank in the generation (the coordinator fills it from its membership). */
  rank: number;
  worldSize: number;
  /** Weighted loss of the whole global batch (the same on every worker after the all-reduce). */
  loss: number;
  /** Mean raw loss per quarter of the timestep range (Improved DDPM); NaN where none fell. */
  lossQuarters: number[];
  gradNorm: number;
  lr: number;
  dataWaitMs: number;
  forwardBackwardMs: number;
  allreduceMs: number;
  optimizerMs: number;
  stepMs: number;
  /** Bytes this worker sent in the step's all-reduce. */
  allreduceBytes: number;
  /** Bus bandwidth of the all-reduce, GB/s: bytes × 2(N−1)/N per second. */
  allreduceBusbwGbps: number;
  /** Examples this worker processed in the step. */
  examples: number;
  /** Metrics of the evaluation after this step (eval.*), on rank 0's report only. */
  evalMetrics?: Record<string, number>;
}

/** The gRPC report of `rec`; `checksum` is the weights' checksum on verification steps, else ''. */
export function toWireReport(rec: StepRecord, workerId: string, checksum: string): pb.IStepReport {
  return {
    workerId,
    generation: rec.generation,
    step: rec.step,
    loss: rec.loss,
    lossQuarters: rec.lossQuarters,
    gradNorm: rec.gradNorm,
    lr: rec.lr,
    dataWaitMs: rec.dataWaitMs,
    forwardBackwardMs: rec.forwardBackwardMs,
    allreduceMs: rec.allreduceMs,
    optimizerMs: rec.optimizerMs,
    stepMs: rec.stepMs,
    allreduceBytes: rec.allreduceBytes,
    allreduceBusbwGbps: rec.allreduceBusbwGbps,
    weightsChecksum: checksum,
    examples: rec.examples,
    ...(rec.evalMetrics ? { evalMetrics: rec.evalMetrics } : {}),
  };
}

/** The record of a received report; rank and world size come from the coordinator's membership. */
export function fromWireReport(r: pb.IStepReport, rank: number, worldSize: number): StepRecord {
  return {
    step: Number(r.step ?? 0),
    generation: r.generation ?? 0,
    rank,
    worldSize,
    loss: r.loss ?? 0,
    lossQuarters: [...(r.lossQuarters ?? [])],
    gradNorm: r.gradNorm ?? 0,
    lr: r.lr ?? 0,
    dataWaitMs: r.dataWaitMs ?? 0,
    forwardBackwardMs: r.forwardBackwardMs ?? 0,
    allreduceMs: r.allreduceMs ?? 0,
    optimizerMs: r.optimizerMs ?? 0,
    stepMs: r.stepMs ?? 0,
    allreduceBytes: Number(r.allreduceBytes ?? 0),
    allreduceBusbwGbps: r.allreduceBusbwGbps ?? 0,
    examples: r.examples ?? 0,
    ...(r.evalMetrics && Object.keys(r.evalMetrics).length > 0 ? { evalMetrics: { ...r.evalMetrics } } : {}),
  };
}

/** The history line of a step: the job's figures, at `t` (Unix ms), with the job's samples/s. */
export function toHistoryEntry(rec: StepRecord, t: number, samplesPerS: number): HistoryEntry {
  return {
    step: rec.step,
    t,
    loss: rec.loss,
    loss_q: rec.lossQuarters,
    lr: rec.lr,
    grad_norm: rec.gradNorm,
    samples_per_s: samplesPerS,
  };
}
