/**
 * Running unattended, end to end on the real stack (real Postgres, supabase-js through the PostgREST stand-in,
 * real sshd with the clpctl simulator, the Matomo simulator): the queue backfills analytics by itself, leases
 * live while work lives and die with their worker, a shutdown gives jobs back at once, a worker near its
 * wall-clock limit takes no job it cannot finish, and a site costs seven statements (six where DNS is not
 * checked).
 */
import assert from "node:assert/strict";
import { setFaults } from "../dev/clpctl_sim.ts";
import { createApp } from "../supabase/functions/hosting-automator/app.ts";
import { type ErrorCode, HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Outcome } from "../supabase/functions/hosting-automator/outcome.ts";
import type { Lease } from "../supabase/functions/hosting-automator/store.ts";
import { type Stack, withStack } from "./support/stack.ts";

/** A configured server for claims made directly through the store (registered as `default` when none is). */
const DEFAULT_SERVER = { host: "cp.example", port: 22, user: "root", hostKey: `SHA256:${"A".repeat(43)}` };

/** Fake time for the backoff: queued jobs become due now. */
async function makeDue(stack: Stack) {
  await stack.sql`update hosting_automator.jobs set run_at = now() where state = 'queued'`;
}

async function job(stack: Stack, siteId: string) {
  const [row] = await stack.sql`
    select id, kind, state, attempts, last_error_code, lease_expires_at from hosting_automator.jobs
    where site_id = ${siteId} order by id desc limit 1`;
  return row;
}

async function until(what: string, check: () => Promise<boolean>, ms = 10_000) {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

Deno.test("a site that went active without analytics gets its Matomo site from the queue, without an operator", async () => {
  await withStack({ label: "backfill" }, async (stack) => {
    const id = await stack.insertSite("backfill.example", { status_dns: "active" });
    await stack.matomo!.down();
    await stack.deliverKicks();
    await stack.settle();
    let row = await stack.site(id);
    assert.equal(row.status_hosting, "active", "the site goes live without analytics");
    assert.equal(row.matomo_site_id, null);
    const backfill = await job(stack, id);
    assert.equal(backfill.kind, "analytics", "an analytics job is queued by the completion itself");
    assert.equal(backfill.state, "queued");
    const events = await stack.events(id);
    assert.ok(events.some((e) => e.code === "analytics_backfill_queued"), "the event log says so");

    await stack.matomo!.up();
    await makeDue(stack);
    await stack.sql`select hosting_automator.sweep()`;
    await stack.deliverKicks();
    await stack.settle();
    row = await stack.site(id);
    assert.equal(row.status_hosting, "active", "the site never left active");
    assert.equal(row.matomo_site_id, stack.matomo!.sites[0].idsite, "the queue filled the Matomo id");
    assert.equal(stack.matomo!.sites.length, 1, "one Matomo site");
    const state = await stack.simState();
    assert.equal(
      state.calls.filter((c) => c.verb === "site:add:static").length,
      1,
      "CloudPanel was not asked again",
    );
  });
});

Deno.test("the analytics backfill gives up after its attempts and leaves the live site alone", async () => {
  await withStack({ label: "backfill_bounded" }, async (stack) => {
    await stack.sql`update hosting_automator.settings set analytics_max_attempts = 2`;
    const id = await stack.insertSite("bounded.example", { status_dns: "active" });
    await stack.matomo!.down();
    await stack.deliverKicks();
    await stack.settle();
    for (let round = 0; round < 2; round++) {
      await makeDue(stack);
      const response = await stack.request("", { body: {}, query: "wait=true" });
      assert.equal(response.status, 200);
      await response.body?.cancel();
    }
    const last = await job(stack, id);
    assert.deepEqual([last.kind, last.state, last.attempts], ["analytics", "failed", 2]);
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "active");
    assert.equal(row.error_message, null, "a failed backfill does not write an error on a live site");
    const status = await (await stack.request("/status")).json();
    assert.ok(
      status.missing_analytics.some((m: { site_id: string }) => m.site_id === id),
      "/status lists it as missing analytics",
    );
  });
});

