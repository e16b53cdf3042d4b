/**
 * End to end on the real stack: real Postgres with the migrations (applied by the Supabase CLI), the trigger's
 * kicks delivered to the function in-process, supabase-js through the PostgREST stand-in, real sshd with the
 * clpctl simulator behind it, the Matomo simulator over HTTP.
 */
import assert from "node:assert/strict";
import { addExistingSite, addOrphanUser, setFaults, type SimState } from "../dev/clpctl_sim.ts";
import { siteUserFor } from "../supabase/functions/hosting-automator/domain.ts";
import type { Domain } from "../supabase/functions/hosting-automator/domain.ts";
import { type Stack, withStack } from "./support/stack.ts";

const letsEncryptCalls = (state: SimState) =>
  state.calls.filter((c) => c.verb === "lets-encrypt:install:certificate");
const siteCalls = (state: SimState) => state.calls.filter((c) => c.verb === "site:add:static");
const issued = (state: SimState) =>
  Object.values(state.certificates).filter((c) => c.type === "lets-encrypt");

/** Runs whatever is due, synchronously (POST {} ?wait=true). */
async function drain(stack: Stack) {
  const response = await stack.request("", { body: {}, query: "wait=true" });
  assert.equal(response.status, 200);
  return await response.json();
}

/** Fake time for the backoff: the retry becomes due now instead of in a minute. */
async function makeDue(stack: Stack, siteId: string) {
  await stack
    .sql`update hosting_automator.jobs set run_at = now() where site_id = ${siteId} and state = 'queued'`;
}

Deno.test("DNS turning active ends with the site active, its doc root and Matomo id, and one site, certificate and Matomo site", async () => {
  await withStack({ label: "full_path" }, async (stack) => {
    const id = await stack.insertSite("example.com");
    const started = performance.now();
    await stack.sql`update public.sites set status_dns = 'active' where id = ${id}`;
    const responses = await stack.deliverKicks();
    assert.deepEqual(responses.map((r) => r.status), [202], "the trigger's kick is answered 202 at once");
    const accepted = await responses[0].json();
    assert.equal(accepted.accepted, true, "the kick is a doorbell: the function drains what is due");
    await stack.settle();
    const elapsed = performance.now() - started;

    const row = await stack.site(id);
    const user = siteUserFor("example.com" as Domain);
    assert.equal(row.status_hosting, "active");
    assert.equal(row.hosting_doc_root, `/home/${user}/htdocs/example.com`);
    assert.equal(row.error_message, null);
    const state = await stack.simState();
    assert.equal(Object.keys(state.sites).length, 1, "one CloudPanel site");
    assert.equal(issued(state).length, 1, "one Let's Encrypt certificate");
    assert.equal(stack.matomo!.sites.length, 1, "one Matomo site");
    assert.equal(row.matomo_site_id, stack.matomo!.sites[0].idsite);
    assert.equal(stack.matomo!.sites[0].main_url, "https://example.com");
    assert.ok(
      stack.postgrest!.calls.some((c) => c.fn === "hosting_claim_jobs" && c.status === 200),
      "supabase-js path used",
    );

    const events = await stack.events(id);
    const codes = events.map((e) => e.code);
    for (
      const code of [
        "job_queued",
        "job_claimed",
        "cloudpanel_site_done",
        "ssl_certificate_done",
        "matomo_site_done",
        "job_succeeded",
      ]
    ) {
      assert.ok(codes.includes(code), `event ${code} is logged`);
    }
    // deno-lint-ignore no-console
    console.log(`full path: ${elapsed.toFixed(0)} ms from the UPDATE to an active row`);
  });
});

Deno.test("the direct-Postgres store runs the same path", async () => {
  await withStack({ label: "pg_store", store: "postgres" }, async (stack) => {
    // The test database's password is "postgres", a registered secret: a domain containing that text must
    // still be classified by CloudPanel's real answer, not by its redacted log form.
    const id = await stack.insertSite("postgres-store.example", { status_dns: "active" });
    const body = await drain(stack);
    assert.equal(body.outcomes.length, 1);
    assert.equal(body.outcomes[0].status, "active");
    assert.equal((await stack.site(id)).status_hosting, "active");
  });
});

