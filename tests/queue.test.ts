/**
 * The queue under concurrency and crashes, on real Postgres with several connections: claims racing, leases
 * expiring and being taken over, the per-server cap, kicks that only exist after commit, the sweep.
 */
import postgres from "postgres";
import assert from "node:assert/strict";
import { testDb } from "./support/db.ts";

type Sql = postgres.Sql;

function connect(url: string): Sql {
  return postgres(url, { max: 1, onnotice: () => {} });
}

async function withDb(label: string, body: (db: { url: string; sql: Sql }) => Promise<void>) {
  const db = await testDb(label);
  try {
    await body(db);
  } finally {
    await db.close();
  }
}

async function activeSite(sql: Sql, domain: string): Promise<string> {
  const [row] =
    await sql`insert into public.sites (domain, status_dns) values (${domain}, 'active') returning id`;
  return row.id;
}

/** The worker's configured server, registered as `default` by the first claim (the cap is settings' then). */
const DEFAULT_SERVER = { host: "srv.example", host_key: `SHA256:${"A".repeat(43)}` };

const claim = (sql: Sql, worker: string, limit = 1, lease = 60) =>
  sql`select * from public.hosting_claim_jobs(${worker}, 'srv', ${lease}, ${limit},
    p_default_server => ${sql.json(DEFAULT_SERVER)})`;

/** The outcomes these tests end jobs with, as hosting_exit takes them: JSON text, sent as text and read as jsonb. */
const active = (docRoot: string, matomoSiteId: number | null = null) =>
  JSON.stringify({ type: "active", doc_root: docRoot, matomo_site_id: matomoSiteId });
const fail = (code: string, message: string, permanent: boolean) =>
  JSON.stringify({ type: "fail", code, public_message: message, internal_message: null, permanent });

