/**
 * Broadcast: the root sends its buffer chunk by chunk to its successor; every other rank copies
 * each chunk into its buffer and passes it on, except the root's predecessor, which ends the call
 * with a DONE frame back to the root. A rejected broadcast leaves a prefix of the root's data in
 * the buffer of non-root ranks.
 */
import { Encoding, Phase, type Frame, type FrameHeader } from '../frame.js';
import { mod } from '../layout.js';
import { SettledOp, expectFrame, type OpHost, type Settle } from './op.js';

/** Broadcast of a byte buffer from `root` (see the file comment). */
export class BroadcastOp extends SettledOp {
  readonly name = 'broadcast';
  private readonly n: number;
  private readonly chunkBytes: number;
  private readonly nc: number;
  private chunk = 0;

  constructor(
    ring: OpHost,
    seq: number,
    private readonly bytes: Buffer,
    private readonly root: number,
    settle: Settle,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.chunkBytes = ring.chunkBytes;
    this.nc = Math.max(1, Math.ceil(bytes.length / this.chunkBytes));
  }

  waitingFor(): string {
    return this.ring.rank === this.root ? 'DONE' : `chunk ${this.chunk}`;
  }

  private range(c: number): [number, number] {
    const lo = Math.min(this.bytes.length, c * this.chunkBytes);
    return [lo, Math.min(this.bytes.length, lo + this.chunkBytes)];
  }

  start(): void {
    if (this.n === 1) {
      this.ring.finish(this);
      return;
    }
    if (this.ring.rank !== this.root) return;
    for (let c = 0; c < this.nc; c++) {
      const [lo, hi] = this.range(c);
      this.ring.send(this.chunkHeader(c, hi - lo), this.bytes.subarray(lo, hi));
    }
  }

  /** Header of broadcast chunk `c` holding `count` bytes. */
  private chunkHeader(c: number, count: number): FrameHeader {
    return this.header(
      this.seq,
      Phase.BROADCAST,
      0,
      c,
      Encoding.BYTES,
      count,
      this.bytes.length,
      this.nc,
      this.root,
    );
  }

  handle(f: Frame): void {
    const h = f.header;
    const succ = mod(this.ring.rank + 1, this.n);
    if (this.ring.rank === this.root) {
      // The only frame the root receives: DONE from its predecessor (the last rank).
      expectFrame('broadcast', h, {
        phase: Phase.DONE,
        step: 0,
        chunk: 0,
        encoding: Encoding.BYTES,
        count: 0,
        length: this.bytes.length,
        chunks: this.nc,
        root: this.root,
      });
      this.ring.finish(this);
      return;
    }
    const c = this.chunk;
    const [lo, hi] = this.range(c);
    expectFrame('broadcast', h, {
      phase: Phase.BROADCAST,
      step: 0,
      chunk: c,
      encoding: Encoding.BYTES,
      count: hi - lo,
      length: this.bytes.length,
      chunks: this.nc,
      root: this.root,
    });
    f.payload.copy(this.bytes, lo);
    if (succ !== this.root) {
      this.ring.send(this.chunkHeader(c, hi - lo), f.payload);
    }
    this.chunk = c + 1;
    if (this.chunk === this.nc) {
      if (succ === this.root)
        this.ring.send(
          this.header(this.seq, Phase.DONE, 0, 0, Encoding.BYTES, 0, this.bytes.length, this.nc, this.root),
          Buffer.alloc(0),
        );
      this.ring.finish(this);
    }
  }
}
