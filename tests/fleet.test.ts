// deno-lint-ignore-file no-console
/**
 * The fleet end to end: several CloudPanel servers, each a real sshd on loopback with a clpctl simulator of its
 * own (its own panel), registered as rows of hosting_automator.servers, on real Postgres; the function
 * in-process through the PostgREST stand-in, as in the other end-to-end tests. Each test has its own database.
 *
 * What is simulated: CloudPanel (the clpctl simulator behind each sshd), Matomo, PostgREST and pg_net (kicks are
 * delivered by the test, or invocations are started directly, as concurrent kicks would start them).
 */
import assert from "node:assert/strict";
import { setFaults } from "../dev/clpctl_sim.ts";
import { registerSecret } from "./support/env.ts";
import {
  activate,
  drainUntil,
  type Fleet,
  insertSites,
  serverOf,
  statusCounts,
  withFleet,
} from "./support/fleet.ts";
import { generateClientKey } from "./support/sshd.ts";
import type { Stack } from "./support/stack.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Backoff of about a second, so retries and circuits come back within a test. */
async function fastBackoff(stack: Stack, baseSeconds = 1, maxSeconds = 2) {
  await stack.sql`update hosting_automator.settings
    set backoff_base_seconds = ${baseSeconds}, backoff_max_seconds = ${maxSeconds}`;
}

const allActive = (stack: Stack, ids: string[]) => async () =>
  (await statusCounts(stack, ids)).active === ids.length;

/** Where each site lives by its row, its placement, and its journal's steps. */
async function whereSitesAre(stack: Stack, ids: string[]) {
  return await stack.sql<
    {
      id: string;
      domain: string;
      hosting_server: string | null;
      placed: string | null;
      step_servers: string[];
    }[]
  >`
    select s.id, s.domain, s.hosting_server, p.server as placed,
      -- A skipped step (the DNS check of a server without public addresses) ran nowhere: it names no server.
      coalesce((select array_agg(distinct st.server) from hosting_automator.steps st
        where st.site_id = s.id and st.state <> 'skipped'), '{}') as step_servers
    from public.sites s left join hosting_automator.placements p on p.site_id = s.id
    where s.id = any(${ids}::uuid[])
    order by s.domain`;
}

/**
 * Every site's CloudPanel site is on the server its row names and on no other; the placement and every
 * journaled step name the same server. Returns the sites per server.
 */
async function assertEachSiteOnItsServer(fleet: Fleet, ids: string[]): Promise<Record<string, number>> {
  const rows = await whereSitesAre(fleet.stack, ids);
  const perServer: Record<string, number> = {};
  for (const server of fleet.servers) {
    const expected = rows.filter((r) => r.hosting_server === server.name).map((r) => r.domain).sort();
    const onPanel = (await server.domains()).filter((d) => rows.some((r) => r.domain === d));
    assert.deepEqual(onPanel, expected, `server ${server.name} holds exactly the sites whose row names it`);
    perServer[server.name] = expected.length;
  }
  for (const row of rows) {
    assert.ok(row.hosting_server, `${row.domain} names its server`);
    assert.equal(row.placed, row.hosting_server, `${row.domain}: the placement and the row agree`);
    assert.deepEqual(row.step_servers, [row.hosting_server], `${row.domain}: its steps ran on its server`);
  }
  return perServer;
}

async function serverRow(stack: Stack, name: string) {
  const [row] = await stack.sql<
    { failures: number; open_until: Date | null; last_error_code: string | null; state: string }[]
  >`select failures, open_until, last_error_code, state from hosting_automator.servers where name = ${name}`;
  return row;
}

async function statusOf(stack: Stack) {
  const response = await stack.request("/status");
  assert.equal(response.status, 200);
  return await response.json();
}

/** The jobs claimed on `server` (run there, or given back to wait for it), with their attempts and last code. */
async function jobsOn(stack: Stack, server: string) {
  return await stack.sql<
    { site_id: string; state: string; attempts: number; last_error_code: string | null }[]
  >`
    select site_id, state, attempts, last_error_code from hosting_automator.jobs where server = ${server}
    order by id`;
}

