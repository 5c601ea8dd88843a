/**
 * All-gather of variable-length float32 contributions: every rank sends its own to its successor
 * (each header carries the contribution's length, so receivers need not know it in advance), and
 * passes on what it receives until each contribution has made N − 1 hops. `allGather` never
 * writes into its argument.
 */
import { RingProtocolError } from '../errors.js';
import { Encoding, Phase, type Frame } from '../frame.js';
import { bytesOf, f32View, mod } from '../layout.js';
import { SettledOp, expectFrame, type OpHost, type Settle } from './op.js';

/** All-gather into `out`, one array per rank in rank order (see the file comment). */
export class AllGatherOp extends SettledOp {
  readonly name = 'allGather';
  private readonly n: number;
  private readonly chunkElems: number;
  private step = 0;
  private chunk = 0;
  private cur: Float32Array | null = null;

  constructor(
    ring: OpHost,
    seq: number,
    private readonly local: Float32Array,
    private readonly out: Float32Array[],
    settle: Settle,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.chunkElems = Math.max(1, Math.floor(ring.chunkBytes / 4));
  }

  waitingFor(): string {
    return `step ${this.step} chunk ${this.chunk}`;
  }

  start(): void {
    // Two copies of the (small) contribution: the caller's result, and what goes on the wire.
    const mine = Float32Array.from(this.local);
    this.out[this.ring.rank] = mine;
    const wire = Float32Array.from(this.local);
    if (this.n === 1) {
      this.ring.finish(this);
      return;
    }
    const nc = Math.max(1, Math.ceil(mine.length / this.chunkElems));
    for (let c = 0; c < nc; c++) {
      const lo = Math.min(mine.length, c * this.chunkElems);
      const hi = Math.min(mine.length, lo + this.chunkElems);
      this.ring.send(
        this.header(this.seq, Phase.GATHER, 0, c, Encoding.F32, hi - lo, mine.length, nc),
        bytesOf(wire.subarray(lo, hi)),
      );
    }
  }

  handle(f: Frame): void {
    const h = f.header;
    const s = this.step;
    const c = this.chunk;
    if (c === 0) {
      if (h.phase !== Phase.GATHER || h.step !== s || h.chunk !== 0)
        throw new RingProtocolError(
          `allGather: expected step ${s} chunk 0 from rank ${h.sender}, got phase ${h.phase} step ${h.step} chunk ${h.chunk}`,
        );
      this.cur = new Float32Array(h.length);
    }
    const cur = this.cur as Float32Array;
    const nc = Math.max(1, Math.ceil(cur.length / this.chunkElems));
    const lo = Math.min(cur.length, c * this.chunkElems);
    const hi = Math.min(cur.length, lo + this.chunkElems);
    expectFrame('allGather', h, {
      phase: Phase.GATHER,
      step: s,
      chunk: c,
      encoding: Encoding.F32,
      count: hi - lo,
      length: cur.length,
      chunks: nc,
    });
    cur.set(f32View(f.payload), lo);
    if (s + 1 < this.n - 1)
      this.ring.send(
        this.header(this.seq, Phase.GATHER, s + 1, c, Encoding.F32, hi - lo, cur.length, nc),
        f.payload,
      );
    if (c + 1 < nc) this.chunk = c + 1;
    else {
      this.out[mod(this.ring.rank - s - 1, this.n)] = cur;
      this.cur = null;
      this.chunk = 0;
      this.step = s + 1;
      if (this.step === this.n - 1) this.ring.finish(this);
    }
  }
}
