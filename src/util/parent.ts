/** Noticing that the process that started us is gone, so that no process outlives its job. */

/**
 * Calls `onGone` once when this process's parent exits (we are re-parented: the parent pid
 * changes). A scheduler that kills a job's shell (Slurm with `proctrack/linuxproc`, a launcher
 * killed with SIGKILL) can miss its grandchildren; polling once a second is how a child learns of
 * it without Linux-only prctl. Returns a function that stops watching. The timer does not keep the
 * process alive.
 */
export function watchParent(onGone: () => void, everyMs = 1000): () => void {
  const parent = process.ppid;
  const t = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(t);
    onGone();
  }, everyMs);
  t.unref();
  return () => clearInterval(t);
}