Deno.test("a site that already exists on CloudPanel succeeds with the inferred doc root", async () => {
  await withStack({ label: "exists" }, async (stack) => {
    const user = siteUserFor("existing.example" as Domain);
    await addExistingSite(stack.clpctlState, "existing.example", user);
    const id = await stack.insertSite("existing.example", { status_dns: "active" });
    const body = await drain(stack);
    assert.equal(body.outcomes[0].status, "active");
    const row = await stack.site(id);
    assert.equal(row.hosting_doc_root, `/home/${user}/htdocs/existing.example`);
    const events = await stack.events(id);
    assert.ok(
      events.some((e) => /already existed/.test(e.message)),
      "the event log says the site already existed",
    );
    assert.equal(Object.keys((await stack.simState()).sites).length, 1, "no second site");
  });
});

Deno.test("a site user that exists without its site fails with a clear public message and nothing else runs", async () => {
  await withStack({ label: "orphan" }, async (stack) => {
    await addOrphanUser(stack.clpctlState, siteUserFor("orphan.example" as Domain));
    const id = await stack.insertSite("orphan.example", { status_dns: "active" });
    const body = await drain(stack);
    assert.equal(body.outcomes[0].status, "failed");
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "failed");
    assert.match(row.error_message ?? "", /site user .* no site .*orphan.*remove that user, then retry/i);
    assert.doesNotMatch(row.error_message ?? "", /\/home|clpctl|127\.0\.0\.1/);
    assert.equal(letsEncryptCalls(await stack.simState()).length, 0, "no certificate was requested");
  });
});

Deno.test("Let's Encrypt failing validation twice, then succeeding, ends active after retries visible in the event log", async () => {
  await withStack({ label: "le_retry" }, async (stack) => {
    await setFaults(stack.clpctlState, { certificateFailures: 2 });
    const id = await stack.insertSite("slow-dns.example", { status_dns: "active" });

    const first = await drain(stack);
    assert.equal(first.outcomes[0].status, "retrying");
    assert.equal(first.outcomes[0].error.code, "certificate_not_validated");
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "provisioning", "not failed while retrying");
    await makeDue(stack, id);
    assert.equal((await drain(stack)).outcomes[0].status, "retrying");
    await makeDue(stack, id);
    const third = await drain(stack);
    assert.equal(third.outcomes[0].status, "active");
    assert.deepEqual(
      third.outcomes[0].steps.map((s: { step: string; status: string }) => `${s.step}:${s.status}`),
      [
        "cloudpanel_site:already_done",
        // No public addresses configured on this stack: DNS is not checked (a warning), on every attempt.
        "dns_check:skipped",
        "ssl_certificate:done",
        "https_verify:done",
        "matomo_site:done",
      ],
      "the resumed job skips the site step",
    );

    const state = await stack.simState();
    assert.equal(siteCalls(state).length, 1, "the site was created once");
    assert.equal(letsEncryptCalls(state).length, 3, "three certificate attempts");
    const events = await stack.events(id);
    const failures = events.filter((e) => e.code === "certificate_not_validated");
    assert.equal(
      failures.filter((e) => e.step === "ssl_certificate" && e.level === "warn").length >= 2,
      true,
    );
    assert.ok(events.some((e) => /Attempt 1 of \d+ failed; retry at/.test(e.message)));
    assert.ok(events.some((e) => /Attempt 2 of \d+ failed; retry at/.test(e.message)));
    assert.equal((await stack.site(id)).status_hosting, "active");
  });
});

