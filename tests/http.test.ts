/**
 * The function's HTTP contract (docs/http.md) on the real stack, called in-process: the
 * Database Webhook payload, a kick of a site that is not due, status, retry, ?wait=true on a slow server, and
 * removal, each with what it does in the database and on the servers. Authentication, bodies, routes and each
 * route's answers are tested on the bare handler with fakes (tests/http_*.test.ts); hostile input on the real
 * stack in tests/hostile_http.test.ts.
 */
import assert from "node:assert/strict";
import { setFaults } from "../dev/clpctl_sim.ts";
import { withStack } from "./support/stack.ts";

async function errorOf(response: Response) {
  const body = await response.json();
  return { status: response.status, code: body.error?.code, message: body.error?.message as string };
}

Deno.test("a Database Webhook payload provisions its record's site; a DELETE is acknowledged and ignored", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("webhook.example");
    await stack.sql`update public.sites set status_dns = 'active' where id = ${id}`;
    await stack.sql`delete from net.http_request_queue`;
    const payload = {
      type: "UPDATE",
      table: "sites",
      schema: "public",
      record: { id, domain: "webhook.example", status_dns: "active", status_hosting: "pending" },
      old_record: { id, domain: "webhook.example", status_dns: "pending", status_hosting: "pending" },
    };
    const response = await stack.request("", { body: payload, query: "wait=true" });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.outcomes[0].site_id, id);
    assert.equal(body.outcomes[0].status, "active");
    assert.equal(body.complete, true, "the run finished before the answer was due");
    assert.deepEqual(body.running, []);
    const deleted = await stack.request("", { body: { ...payload, type: "DELETE", record: null } });
    assert.deepEqual(await deleted.json(), { accepted: false, reason: "the row was deleted" });
  });
});

Deno.test("a site whose DNS is not active is not provisioned by a kick, and the answer says why", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("not-yet.example");
    const response = await stack.request("", { body: { site_id: id } });
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      accepted: false,
      site_id: id,
      reason: "not_due",
      status_dns: "pending",
      status_hosting: "pending",
    });
    assert.equal((await stack.simState()).calls.length, 0);
  });
});

Deno.test("GET /status reports counts, queue, failures and sites missing analytics", async () => {
  await withStack({ label: "http" }, async (stack) => {
    await stack.insertSite("waiting.example");
    const ok = await stack.insertSite("ok.example", { status_dns: "active" });
    const bad = await stack.insertSite("bad domain.example", { status_dns: "active" });
    await stack.request("", { body: {}, query: "wait=true" });
    const status = await (await stack.request("/status")).json();
    assert.equal(status.sites.active, 1);
    assert.equal(status.sites.failed, 1);
    assert.equal(status.sites.pending, 1);
    assert.equal(status.queue.depth, 0);
    assert.deepEqual(status.running, []);
    assert.equal(status.recent_failures.length, 1);
    assert.equal(status.recent_failures[0].site_id, bad);
    assert.match(status.recent_failures[0].error_message, /^The domain is invalid/);
    assert.equal(status.recent_failures[0].code, "invalid_domain");
    assert.deepEqual(status.missing_analytics, []);
    assert.equal((await stack.site(ok)).status_hosting, "active");
  });
});

Deno.test("POST /retry with all_failed re-queues failed sites; unknown site ids are 404", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("retry-me.example", { status_dns: "active" });
    stack.matomo!.fail({ kind: "error" });
    // Make the first attempt fail permanently: an orphan user blocks the site.
    const { addOrphanUser, removeUser } = await import("../dev/clpctl_sim.ts");
    const { siteUserFor } = await import("../supabase/functions/hosting-automator/domain.ts");
    const user = siteUserFor("retry-me.example" as Parameters<typeof siteUserFor>[0]);
    await addOrphanUser(stack.clpctlState, user);
    await stack.request("", { body: {}, query: "wait=true" });
    assert.equal((await stack.site(id)).status_hosting, "failed");

    // The operator removes the orphan user on the server, then retries everything that failed.
    await removeUser(stack.clpctlState, user);
    stack.matomo!.clearFaults();
    const retried = await (await stack.request("/retry", { body: { all_failed: true }, query: "wait=true" }))
      .json();
    assert.deepEqual(retried.requeued.map((r: { site_id: string }) => r.site_id), [id]);
    assert.equal(retried.outcomes[0].status, "active");
    assert.equal((await stack.site(id)).status_hosting, "active");

    const missing = await errorOf(await stack.request("/retry", { body: { site_id: crypto.randomUUID() } }));
    assert.equal(missing.status, 404);
  });
});

