/**
 * All-reduce (sum / mean) of a float32 buffer, in place, over the ring; `barrier()` is one of one
 * element that always ends with the DONE round.
 *
 * ## The ring (bandwidth-optimal, pipelined)
 * The buffer of L elements is cut into N segments (segment k = [⌊kL/N⌋, ⌊(k+1)L/N⌋)) and each
 * segment into chunks of `chunkBytes / 4` elements (at least one chunk per segment, possibly
 * empty). 2(N−1) steps each move one segment per link: reduce-scatter steps s = 0…N−2 (rank r
 * sends segment r−s, receives r−s−1 and adds its own contribution to the received partial sum,
 * which it then sends on; at the last one it adds the received frame into its own buffer, which
 * then holds the final value of that segment), then all-gather steps (rank r starts with segment
 * r+1, which it owns, and copies every segment it receives into its buffer and sends it on from
 * there). Every chunk is sent on as soon as it is processed, so sending, receiving and adding
 * overlap along the whole ring. The call ends with DONE tokens (see below). The sum of segment k
 * is always formed in the order ((x_k + x_{k+1}) + x_{k+2}) + … (indices mod N; the chunk size
 * does not matter), so within a generation (same ranks, same order) results are bit-reproducible
 * and bit-identical on every rank. `mean` divides the float32 sum by N once, at the owner, before
 * the all-gather.
 *
 * With `compression: 'fp16'` the payloads are IEEE binary16: each hop adds in float32 and rounds
 * the partial sum to fp16 for the wire; the owner keeps the fp16-rounded final value, so every
 * rank still ends with identical bits.
 *
 * ## Buffers and copies
 * Frames are sent zero-copy: ZeroMQ references the memory until its I/O thread has written it.
 * All-reduce frames are sent from the caller's buffer (the rank's own segment at reduce-scatter
 * step 0, the final values from the owner's last reduce-scatter step on) or, for partial sums,
 * from the received frame itself (pure-JS kernels) or from the ring's scratch buffer (native
 * kernels, below). So that no send of that memory is pending when `allReduce` resolves, every rank
 * that has processed all its data frames sends a DONE token carrying its rank, and passes on the
 * others' tokens until its successor's has come back round (N−1 tokens per rank and call, in a
 * fixed order on every link: the sender's data, its own token, then the ones it passes on); the
 * successor's token proves it has consumed everything this rank sent, so the caller may reuse its
 * buffer at once, and the scratch buffer may be overwritten by the next call. A call whose
 * payloads all went through shared memory (below) ends without this round unless it is a
 * `barrier()`: N−1 more hops, each a wake-up of another process, are a large part of a call
 * when ranks outnumber cores.
 *
 * ZeroMQ allocates every received frame with malloc, and zeromq.js hands it to JavaScript as an
 * external buffer that only a garbage collection would free — while the external memory it
 * reports makes V8 run a full collection every few tens of megabytes received. The native kernels
 * include `release`, which frees a frame as soon as it has been read; since a frame that is sent
 * on cannot be freed yet, with them partial sums are written into a scratch buffer owned by the
 * ring (as large as the largest buffer reduced; allocated on first use, N > 2 or fp16 only) and
 * sent from there, so no received frame is ever sent on. Per rank and call, the data is touched
 * by: one float32 add of (N−1)/N of it (received frame + caller's buffer → scratch or received
 * frame, or into the caller's buffer at the last step) and one copy of (N−1)/N of it (all-gather,
 * received frame → caller's buffer), besides ZeroMQ's own copies into and out of the kernel.
 *
 * ## Through shared memory
 * When this rank sends through shared memory (transport.ts `ShmLinks` says when, and what a
 * receiver checks), all-reduce payloads do not go through the socket: the rank writes them into
 * its segment and sends only the header, which names the segment and the offset (frame.ts); the
 * payload frame is empty. The data is touched:
 *   - step 0: the rank's own segment is copied (fp16: converted) into its slot;
 *   - reduce-scatter steps s < N−2: received slot + caller's buffer → the next slot (one add,
 *     written straight into this rank's segment);
 *   - the last reduce-scatter step: received slot + caller's buffer → caller's buffer (the final
 *     value; fp16: formed in the slot, then widened into the buffer), copied into the slot;
 *   - all-gather: received slot → caller's buffer, and the header goes on unchanged — it still
 *     names the slot of the rank that formed the final value, so all-gather moves no payload
 *     bytes between ranks at all: every rank reads each final segment from its owner's segment.
 * A frame through shared memory covers several consecutive chunks of its step (whole chunks,
 * about `sharedMemoryFrameBytes`, default 32 MiB of float32; its `count` tells the receiver how
 * many): without payload bytes to stream through a socket, small frames only cost per-frame work
 * on every rank. A receiver that passes such a frame on through the socket splits it into chunks.
 * Results are bit-identical to the socket path (the same kernels on the same operands, in the
 * same order; copies preserve bits).
 *
 * Slots and their reuse. Each call lays out one region per step 0 … N−1 (the segment that step
 * sends, chunks contiguous; ≈ the buffer size in all, half with fp16) from the start of the
 * rank's segment, so no slot is written twice within a call. The segment is created by the first
 * call that needs it and replaced by a larger one (at least double, at most `sharedMemoryBytes`,
 * default 1 GiB) when a call needs more; steps that do not fit under the cap go through the
 * socket, so memory stays bounded for any model size (≈ N × the cap per host). A slot is
 * rewritten (or its segment replaced) only by a later call of the same rank, and processing a
 * frame reads its slot synchronously, to the last byte, before anything else runs. After a call
 * with the DONE round, the rank has received the DONE token of every other rank, each sent only
 * after that rank processed all its data frames: every read of every slot is done. Without it
 * (every rank sent every payload through shared memory: each data header carries its sender's
 * `done_round` ORed with those it received, and a rank's last data frame descends from frames of
 * every rank, so all ranks decide alike), the reads that may still be under way when the rank
 * starts its next call are of its final values (region N−1: its predecessor reads them last of
 * all, at its last step). Its reduce-scatter regions were read by its successor before that one
 * formed the final values that reached this rank last. The next call writes region 0 at once, and
 * every other region only after a frame of that call from the predecessor — which has then
 * finished the previous call, so all reads of the old final values are done. So region 0 alone
 * must not overlap the previous call's final values: it is laid out after them when it would
 * (lengths changing between calls), or in a fresh segment.
 */