for (const dnsChecked of [true, false]) {
  const count = dnsChecked ? "seven" : "six";
  Deno.test(`a site costs ${count} statements on the normal path${dnsChecked ? "" : " when DNS is not checked"}`, async () => {
    const publicIps = dnsChecked ? ["203.0.113.10"] : undefined;
    await withStack({ label: dnsChecked ? "statements_dns" : "statements", publicIps }, async (stack) => {
      stack.doh.setRecords("counted.example", { A: ["203.0.113.10"] });
      stack.doh.setRecords("www.counted.example", { A: ["203.0.113.10"] });
      const id = await stack.insertSite("counted.example");
      await stack.sql`update public.sites set status_dns = 'active' where id = ${id}`;
      const before = stack.postgrest!.calls.length;
      await stack.deliverKicks();
      await stack.settle();
      assert.equal((await stack.site(id)).status_hosting, "active");
      const calls = stack.postgrest!.calls.slice(before).map((c) => c.fn);
      // The drain's last claim finds nothing due; it belongs to the invocation, not to the site.
      const perSite = calls.slice(0, -1);
      // One transition per step that runs (it journals the step before it); a skipped step is journaled with
      // the next transition, at no cost of its own.
      const ran = dnsChecked ? 5 : 4;
      assert.deepEqual(perSite, [
        "hosting_claim_jobs",
        ...Array(ran).fill("hosting_advance"),
        "hosting_exit",
      ]);
      assert.equal(perSite.length, dnsChecked ? 7 : 6);
      assert.equal(calls.at(-1), "hosting_claim_jobs");
      assert.equal(
        stack.doh.queries.length > 0,
        dnsChecked,
        dnsChecked ? "DNS was asked" : "DNS was not asked",
      );
    });
  });
}

Deno.test("a step longer than the lease keeps its lease: the lease is renewed while the step runs", async () => {
  await withStack({ label: "renewal", env: { HOSTING_LEASE_SECONDS: "5" } }, async (stack) => {
    const id = await stack.insertSite("slow.example", { status_dns: "active" });
    await setFaults(stack.clpctlState, { delayMs: 7_000 });
    const response = await stack.request("", { body: { site_id: id }, query: "wait=true" });
    const body = await response.json();
    assert.equal(body.outcomes[0].status, "active", JSON.stringify(body.outcomes[0]));
    assert.ok(body.outcomes[0].steps[0].duration_ms >= 7_000, "the site step outlived the 5 s lease");
    const heartbeats = stack.postgrest!.calls.filter((c) => c.fn === "hosting_heartbeat" && c.status === 200);
    assert.ok(heartbeats.length >= 2, `renewed in the background (${heartbeats.length} renewals)`);
    const events = await stack.events(id);
    assert.ok(!events.some((e) => e.code === "interrupted"), "nobody took the job over");
  });
});

Deno.test("a worker that loses its lease mid-step stops that step at once and writes nothing more", async () => {
  await withStack({ label: "lease_lost", env: { HOSTING_LEASE_SECONDS: "6" } }, async (stack) => {
    const id = await stack.insertSite("stolen.example", { status_dns: "active" });
    await setFaults(stack.clpctlState, { delayMs: 8_000 });
    const invocation = stack.app.newInvocation!();
    const run = invocation.run({ siteId: id, drain: false });
    // The step's start is journaled (a running job alone may not have reached it yet).
    await until(
      "the site step runs",
      async () =>
        (await stack.sql`select 1 from hosting_automator.steps where site_id = ${id} and state = 'started'`)
          .length > 0,
    );
    // Another worker took the job over (as after a lease expiry).
    await stack.sql`update hosting_automator.jobs set lease_token = gen_random_uuid() where site_id = ${id}`;
    const started = performance.now();
    const result = await run;
    const took = performance.now() - started;
    assert.equal(result.outcomes[0].status, "lease_lost");
    assert.ok(
      took < 4_000,
      `stopped within a renewal interval, not at the command's end (${took.toFixed(0)} ms)`,
    );
    const [step] = await stack.sql`select state from hosting_automator.steps where site_id = ${id}`;
    assert.equal(step.state, "started", "the old owner wrote no end for the step");
  });
});

Deno.test("a shutdown gives a running job back at once without spending its attempt", async () => {
  await withStack({ label: "shutdown" }, async (stack) => {
    const id = await stack.insertSite("shutdown.example", { status_dns: "active" });
    await setFaults(stack.clpctlState, { delayMs: 10_000 });
    const run = stack.app.newInvocation!().run({ siteId: id, drain: true });
    await until("the site step runs", async () => (await job(stack, id)).state === "running");
    const started = performance.now();
    await stack.app.shutdown("wall_clock");
    const result = await run;
    const took = performance.now() - started;
    assert.equal(result.outcomes[0].status, "released");
    assert.equal(result.stopped?.code, "interrupted");
    assert.ok(took < 2_000, `given back in ${took.toFixed(0)} ms`);
    const after = await job(stack, id);
    assert.deepEqual([after.state, after.attempts], ["queued", 0], "queued again, the attempt not spent");
    const events = await stack.events(id);
    assert.ok(events.some((e) => e.code === "job_released"));
  });
});