Deno.test({
  name:
    "placement follows capacity exactly under concurrent claims: 60 sites onto 10 / 20 / 30, then no room, then a raised capacity",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_capacity" }, [
      { name: "cp-1", capacity: 10, concurrency: 4 },
      { name: "cp-2", capacity: 20, concurrency: 4 },
      { name: "cp-3", capacity: 30, concurrency: 4 },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      const ids = await insertSites(stack, "cap", 60);
      await activate(stack, ids);

      // Per-server running jobs, sampled while four invocations of three lanes each claim at once.
      const peak: Record<string, number> = {};
      let peakTotal = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const rows = await stack.sql<{ server: string; n: number }[]>`
            select server, count(*)::int as n from hosting_automator.jobs where state = 'running' group by server`;
          for (const r of rows) peak[r.server] = Math.max(peak[r.server] ?? 0, r.n);
          peakTotal = Math.max(peakTotal, rows.reduce((n, r) => n + r.n, 0));
          await sleep(25);
        }
      })();
      try {
        await drainUntil(stack, stack.app, allActive(stack, ids), { invocations: 4, concurrency: 3 });
      } finally {
        sampling = false;
        await sampler;
      }

      const perServer = await assertEachSiteOnItsServer(fleet, ids);
      assert.deepEqual(perServer, { "cp-1": 10, "cp-2": 20, "cp-3": 30 }, "exactly each server's capacity");
      for (const [server, n] of Object.entries(peak)) {
        assert.ok(n <= 4, `server ${server} never ran more than its concurrency of 4 (saw ${n})`);
      }
      assert.ok(peakTotal > 4, `the servers ran jobs side by side (peak ${peakTotal} at once)`);
      const calls = await Promise.all(fleet.servers.map(async (s) => (await s.simState()).calls));
      const siteAdds = calls.flat().filter((c) => c.verb === "site:add:static" && c.outcome === "added");
      assert.equal(siteAdds.length, 60, "one site:add:static per site over the whole fleet");

      // Full: one more site waits for room without spending an attempt, and /status says so.
      const [extra] = await insertSites(stack, "extra", 1);
      await activate(stack, [extra]);
      const { outcomes } = await stack.app.newInvocation!().run({ drain: true, concurrency: 2 });
      assert.deepEqual(outcomes, [], "nothing could be claimed");
      const [waiting] = await stack.sql<{ state: string; attempts: number; last_error_code: string }[]>`
        select state, attempts, last_error_code from hosting_automator.jobs where site_id = ${extra}`;
      assert.deepEqual(waiting, { state: "queued", attempts: 0, last_error_code: "no_server_capacity" });
      assert.equal(
        (await statusOf(stack)).waiting_for_capacity,
        1,
        "/status counts the site waiting for room",
      );
      assert.equal(await serverOf(stack, extra), null, "not placed anywhere");

      await stack.sql`update hosting_automator.servers set capacity = 21 where name = 'cp-2'`;
      await drainUntil(stack, stack.app, allActive(stack, [extra]), { invocations: 1, concurrency: 1 });
      assert.equal(await serverOf(stack, extra), "cp-2", "the raised capacity took it");
      assert.ok((await fleet.server("cp-2").domains()).includes("extra-1.fleet.example"), "made on cp-2");
      assert.equal((await statusOf(stack)).waiting_for_capacity, 0);
    });
  },
});