import { RingProtocolError } from '../errors.js';
import { ELEMENT_BYTES, Encoding, Phase, type Frame, type FrameHeader } from '../frame.js';
import { Layout, bytesOf, f32View, mod, u16View } from '../layout.js';
import { kernels } from '../reduce.js';
import { SLOT_ALIGN, type OwnSegment } from '../shm.js';
import { SettledOp, expectFrame, type OpHost, type Settle } from './op.js';

/** The payload of a frame whose payload is in shared memory. */
const EMPTY = Buffer.alloc(0);

/** An all-reduce in progress (see the file comment). */
export class AllReduceOp extends SettledOp {
  readonly name = 'allReduce';
  private readonly n: number;
  private readonly layout: Layout;
  private readonly enc: Encoding;
  /** Data steps: 2(N−1). Steps `steps` … `steps + N − 2` receive the DONE tokens. */
  private readonly steps: number;
  private step = 0;
  private chunk = 0;
  /**
   * Whether received frames are freed as soon as they are read (`kernels.release`; fixed for the
   * call). Every frame is then read exactly once and never sent on: partial sums (and, with fp16,
   * the half-precision frames passed on) go out from the ring's scratch buffer instead.
   */
  private readonly releases = kernels.release !== undefined;
  /** This call's shared-memory segment (null: every payload goes through the socket). */
  private seg: OwnSegment | null = null;
  /** Byte offset of each send step's region in `seg`; −1: that step goes through the socket. */
  private slotBase: number[] = [];
  /** Chunks per frame this rank sends from its segment. */
  private readonly spanChunks: number;
  /** Bytes of each send step's region (steps 0 … N−1). */
  private slotBytes: number[] = [];
  /**
   * Whether the call ends with the DONE round: when any rank sends payload bytes through the
   * socket (or a barrier asks for it). Each rank starts with its own answer and ORs in the flag of
   * every data frame it receives, and sends its current value with each; the last data frame a
   * rank receives descends from frames of every rank, so all ranks end with the same value.
   */
  private needDone: boolean;