Deno.test("?wait=true on a slow server answers in time with what is running, complete false; the job finishes in the background", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("slow.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    // The first command (clpctl site:add:static) takes 2.5 s; the answer is due after 0.4 s.
    await setFaults(stack.clpctlState, { hang: 1, hangMs: 2_500 });
    const handler = stack.handler({ waitAnswerMs: 400 });
    const started = performance.now();
    const response = await handler(
      new Request("http://functions.test/hosting-automator?wait=true", {
        method: "POST",
        headers: { apikey: stack.serviceKey, "content-type": "application/json" },
        body: JSON.stringify({ site_id: id }),
      }),
    );
    const elapsed = performance.now() - started;
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.ok(elapsed < 2_000, `answered after ${Math.round(elapsed)} ms, before the command ended`);
    assert.equal(body.complete, false);
    assert.equal(body.site_id, id);
    assert.deepEqual(body.outcomes, []);
    assert.equal(body.running.length, 1);
    const [running] = body.running;
    assert.equal(running.site_id, id);
    assert.equal(running.domain, "slow.example");
    assert.equal(running.step, "cloudpanel_site");
    assert.equal(typeof running.job_id, "number");
    assert.equal((await stack.site(id)).status_hosting, "provisioning");

    await stack.settle();
    assert.equal((await stack.site(id)).status_hosting, "active", "the run went on after the answer");
    assert.ok(stack.logs.some((line) => line.includes('"msg":"invocation finished"')));
  });
});

// ---- POST /remove ----

/** Matomo keeps at least one site: with this one registered first, a removed site's analytics can be deleted. */
const OTHER_MATOMO_SITE = { sites: [{ name: "Hub", urls: "https://hub.example" }] };
/** Removals delete the Matomo site too (the default keeps its analytics). */
const DELETE_ANALYTICS = { MATOMO_ON_REMOVE: "delete" };

Deno.test("POST /remove answers 202 and the removal runs: the CloudPanel site is deleted, the analytics kept by default, the row kept as removed", async () => {
  await withStack({ label: "http_remove", matomo: OTHER_MATOMO_SITE }, async (stack) => {
    const id = await stack.insertSite("gone.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    const built = await (await stack.request("", { body: { site_id: id }, query: "wait=true" })).json();
    assert.equal(built.outcomes[0].status, "active");
    const matomoId = (await stack.site(id)).matomo_site_id;
    assert.ok((await stack.simState()).sites["gone.example"], "the site exists on CloudPanel");
    assert.ok(stack.matomo!.sites.some((s) => s.idsite === matomoId), "and in Matomo");

    const response = await stack.request("/remove", { body: { site_id: id } });
    assert.equal(response.status, 202);
    const answer = await response.json();
    assert.deepEqual({ ...answer, job_id: typeof answer.job_id }, {
      accepted: true,
      site_id: id,
      job_id: "number",
    });
    await stack.settle();
    const row = await stack.site(id);
    assert.deepEqual(
      [row.status_hosting, row.hosting_doc_root, row.matomo_site_id, row.error_message],
      ["removed", null, null, null],
    );
    const [job] = await stack.sql`select kind, state from hosting_automator.jobs where id = ${answer.job_id}`;
    assert.deepEqual({ ...job }, { kind: "remove", state: "succeeded" });
    const sim = await stack.simState();
    assert.equal(sim.sites["gone.example"], undefined, "the CloudPanel site is gone");
    assert.equal(
      sim.calls.filter((c) => c.verb === "site:delete" && c.domainName === "gone.example").length,
      1,
    );
    assert.ok(stack.matomo!.sites.some((s) => s.idsite === matomoId), "the analytics are kept");
    const matomoEvent = (await stack.events(id)).find((e) => e.step === "matomo_site_delete");
    assert.equal(matomoEvent?.code, "matomo_kept");

    // Asked again: nothing is left on the servers, and no command is sent.
    const again = await stack.request("/remove", { body: { site_id: id.toUpperCase() } });
    assert.equal(again.status, 200);
    assert.deepEqual(await again.json(), {
      accepted: false,
      site_id: id,
      reason: "nothing_to_remove",
      status_hosting: "removed",
    });
    await stack.settle();
    assert.equal((await stack.simState()).calls.length, sim.calls.length);
  });
});

Deno.test("POST /remove?wait=true of a deleted row runs its queued removal and answers with the outcome; asked again, it names the finished job", async () => {
  await withStack(
    { label: "http_remove", matomo: OTHER_MATOMO_SITE, env: DELETE_ANALYTICS },
    async (stack) => {
      const id = await stack.insertSite("deleted-row.example", { status_dns: "active" });
      await stack.request("", { body: { site_id: id }, query: "wait=true" });
      assert.equal((await stack.site(id)).status_hosting, "active");
      // The Hub deletes the row: its removal is queued (and the kick it rings is not delivered here).
      await stack.sql`delete from public.sites where id = ${id}`;
      await stack.sql`delete from net.http_request_queue`;

      const response = await stack.request("/remove", { body: { site_id: id }, query: "wait=true" });
      assert.equal(response.status, 200);
      const body = await response.json();
      assert.equal(body.site_id, id);
      assert.equal(body.complete, true);
      assert.deepEqual(body.running, []);
      assert.equal(body.outcomes.length, 1);
      const [outcome] = body.outcomes;
      assert.deepEqual(
        [outcome.site_id, outcome.kind, outcome.status, outcome.domain],
        [id, "remove", "removed", "deleted-row.example"],
      );
      assert.deepEqual(
        outcome.steps.map((s: { step: string; status: string }) => [s.step, s.status]),
        [["cloudpanel_site_delete", "done"], ["matomo_site_delete", "done"]],
      );
      assert.equal((await stack.simState()).sites["deleted-row.example"], undefined);
      assert.deepEqual(stack.matomo!.sites.map((s) => s.main_url), ["https://hub.example"], "only the Hub's");

      const again = await stack.request("/remove", { body: { site_id: id } });
      assert.equal(again.status, 200);
      assert.deepEqual(await again.json(), {
        accepted: false,
        site_id: id,
        reason: "row_deleted",
        status_hosting: null,
        job_id: outcome.job_id,
        job_state: "succeeded",
      });
    },
  );
});

Deno.test("POST /remove of a site nothing was made for answers 200 nothing_to_remove and sends no command; an unknown site is 404", async () => {
  await withStack({ label: "http_remove" }, async (stack) => {
    const id = await stack.insertSite("never-built.example");
    const response = await stack.request("/remove", { body: { site_id: id } });
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      accepted: false,
      site_id: id,
      reason: "nothing_to_remove",
      status_hosting: "removed",
    });
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.ok((await stack.events(id)).some((e) => e.code === "site_removed"));
    const [{ jobs }] = await stack.sql`select count(*)::int as jobs from hosting_automator.jobs
      where site_id = ${id} and kind = 'remove'`;
    assert.equal(jobs, 0, "no removal job was queued");

    const unknown = await errorOf(await stack.request("/remove", { body: { site_id: crypto.randomUUID() } }));
    assert.deepEqual(unknown, { status: 404, code: "not_found", message: "No site has this site_id." });
    await stack.settle();
    assert.equal((await stack.simState()).calls.length, 0);
  });
});

