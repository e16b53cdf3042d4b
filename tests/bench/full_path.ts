// deno-lint-ignore-file no-console
/**
 * Benchmark (`deno task bench`): how long the full path takes per site on this machine, from the UPDATE that
 * makes DNS active to an active row, through the trigger's kick, real Postgres, real sshd with the clpctl
 * simulator (zero latency) and the Matomo simulator. Both stores in one run, so their ratio is comparable.
 * Sites run one after another: this measures latency, not throughput.
 */
import assert from "node:assert/strict";
import { startStack } from "../support/stack.ts";

const SITES = Number(Deno.env.get("BENCH_SITES") ?? 10);

function stats(ms: number[]) {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return {
    mean: ms.reduce((a, b) => a + b, 0) / ms.length,
    median: at(0.5),
    p90: at(0.9),
    max: sorted.at(-1)!,
  };
}

Deno.test(`full path per site, ${SITES} sites per store, supabase-js (rpc) and direct Postgres`, async () => {
  const results: Record<string, ReturnType<typeof stats>> = {};
  for (const store of ["rpc", "postgres"] as const) {
    const stack = await startStack({ label: `bench_${store}`, store, env: { HOSTING_LOG_LEVEL: "warn" } });
    try {
      const durations: number[] = [];
      for (let i = -1; i < SITES; i++) { // i = -1: warm-up (module load, first SSH handshake), not counted
        const id = await stack.insertSite(`bench-${store}-${i + 1}.example`);
        const started = performance.now();
        await stack.sql`update public.sites set status_dns = 'active' where id = ${id}`;
        await stack.deliverKicks();
        await stack.settle();
        const elapsed = performance.now() - started;
        assert.equal((await stack.site(id)).status_hosting, "active");
        if (i >= 0) durations.push(elapsed);
      }
      results[store] = stats(durations);
    } finally {
      await stack.close();
    }
  }
  const row = (name: string, s: ReturnType<typeof stats>) =>
    `${name.padEnd(10)} ${s.mean.toFixed(0).padStart(6)} ${s.median.toFixed(0).padStart(7)} ${
      s.p90.toFixed(0).padStart(6)
    } ${s.max.toFixed(0).padStart(6)}`;
  console.log(`\nms per site     mean  median    p90    max`);
  console.log(row("rpc", results.rpc));
  console.log(row("postgres", results.postgres));
  console.log(`ratio rpc / postgres (mean): ${(results.rpc.mean / results.postgres.mean).toFixed(2)}\n`);
  // A bound far above the measured figures: it catches a regression by an order of magnitude, not noise.
  assert.ok(results.rpc.mean < 10_000 && results.postgres.mean < 10_000);
});