  constructor(
    ring: OpHost,
    seq: number,
    private readonly buf: Float32Array,
    private readonly divisor: number,
    settle: Settle,
    confirm = false,
  ) {
    super(ring, seq, settle);
    this.n = ring.worldSize;
    this.layout = new Layout(buf.length, this.n, Math.max(1, Math.floor(ring.chunkBytes / 4)));
    this.enc = ring.compression === 'fp16' ? Encoding.F16 : Encoding.F32;
    this.steps = 2 * (this.n - 1);
    this.spanChunks = Math.max(1, Math.floor(ring.shm.frameBytes / (this.layout.chunkElems * 4)));
    this.needDone = confirm;
  }

  waitingFor(): string {
    return this.step >= this.steps
      ? `DONE of rank ${this.doneOrigin(this.step - this.steps)}`
      : `step ${this.step} chunk ${this.chunk}`;
  }

  /** Segment received at step s. */
  private recvSeg(s: number): number {
    const r = this.ring.rank;
    return s < this.n - 1 ? mod(r - s - 1, this.n) : mod(r - (s - (this.n - 1)), this.n);
  }

  private phaseOf(s: number): Phase {
    return s < this.n - 1 ? Phase.REDUCE_SCATTER : Phase.ALL_GATHER;
  }

  /** Rank whose DONE token this rank receives j-th: its predecessor's first, its successor's last. */
  private doneOrigin(j: number): number {
    return mod(this.ring.rank - 1 - j, this.n);
  }

  private doneHeader(step: number, origin: number): FrameHeader {
    return this.header(this.seq, Phase.DONE, step, 0, this.enc, 0, this.buf.length, 1, origin);
  }

  /** Elements [lo, hi) of the scratch buffer as fp16 (its first half, same indices as `buf`). */
  private scratchHalf(lo: number, hi: number): Uint16Array {
    const s = this.ring.scratch(this.buf.length);
    return new Uint16Array(s.buffer, s.byteOffset + lo * 2, hi - lo);
  }

  /**
   * Ends the call without the DONE round (every payload went through shared memory): what it
   * guarded is safe without it. No payload of this call is on a socket, so the caller's buffer is
   * free at once; and this rank's regions stay untouched until its predecessor has finished this
   * call, which implies every read of them is done: the predecessor reads this rank's final values
   * last of all ranks, and the successor has read the reduce-scatter regions before it formed the
   * final values that reached this rank last. Only step 0 of the next call writes before that, so
   * planSlots keeps it off the final values recorded here.
   */
  private finishUnconfirmed(): void {
    const base = this.slotBase[this.n - 1];
    const size = this.slotBytes[this.n - 1];
    this.ring.shm.unconfirmed =
      this.seg && base !== undefined && base >= 0 && size !== undefined
        ? { seg: this.seg, lo: base, hi: base + size }
        : null;
    this.ring.finish(this);
  }

  /** Segment sent at step s (step s > 0 sends on the segment received at step s − 1). */
  private sendSeg(s: number): number {
    return mod(this.ring.rank - s, this.n);
  }