Deno.test({
  name:
    "a draining server takes no new site but still runs its sites' removals; a disabled one runs nothing until enabled",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_states" }, [
      { name: "cp-a", concurrency: 2 },
      { name: "cp-b", concurrency: 2 },
      { name: "cp-c", concurrency: 2 },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      const first = await insertSites(stack, "first", 6);
      await activate(stack, first);
      await drainUntil(stack, stack.app, allActive(stack, first));
      assert.deepEqual(
        await assertEachSiteOnItsServer(fleet, first),
        { "cp-a": 2, "cp-b": 2, "cp-c": 2 },
        "without capacities, the fewest sites first",
      );

      const rows = await whereSitesAre(stack, first);
      const onA = rows.find((r) => r.hosting_server === "cp-a")!;
      const onB = rows.find((r) => r.hosting_server === "cp-b")!;
      const callsOnB = (await fleet.server("cp-b").simState()).calls.length;
      await stack.sql`update hosting_automator.servers set state = 'draining' where name = 'cp-a'`;
      await stack.sql`update hosting_automator.servers set state = 'disabled' where name = 'cp-b'`;
      await stack.sql`update public.sites set status_hosting = 'removing' where id in (${onA.id}, ${onB.id})`;
      const fresh = await insertSites(stack, "fresh", 4);
      await activate(stack, fresh);

      await drainUntil(
        stack,
        stack.app,
        async () =>
          (await allActive(stack, fresh)()) && (await stack.site(onA.id)).status_hosting === "removed",
      );

      // cp-a had the fewest sites after its removal, yet being drained it got none of the four.
      assert.deepEqual(
        (await whereSitesAre(stack, fresh)).map((r) => r.hosting_server),
        ["cp-c", "cp-c", "cp-c", "cp-c"],
        "new sites go only to the active server",
      );
      assert.ok(!(await fleet.server("cp-a").domains()).includes(onA.domain), "the removal ran on cp-a");
      const deletes = (await fleet.server("cp-a").simState()).calls.filter((c) => c.verb === "site:delete");
      assert.deepEqual(deletes.map((c) => c.domainName), [onA.domain]);

      const [waiting] = await stack.sql<{ state: string; attempts: number }[]>`
        select state, attempts from hosting_automator.jobs where site_id = ${onB.id} and kind = 'remove'`;
      assert.deepEqual([waiting.state, waiting.attempts], ["queued", 0], "the disabled server's job waits");
      assert.equal((await fleet.server("cp-b").simState()).calls.length, callsOnB, "nothing ran on cp-b");
      assert.ok((await fleet.server("cp-b").domains()).includes(onB.domain));

      await stack.sql`update hosting_automator.servers set state = 'active' where name = 'cp-b'`;
      await drainUntil(stack, stack.app, async () => (await stack.site(onB.id)).status_hosting === "removed");
      assert.ok(
        !(await fleet.server("cp-b").domains()).includes(onB.domain),
        "enabled again, it ran the removal",
      );
    });
  },
});

Deno.test({
  name: "many jobs waiting for a disabled server do not hold up the other servers' sites",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_disabled_many" }, [
      { name: "cp-a", concurrency: 2 },
      { name: "cp-b", concurrency: 2, state: "disabled" },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      // 25 sites placed on cp-b earlier (written as the claim writes a placement, to spare provisioning them)
      // whose jobs are now due while cp-b is disabled: more than one claim looks at in one go.
      const parked = await insertSites(stack, "parked", 25);
      await stack.sql`insert into hosting_automator.placements (site_id, server)
        select unnest(${parked}::uuid[]), 'cp-b'`;
      await stack.sql`update public.sites set hosting_server = 'cp-b' where id = any(${parked}::uuid[])`;
      await activate(stack, parked);
      const later = await insertSites(stack, "later", 2);
      await activate(stack, later);

      await drainUntil(stack, stack.app, allActive(stack, later), { timeoutMs: 30_000 });
      assert.deepEqual((await whereSitesAre(stack, later)).map((r) => r.hosting_server), ["cp-a", "cp-a"]);
      assert.deepEqual(await statusCounts(stack, parked), { pending: 25 }, "cp-b's sites still wait");
      assert.equal((await fleet.server("cp-b").simState()).calls.length, 0);
    });
  },
});

