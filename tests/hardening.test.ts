/**
 * Holding against what a long-lived deployment meets: one site per canonical domain (enforced by the database,
 * also between concurrent claims), the exact stored text judged (whatever a driver does to it), retention of the
 * module's own history, and failing kicks (a rotated key) visible in /status.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { testDb } from "./support/db.ts";
import { withStack } from "./support/stack.ts";

Deno.test("two rows for one canonical domain: the first owns the site, the second fails naming it", async () => {
  await withStack({ label: "domain_taken" }, async (stack) => {
    const first = await stack.insertSite("bücher.example", { status_dns: "active" });
    await stack.deliverKicks();
    await stack.settle();
    assert.equal((await stack.site(first)).status_hosting, "active");
    const before = await stack.site(first);

    // The same domain spelled in punycode, and in capitals: distinct rows, one site.
    const punycode = await stack.insertSite("xn--bcher-kva.example", { status_dns: "active" });
    const capitals = await stack.insertSite("BÜCHER.example", { status_dns: "active" });
    const response = await stack.request("", { body: {}, query: "wait=true" });
    const body = await response.json();
    for (const id of [punycode, capitals]) {
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "failed");
      assert.match(row.error_message!, /xn--bcher-kva\.example is already hosted for another row/);
      assert.ok(row.error_message!.includes(first), "the message names the owner's row");
      const outcome = body.outcomes.find((o: { site_id: string }) => o.site_id === id);
      assert.equal(outcome.error.code, "domain_taken");
    }
    assert.deepEqual(await stack.site(first), before, "the first site is untouched");
    const state = await stack.simState();
    assert.equal(Object.keys(state.sites).length, 1, "one CloudPanel site");
    assert.equal(
      state.calls.filter((c) => c.verb === "lets-encrypt:install:certificate").length,
      1,
      "one certificate",
    );
    assert.equal(stack.matomo!.sites.length, 1, "one Matomo site");
  });
});

Deno.test("two rows for one domain claimed at the same moment: exactly one owns it", async () => {
  await withStack({ label: "domain_race" }, async (stack) => {
    await stack.sql`update hosting_automator.settings set server_concurrency = 8`;
    const ids = await Promise.all(
      ["race.example", "RACE.example", "Race.Example", "rAce.example"].map((d) =>
        stack.insertSite(d, { status_dns: "active" })
      ),
    );
    const apps = ids.map(() => stack.newApp());
    await Promise.all(apps.map((app) => app.newInvocation!().run({ drain: true })));
    const rows = await Promise.all(ids.map((id) => stack.site(id)));
    assert.deepEqual(rows.filter((r) => r.status_hosting === "active").length, 1, JSON.stringify(rows));
    assert.deepEqual(rows.filter((r) => r.status_hosting === "failed").length, 3);
    const state = await stack.simState();
    assert.equal(Object.keys(state.sites).length, 1, "one CloudPanel site");
  });
});

Deno.test("a domain whose stored text a driver changes on reading is refused, on the direct-Postgres store too", async () => {
  for (const store of ["postgres", "rpc"] as const) {
    await withStack({ label: `bom_${store}`, store }, async (stack) => {
      const id = await stack.insertSite("\uFEFFexample.com", { status_dns: "active" });
      await stack.deliverKicks();
      await stack.settle();
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "failed", store);
      assert.match(row.error_message!, /The domain is invalid/);
      const state = await stack.simState();
      assert.deepEqual(state.calls, [], `${store}: no command reached the server`);
      assert.equal(stack.matomo!.requests.length, 0, `${store}: no Matomo request`);
    });
  }
});

async function withDb(label: string, body: (sql: postgres.Sql) => Promise<void>) {
  const db = await testDb(label);
  try {
    await body(db.sql);
  } finally {
    await db.close();
  }
}

Deno.test("retention deletes old history in batches and keeps the last event of each site's latest job", async () => {
  await withDb("retention", async (sql) => {
    await sql`update hosting_automator.settings set retention_days = 30`;
    const [site] = await sql`insert into public.sites (domain) values ('old.example') returning id`;
    const jobs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const [job] = await sql`
        insert into hosting_automator.jobs (site_id, state, max_attempts, finished_at, created_at)
        values (${site.id}, 'succeeded', 10, now() - interval '40 days', now() - interval '40 days')
        returning id`;
      jobs.push(Number(job.id));
      for (let e = 0; e < 3; e++) {
        await sql`insert into hosting_automator.events (site_id, job_id, level, code, message, created_at)
          values (${site.id}, ${job.id}, 'info', ${`job${i}-e${e}`}, 'old', now() - interval '40 days')`;
      }
    }
    const [other] = await sql`insert into public.sites (domain) values ('new.example') returning id`;
    await sql`insert into hosting_automator.events (site_id, level, code, message)
      values (${other.id}, 'info', 'recent', 'recent')`;

    const [{ deleted }] = await sql`select hosting_automator.apply_retention(4) as deleted`;
    assert.equal(deleted.events, 4, "a batch is bounded");
    assert.equal(deleted.jobs, 2, "old finished jobs go; the site's latest job stays");
    const [{ again }] = await sql`select hosting_automator.apply_retention(1000) as again`;
    assert.equal(again.events, 4, "the rest of the old events go in the next batch");
    const left = await sql`select code from hosting_automator.events order by id`;
    assert.deepEqual(
      left.map((e) => e.code),
      ["job2-e2", "recent"],
      "the latest job's last event and recent ones stay",
    );
    const [{ n }] = await sql`select count(*)::int as n from hosting_automator.jobs`;
    assert.equal(n, 1);
    await assert.rejects(
      sql`delete from hosting_automator.events`,
      /append-only/,
      "otherwise it stays append-only",
    );
  });
});

Deno.test("failing kicks show in /status with the status pg_net recorded, until one succeeds", async () => {
  await withStack({ label: "kick_health" }, async (stack) => {
    // A stand-in for pg_net's response table (the real one is written by pg_net's background worker).
    await stack.sql`create table net._http_response (
      id bigint, status_code integer, content_type text, headers jsonb, content text, timed_out boolean,
      error_msg text, created timestamptz not null default now())`;
    await stack.insertSite("kicked.example", { status_dns: "active" });
    await stack.sql`delete from hosting_automator.rings`;
    await stack.sql`update hosting_automator.jobs set state = 'queued'`;
    await stack.sql`select hosting_automator.sweep()`;
    const sent = await stack.sql`select request_id from hosting_automator.kick_log order by request_id`;
    assert.ok(sent.length >= 2, "the kicks' request ids are logged");
    const [ok, ...failed] = sent.map((r) => r.request_id);
    await stack.sql`insert into net._http_response (id, status_code) values (${ok}, 202)`;
    for (const id of failed) {
      await stack.sql`insert into net._http_response (id, status_code, content) values (${id}, 401, '{}')`;
    }
    let status = await (await stack.request("/status")).json();
    assert.equal(status.doorbell.kicks.failing_since_last_success, failed.length);
    assert.equal(status.doorbell.kicks.last_failure.status, 401, "a rotated key answers 401");
    // The key is fixed; the next kick is answered again.
    await stack.sql`insert into hosting_automator.kick_log (request_id) values (1000000)`;
    await stack.sql`insert into net._http_response (id, status_code) values (1000000, 202)`;
    status = await (await stack.request("/status")).json();
    assert.equal(status.doorbell.kicks.failing_since_last_success, 0, "a success clears the count");
    assert.ok(status.doorbell.kicks.last_success_at);
  });
});
