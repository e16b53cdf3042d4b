// deno-lint-ignore-file no-console
/**
 * Benchmark (`deno task bench`): a burst. N sites (BENCH_BURST_SITES, default 200) become due by ONE UPDATE
 * at a cap of 8 jobs on the server (`server_concurrency`), with simulated upstream latency (every clpctl
 * command sleeps BENCH_BURST_CLPCTL_MS first, each Matomo answer BENCH_BURST_MATOMO_MS), through the real
 * function on the real stack. The platform around it is played as in the chaos run: pg_net kicks are
 * delivered to the handler as they appear (background work tracked as `waitUntil` keeps it), the sweep runs
 * every 2 s (pg_cron's minute, compressed).
 *
 * Figures, each measured in this run:
 *   t_site      one site alone, from its UPDATE to active (median of 3)
 *   makespan    from the UPDATE to the last site active
 *   ratio       makespan / (ceil(N / cap) × t_site): 1.0 is a perfectly packed burst
 *   sequential  the original design's loop, one site after another: a sample of 10 run at cap 1, its mean
 *               per site × N (extrapolated, not run for N)
 *   budget      a burst of N (BENCH_BURST_BUDGET_SITES) with HOSTING_TIME_BUDGET_SECONDS=15: invocations
 *               stop claiming mid-burst and the queue must bring the rest back
 *   kicks per statement   pg_net requests the one UPDATE queued
 *   store calls per site  PostgREST stand-in requests (one SQL function call each) during the burst / N
 *   CPU per site          this process (the function, the PostgREST stand-in, the Matomo simulator), the sshd
 *               tree (sessions and the clpctl simulator processes) and the PostgreSQL cluster, from /proc
 *   peak RSS    of this process during the burst (sampled every 100 ms)
 */
import assert from "node:assert/strict";
import { setFaults } from "../../dev/clpctl_sim.ts";
import type { App } from "../../supabase/functions/hosting-automator/app.ts";
import { type Stack, startStack } from "../support/stack.ts";
import { startPlatform } from "./platform.ts";

const N = Number(Deno.env.get("BENCH_BURST_SITES") ?? 200);
const CAP = 8;
const CLPCTL_MS = Number(Deno.env.get("BENCH_BURST_CLPCTL_MS") ?? 350);
const MATOMO_MS = Number(Deno.env.get("BENCH_BURST_MATOMO_MS") ?? 100);
/** The budget phase: as large as the burst by default, so every invocation meets its 15 s budget mid-burst. */
const BUDGET_N = Number(Deno.env.get("BENCH_BURST_BUDGET_SITES") ?? N);
const SEQUENTIAL_SAMPLE = 10;
/** Sites the function drains alone in a process of its own, for its own CPU and memory. */
const ALONE_N = Number(Deno.env.get("BENCH_ALONE_SITES") ?? 20);
const WORKER = new URL("../support/worker_process.ts", import.meta.url).pathname;

/** Runs one invocation in its own process until `ids` are active; its peak RSS (VmHWM) and CPU from /proc. */
async function functionProcess(stack: Stack, ids: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", WORKER],
    env: { ...stack.env, HOSTING_LOG_LEVEL: "warn" } as Record<string, string>,
    stdout: "null",
    stderr: "null",
  }).spawn();
  let peakBytes = 0;
  let cpuSeconds = 0;
  let exited = false;
  const status = child.status.then(() => (exited = true));
  while (!exited) {
    const mem = await Deno.readTextFile(`/proc/${child.pid}/status`).catch(() => "");
    const hwm = /VmHWM:\s+(\d+) kB/.exec(mem);
    if (hwm) peakBytes = Math.max(peakBytes, Number(hwm[1]) * 1024);
    cpuSeconds = await ownCpuSeconds(child.pid) ?? cpuSeconds;
    await sleep(50);
  }
  await status;
  const [{ active }] = await stack.sql<{ active: number }[]>`
    select count(*)::int as active from public.sites where id = any(${ids}::uuid[]) and status_hosting = 'active'`;
  assert.equal(active, ids.length, "the function process made every site active");
  return { peakBytes, cpuSeconds };
}
const SWEEP_MS = 2000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** The fields of /proc/<pid>/stat after the process name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14). */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** CPU seconds a process has used itself (Deno 2.1 has no process.cpuUsage()); null once it is gone. */
async function ownCpuSeconds(pid: number | "self"): Promise<number | null> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
  if (!stat) return null;
  const f = statFields(stat);
  return (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND;
}

