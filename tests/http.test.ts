/**
 * The function's HTTP contract (design §5), called in-process: authentication, refusals of bad input that
 * change nothing, the Database Webhook payload, status and retry.
 */
import assert from "node:assert/strict";
import { type Stack, withStack } from "./support/stack.ts";

/** Everything a refused request must leave untouched. */
async function snapshot(stack: Stack) {
  const [row] = await stack.sql`select
    (select count(*)::int from hosting_automator.jobs) as jobs,
    (select count(*)::int from hosting_automator.events) as events,
    (select count(*)::int from hosting_automator.steps) as steps,
    (select count(*)::int from net.http_request_queue) as kicks,
    (select string_agg(status_hosting, ',' order by id) from public.sites) as statuses`;
  return { ...row, calls: (await stack.simState()).calls.length };
}

async function errorOf(response: Response) {
  const body = await response.json();
  return { status: response.status, code: body.error?.code, message: body.error?.message as string };
}

Deno.test("missing or wrong credentials are refused with 401 and change nothing", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("auth.example");
    await stack.sql`update hosting_automator.jobs set run_at = now() + interval '1 hour'`;
    const before = await snapshot(stack);
    const attempts = [
      stack.request("", { body: { site_id: id }, key: null }),
      stack.request("", { body: { site_id: id }, key: "sb_secret_wrong" }),
      stack.request("", { body: { site_id: id }, key: stack.serviceKey.slice(0, -1) }),
      stack.request("/status", { key: null }),
      stack.request("/retry", { body: { all_failed: true }, key: "" }),
      stack.app.fetch(
        new Request("http://functions.test/hosting-automator", {
          method: "POST",
          headers: { authorization: "Basic " + btoa(`x:${stack.serviceKey}`) },
          body: "{}",
        }),
      ),
    ];
    for (const response of await Promise.all(attempts)) {
      assert.deepEqual(await errorOf(response), {
        status: 401,
        code: "unauthorized",
        message: "Missing or wrong credentials.",
      });
    }
    assert.deepEqual(await snapshot(stack), before);
  });
});

Deno.test("the key is accepted on the apikey header or as a Bearer token", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const bearer = await stack.app.fetch(
      new Request("http://functions.test/hosting-automator/status", {
        headers: { authorization: `Bearer ${stack.serviceKey}` },
      }),
    );
    assert.equal(bearer.status, 200);
    assert.equal((await stack.request("/status")).status, 200);
  });
});

Deno.test("malformed, unknown and oversized bodies are refused with 400 or 413, name the problem, and change nothing", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("input.example", { status_dns: "active" });
    const before = await snapshot(stack);
    const cases: Array<[Promise<Response>, number, RegExp]> = [
      [stack.request("", { rawBody: "{not json" }), 400, /not valid JSON/],
      [stack.request("", { body: [] }), 400, /expected a JSON object/],
      [stack.request("", { body: { site_id: "not-a-uuid" } }), 400, /site_id: must be a UUID/],
      [stack.request("", { body: { site_id: id, extra: 1 } }), 400, /unknown field "extra"/],
      [stack.request("", { body: { domain: "x.example" } }), 400, /unknown field "domain"/],
      [
        stack.request("", { body: { type: "UPDATE", table: "users", schema: "public", record: { id } } }),
        400,
        /table: must be "sites"/,
      ],
      [
        stack.request("", { body: { type: "TRUNCATE", table: "sites", schema: "public", record: null } }),
        400,
        /type:/,
      ],
      [stack.request("", { body: {}, query: "wait=maybe" }), 400, /wait: must be true or false/],
      [
        stack.request("/retry", { body: {} }),
        400,
        /expected \{"site_id": "<uuid>"\} or \{"all_failed": true\}/,
      ],
      [stack.request("/retry", { body: { all_failed: false } }), 400, /all_failed/],
      [
        stack.request("", { rawBody: JSON.stringify({ site_id: id, pad: "x".repeat(70_000) }) }),
        413,
        /larger than 65536 bytes/,
      ],
    ];
    for (const [response, status, message] of cases) {
      const error = await errorOf(await response);
      assert.equal(error.status, status, error.message);
      assert.match(error.message, message);
    }
    // A body streamed without a length is cut off at the limit too.
    const stream = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 100; i++) controller.enqueue(new TextEncoder().encode(" ".repeat(1024)));
        controller.close();
      },
    });
    const streamed = await stack.app.fetch(
      new Request("http://functions.test/hosting-automator", {
        method: "POST",
        headers: { apikey: stack.serviceKey },
        body: stream,
      }),
    );
    assert.equal(streamed.status, 413);
    await streamed.body?.cancel();
    assert.deepEqual(await snapshot(stack), before, "no refused request changed anything");
  });
});

Deno.test("unknown routes, unknown sites and wrong methods answer 404 and 405", async () => {
  await withStack({ label: "http" }, async (stack) => {
    assert.equal((await errorOf(await stack.request("/nope"))).status, 404);
    const unknownSite = await errorOf(await stack.request("", { body: { site_id: crypto.randomUUID() } }));
    assert.deepEqual(unknownSite, { status: 404, code: "not_found", message: "No site has this site_id." });
    const wrong = await stack.request("/status", { method: "POST", body: {} });
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get("allow"), "GET");
    await wrong.body?.cancel();
    assert.equal((await stack.request("", { method: "GET" })).status, 405);
  });
});

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