Deno.test("a removal that fails for good leaves the row removing: /status lists it, /remove answers not_queued, /retry runs it again", async () => {
  // Matomo refuses to delete its only site: the removal's Matomo step fails for good.
  await withStack({ label: "http_remove", env: DELETE_ANALYTICS }, async (stack) => {
    const id = await stack.insertSite("stuck.example", { status_dns: "active" });
    await stack.request("", { body: { site_id: id }, query: "wait=true" });
    assert.equal(stack.matomo!.sites.length, 1);

    const failed = await (await stack.request("/remove", { body: { site_id: id }, query: "wait=true" }))
      .json();
    assert.equal(failed.outcomes[0].status, "failed");
    assert.equal(failed.outcomes[0].error.code, "matomo_only_site");
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "removing");
    assert.match(row.error_message ?? "", /only site registered in Matomo/);
    assert.equal((await stack.simState()).sites["stuck.example"], undefined, "CloudPanel's part is done");

    const status = await (await stack.request("/status")).json();
    assert.deepEqual(
      {
        ...status.removals,
        failed: status.removals.failed.map((f: Record<string, unknown>) => [f.site_id, f.row, f.code]),
      },
      { queued: 0, running: 0, removed_last_day: 0, failed: [[id, "kept", "matomo_only_site"]] },
    );

    const notQueued = await stack.request("/remove", { body: { site_id: id } });
    assert.equal(notQueued.status, 200);
    assert.deepEqual(await notQueued.json(), {
      accepted: false,
      site_id: id,
      reason: "not_queued",
      status_hosting: "removing",
    });

    // The operator adds another site in Matomo, then retries: the removal resumes at its Matomo step.
    stack.matomo!.addExistingSite({ name: "Hub", urls: "https://hub.example" });
    const calls = (await stack.simState()).calls.length;
    const retried = await (await stack.request("/retry", { body: { site_id: id }, query: "wait=true" }))
      .json();
    assert.deepEqual(retried.requeued, [{ site_id: id, domain: "stuck.example", reason: "removal_failed" }]);
    assert.equal(retried.outcomes[0].status, "removed");
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.equal(
      (await stack.simState()).calls.length,
      calls,
      "the finished CloudPanel step was not repeated",
    );
    const after = await (await stack.request("/status")).json();
    assert.deepEqual([after.removals.removed_last_day, after.removals.failed], [1, []]);
  });
});
