/** What the HTTP simulators (Matomo, DNS-over-HTTPS) share: waiting that a client or a stop cuts short. */

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
