/**
 * What the HTTP simulators (Matomo, DNS-over-HTTPS) share: serving on loopback, and waiting that a client or a
 * stop cuts short.
 */

/** Resolves true after `ms`, or false as soon as one of `signals` aborts. */
export function wait(ms: number, signals: AbortSignal[]): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      for (const s of signals) s.removeEventListener("abort", stop);
      resolve(ok);
    };
    const stop = () => done(false);
    const timer = Number.isFinite(ms) ? setTimeout(() => done(true), ms) : undefined;
    for (const s of signals) s.addEventListener("abort", stop, { once: true });
    if (signals.some((s) => s.aborted)) done(false);
  });
}

/** The answer of a handler whose client left or whose simulator stopped: nobody reads it. */
export function gone(): Response {
  return new Response("simulator stopped answering", { status: 503 });
}

/** Serves `handle` on 127.0.0.1:`port` (0: any free port), quietly; a handler that throws answers 500. */
export function serveLocal(
  port: number,
  handle: (request: Request) => Response | Promise<Response>,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve(
    {
      hostname: "127.0.0.1",
      port,
      onListen: () => {},
      onError: (e) => new Response(String(e), { status: 500 }),
    },
    handle,
  );
}
