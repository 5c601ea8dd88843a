/**
 * Typed errors of the ring collectives. Every rejection of a {@link Ring} method is a
 * {@link RingError}; `code` tells the kind without `instanceof`.
 *
 * After any error other than {@link RingConfigError} the ring's generation is over: every later
 * call rejects with {@link RingBrokenError} (whose `cause` is the first error). Close the ring and
 * open a new generation.
 */

export type RingErrorCode =
  'RING_TIMEOUT' | 'RING_CLOSED' | 'RING_ABORTED' | 'RING_PROTOCOL' | 'RING_BROKEN' | 'RING_CONFIG';

export class RingError extends Error {
  readonly code: RingErrorCode;
  constructor(code: RingErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** No frame arrived from the predecessor (or a send could not be queued) for `timeoutMs`. */
export class RingTimeoutError extends RingError {
  constructor(
    message: string,
    readonly timeoutMs: number,
  ) {
    super('RING_TIMEOUT', message);
  }
}

/** The ring was closed before or during the call. */
export class RingClosedError extends RingError {
  constructor(message = 'ring is closed') {
    super('RING_CLOSED', message);
  }
}

/** Another rank gave up on this generation and told the ring (ABORT frame). */
export class RingAbortedError extends RingError {
  constructor(
    message: string,
    /** Rank that gave up first. */
    readonly originRank: number,
    /** Its reason, as it sent it. */
    readonly reason: string,
  ) {
    super('RING_ABORTED', message);
  }
}

/** The ranks disagree about the collective (different lengths, operations, encodings or order). */
export class RingProtocolError extends RingError {
  constructor(message: string) {
    super('RING_PROTOCOL', message);
  }
}

/** The generation already failed; `cause` is the first error. */
export class RingBrokenError extends RingError {
  constructor(cause: RingError) {
    super('RING_BROKEN', `ring generation is broken: ${cause.message}`, { cause });
  }
}

/** Invalid options or arguments (the ring itself is unaffected). */
export class RingConfigError extends RingError {
  constructor(message: string) {
    super('RING_CONFIG', message);
  }
}
