/**
 * Shard plans: how the current workers split global batch s. The plan depends only on the batch
 * size and the world size, so it can be recomputed for a new world size at any step; the union
 * of the shards is always exactly the global batch.
 */

/** Positions [from, to) of the global batch owned by one rank. */
export interface ShardRange {
  rank: number;
  from: number;
  to: number;
}

/**
 * Splits a batch of B positions among `world` ranks into contiguous ranges whose sizes differ
 * by at most one (the first B mod world ranks get the larger size; a rank may get none).
 */
export function shardPlan(B: number, world: number): ShardRange[] {
  if (!Number.isInteger(B) || B < 0) throw new Error(`shard plan: batch ${B} must be a non-negative integer`);
  if (!Number.isInteger(world) || world < 1) throw new Error(`shard plan: world size ${world} must be ≥ 1`);
  const base = Math.floor(B / world);
  const extra = B % world;
  const out: ShardRange[] = [];
  let from = 0;
  for (let rank = 0; rank < world; rank++) {
    const n = base + (rank < extra ? 1 : 0);
    out.push({ rank, from, to: from + n });
    from += n;
  }
  return out;
}