for (const fault of ["down", "html", "error"] as const) {
  Deno.test(`Matomo ${fault === "down" ? "unreachable" : fault === "html" ? "answering HTML" : "answering result:error"}: the site is still active without analytics, the warning shows in /status, a retry fills the id`, async () => {
    await withStack({ label: `matomo_${fault}` }, async (stack) => {
      const matomo = stack.matomo!;
      if (fault === "down") await matomo.down();
      else matomo.fail({ kind: fault });
      const id = await stack.insertSite(`analytics-${fault}.example`, { status_dns: "active" });
      const body = await drain(stack);
      assert.equal(body.outcomes[0].status, "active");
      assert.ok(body.outcomes[0].warning, "the outcome carries a warning");
      let row = await stack.site(id);
      assert.equal(row.status_hosting, "active");
      assert.equal(row.matomo_site_id, null);

      const status = await (await stack.request("/status")).json();
      const missing = status.missing_analytics.find((m: { site_id: string }) => m.site_id === id);
      assert.ok(missing, "the site is listed as missing analytics");
      assert.match(missing.warning.code, /^matomo_/);

      if (fault === "down") await matomo.up();
      else matomo.clearFaults();
      const sitesBefore = matomo.sites.length;
      const retried = await (await stack.request("/retry", { body: { site_id: id }, query: "wait=true" }))
        .json();
      assert.deepEqual(retried.requeued.map((r: { reason: string }) => r.reason), ["missing_analytics"]);
      row = await stack.site(id);
      assert.equal(row.status_hosting, "active");
      assert.equal(typeof row.matomo_site_id, "number");
      assert.equal(matomo.sites.length, sitesBefore + 1, "exactly one Matomo site was added");
      const state = await stack.simState();
      assert.equal(siteCalls(state).length, 1, "the retry did not touch CloudPanel");
      assert.equal(letsEncryptCalls(state).length, 1);
    });
  });
}

Deno.test("an existing Matomo site for the URL is reused, not duplicated", async () => {
  await withStack({ label: "matomo_reuse" }, async (stack) => {
    const existing = stack.matomo!.addExistingSite({ name: "old", urls: ["http://www.reuse.example"] });
    const id = await stack.insertSite("reuse.example", { status_dns: "active" });
    await drain(stack);
    assert.equal((await stack.site(id)).matomo_site_id, existing);
    assert.equal(stack.matomo!.sites.length, 1);
  });
});

Deno.test("without Matomo settings the analytics step is skipped with a warning and the site goes active", async () => {
  await withStack({ label: "no_matomo", matomo: false }, async (stack) => {
    const id = await stack.insertSite("no-matomo.example", { status_dns: "active" });
    const body = await drain(stack);
    assert.equal(body.outcomes[0].status, "active");
    assert.equal(body.outcomes[0].warning.code, "matomo_not_configured");
    assert.equal((await stack.site(id)).matomo_site_id, null);
  });
});

Deno.test("ten concurrent kicks for one site create one site, one certificate and one Matomo site", async () => {
  await withStack({ label: "ten_kicks" }, async (stack) => {
    await setFaults(stack.clpctlState, { delayMs: 100 });
    const id = await stack.insertSite("busy.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    const responses = await Promise.all(
      Array.from({ length: 10 }, () => stack.request("", { body: { site_id: id } })),
    );
    assert.deepEqual(responses.map((r) => r.status), Array(10).fill(202));
    await stack.settle();
    const state = await stack.simState();
    assert.equal(Object.keys(state.sites).length, 1);
    assert.equal(siteCalls(state).length, 1, "one site:add:static in all");
    assert.equal(issued(state).length, 1);
    assert.equal(letsEncryptCalls(state).length, 1, "one certificate request in all");
    assert.equal(stack.matomo!.sites.length, 1);
    assert.equal((await stack.site(id)).status_hosting, "active");
  });
});

Deno.test("a worker process killed after the site step is resumed by another invocation without repeating the site step", async () => {
  await withStack({ label: "crash_resume" }, async (stack) => {
    // Slow commands, so the kill lands while the certificate command runs.
    await setFaults(stack.clpctlState, { delayMs: 1500 });
    const id = await stack.insertSite("crash.example", { status_dns: "active" });
    const worker = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./support/worker_process.ts", import.meta.url).pathname],
      env: { ...stack.env, HOSTING_LOG_LEVEL: "error" } as Record<string, string>,
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      // Poll the journal until the site step is done, then kill the worker (SIGKILL: no cleanup runs).
      for (let i = 0;; i++) {
        const [step] = await stack
          .sql`select state from hosting_automator.steps where site_id = ${id} and step = 'cloudpanel_site'`;
        if (step?.state === "done") break;
        if (i > 400) throw new Error("the worker never finished the site step");
        await new Promise((r) => setTimeout(r, 25));
      }
    } finally {
      worker.kill("SIGKILL");
      await worker.status;
    }
    const [job] = await stack
      .sql`select state, current_step, attempts from hosting_automator.jobs where site_id = ${id}`;
    assert.deepEqual(
      job,
      { state: "running", current_step: "ssl_certificate", attempts: 1 },
      "the dead worker holds the lease",
    );
    assert.equal((await stack.site(id)).status_hosting, "provisioning");

    // Nothing can take the job while the lease holds; then the lease expires (fake time).
    assert.equal((await drain(stack)).outcomes.length, 0);
    await stack
      .sql`update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where site_id = ${id}`;
    await setFaults(stack.clpctlState, {});
    const resumed = await drain(stack);
    assert.equal(resumed.outcomes[0].status, "active");
    assert.equal(resumed.outcomes[0].attempt, 2);
    assert.equal(resumed.outcomes[0].steps[0].status, "already_done");
    assert.equal(siteCalls(await stack.simState()).length, 1, "site:add:static ran once");
    const events = await stack.events(id);
    assert.ok(events.some((e) => e.code === "interrupted"), "the takeover is in the event log");
  });
});