Deno.test({
  name:
    "a down server delays only its own sites: the healthy server's finish as fast as without the outage, the others after it is back, attempts kept",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_down", matomo: { latencyMs: 50 } }, [
      { name: "cp-up", capacity: 7, concurrency: 3 },
      { name: "cp-down", capacity: 7, concurrency: 3 },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      // Upstream latency, so the time measured is mostly CloudPanel's, as in production.
      for (const server of fleet.servers) await setFaults(server.clpctlState, { delayMs: 300 });

      /** Seconds until every site of `ids` on cp-up is active, while the drains run in the background. */
      const timeOnUp = async (ids: string[], done: () => Promise<boolean>) => {
        const started = performance.now();
        let upDone: number | null = null;
        const drains = drainUntil(stack, stack.app, done, {
          invocations: 2,
          concurrency: 3,
          timeoutMs: 60_000,
        });
        while (upDone === null) {
          const [row] = await stack.sql<{ placed: number; active: number }[]>`
            select count(*)::int as placed, count(*) filter (where status_hosting = 'active')::int as active
            from public.sites where id = any(${ids}::uuid[]) and hosting_server = 'cp-up'`;
          if (row.placed === 6 && row.active === 6) upDone = (performance.now() - started) / 1000;
          else await sleep(25);
        }
        await drains;
        return upDone;
      };

      // A warm-up site on each server (first connections, the simulator's first start), not measured.
      const warm = await insertSites(stack, "warm", 2);
      await activate(stack, warm);
      await drainUntil(stack, stack.app, allActive(stack, warm));
      assert.deepEqual(await assertEachSiteOnItsServer(fleet, warm), { "cp-up": 1, "cp-down": 1 });

      // Without an outage: 12 sites, six on each.
      const calm = await insertSites(stack, "calm", 12);
      await activate(stack, calm);
      const tCalm = await timeOnUp(calm, allActive(stack, calm));
      assert.deepEqual(await assertEachSiteOnItsServer(fleet, calm), { "cp-up": 6, "cp-down": 6 });

      // cp-down's sshd stops; 12 more sites (room for six more on each).
      await stack.sql`update hosting_automator.servers set capacity = 13`;
      await fleet.server("cp-down").sshd.down();
      const stormy = await insertSites(stack, "stormy", 12);
      await activate(stack, stormy);
      const tStormy = await timeOnUp(stormy, async () => {
        const [row] = await stack.sql<{ active: number }[]>`
          select count(*)::int as active from public.sites
          where id = any(${stormy}::uuid[]) and hosting_server = 'cp-up' and status_hosting = 'active'`;
        return row.active === 6 && (await serverRow(stack, "cp-down")).failures > 0;
      });
      console.log(
        `cp-up's 6 sites: ${tCalm.toFixed(2)} s without the outage, ${
          tStormy.toFixed(2)
        } s with cp-down down`,
      );
      // About the same: a margin for this shared machine's noise, far below what a stalled lane would cost.
      assert.ok(tStormy <= tCalm * 1.5 + 1, `the healthy server was not slowed (${tStormy} s vs ${tCalm} s)`);

      const down = await serverRow(stack, "cp-down");
      assert.equal(down.last_error_code, "ssh_unreachable");
      const circuit = (await statusOf(stack)).servers.find((s: { name: string }) =>
        s.name === "cp-down"
      ).circuit;
      assert.ok(
        ["open", "half_open"].includes(circuit.state),
        `/status shows the circuit (${circuit.state})`,
      );
      assert.ok(circuit.failures >= 1);
      const given = (await jobsOn(stack, "cp-down")).filter((j) => j.state !== "succeeded");
      assert.ok(given.length >= 1, "at least one site was placed on cp-down before its circuit opened");
      for (const job of given) {
        assert.deepEqual(
          { state: job.state, attempts: job.attempts, code: job.last_error_code },
          { state: "queued", attempts: 0, code: "ssh_unreachable" },
          "given back with its attempt kept",
        );
      }
      const failedStormy = await stack.sql<{ n: number }[]>`
        select count(*)::int as n from public.sites where id = any(${stormy}::uuid[]) and status_hosting = 'failed'`;
      assert.equal(failedStormy[0].n, 0, "no site failed for the outage");

      // Back up: the circuit closes by time and the waiting sites finish there.
      await fleet.server("cp-down").sshd.up();
      await drainUntil(stack, stack.app, allActive(stack, stormy), { invocations: 2, timeoutMs: 60_000 });
      assert.deepEqual(await assertEachSiteOnItsServer(fleet, stormy), { "cp-up": 6, "cp-down": 6 });
      assert.deepEqual(
        { ...await serverRow(stack, "cp-down"), last_error_code: undefined },
        { failures: 0, open_until: null, last_error_code: undefined, state: "active" },
        "the circuit is closed again",
      );
      const attempts = await stack.sql<{ attempts: number }[]>`
        select attempts from hosting_automator.jobs where site_id = any(${stormy}::uuid[])`;
      assert.ok(attempts.every((j) => j.attempts === 1), "every site took one attempt, the outage none");
    });
  },
});