/** CPU seconds of a process and its children (reaped and alive), from /proc. */
async function treeCpuSeconds(root: number): Promise<number> {
  const stats = new Map<number, { ppid: number; own: number; children: number }>();
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const text = await Deno.readTextFile(`/proc/${entry.name}/stat`).catch(() => "");
    if (!text) continue;
    const f = statFields(text);
    stats.set(Number(entry.name), {
      ppid: Number(f[1]),
      own: Number(f[11]) + Number(f[12]),
      children: Number(f[13]) + Number(f[14]),
    });
  }
  let total = 0;
  const walk = (pid: number) => {
    const s = stats.get(pid);
    if (!s) return;
    total += s.own + s.children;
    for (const [child, c] of stats) if (c.ppid === pid) walk(child);
  };
  walk(root);
  return total / TICKS_PER_SECOND;
}

interface Meters {
  self: number;
  sshd: number;
  postgres: number;
  calls: number;
}

async function meters(stack: Stack, postmaster: number): Promise<Meters> {
  const sshdPid = Number((await Deno.readTextFile(`${stack.sshd.dir}/sshd.pid`)).trim());
  return {
    self: (await ownCpuSeconds("self"))!,
    sshd: await treeCpuSeconds(sshdPid),
    postgres: await treeCpuSeconds(postmaster),
    calls: stack.postgrest!.calls.length,
  };
}

/**
 * pg_net and pg_cron for one phase: delivers kicks to `app` as they appear, sweeps every SWEEP_MS, and
 * samples the slots until every given site is active. Returns the makespan and how the slots were used.
 */
async function drive(stack: Stack, app: App, ids: string[], started: number) {
  const platform = startPlatform(stack, app, SWEEP_MS);
  let busySlotSeconds = 0;
  let idleSlotSeconds = 0;
  let peakRss = 0;
  let last = performance.now();
  while (true) {
    await sleep(100);
    const [row] = await stack.sql<{ running: number; due: number; active: number }[]>`
      select (select count(*)::int from hosting_automator.jobs where state = 'running') as running,
        (select count(*)::int from hosting_automator.jobs where state = 'queued' and run_at <= now()) as due,
        (select count(*)::int from public.sites where id = any(${ids}::uuid[]) and status_hosting = 'active')
          as active`;
    const now = performance.now();
    const dt = (now - last) / 1000;
    last = now;
    busySlotSeconds += Math.min(row.running, CAP) * dt;
    // A slot idles while a job is due that it could run.
    idleSlotSeconds += Math.max(0, Math.min(CAP, row.running + row.due) - row.running) * dt;
    peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
    if (row.active === ids.length) break;
  }
  const makespan = (performance.now() - started) / 1000;
  await platform.stop();
  return { makespan, kicks: platform.kicks, busySlotSeconds, idleSlotSeconds, peakRss };
}

async function insertSites(stack: Stack, prefix: string, count: number): Promise<string[]> {
  const rows = await stack.sql<{ id: string }[]>`
    insert into public.sites (domain, status_dns, status_hosting)
    select ${prefix} || '-' || i || '.burst.example', 'pending', 'pending' from generate_series(1, ${count}) i
    returning id`;
  return rows.map((r) => r.id);
}

