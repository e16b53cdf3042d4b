/**
 * The chaos run: N sites through the real function (the `createApp` handler, as Supabase runs it) on the real
 * stack — a PostgreSQL cluster of the run's own (so it can be restarted), supabase-js through the PostgREST
 * stand-in, a real sshd in front of the clpctl simulator, the Matomo simulator — with transient faults drawn
 * from a seeded RNG. The harness plays only the platform around the function:
 *
 *   pg_net     kicks the trigger and the sweep queue are taken from the stand-in's queue as they appear and
 *              delivered to the handler (twice, concurrently, with `duplicate_kicks`); background work is
 *              tracked as `EdgeRuntime.waitUntil` would keep it alive
 *   pg_cron    `select hosting_automator.sweep()` every `sweepSeconds` (every minute on Supabase)
 *   the Hub    sites turn DNS-active in batches over `arrivalSeconds`, one UPDATE per batch; once every site
 *              settled, it removes a share of them (removals.ts) and the run waits until all settles again
 *   the world  the faults (faults.ts): per call on clpctl and Matomo, and events at points of each phase's
 *              progress
 *
 * Nobody acts as an operator: no /retry, no SQL on jobs (except, with `fastLeaseExpiry`, expiring the lease
 * of jobs held by a worker process the harness killed — standing in for the wait until it expires).
 */
import { ROOT } from "../support/env.ts";
import { artifactDir } from "../support/env.ts";
import { type PrivateCluster, startPrivateCluster } from "../support/private_cluster.ts";
import { DEV_BIN } from "../support/local_shell.ts";
import { type Stack, startStack } from "../support/stack.ts";
import { FAULT_KINDS, type FaultName, type FaultPlan } from "./faults.ts";
import { injectMatomoFaults } from "./matomo_faults.ts";
import { measure, type Measured } from "./measure.ts";
import { askForRemovals, planRemovals, type RemovalPlan } from "./removals.ts";
import { sequence } from "./rng.ts";

export interface ChaosOptions {
  sites: number;
  seed: number;
  /** Probability that one clpctl call or one Matomo request gets a fault. */
  faultRate: number;
  kinds: FaultName[];
  /** `server_concurrency`: jobs at once on the one CloudPanel server. */
  cap: number;
  /** The run stops here and reports what it has. */
  deadlineSeconds: number;
  sweepSeconds: number;
  /** Sites turn DNS-active in batches spread over this long (0: one UPDATE for all). */
  arrivalSeconds: number;
  /** Events, each at a seeded point of progress (share of sites settled). */
  workerKills: number;
  sshdOutages: number;
  pgRestarts: number;
  matomoSlowWindows: number;
  /** Expire the lease of a killed worker's jobs at once instead of waiting for it (time warp). */
  fastLeaseExpiry: boolean;
  /**
   * After every site settled, this share of the active sites is removed (removals.ts), under the same faults;
   * one of each event counted twice or more happens in that phase. 0: no removal phase.
   */
  removals: number;
  /** HOSTING_SITE_TIMEOUT_SECONDS and HOSTING_CERTIFICATE_TIMEOUT_SECONDS (5 is the least allowed). */
  stepTimeoutSeconds: number;
  /** A line of progress, every few seconds. */
  progress?: (line: string) => void;
}

export const DEFAULTS: ChaosOptions = {
  sites: 1000,
  seed: 1,
  faultRate: 0.2,
  kinds: Object.keys(FAULT_KINDS) as FaultName[],
  cap: 8,
  deadlineSeconds: 900,
  sweepSeconds: 2,
  arrivalSeconds: 10,
  workerKills: 3,
  sshdOutages: 2,
  pgRestarts: 1,
  matomoSlowWindows: 2,
  fastLeaseExpiry: false,
  removals: 0.2,
  stepTimeoutSeconds: 5,
};