  /**
   * Lays out this call's sends in the ring's segment: one region for each of the steps 0 … N−1
   * (the segment the step sends, chunks contiguous, regions 64-byte aligned), in step order;
   * steps beyond the segment's capacity go through the socket. Nothing is overwritten within a
   * call. Steps N … 2N−3 send a reference to the slot the data came from (see the file comment)
   * and need no room, unless that data came through the socket (then they use the socket too).
   */
  private planSlots(): void {
    const eb = ELEMENT_BYTES[this.enc];
    const bases: number[] = [];
    const sizes: number[] = [];
    let total = 0;
    for (let s = 0; s < this.n; s++) {
      const bytes = this.layout.segLen(this.sendSeg(s)) * eb;
      bases.push(total);
      sizes.push(bytes);
      total += Math.ceil(bytes / SLOT_ALIGN) * SLOT_ALIGN;
    }
    let seg = this.ring.shm.segment(total);
    if (!seg) return;
    // Step 0 writes its region before this rank hears from its predecessor in this call, i.e.
    // while other ranks may still read the previous call's final values (when it ended without
    // the DONE round): never over them. (Every later write follows a frame of this call from the
    // predecessor, which has then finished the previous call: all its readers are done.)
    let shift = 0;
    const prev = this.ring.shm.unconfirmed;
    if (prev && prev.seg === seg && prev.lo < (sizes[0] as number) && (bases[0] as number) < prev.hi) {
      shift = Math.ceil(prev.hi / SLOT_ALIGN) * SLOT_ALIGN;
      if (shift + total > seg.bytes) {
        shift = 0;
        seg = this.ring.shm.segment(Math.max(total, seg.bytes), true);
        if (!seg) return;
      }
    }
    const bytes = seg.bytes;
    this.seg = seg;
    this.slotBytes = sizes;
    this.slotBase = bases.map((b, s) => (b + shift + (sizes[s] as number) <= bytes ? b + shift : -1));
  }

  /** Byte offset in the segment of the chunk starting at element `lo` sent at step s; −1: socket. */
  private slotOffset(s: number, lo: number): number {
    const base = this.slotBase[s];
    if (base === undefined || base < 0) return -1;
    return base + (lo - this.layout.segStart(this.sendSeg(s))) * ELEMENT_BYTES[this.enc];
  }

  private slotF32(off: number, count: number): Float32Array {
    return new Float32Array((this.seg as OwnSegment).buffer, off, count);
  }

  private slotU16(off: number, count: number): Uint16Array {
    return new Uint16Array((this.seg as OwnSegment).buffer, off, count);
  }

  /**
   * Sends chunks c … c + span − 1 (elements [lo, hi)) of step s: as one frame whose payload is at
   * `off` in this rank's segment (≥ 0) or at `ref` in another rank's, else through the socket as
   * one frame per chunk, from `payload` (the bytes of elements [lo, hi)).
   */
  private sendSpan(
    s: number,
    c: number,
    span: number,
    lo: number,
    hi: number,
    off: number,
    payload: Buffer | null,
    ref?: { name: string; off: number },
  ): void {
    const k = this.sendSeg(s);
    const nc = this.layout.chunks(k);
    const header = (chunk: number, count: number) => {
      const h = this.header(this.seq, this.phaseOf(s), s, chunk, this.enc, count, this.buf.length, nc);
      if (this.needDone) h.doneRound = true;
      return h;
    };
    if (off >= 0 || ref) {
      const h = header(c, hi - lo);
      h.shmSegment = ref ? ref.name : (this.seg as OwnSegment).name;
      h.shmOffset = ref ? ref.off : off;
      this.ring.shm.countSend((hi - lo) * ELEMENT_BYTES[this.enc]);
      this.ring.send(h, EMPTY);
      return;
    }
    const p = payload as Buffer;
    const eb = ELEMENT_BYTES[this.enc];
    for (let i = c; i < c + span; i++) {
      const [a, b] = this.layout.chunk(k, i);
      if (this.seg && s < this.n) this.ring.shm.countSend(null);
      this.ring.send(header(i, b - a), span === 1 ? p : p.subarray((a - lo) * eb, (b - lo) * eb));
    }
  }

