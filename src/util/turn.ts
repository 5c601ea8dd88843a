/** Letting the event loop deliver what arrived while JavaScript was busy (a long training step). */

const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Resolves after the event loop has polled for I/O at least once since the call, so that everything
 * that arrived before it — a signal (Ctrl-C, SIGTERM), a gRPC message, a loader thread's reply — has
 * had its handler run.
 *
 * A loop of steps needs this between steps: a step computes synchronously, and when what it
 * awaits is already there it goes on in microtasks and never returns to libuv. Worse, a step that
 * awaits a worker thread's message runs inside Node's MessagePort handler, which goes on with the
 * messages that arrived meanwhile (up to 1000) before it returns: the next batch's reply starts the
 * next step, and so on, while a signal waits in libuv for the whole run. One setImmediate is not
 * enough either: called from the poll phase it runs in the check phase of the same iteration,
 * before libuv polls again. The second one, queued from the check phase, runs in the next
 * iteration, after its poll phase (where libuv dispatches signals). Costs microseconds.
 */
export async function eventLoopTurn(): Promise<void> {
  await immediate();
  await immediate();
}
