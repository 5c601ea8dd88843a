/** Small network helpers shared by the commands, benchmarks and tests. */
import { createServer } from 'node:net';

/** A TCP port on `host` that was free a moment ago (the OS picks it; the caller binds it soon after). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