Deno.test({
  name: "a resumed job stays on its server though another has more room, and its journal names that server",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_sticky" }, [
      { name: "cp-1", concurrency: 2 },
      { name: "cp-2", concurrency: 2 },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      // The certificate fails once on either server: Let's Encrypt cannot validate yet (transient).
      for (const server of fleet.servers) await setFaults(server.clpctlState, { certificateFailures: 1 });
      const [id] = await insertSites(stack, "sticky", 1);
      await activate(stack, [id]);
      const { outcomes } = await stack.app.newInvocation!().run({ drain: true });
      assert.deepEqual(outcomes.map((o) => [o.status, o.steps.map((s) => `${s.step}:${s.status}`)]), [
        ["retrying", ["cloudpanel_site:done", "dns_check:skipped", "ssl_certificate:failed"]],
      ]);
      const home = (await serverOf(stack, id))!;
      const other = home === "cp-1" ? "cp-2" : "cp-1";

      // Now the other server has all the room: the home server is full for new sites.
      await stack.sql`update hosting_automator.servers set capacity = 1 where name = ${home}`;
      const [newcomer] = await insertSites(stack, "newcomer", 1);
      await activate(stack, [newcomer]);
      await stack
        .sql`update hosting_automator.jobs set run_at = now() where site_id = ${id} and state = 'queued'`;
      await drainUntil(stack, stack.app, allActive(stack, [id, newcomer]));

      assert.equal(await serverOf(stack, id), home, "the resumed site stayed");
      assert.equal(await serverOf(stack, newcomer), other, "a new site went where the room is");
      await assertEachSiteOnItsServer(fleet, [id, newcomer]);
      const calls = (await fleet.server(home).simState()).calls.filter((c) =>
        c.domainName === "sticky-1.fleet.example"
      );
      assert.deepEqual(
        calls.map((c) => c.verb),
        ["site:add:static", "lets-encrypt:install:certificate", "lets-encrypt:install:certificate"],
        "the site made once, the certificate tried twice, all on the home server",
      );
      const journal = await stack.sql<{ step: string; server: string; attempts: number }[]>`
        select step::text, server, attempts from hosting_automator.steps
        where site_id = ${id} and state <> 'skipped' order by step`;
      assert.deepEqual(
        journal.map((s) => [s.step, s.server]).filter(([step]) => step !== "matomo_site").sort(),
        [["cloudpanel_site", home], ["https_verify", home], ["ssl_certificate", home]],
      );
      const claimed = (await stack.events(id)).filter((e) => e.code === "job_claimed").map((e) => e.message);
      assert.equal(claimed.length, 2);
      for (const message of claimed) assert.match(message, new RegExp(`on server ${home}\\.$`));
    });
  },
});