Deno.test("two workers claiming at the same moment: one gets the job, the other gets nothing", async () => {
  await withDb("claim_race", async ({ url, sql }) => {
    const a = connect(url), b = connect(url);
    try {
      for (let round = 0; round < 20; round++) {
        await activeSite(sql, `race-${round}.example`);
        const [got1, got2] = await Promise.all([claim(a, "worker-a"), claim(b, "worker-b")]);
        assert.deepEqual(got1.length + got2.length, 1, `round ${round}: exactly one worker gets the job`);
        const [won] = [...got1, ...got2];
        await sql`select public.hosting_exit(${won.job_id}, ${won.lease_token}, ${
          active("/home/u-1/htdocs/x.example")
        }::text::jsonb)`;
      }
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

Deno.test("an expired lease is taken over, and the old owner's later record, complete and fail are refused", async () => {
  await withDb("lease_takeover", async ({ url, sql }) => {
    const a = connect(url), b = connect(url);
    try {
      const site = await activeSite(sql, "takeover.example");
      const [first] = await claim(a, "worker-a");
      // The old worker stalls past its lease (fake time: move the expiry instead of sleeping).
      await sql`update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where id = ${first.job_id}`;
      const [second] = await claim(b, "worker-b");
      assert.deepEqual(second?.job_id, first.job_id, "the same job is claimed by the new worker");
      assert.deepEqual(second.attempt, 2);

      const [{ recorded }] = await a`select public.hosting_advance(${first.job_id}, ${first.lease_token}, 60,
        '{"step": "cloudpanel_site", "state": "done", "result": {"doc_root": "/home/old/htdocs/takeover.example"}}')
        ->> 'reason' as recorded`;
      const [{ completed }] = await a`select public.hosting_exit(${first.job_id}, ${first.lease_token},
        ${active("/home/old/htdocs/takeover.example", 1)}::text::jsonb) ->> 'reason' as completed`;
      const [{ failed }] = await a`select public.hosting_exit(${first.job_id}, ${first.lease_token},
        ${fail("internal", "old worker failure", true)}::text::jsonb) ->> 'reason' as failed`;
      assert.deepEqual(
        [recorded, completed, failed],
        ["lease_lost", "lease_lost", "lease_lost"],
        "the old owner changes nothing",
      );

      const [{ done }] = await b`select public.hosting_exit(${second.job_id}, ${second.lease_token},
        ${active("/home/new-user/htdocs/takeover.example", 5)}::text::jsonb) ->> 'state' as done`;
      assert.deepEqual(done, "succeeded", "the new owner completes");
      const [row] =
        await sql`select status_hosting, hosting_doc_root, matomo_site_id from public.sites where id = ${site}`;
      assert.deepEqual(row, {
        status_hosting: "active",
        hosting_doc_root: "/home/new-user/htdocs/takeover.example",
        matomo_site_id: 5,
      });
      const steps = await sql`select * from hosting_automator.steps where site_id = ${site}`;
      assert.deepEqual(steps.length, 0, "the old owner's step record was not written");
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

Deno.test("the per-server cap holds: with cap 3 and 12 due jobs, eight racing claimers never run more than 3", async () => {
  await withDb("cap", async ({ url, sql }) => {
    await sql`update hosting_automator.settings set server_concurrency = 3`;
    for (let i = 0; i < 12; i++) await activeSite(sql, `cap-${i}.example`);
    const workers = Array.from({ length: 8 }, () => connect(url));
    try {
      let finished = 0;
      while (finished < 12) {
        const claims = await Promise.all(workers.map((w, i) => claim(w, `w${i}`, 5)));
        const [{ running }] =
          await sql`select count(*)::int as running from hosting_automator.jobs where state = 'running'`;
        assert.ok(running <= 3, `at most 3 running, saw ${running}`);
        assert.deepEqual(claims.flat().length, 3 - 0, "free slots are filled exactly");
        for (const job of claims.flat()) {
          await sql`select public.hosting_exit(${job.job_id}, ${job.lease_token}, ${
            active("/home/u-1/htdocs/x.example")
          }::text::jsonb)`;
          finished++;
        }
        if (finished >= 12) break;
      }
      // Another server's claims are not limited by this one's: with the first server full (3 running), a new
      // site goes to the second (fewer sites) and runs there.
      for (let i = 0; i < 4; i++) await activeSite(sql, `full-${i}.example`);
      assert.equal((await claim(workers[0], "w0", 5)).length, 3, "the first server fills to its cap");
      await sql`insert into hosting_automator.servers (name, host, host_key, concurrency)
        values ('other', 'other.example', ${`SHA256:${"B".repeat(43)}`}, 1)`;
      await activeSite(sql, "elsewhere.example");
      const more = await claim(workers[1], "w1", 5);
      assert.deepEqual(more.map((job) => job.server.name), ["other"], "one more job, on the second server");
    } finally {
      await Promise.all(workers.map((w) => w.end()));
    }
  });
});

Deno.test("the kick is requested only when the update commits, with the key in the headers", async () => {
  await withDb("kick_commit", async ({ url, sql }) => {
    await sql`select vault.create_secret('https://project.example/functions/v1/hosting-automator', 'hosting_automator_url')`;
    await sql`select vault.create_secret('sb_secret_kick_test_0123456789', 'hosting_automator_key')`;
    const [site] = await sql`insert into public.sites (domain) values ('kick.example') returning id`;
    const writer = connect(url);
    try {
      const kicksSeen: number[] = [];
      await writer.begin(async (tx) => {
        await tx`update public.sites set status_dns = 'active' where id = ${site.id}`;
        const [{ n }] = await sql`select count(*)::int as n from net.http_request_queue`;
        kicksSeen.push(n);
      });
      const kicks = await sql`select headers, body, timeout_milliseconds from net.http_request_queue`;
      assert.deepEqual(kicksSeen, [0], "nothing is visible to pg_net's worker before commit");
      assert.deepEqual(kicks.length, 1, "one kick after commit");
      assert.deepEqual(kicks[0].headers.apikey, "sb_secret_kick_test_0123456789");
      assert.deepEqual(kicks[0].body, {}, "a doorbell: the function drains what is due");
      assert.deepEqual(kicks[0].timeout_milliseconds, 5000);

      const [other] =
        await sql`insert into public.sites (domain) values ('rolled-back.example') returning id`;
      await writer.begin(async (tx) => {
        await tx`update public.sites set status_dns = 'active' where id = ${other.id}`;
        throw new Error("rollback");
      }).catch((e) => assert.deepEqual(e.message, "rollback"));
      const [{ n }] = await sql`select count(*)::int as n from net.http_request_queue`;
      assert.deepEqual(n, 1, "a rolled-back update requests nothing");
      const [{ jobs }] =
        await sql`select count(*)::int as jobs from hosting_automator.jobs where site_id = ${other.id}`;
      assert.deepEqual(jobs, 0, "and queues no job");
    } finally {
      await writer.end();
    }
  });
});

Deno.test("two transactions queueing the same site at once leave one open job", async () => {
  await withDb("queue_race", async ({ url, sql }) => {
    const [site] = await sql`insert into public.sites (domain) values ('twice.example') returning id`;
    const a = connect(url), b = connect(url);
    try {
      for (let round = 0; round < 5; round++) {
        await Promise.all([a, b].map((c) => c`select * from hosting_automator.queue_job(${site.id})`));
        const [{ open }] = await sql`select count(*)::int as open from hosting_automator.jobs
          where site_id = ${site.id} and state in ('queued', 'running')`;
        assert.deepEqual(open, 1);
      }
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});

Deno.test("the sweep re-queues expired leases and rings once per free slot while jobs are due", async () => {
  await withDb("sweep", async ({ sql }) => {
    await sql`select vault.create_secret('https://project.example/functions/v1/hosting-automator', 'hosting_automator_url')`;
    await sql`select vault.create_secret('sb_secret_sweep_0123456789', 'hosting_automator_key')`;
    await sql`update hosting_automator.settings set server_concurrency = 2`;
    for (let i = 0; i < 5; i++) await activeSite(sql, `sweep-${i}.example`);
    assert.deepEqual(
      (await sql`select count(*)::int as n from net.http_request_queue`)[0].n,
      2,
      "five sites made ready one by one ring only for the 2 free slots",
    );
    // Those kicks were answered (or expired) without claiming anything.
    await sql`delete from net.http_request_queue`;
    await sql`delete from hosting_automator.rings`;
    const [stuck] = await claim(sql, "crashed-worker");
    await sql`update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where id = ${stuck.job_id}`;

    const [{ n: byClaim }] = await sql`select count(*)::int as n from net.http_request_queue`;
    assert.deepEqual(byClaim, 1, "the claim rang for the other free slot");

    const [{ sweep }] = await sql`select hosting_automator.sweep() as sweep`;
    const { deleted: _retention, ...swept } = sweep;
    assert.deepEqual(
      swept,
      { reaped: 1, due: 5, running: 0, kicks: 1 },
      "the sweep rings for the slot the dead worker held",
    );
    const kicks = await sql`select body from net.http_request_queue`;
    assert.deepEqual(kicks.map((k) => k.body), [{}, {}], "drain kicks, one per free slot");
    const [job] =
      await sql`select state, attempts, last_error_code from hosting_automator.jobs where id = ${stuck.job_id}`;
    assert.deepEqual(job, { state: "queued", attempts: 1, last_error_code: "interrupted" });
  });
});

Deno.test("a job whose worker dies on every attempt fails after the last one, with a public message", async () => {
  await withDb("poison", async ({ sql }) => {
    await sql`update hosting_automator.settings set max_attempts = 2`;
    const site = await activeSite(sql, "poison.example");
    for (let attempt = 1; attempt <= 2; attempt++) {
      const [job] = await claim(sql, `w${attempt}`);
      assert.deepEqual(job.attempt, attempt);
      await sql`update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where id = ${job.job_id}`;
      await sql`select hosting_automator.sweep()`;
    }
    const [row] = await sql`select status_hosting, error_message from public.sites where id = ${site}`;
    assert.deepEqual(row.status_hosting, "failed");
    assert.deepEqual(
      row.error_message,
      "Provisioning was interrupted too many times; an operator can retry it.",
    );
    assert.deepEqual((await claim(sql, "w3")).length, 0, "a failed job is not claimed again");
  });
});

Deno.test("retrying an active site that lacks analytics queues a job and keeps the site active", async () => {
  await withDb("retry_analytics", async ({ sql }) => {
    const site = await activeSite(sql, "noanalytics.example");
    const [job] = await claim(sql, "w1");
    await sql`select public.hosting_exit(${job.job_id}, ${job.lease_token}, ${
      active("/home/u-1/htdocs/noanalytics.example")
    }::text::jsonb)`;
    const [{ retry }] = await sql`select public.hosting_retry(null, true) as retry`;
    assert.deepEqual(retry.requeued.map((r: { reason: string }) => r.reason), ["missing_analytics"]);
    const [again] = await claim(sql, "w2");
    assert.deepEqual(again.site_id, site);
    const [row] = await sql`select status_hosting from public.sites where id = ${site}`;
    assert.deepEqual(row.status_hosting, "active", "claiming it does not take the site out of active");
    const [{ failed }] = await sql`select public.hosting_exit(${again.job_id}, ${again.lease_token}, ${
      fail("internal", "boom", true)
    }::text::jsonb) as failed`;
    assert.deepEqual(failed.state, "failed");
    const [after] = await sql`select status_hosting, error_message from public.sites where id = ${site}`;
    assert.deepEqual(
      after,
      { status_hosting: "active", error_message: null },
      "a failed analytics retry leaves a live site alone",
    );
  });
});