Deno.test("a worker near its wall-clock limit claims no job it cannot finish, and rings for its slot", async () => {
  // 40 s: a fresh worker has room for the five steps of a provision job (5 s each when none has run yet).
  await withStack({ label: "old_worker", env: { HOSTING_WALL_CLOCK_SECONDS: "40" } }, async (stack) => {
    let now = 0;
    // A second function instance whose worker started 37 s ago (its clock is read at creation, then moved on).
    const aged = createApp(stack.env, { store: stack.app.store!, clock: () => now });
    now = 37_000;
    const id = await stack.insertSite("late.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    await stack.sql`delete from hosting_automator.rings`;
    const first = await aged.newInvocation!().run({ drain: true });
    assert.deepEqual(first.outcomes, [], "a fresh request on an old worker takes nothing");
    assert.equal((await job(stack, id)).state, "queued");
    const [{ n: rung }] = await stack.sql`select count(*)::int as n from net.http_request_queue`;
    assert.equal(rung, 0, "and rings nothing: a kick would likely reach the same dying worker");

    // A worker that was busy (not its first claim) and now lacks time gives its slot to another.
    const invocation = aged.newInvocation!();
    await invocation.run({ drain: true }); // first claim spent
    const again = await aged.store!.claim({
      worker: invocation.worker,
      server: "x:22",
      defaultServer: DEFAULT_SERVER,
      leaseSeconds: 30,
      limit: 1,
      timeLeftMs: 0,
      plan: {
        provision: ["cloudpanel_site", "dns_check", "ssl_certificate", "https_verify", "matomo_site"],
        analytics: ["matomo_site"],
      },
    });
    assert.deepEqual(again, []);
    const [{ n: handed }] = await stack.sql`select count(*)::int as n from net.http_request_queue`;
    assert.equal(handed, 1, "one kick hands the slot on");
    await aged.close();

    const fresh = await stack.request("", { body: {}, query: "wait=true" });
    const body = await fresh.json();
    assert.equal(body.outcomes[0].status, "active", "a fresh worker runs it");
  });
});

Deno.test("the same unrecognised failure a few times in a row fails the job; other failures reset the count", async () => {
  await withStack({ label: "attempt_limit" }, async (stack) => {
    const id = await stack.insertSite("streak.example", { status_dns: "active" });
    const [claimed] = await stack.app.store!.claim({
      worker: "w",
      server: "s:22",
      leaseSeconds: 30,
      limit: 1,
      defaultServer: DEFAULT_SERVER,
    });
    /** The attempt fails with a transient `code` (its exit's answer: the job's state now). */
    const failWith = async (lease: Lease, code: ErrorCode, attemptLimit?: number) => {
      const failure = new HostingError(code, "x", { publicMessage: "x", transient: true, attemptLimit });
      const answer = await stack.app.store!.exit(lease, Outcome.failure(failure, []));
      return answer.ok ? answer : null;
    };
    const fail = async (code: ErrorCode, attemptLimit?: number) => {
      const [c] = await stack.app.store!.claim({
        worker: "w",
        server: "s:22",
        leaseSeconds: 30,
        limit: 1,
        defaultServer: DEFAULT_SERVER,
      });
      return await failWith({ jobId: c.jobId, leaseToken: c.leaseToken }, code, attemptLimit);
    };
    // The first claim above holds the job; fail it as the first unrecognised failure.
    const first = await failWith(
      { jobId: claimed.jobId, leaseToken: claimed.leaseToken },
      "cloudpanel_failed",
      3,
    );
    assert.equal(first?.state, "queued");
    await makeDue(stack);
    assert.equal((await fail("ssh_timeout"))?.state, "queued", "another code in between");
    await makeDue(stack);
    assert.equal((await fail("cloudpanel_failed", 3))?.state, "queued", "streak 1");
    await makeDue(stack);
    assert.equal((await fail("cloudpanel_failed", 3))?.state, "queued", "streak 2");
    await makeDue(stack);
    assert.equal((await fail("cloudpanel_failed", 3))?.state, "failed", "streak 3 of 3: the job fails");
    assert.equal((await stack.site(id)).status_hosting, "failed");
  });
});

Deno.test("off the Edge Runtime no worker limit applies unless set: a long-lived server keeps claiming after 150 s", async () => {
  await withStack({ label: "long_lived" }, async (stack) => {
    let now = 0;
    const env = { ...stack.env, HOSTING_WALL_CLOCK_SECONDS: undefined };
    const server = createApp(env, { store: stack.app.store!, clock: () => now });
    now = 10 * 60_000; // ten minutes after the worker started
    const id = await stack.insertSite("long-lived.example", { status_dns: "active" });
    const result = await server.newInvocation!().run({ siteId: id, drain: false });
    assert.equal(
      result.outcomes[0]?.status,
      "active",
      "a local server or the CLI is not stopped by a platform",
    );

    // On the Edge Runtime the free plan's limit applies when nothing is set.
    const global = globalThis as { EdgeRuntime?: unknown };
    global.EdgeRuntime = {};
    try {
      now = 0;
      const edge = createApp(env, { store: stack.app.store!, clock: () => now });
      now = 10 * 60_000;
      const late = await stack.insertSite("edge-late.example", { status_dns: "active" });
      const edgeResult = await edge.newInvocation!().run({ siteId: late, drain: false });
      assert.deepEqual(edgeResult.outcomes, [], "a worker past its 150 s takes nothing");
    } finally {
      delete global.EdgeRuntime;
    }
  });
});
