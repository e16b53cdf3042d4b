/**
 * The platform around the function in the benches, as in the chaos run: pg_net delivers the kicks the database
 * queued to the app as they appear (up to 200 per round, its default batch), and pg_cron runs the sweep every
 * `sweepMs`. Test support only.
 */
import type { App } from "../../supabase/functions/hosting-automator/app.ts";
import type { Stack } from "../support/stack.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface Platform {
  /** Kicks delivered so far. */
  readonly kicks: number;
  /** Stops delivering and sweeping, and waits for the deliveries in flight and the app's background work. */
  stop(): Promise<void>;
}

export function startPlatform(stack: Stack, app: App, sweepMs: number): Platform {
  let stopped = false;
  let kicks = 0;
  const deliveries = new Set<Promise<unknown>>();
  const pgNet = (async () => {
    while (!stopped) {
      const batch = await stack.sql<{ url: string; headers: Record<string, string>; body: unknown }[]>`
        delete from net.http_request_queue where id in (
          select id from net.http_request_queue order by id limit 200) returning url, headers, body`;
      for (const kick of batch) {
        kicks++;
        const d = app.fetch(
          new Request(kick.url, { method: "POST", headers: kick.headers, body: JSON.stringify(kick.body) }),
        ).then((r) => r.body?.cancel()).finally(() => deliveries.delete(d));
        deliveries.add(d);
      }
      await sleep(batch.length > 0 ? 10 : 50);
    }
  })();
  const cron = (async () => {
    while (!stopped) {
      await sleep(sweepMs);
      if (!stopped) await stack.sql`select hosting_automator.sweep()`;
    }
  })();
  return {
    get kicks() {
      return kicks;
    },
    async stop() {
      stopped = true;
      await Promise.all([pgNet, cron]);
      await Promise.allSettled([...deliveries]);
      await stack.settle();
    },
  };
}
