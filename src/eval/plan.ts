/**
 * Which rank evaluates which examples. The indices [0, count) are cut into fixed blocks of `block`
 * indices (the unit of every model call), and whole blocks go to ranks as contiguous runs, in the
 * way `shardPlan` splits batch positions. A model call therefore always sees the same rows,
 * whatever the world size, so its results cannot differ in the last bits between 1 and N workers;
 * and rank order is index order, so concatenating the ranks' parts gives the examples in order.
 */
import { shardPlan } from '../data/shard.js';

/** Example indices [from, to) of one rank, and its blocks as [from, to) pairs. */
export interface EvalRange {
  rank: number;
  from: number;
  to: number;
  blocks: [number, number][];
}

/** The ranges of `world` ranks over `count` examples in blocks of `block` (a rank may get none). */
export function evalPlan(count: number, block: number, world: number): EvalRange[] {
  if (!Number.isInteger(count) || count < 0)
    throw new Error(`eval plan: count ${count} must be an integer ≥ 0`);
  if (!Number.isInteger(block) || block < 1)
    throw new Error(`eval plan: block ${block} must be an integer ≥ 1`);
  const nBlocks = Math.ceil(count / block);
  return shardPlan(nBlocks, world).map((r) => {
    const blocks: [number, number][] = [];
    for (let b = r.from; b < r.to; b++) blocks.push([b * block, Math.min(count, (b + 1) * block)]);
    return {
      rank: r.rank,
      from: Math.min(count, r.from * block),
      to: Math.min(count, r.to * block),
      blocks,
    };
  });
}