Deno.test({
  name: `burst: ${N} sites made due by one UPDATE at cap ${CAP}`,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const stack = await startStack({
      label: "burst",
      env: { HOSTING_LOG_LEVEL: "warn" },
      matomo: { latencyMs: MATOMO_MS },
    });
    try {
      await setFaults(stack.clpctlState, { delayMs: CLPCTL_MS });
      await stack.sql`update hosting_automator.settings set server_concurrency = ${CAP},
        backoff_base_seconds = 1, backoff_max_seconds = 4`;
      const [{ pid }] = await stack.sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      const postmaster = Number(statFields(stat)[1]);

      // One site alone (after a warm-up site that loads modules and opens the first SSH connection).
      const alone: number[] = [];
      for (let i = 0; i < 4; i++) {
        const ids = await insertSites(stack, `alone${i}`, 1);
        const started = performance.now();
        await stack.sql`update public.sites set status_dns = 'active' where id = ${ids[0]}`;
        const { makespan } = await drive(stack, stack.app, ids, started);
        if (i > 0) alone.push(makespan);
      }
      alone.sort((a, b) => a - b);
      const tSite = alone[1];

      // The original design's loop: one site after another (cap 1), a sample, extrapolated to N.
      // The server's own row holds its cap (registered as `default` by the first claim).
      await stack.sql`update hosting_automator.servers set concurrency = 1`;
      const sample = await insertSites(stack, "seq", SEQUENTIAL_SAMPLE);
      let started = performance.now();
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${sample}::uuid[])`;
      const sequential = await drive(stack, stack.app, sample, started);
      const perSiteSequential = sequential.makespan / SEQUENTIAL_SAMPLE;
      await stack.sql`update hosting_automator.servers set concurrency = ${CAP}`;

      // The burst: one UPDATE.
      const burst = await insertSites(stack, "burst", N);
      const before = await meters(stack, postmaster);
      started = performance.now();
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${burst}::uuid[])`;
      const [{ queued }] = await stack.sql<{ queued: number }[]>`
        select count(*)::int as queued from net.http_request_queue`;
      const result = await drive(stack, stack.app, burst, started);
      const after = await meters(stack, postmaster);

      // The same burst when invocations reach their time budget mid-burst.
      const budgetApp = stack.newApp({ HOSTING_TIME_BUDGET_SECONDS: "15" });
      const budgeted = await insertSites(stack, "budget", BUDGET_N);
      started = performance.now();
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${budgeted}::uuid[])`;
      const withBudget = await drive(stack, budgetApp, budgeted, started);
      const [{ released }] = await stack.sql<{ released: number }[]>`
        select count(*)::int as released from hosting_automator.events e
        where e.site_id = any(${budgeted}::uuid[]) and e.code = 'job_released'`;

      // The function alone, in a process of its own (as a worker runs it): it drains ALONE_N sites, one at a
      // time, while its peak memory (VmHWM) and CPU are read from /proc.
      const loneIds = await insertSites(stack, "lone", ALONE_N);
      await stack.sql`update public.sites set status_dns = 'active' where id = any(${loneIds}::uuid[])`;
      await stack.sql`delete from net.http_request_queue`;
      const lone = await functionProcess(stack, loneIds);

      const rounds = Math.ceil(N / CAP);
      const ideal = rounds * tSite;
      const idealBudget = Math.ceil(BUDGET_N / CAP) * tSite;
      const perSite = (a: number, b: number) => ((a - b) / N * 1000).toFixed(0);
      const command =
        `deno task bench (BENCH_BURST_SITES=${N}, clpctl ${CLPCTL_MS} ms per command, Matomo ${MATOMO_MS} ms per answer)`;
      const rows = [
        ["t_site (one site alone, median of 3)", `${tSite.toFixed(2)} s`],
        ["makespan", `${result.makespan.toFixed(1)} s`],
        [
          `ratio makespan / (ceil(${N}/${CAP}) × t_site = ${ideal.toFixed(1)} s)`,
          (result.makespan / ideal).toFixed(2),
        ],
        [
          `sequential loop (original design): ${SEQUENTIAL_SAMPLE} sites at cap 1, extrapolated to ${N}`,
          `${(perSiteSequential * N).toFixed(0)} s (${perSiteSequential.toFixed(2)} s per site)`,
        ],
        ["speed-up over the sequential loop", `${(perSiteSequential * N / result.makespan).toFixed(1)}×`],
        [
          "slots: busy / idle while jobs were due (slot-seconds)",
          `${result.busySlotSeconds.toFixed(0)} / ${result.idleSlotSeconds.toFixed(0)} (mean ${
            (result.busySlotSeconds / result.makespan).toFixed(1)
          } of ${CAP} busy)`,
        ],
        [
          `with HOSTING_TIME_BUDGET_SECONDS=15, ${BUDGET_N} sites: makespan, ratio to ceil(${BUDGET_N}/${CAP}) × t_site`,
          `${withBudget.makespan.toFixed(1)} s, ${
            (withBudget.makespan / idealBudget).toFixed(2)
          } (${released} releases; idle ${withBudget.idleSlotSeconds.toFixed(0)} slot-s)`,
        ],
        ["kicks queued by the one UPDATE (per statement)", `${queued} (for ${N} rows)`],
        ["kicks delivered in the burst (trigger + sweep)", String(result.kicks)],
        [
          "store calls per site (PostgREST stand-in requests, one SQL function call each)",
          ((after.calls - before.calls) / N).toFixed(1),
        ],
        [
          "CPU per site: this process / sshd + clpctl sim / PostgreSQL",
          `${perSite(after.self, before.self)} / ${perSite(after.sshd, before.sshd)} / ${
            perSite(after.postgres, before.postgres)
          } ms`,
        ],
        ["peak RSS of this process during the burst", `${(result.peakRss / 2 ** 20).toFixed(0)} MiB`],
        [
          `the function alone in its own process, ${ALONE_N} sites one after another: CPU per site (start-up included), peak RSS`,
          `${(lone.cpuSeconds / ALONE_N * 1000).toFixed(0)} ms, ${(lone.peakBytes / 2 ** 20).toFixed(0)} MiB`,
        ],
      ];
      console.log(`\n${command}\n`);
      console.log("| figure | value |\n| --- | --- |");
      for (const [k, v] of rows) console.log(`| ${k} | ${v} |`);
      console.log("");
      // Bounds far from the figures: they catch a stalled queue, not noise.
      assert.ok(result.makespan < 20 * ideal, "the burst finished in a sane time");
      assert.ok(queued >= 1, "the UPDATE rang the doorbell");
    } finally {
      await stack.close();
    }
  },
});