Deno.test({
  name: "a host-key mismatch stops only that server until its host_key is corrected with SQL",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withFleet({ label: "fleet_host_key" }, [
      { name: "cp-good", capacity: 3, concurrency: 3 },
      { name: "cp-bad", capacity: 3, concurrency: 3, unregistered: true },
    ], async (fleet) => {
      const { stack } = fleet;
      // A long backoff: only the correction can make the waiting jobs due within this test.
      await fastBackoff(stack, 60, 600);
      const bad = fleet.server("cp-bad");
      // Registered with the other server's fingerprint: a host that is not the one pinned.
      await stack
        .sql`insert into hosting_automator.servers (name, host, port, ssh_user, host_key, capacity, concurrency)
        values ('cp-bad', ${bad.sshd.host}, ${bad.sshd.port}, ${bad.sshd.user},
          ${fleet.server("cp-good").sshd.hostKeyFingerprint}, 3, 3)`;
      const ids = await insertSites(stack, "pinned", 6);
      await activate(stack, ids);
      await drainUntil(
        stack,
        stack.app,
        async () =>
          (await statusCounts(stack, ids)).active === 3 && (await serverRow(stack, "cp-bad")).failures > 0,
      );
      // Nothing more is due: another round claims nothing.
      assert.deepEqual((await stack.app.newInvocation!().run({ drain: true, concurrency: 3 })).outcomes, []);

      const rows = await whereSitesAre(stack, ids);
      assert.deepEqual(
        rows.filter((r) => r.hosting_server === "cp-good").length,
        3,
        "the good server's sites went active",
      );
      const badRow = await serverRow(stack, "cp-bad");
      assert.equal(badRow.last_error_code, "ssh_host_key_mismatch");
      assert.ok(badRow.open_until! > new Date(), "its circuit is open");
      const circuit = (await statusOf(stack)).servers.find((s: { name: string }) =>
        s.name === "cp-bad"
      ).circuit;
      assert.deepEqual([circuit.state, circuit.last_error_code], ["open", "ssh_host_key_mismatch"]);
      const waiting = await jobsOn(stack, "cp-bad");
      assert.ok(waiting.length >= 1);
      for (const job of waiting) {
        assert.deepEqual([job.state, job.attempts, job.last_error_code], [
          "queued",
          0,
          "ssh_host_key_mismatch",
        ]);
      }
      assert.deepEqual((await bad.simState()).calls, [], "nothing was executed on the mismatched host");

      await stack.sql`update hosting_automator.servers set host_key = ${bad.sshd.hostKeyFingerprint}
        where name = 'cp-bad'`;
      const fixed = await serverRow(stack, "cp-bad");
      assert.deepEqual([fixed.failures, fixed.open_until], [0, null], "the correction closes the circuit");
      const [{ due }] = await stack.sql<{ due: number }[]>`
        select count(*)::int as due from hosting_automator.jobs
        where server = 'cp-bad' and state = 'queued' and run_at <= now()`;
      assert.equal(due, waiting.length, "and makes its waiting jobs due now");

      await drainUntil(stack, stack.app, allActive(stack, ids), { timeoutMs: 60_000 });
      assert.deepEqual(await assertEachSiteOnItsServer(fleet, ids), { "cp-good": 3, "cp-bad": 3 });
    });
  },
});

Deno.test({
  name:
    "a server with its own key from CLOUDPANEL_SSH_PRIVATE_KEYS works, and a server added with the shared key needs only its row",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const own = await generateClientKey("ecdsa", "pem");
    registerSecret(own.privateKey);
    await withFleet({ label: "fleet_keys" }, [
      { name: "cp-shared", concurrency: 2, state: "draining" },
      { name: "cp-own", concurrency: 2, authorizedKey: own.publicKeyLine },
    ], async (fleet) => {
      const { stack } = fleet;
      await fastBackoff(stack);
      // The control: without its own key, cp-own refuses the shared key.
      const [first] = await insertSites(stack, "own", 1);
      await activate(stack, [first]);
      const refused = await stack.app.newInvocation!().run({ drain: true });
      assert.deepEqual(refused.outcomes.map((o) => [o.status, o.error?.code]), [[
        "waiting",
        "ssh_auth_failed",
      ]]);
      assert.equal((await serverRow(stack, "cp-own")).last_error_code, "ssh_auth_failed");

      const keyed = stack.newApp({
        CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-own": own.privateKey }),
      });
      await drainUntil(stack, keyed, allActive(stack, [first]), { invocations: 1, concurrency: 1 });
      assert.equal(await serverOf(stack, first), "cp-own");
      assert.deepEqual(await fleet.server("cp-own").domains(), ["own-1.fleet.example"]);
      assert.equal((await serverRow(stack, "cp-own")).failures, 0, "its circuit closed once it answered");

      // A new server on the shared key: its row, and the running app (built before it) uses it at the next kick.
      await stack.sql`update hosting_automator.servers set state = 'draining' where name = 'cp-own'`;
      await fleet.add({ name: "cp-new", concurrency: 2 });
      // The kicks of the first site, answered before (they find nothing due).
      await stack.deliverKicks();
      await stack.settle();
      const [second] = await insertSites(stack, "added", 1);
      await activate(stack, [second]);
      const kicks = await stack.deliverKicks();
      assert.ok(kicks.length >= 1 && kicks.every((r) => r.status === 202), "the trigger kicked the app");
      await stack.settle();
      assert.equal((await stack.site(second)).status_hosting, "active");
      assert.equal(await serverOf(stack, second), "cp-new");
      assert.deepEqual(await fleet.server("cp-new").domains(), ["added-1.fleet.example"]);
      assert.deepEqual(await fleet.server("cp-shared").domains(), [], "draining from the start: never used");
    });
  },
});