  start(): void {
    if (this.n === 1) {
      if (this.divisor !== 1) kernels.scale(this.buf, this.divisor);
      this.ring.finish(this);
      return;
    }
    this.planSlots();
    if (!this.seg || this.slotBase.some((b) => b < 0)) this.needDone = true;
    // Reduce-scatter step 0: this rank's own segment, from the caller's buffer (zero-copy on the
    // socket; copied, or converted to fp16, into the segment with shared memory).
    const k = this.ring.rank;
    const nc = this.layout.chunks(k);
    const span = this.slotOffset(0, this.layout.segStart(k)) >= 0 ? this.spanChunks : 1;
    for (let c = 0; c < nc; c += span) {
      const m = Math.min(span, nc - c);
      const lo = this.layout.chunk(k, c)[0];
      const hi = this.layout.chunk(k, c + m - 1)[1];
      const local = this.buf.subarray(lo, hi);
      const off = this.slotOffset(0, lo);
      let payload: Buffer | null = null;
      if (off >= 0) {
        if (this.enc === Encoding.F32) kernels.copy(this.slotF32(off, hi - lo), local);
        else kernels.toHalf(local, this.slotU16(off, hi - lo));
      } else if (this.enc === Encoding.F32) payload = bytesOf(local);
      else {
        const half = this.releases ? this.scratchHalf(lo, hi) : new Uint16Array(hi - lo);
        kernels.toHalf(local, half);
        payload = bytesOf(half);
      }
      this.sendSpan(0, c, m, lo, hi, off, payload);
    }
  }