Deno.test("a wrong host key executes nothing, pauses that server's jobs without spending an attempt, and a corrected key resumes them", async () => {
  await withStack({ label: "host_key" }, async (stack) => {
    const app = stack.newApp({ CLOUDPANEL_SSH_HOST_KEY: "SHA256:" + "A".repeat(43) });
    const id = await stack.insertSite("pinned.example", { status_dns: "active" });
    const call = (which: typeof app) =>
      which.fetch(
        new Request("http://functions.test/hosting-automator?wait=true", {
          method: "POST",
          headers: { apikey: stack.serviceKey, "content-type": "application/json" },
          body: "{}",
        }),
      ).then((r) => r.json());
    const body = await call(app);
    assert.equal(body.outcomes[0].status, "waiting");
    assert.equal(body.outcomes[0].error.code, "ssh_host_key_mismatch");
    assert.match(
      body.outcomes[0].error.message,
      /host key does not match the pinned one.*nothing was executed/,
    );
    const [job] = await stack.sql`select state::text, attempts, run_at > now() as later
      from hosting_automator.jobs where site_id = ${id}`;
    assert.deepEqual({ ...job }, { state: "queued", attempts: 0, later: true }, "the attempt is kept");
    assert.notEqual(
      (await stack.site(id)).status_hosting,
      "failed",
      "the site is not failed for its server's trouble",
    );
    const [server] = (await stack.app.store!.status()).servers;
    assert.equal(server.circuit.state, "open");
    assert.equal(server.circuit.last_error_code, "ssh_host_key_mismatch");
    assert.equal((await stack.simState()).calls.length, 0, "no clpctl command ran");
    assert.doesNotMatch(
      await Deno.readTextFile(stack.sshd.logPath),
      /Accepted publickey/,
      "no login happened",
    );

    // The corrected key (the stack's own app) reaches the server row at its next claim; the job is due at once.
    const fixed = await call(stack.app);
    assert.equal(fixed.outcomes[0]?.status, "active", JSON.stringify(fixed));
    assert.equal((await stack.app.store!.status()).servers[0].circuit.state, "closed");
  });
});

Deno.test("invalid domains never reach the server and fail with a message that says the domain is invalid", async () => {
  await withStack({ label: "bad_domains" }, async (stack) => {
    const bad = [
      "evil.example; rm -rf /",
      "$(reboot).example",
      "`id`.example",
      "two words.example",
      "quote'd.example",
      'dq"d.example',
      `${"a".repeat(64)}.example`,
      "192.168.1.10",
      "[::1]",
      "new\nline.example",
      "localhost",
    ];
    const ids = [];
    for (const domain of bad) ids.push(await stack.insertSite(domain, { status_dns: "active" }));
    const body = await drain(stack);
    assert.equal(body.outcomes.length, bad.length);
    for (const id of ids) {
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "failed", `${row.domain} failed`);
      assert.match(row.error_message ?? "", /^The domain is invalid: /);
    }
    assert.equal((await stack.simState()).calls.length, 0, "nothing reached clpctl");
    assert.doesNotMatch(
      await Deno.readTextFile(stack.sshd.logPath),
      /Accepted publickey/,
      "no SSH login at all",
    );
  });
});