export interface ChaosEvent {
  kind: FaultName;
  phase: Phase;
  /** Seconds since the start, when it began. */
  at: number;
  seconds: number;
  detail: string;
}

export interface ChaosResult extends Measured {
  options: ChaosOptions;
  wallSeconds: number;
  /** False when the deadline ended the run before every job settled (in both phases). */
  settled: boolean;
  /** Seconds the removal phase took (from its first batch to settled); null without one. */
  removalSeconds: number | null;
  events: ChaosEvent[];
  /** Faults injected per kind (per call, and events). */
  injected: Record<string, number>;
  /** Per-call clpctl faults injected per verb. */
  injectedByVerb: Record<string, number>;
  kicks: { delivered: number; requests: number; byStatus: Record<string, number> };
  sweeps: number;
  /**
   * Errors no caller caught, with their message: the postgres driver of the harness and of the PostgREST
   * stand-in can throw one from a socket callback while PostgreSQL restarts. Kept so the run goes on.
   */
  uncaught: string[];
}

const WORKER = `${ROOT}tests/support/worker_process.ts`;
const CHAOS_BIN = `${ROOT}tests/chaos/bin`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `provision`: the sites arrive and are built; `removal`: some are removed (removals.ts). */
export type Phase = "provision" | "removal";

export async function runChaos(input: Partial<ChaosOptions> = {}): Promise<ChaosResult> {
  const options: ChaosOptions = { ...DEFAULTS, ...input };
  const say = options.progress ?? (() => {});
  const has = (kind: FaultName) => options.kinds.includes(kind);
  const random = sequence(options.seed);
  const t0 = performance.now();
  const elapsed = () => (performance.now() - t0) / 1000;

  const chaosDir = await artifactDir("chaos");
  const plan: FaultPlan = {
    seed: options.seed,
    rate: options.faultRate,
    kinds: options.kinds,
    hangMs: (options.stepTimeoutSeconds + 2) * 1000,
  };
  await Deno.writeTextFile(`${chaosDir}/plan.json`, JSON.stringify(plan));

  const uncaught: string[] = [];
  const onError = (e: ErrorEvent) => {
    uncaught.push(String(e.error?.message ?? e.message));
    e.preventDefault();
  };
  const onRejection = (e: PromiseRejectionEvent) => {
    uncaught.push(String(e.reason?.message ?? e.reason));
    e.preventDefault();
  };
  globalThis.addEventListener("error", onError);
  globalThis.addEventListener("unhandledrejection", onRejection);
  const own: PrivateCluster = await startPrivateCluster("chaos");
  let stack: Stack | undefined;
  const workerOutput: string[] = [];
  try {
    stack = await startStack({
      label: "chaos",
      db: own.db,
      sshdEnv: { PATH: `${CHAOS_BIN}:${DEV_BIN}:/usr/local/bin:/usr/bin:/bin`, CHAOS_DIR: chaosDir },
      env: {
        HOSTING_SITE_TIMEOUT_SECONDS: String(options.stepTimeoutSeconds),
        HOSTING_CERTIFICATE_TIMEOUT_SECONDS: String(options.stepTimeoutSeconds),
        HOSTING_MATOMO_TIMEOUT_SECONDS: "2",
        HOSTING_SSH_CONNECT_TIMEOUT_SECONDS: "3",
        HOSTING_LOG_LEVEL: "info",
      },
    });
    const s = stack;
    const sql = s.sql;
    await sql`update hosting_automator.settings set backoff_base_seconds = 1, backoff_max_seconds = 4,
      server_concurrency = ${options.cap}, max_attempts = 10`;
    const injected = new Map<string, number>();
    if (s.matomo) injectMatomoFaults(s.matomo, plan, injected);

    const width = String(options.sites).length;
    await sql`insert into public.sites (domain, status_dns, status_hosting)
      select 'site-' || lpad(i::text, ${width}, '0') || '.chaos-' || ${options.seed}::text || '.example',
        'pending', 'pending'
      from generate_series(1, ${options.sites}) i`;

    let stopping = false;
    const tracked = new Set<Promise<unknown>>();
    const track = (work: Promise<unknown>) => {
      const t = work.catch(() => {}).finally(() => tracked.delete(t));
      tracked.add(t);
    };

    // The Hub: DNS turns active in batches, one UPDATE each.
    let arrived = 0;
    const arrival = (async () => {
      const batches = Math.max(1, Math.round(options.arrivalSeconds));
      const size = Math.ceil(options.sites / batches);
      while (arrived < options.sites && !stopping) {
        try {
          const rows = await sql`update public.sites set status_dns = 'active' where id in (
            select id from public.sites where status_dns = 'pending' order by domain limit ${size}) returning id`;
          arrived += rows.length;
        } catch {
          // The database is restarting: the same batch goes next time.
        }
        if (arrived < options.sites) await sleep(options.arrivalSeconds > 0 ? 1000 : 0);
      }
    })();

    // pg_net: deliver queued kicks as they appear (up to 200 per round, its default batch). While `kicksHeld`
    // it lags (as its background worker may): the removal phase's worker kill uses that to let a worker
    // process claim a removal before the in-process function does.
    const kicks = { delivered: 0, requests: 0, byStatus: {} as Record<string, number> };
    let kicksHeld = false;
    const deliver = async (kick: { url: string; headers: Record<string, string>; body: unknown }) => {
      kicks.requests++;
      let status = "error";
      try {
        const response = await s.app.fetch(
          new Request(kick.url, { method: "POST", headers: kick.headers, body: JSON.stringify(kick.body) }),
        );
        await response.body?.cancel();
        status = String(response.status);
      } finally {
        kicks.byStatus[status] = (kicks.byStatus[status] ?? 0) + 1;
      }
    };
    const pgNet = (async () => {
      while (!stopping) {
        if (kicksHeld) {
          await sleep(50);
          continue;
        }
        let batch: Array<{ url: string; headers: Record<string, string>; body: unknown }> = [];
        try {
          batch = await sql`delete from net.http_request_queue where id in (
            select id from net.http_request_queue order by id limit 200) returning url, headers, body`;
        } catch {
          // Restarting.
        }
        for (const kick of batch) {
          kicks.delivered++;
          track(deliver(kick));
          if (has("duplicate_kicks")) track(deliver(kick));
        }
        await sleep(batch.length > 0 ? 10 : 100);
      }
    })();

    // pg_cron: the sweep.
    let sweeps = 0;
    const cron = (async () => {
      while (!stopping) {
        await sleep(options.sweepSeconds * 1000);
        try {
          await sql`select hosting_automator.sweep()`;
          sweeps++;
        } catch {
          // Restarting.
        }
      }
    })();

    // Events at seeded points of each phase's progress. An event counted twice or more happens once in the
    // removal phase (when there is one), the rest while the sites are provisioned.
    const removing = options.removals > 0;
    const events: ChaosEvent[] = [];
    type Planned = { kind: FaultName; at: number; fired: boolean };
    const schedule: Record<Phase, Planned[]> = { provision: [], removal: [] };
    const plan1 = (kind: FaultName, count: number) => {
      if (!has(kind)) return;
      const later = removing && count >= 2 ? 1 : 0;
      const now = count - later;
      for (let i = 0; i < now; i++) {
        const at = 0.1 + 0.7 * (i + 0.5) / now + (random() - 0.5) * 0.1;
        schedule.provision.push({ kind, at, fired: false });
      }
      // The removal phase's worker kill is tied to its first batch (below), not to a point of progress.
      if (later && kind !== "worker_kill") {
        schedule.removal.push({ kind, at: 0.1 + 0.4 * random(), fired: false });
      }
    };
    plan1("worker_kill", options.workerKills);
    plan1("sshd_down", options.sshdOutages);
    plan1("pg_restart", options.pgRestarts);
    plan1("matomo_slow", options.matomoSlowWindows);
    const killDuringRemoval = removing && has("worker_kill") && options.workerKills >= 2;

    let phase: Phase = "provision";
    const event = async (kind: FaultName, body: () => Promise<string>) => {
      const at = elapsed();
      const during = phase;
      const detail = await body().catch((e) => `failed: ${e instanceof Error ? e.message : e}`);
      events.push({
        kind,
        phase: during,
        at: Math.round(at * 10) / 10,
        seconds: Math.round((elapsed() - at) * 10) / 10,
        detail,
      });
      injected.set(kind, (injected.get(kind) ?? 0) + 1);
      say(`  ${at.toFixed(1)} s  ${kind}: ${detail}`);
    };
    const fire = (kind: FaultName) => {
      switch (kind) {
        case "sshd_down":
          return event(kind, async () => {
            const ms = 2000 + Math.round(random() * 2000);
            await s.sshd.down();
            await sleep(ms);
            await s.sshd.up();
            return `down for ${ms} ms`;
          });
        case "pg_restart":
          return event(kind, async () => {
            const started = performance.now();
            await own.cluster.restart();
            return `restarted in ${Math.round(performance.now() - started)} ms`;
          });
        case "matomo_slow":
          return event(kind, async () => {
            s.matomo?.setLatency(1500);
            await sleep(3000);
            s.matomo?.setLatency(0);
            return "latency 1500 ms for 3 s (timeout 2 s)";
          });
        case "worker_kill":
          return event(kind, () => killWorker(s, options, random, () => stopping, workerOutput));
        default:
          return Promise.resolve();
      }
    };

    /**
     * Waits until the phase has settled: every job finished, nothing in flight, no kick queued, every event of
     * the phase fired (or past the end). Fires the phase's events as its progress (0 to 1) passes them. False
     * when the deadline came first.
     */
    const settle = async (
      planned: Planned[],
      progress: (counts: Record<string, number>) => Promise<number>,
      ready: () => boolean,
    ): Promise<boolean> => {
      let lastSay = -Infinity;
      while (true) {
        await sleep(500);
        let counts: Record<string, number> = {};
        let open = -1;
        let done = 0;
        try {
          const rows = await sql<{ status: string; n: number }[]>`
            select coalesce(status_hosting, 'null') as status, count(*)::int as n from public.sites group by 1`;
          counts = Object.fromEntries(rows.map((r) => [r.status, r.n]));
          const [o] = await sql<{ n: number }[]>`select count(*)::int as n from hosting_automator.jobs
            where state in ('queued', 'running')`;
          open = o.n;
          done = await progress(counts);
        } catch {
          // Restarting.
        }
        for (const item of planned) {
          if (!item.fired && done >= item.at) {
            item.fired = true;
            track(fire(item.kind));
          }
        }
        if (elapsed() - lastSay >= 10) {
          lastSay = elapsed();
          say(
            `  ${elapsed().toFixed(0).padStart(4)} s  ${phase}  arrived ${arrived}  ${
              Object.entries(counts).map(([k, v]) => `${k} ${v}`).join("  ")
            }  open jobs ${open}  background ${s.pendingWork()}`,
          );
        }
        if (
          ready() && open === 0 && s.pendingWork() === 0 && tracked.size === 0 &&
          planned.every((e) => e.fired || e.at > 1)
        ) {
          const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from net.http_request_queue`;
          if (n === 0) return true;
        }
        if (elapsed() > options.deadlineSeconds) {
          say(`  deadline of ${options.deadlineSeconds} s reached: reporting what there is`);
          return false;
        }
      }
    };

    let settled = await settle(
      schedule.provision,
      (counts) => Promise.resolve(((counts.active ?? 0) + (counts.failed ?? 0)) / options.sites),
      () => arrived === options.sites,
    );

    // The removal phase: a share of the active sites, asked for in batches a second apart, under the same
    // per-call faults and its own events.
    let removals: RemovalPlan | null = null;
    let removalSeconds: number | null = null;
    if (settled && removing) {
      phase = "removal";
      const started = elapsed();
      const active = await sql<{ id: string; domain: string }[]>`
        select id::text, domain from public.sites where status_hosting = 'active' order by domain`;
      const [{ last }] = await sql<{ last: number }[]>`
        select coalesce(max(id), 0)::int as last from hosting_automator.jobs`;
      const plan = planRemovals(active, options.removals, options.seed, last);
      removals = plan;
      say(
        `  ${started.toFixed(1)} s  removal phase: ${plan.targets.length} of ${active.length} active sites ` +
          `in ${plan.batches.length} batches`,
      );
      let asked = 0;
      const hub = (async () => {
        for (const [b, batch] of plan.batches.entries()) {
          if (b > 0) await sleep(1000);
          // The first batch meets a worker process that is killed during a removal step: kicks lag until
          // it is killed, so that it (and not the in-process function) claims one of the batch's removals.
          if (b === 0 && killDuringRemoval) kicksHeld = true;
          while (!stopping) {
            try {
              await askForRemovals(sql, batch);
              break;
            } catch {
              await sleep(500); // Restarting: the same batch again.
            }
          }
          if (b === 0 && killDuringRemoval) {
            track(
              event("worker_kill", () =>
                killWorker(s, options, random, () => stopping, workerOutput, {
                  kinds: ["remove"],
                  // A removal has one short step: kill at once, or the step is over.
                  withinMs: 100,
                  onKilled: () => (kicksHeld = false),
                })).finally(() => (kicksHeld = false)),
            );
          }
          asked++;
        }
      })();
      const targets = Math.max(1, plan.targets.length);
      settled = await settle(
        schedule.removal,
        async () => {
          const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from hosting_automator.jobs
            where kind = 'remove' and id > ${plan.afterJobId} and state in ('succeeded', 'failed')`;
          return n / targets;
        },
        () => asked === plan.batches.length,
      );
      await hub;
      removalSeconds = elapsed() - started;
    }

    const wallSeconds = elapsed();
    stopping = true;
    kicksHeld = false;
    await Promise.all([arrival, pgNet, cron]);
    // Background invocations end by their own timeouts and budget; do not wait forever after a deadline.
    await Promise.race([
      Promise.allSettled([...tracked]).then(() => s.settle()),
      sleep(settled ? 600_000 : 30_000),
    ]);
    const measured = await measure(s, chaosDir, options.sites, workerOutput, removals);
    const byWrapper = await injectedByWrapper(chaosDir);
    return {
      ...measured,
      options,
      wallSeconds,
      settled,
      removalSeconds,
      events,
      injected: Object.fromEntries(
        [...injected, ...byWrapper.byKind].sort(([a], [b]) => a.localeCompare(b)),
      ),
      injectedByVerb: Object.fromEntries(byWrapper.byVerb),
      kicks,
      sweeps,
      uncaught,
    };
  } finally {
    await stack?.close().catch(() => {});
    await own.close().catch(() => {});
    globalThis.removeEventListener("error", onError);
    globalThis.removeEventListener("unhandledrejection", onRejection);
  }
}