  handle(f: Frame): void {
    const s = this.step;
    const h = f.header;
    if (s >= this.steps) {
      // DONE tokens. Every rank sends its own once it has processed all its data frames, and
      // passes on the others' until the successor's comes back round: then the successor has
      // consumed every frame this rank sent during the call, so none is still read from the
      // caller's buffer, the scratch buffer or this rank's segment, and the caller may reuse its
      // buffer at once. On each link the order is fixed: the sender's data, its DONE, then the
      // ones it passes on.
      const j = s - this.steps;
      const origin = this.doneOrigin(j);
      expectFrame('allReduce', h, {
        phase: Phase.DONE,
        step: s,
        chunk: 0,
        encoding: this.enc,
        count: 0,
        length: this.buf.length,
        chunks: 1,
        root: origin,
      });
      if (j === this.n - 2) {
        this.ring.shm.unconfirmed = null; // every rank has processed every data frame of the call
        this.ring.finish(this);
        return;
      }
      this.ring.send(this.doneHeader(s + 1, origin), EMPTY);
      this.step = s + 1;
      return;
    }
    const c = this.chunk;
    const k = this.recvSeg(s);
    const nc = this.layout.chunks(k);
    // A frame from shared memory may cover several whole chunks (its count says how many).
    const fromShm = h.shmSegment !== undefined;
    const span = fromShm ? Math.max(1, Math.min(nc - c, Math.ceil(h.count / this.layout.chunkElems))) : 1;
    const lo = this.layout.chunk(k, c)[0];
    const hi = this.layout.chunk(k, c + span - 1)[1];
    expectFrame('allReduce', h, {
      phase: this.phaseOf(s),
      step: s,
      chunk: c,
      encoding: this.enc,
      count: hi - lo,
      length: this.buf.length,
      chunks: nc,
    });
    if (h.doneRound) this.needDone = true;
    // A frame from shared memory is a read-only view of another rank's segment: it is never
    // written to, sent on or released. It is empty if its mapping was replaced meanwhile (only a
    // forged header naming another segment can cause that).
    if (f.payload.byteLength !== (hi - lo) * ELEMENT_BYTES[this.enc])
      throw new RingProtocolError(
        `allReduce: the payload of step ${s} chunk ${c} from rank ${h.sender} is gone (its shared-memory segment was replaced by a forged header?)`,
      );
    const local = this.buf.subarray(lo, hi);
    const last = this.n - 2; // last reduce-scatter step
    const forward = s + 1 < this.steps; // the next step sends exactly the segment just received
    // An all-gather chunk that came from shared memory goes on as a reference to the same bytes
    // (in the segment of the rank that formed the final value: nobody writes them before the
    // call ends everywhere); others go to their slot in this rank's segment (off ≥ 0) if they
    // have one, else through the socket (`payload`).
    const ref =
      forward && fromShm && s > last
        ? { name: h.shmSegment as string, off: h.shmOffset as number }
        : undefined;
    const off = forward && !ref ? this.slotOffset(s + 1, lo) : -1;
    const copyOut = this.releases || fromShm; // the received frame cannot be sent on
    let payload: Buffer | null = null;
    if (this.enc === Encoding.F32) {
      const v = f32View(f.payload);
      if (s < last) {
        // A partial sum: this rank's contribution added to the received one, passed on.
        if (off >= 0) kernels.add3(this.slotF32(off, hi - lo), v, local);
        else if (copyOut) {
          const out = this.ring.scratch(this.buf.length).subarray(lo, hi);
          kernels.add3(out, v, local);
          payload = bytesOf(out);
        } else {
          kernels.add(v, local);
          payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      } else {
        // This rank owns segment k (s = last: the final value is formed in the caller's buffer),
        // or it receives its final value (all-gather): either way it goes on from the caller's
        // buffer (zero-copy; safe because the call waits for the successor's DONE token) or from
        // a copy in the segment.
        if (s === last) kernels.addDiv(local, v, this.divisor);
        else kernels.copy(local, v);
        if (off >= 0) kernels.copy(this.slotF32(off, hi - lo), local);
        else if (!ref) payload = bytesOf(local);
      }
    } else {
      const v = u16View(f.payload);
      if (s < last) {
        if (off >= 0) kernels.addHalfTo(this.slotU16(off, hi - lo), v, local);
        else if (copyOut) {
          const out = this.scratchHalf(lo, hi);
          kernels.addHalfTo(out, v, local);
          payload = bytesOf(out);
        } else {
          kernels.addHalf(v, local);
          payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      } else if (s === last && (off >= 0 || fromShm)) {
        // The final value in fp16 is formed where it goes on from (never in the read-only view).
        const out = off >= 0 ? this.slotU16(off, hi - lo) : this.scratchHalf(lo, hi);
        out.set(v);
        kernels.addHalfFinal(out, local, this.divisor);
        if (off < 0) payload = bytesOf(out);
      } else {
        if (s === last) kernels.addHalfFinal(v, local, this.divisor);
        else kernels.fromHalf(v, local);
        // The half-precision frame goes on as it is (the final value in fp16): into the segment,
        // or from a copy in the scratch buffer when the frame cannot be sent on.
        if (forward && !ref) {
          if (off >= 0) this.slotU16(off, hi - lo).set(v);
          else if (copyOut) {
            const out = this.scratchHalf(lo, hi);
            out.set(v);
            payload = bytesOf(out);
          } else payload = v.buffer === f.payload.buffer ? f.payload : bytesOf(v);
        }
      }
    }
    if (forward) this.sendSpan(s + 1, c, span, lo, hi, off, payload, ref);
    // Free the frame now (rather than at a later garbage collection, which the external memory
    // of received frames otherwise triggers every few tens of megabytes) unless it goes on.
    if (this.releases && !fromShm && payload !== f.payload) kernels.release?.(f.payload);
    if (c + span < nc) this.chunk = c + span;
    else {
      this.chunk = 0;
      this.step = s + 1;
      if (this.step === this.steps) {
        if (this.needDone) this.ring.send(this.doneHeader(this.steps, this.ring.rank), EMPTY);
        else this.finishUnconfirmed();
      }
    }
  }
}
