// deno-lint-ignore-file no-console
/**
 * Benchmark (`deno task bench`): the same burst over a fleet. N sites (BENCH_FLEET_SITES, default 120) become
 * due by ONE UPDATE, once on one CloudPanel server of concurrency 8 and once on two servers of concurrency 4
 * each (the same total), each server a real sshd with a clpctl simulator of its own, every clpctl command
 * sleeping BENCH_BURST_CLPCTL_MS first and each Matomo answer BENCH_BURST_MATOMO_MS (as in burst.ts). The
 * platform is played as there: pg_net kicks delivered to the handler as they appear, the sweep every 2 s.
 *
 * Figures, each measured in this run, on a fresh database per layout:
 *   makespan     from the UPDATE to the last site active
 *   ratio        two servers' makespan / one server's: 1.0 means splitting the slots over servers costs nothing
 *   idle         slot-seconds during which a server had a free slot while a job it could run was due (its
 *                placed sites' jobs, or any site's not placed yet)
 *   split        sites per server in the two-server layout
 */
import assert from "node:assert/strict";
import { setFaults } from "../../dev/clpctl_sim.ts";
import { type ServerSpec, withFleet } from "../support/fleet.ts";
import type { Stack } from "../support/stack.ts";
import { startPlatform } from "./platform.ts";

const N = Number(Deno.env.get("BENCH_FLEET_SITES") ?? 120);
const CLPCTL_MS = Number(Deno.env.get("BENCH_BURST_CLPCTL_MS") ?? 350);
const MATOMO_MS = Number(Deno.env.get("BENCH_BURST_MATOMO_MS") ?? 100);
const SWEEP_MS = 2000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * pg_net and pg_cron: delivers kicks to the app as they appear and sweeps every SWEEP_MS, until every given
 * site is active. The makespan and the slot-seconds left idle while jobs were due.
 */
async function drive(stack: Stack, ids: string[], started: number) {
  const platform = startPlatform(stack, stack.app, SWEEP_MS);
  let idleSlotSeconds = 0;
  let last = performance.now();
  while (true) {
    await sleep(100);
    // Per server: its free slots, and the due jobs it could run (its placed sites', and any not placed yet).
    const perServer = await stack.sql<{ free: number; due: number }[]>`
      select s.concurrency - (select count(*)::int from hosting_automator.jobs j
          where j.state = 'running' and j.server = s.name) as free,
        (select count(*)::int from hosting_automator.jobs j
          left join hosting_automator.placements p on p.site_id = j.site_id
          where j.state = 'queued' and j.run_at <= now() and (p.server is null or p.server = s.name)) as due
      from hosting_automator.servers s`;
    const [{ active }] = await stack.sql<{ active: number }[]>`
      select count(*)::int as active from public.sites
      where id = any(${ids}::uuid[]) and status_hosting = 'active'`;
    const now = performance.now();
    const idle = perServer.reduce((n, s) => n + Math.max(0, Math.min(s.free, s.due)), 0);
    idleSlotSeconds += idle * (now - last) / 1000;
    last = now;
    if (active === ids.length) break;
  }
  const makespan = (performance.now() - started) / 1000;
  await platform.stop();
  return { makespan, idleSlotSeconds };
}

async function insertSites(stack: Stack, prefix: string, count: number): Promise<string[]> {
  const rows = await stack.sql<{ id: string }[]>`
    insert into public.sites (domain, status_dns, status_hosting)
    select ${prefix} || '-' || i || '.fleet-burst.example', 'pending', 'pending' from generate_series(1, ${count}) i
    returning id`;
  return rows.map((r) => r.id);
}

/** One burst of N sites over `specs`, after a warm-up site per server (first connections, not measured). */
async function burstOver(label: string, specs: ServerSpec[]) {
  let result: { makespan: number; idleSlotSeconds: number; split: Record<string, number> } | undefined;
  await withFleet(
    { label, env: { HOSTING_LOG_LEVEL: "warn" }, matomo: { latencyMs: MATOMO_MS } },
    specs,
    async (fleet) => {
      const { stack } = fleet;
      for (const server of fleet.servers) await setFaults(server.clpctlState, { delayMs: CLPCTL_MS });
      await stack
        .sql`update hosting_automator.settings set backoff_base_seconds = 1, backoff_max_seconds = 4`;

      const warm = await insertSites(stack, `${label}-warm`, specs.length);
      let started = performance.now();
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${warm}::uuid[])`;
      await drive(stack, warm, started);

      const ids = await insertSites(stack, label, N);
      started = performance.now();
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${ids}::uuid[])`;
      const { makespan, idleSlotSeconds } = await drive(stack, ids, started);
      const rows = await stack.sql<{ server: string; n: number }[]>`
      select hosting_server as server, count(*)::int as n from public.sites where id = any(${ids}::uuid[])
      group by 1 order by 1`;
      result = { makespan, idleSlotSeconds, split: Object.fromEntries(rows.map((r) => [r.server, r.n])) };
    },
  );
  return result!;
}

Deno.test({
  name: `fleet burst: ${N} sites on two servers of concurrency 4 against one of concurrency 8`,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const one = await burstOver("one", [{ name: "cp-1", concurrency: 8 }]);
    const two = await burstOver("two", [{ name: "cp-1", concurrency: 4 }, { name: "cp-2", concurrency: 4 }]);
    const ratio = two.makespan / one.makespan;
    const command =
      `deno task bench (BENCH_FLEET_SITES=${N}, clpctl ${CLPCTL_MS} ms per command, Matomo ${MATOMO_MS} ms per answer)`;
    const rows = [
      [`makespan, one server of concurrency 8`, `${one.makespan.toFixed(1)} s`],
      [`makespan, two servers of concurrency 4 each`, `${two.makespan.toFixed(1)} s`],
      ["ratio two servers / one server (target ≤ 1.10)", ratio.toFixed(2)],
      [
        "slots idle while a job they could run was due (slot-seconds): one server / two servers",
        `${one.idleSlotSeconds.toFixed(0)} / ${two.idleSlotSeconds.toFixed(0)}`,
      ],
      [
        "sites per server, two servers",
        Object.entries(two.split).map(([server, n]) => `${server} ${n}`).join(", "),
      ],
    ];
    console.log(`\n${command}\n`);
    console.log("| figure | value |\n| --- | --- |");
    for (const [k, v] of rows) console.log(`| ${k} | ${v} |`);
    console.log("");
    // Bounds far from the figures: they catch a stalled queue or an unbalanced split, not noise.
    assert.ok(ratio < 3, "two servers finished in a sane time");
    assert.deepEqual(Object.keys(two.split).sort(), ["cp-1", "cp-2"], "both servers took sites");
  },
});