async function injectedByWrapper(
  chaosDir: string,
): Promise<{ byKind: Map<string, number>; byVerb: Map<string, number> }> {
  const text = await Deno.readTextFile(`${chaosDir}/injected.jsonl`).catch(() => "");
  const byKind = new Map<string, number>();
  const byVerb = new Map<string, number>();
  for (const line of text.split("\n").filter(Boolean)) {
    const { fault, verb } = JSON.parse(line) as { fault: string; verb: string };
    byKind.set(fault, (byKind.get(fault) ?? 0) + 1);
    byVerb.set(verb, (byVerb.get(verb) ?? 0) + 1);
  }
  return { byKind, byVerb };
}

/** Which jobs a worker kill waits for, and whom it tells once it has killed. */
interface KillTarget {
  /** Job kinds the worker must hold in a step (default: any). */
  kinds?: string[];
  /** The kill comes up to this long after the job is seen in its step (default 800 ms). */
  withinMs?: number;
  onKilled?: () => void;
}

/**
 * Starts a worker process (one invocation draining the queue) and SIGKILLs it while one of its jobs (of the
 * target's kinds) is in a step. The cap may leave it nothing to claim: then another is started a little later.
 */
async function killWorker(
  stack: Stack,
  options: ChaosOptions,
  random: () => number,
  stopping: () => boolean,
  output: string[],
  target: KillTarget = {},
): Promise<string> {
  const kinds = target.kinds ?? ["provision", "analytics", "remove"];
  for (let attempt = 1; attempt <= 30 && !stopping(); attempt++) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", WORKER],
      env: { ...stack.env, HOSTING_LOG_LEVEL: "info" } as Record<string, string>,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let text = "";
    let exited = false;
    const status = child.status.then((s) => (exited = true, s));
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
    };
    const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
    const started = performance.now();
    let worker = "";
    let jobs: Array<{ id: string; current_step: string }> = [];
    while (!exited && performance.now() - started < 60_000) {
      await sleep(50);
      worker ||= /^(ef-[0-9a-f]+)\n/.exec(text)?.[1] ?? "";
      if (!worker) continue;
      try {
        jobs = await stack.sql<
          { id: string; current_step: string }[]
        >`select id::text, current_step::text from hosting_automator.jobs
          where lease_owner = ${worker} and state = 'running' and current_step is not null
            and kind = any(${kinds}::text[])`;
      } catch {
        jobs = [];
      }
      if (jobs.length > 0) break;
    }
    if (jobs.length > 0 && !exited) {
      await sleep(Math.round(random() * (target.withinMs ?? 800)));
      try {
        child.kill("SIGKILL");
        target.onKilled?.();
      } catch {
        // It finished the job first: counted as a kill that missed, and tried again.
        jobs = [];
      }
    }
    await status;
    await pumps;
    output.push(text);
    // The kill counts only if the worker still held the job when it died (it may have finished it first).
    const held = jobs.length === 0 ? [] : await stack.sql`select id from hosting_automator.jobs
      where lease_owner = ${worker} and state = 'running'`.catch(() => []);
    if (held.length === 0) {
      await sleep(1000);
      continue;
    }
    const killedAt = performance.now();
    let warped = "";
    if (options.fastLeaseExpiry) {
      const rows = await stack.sql`update hosting_automator.jobs set lease_expires_at = now()
        where lease_owner = ${worker} and state = 'running' returning id`;
      warped = `; lease of ${rows.length} job(s) expired at once (time warp)`;
    }
    // How long the dead worker kept its slot: until its job is no longer held under its lease (the lease
    // expired and a claim or the sweep re-queued it, ringing for the freed slot).
    const ids = jobs.map((j) => Number(j.id));
    let back = "still held after 120 s";
    while (performance.now() - killedAt < 120_000 && !stopping()) {
      const rows = await stack.sql<{ n: number }[]>`select count(*)::int as n from hosting_automator.jobs
        where id = any(${ids}) and lease_owner is distinct from ${worker}`.catch(() => [{ n: 0 }]);
      if (rows[0].n === ids.length) {
        back = `slot free again after ${((performance.now() - killedAt) / 1000).toFixed(1)} s`;
        break;
      }
      await sleep(250);
    }
    return `worker ${worker} killed (SIGKILL) during ${jobs.map((j) => j.current_step).join(", ")} of job ${
      jobs.map((j) => j.id).join(", ")
    }, attempt ${attempt}${warped}; ${back}`;
  }
  return "no worker got a job to kill";
}
