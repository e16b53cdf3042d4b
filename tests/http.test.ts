/**
 * The function's HTTP contract (README, "The function's requests"), called in-process: authentication,
 * refusals of bad input that change nothing, the Database Webhook payload, status, retry and removal.
 */
import assert from "node:assert/strict";
import { setFaults } from "../dev/clpctl_sim.ts";
import { createHandler } from "../supabase/functions/hosting-automator/http.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import type { ClaimedJob, Store } from "../supabase/functions/hosting-automator/store.ts";
import type {
  Invocation,
  JobOutcome,
  RunOptions,
  RunResult,
} from "../supabase/functions/hosting-automator/workflow.ts";
import { captureSink } from "./support/env.ts";
import { type Stack, withStack } from "./support/stack.ts";
import { concatBytes } from "../supabase/functions/hosting-automator/bytes.ts";

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

Deno.test("only the exact bytes of a key authenticate: Unicode white space or a near miss around it is refused", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const key = stack.serviceKey;
    const status = (headers: Record<string, string>) =>
      stack.app.fetch(new Request("http://functions.test/hosting-automator/status", { headers }));
    // Header values are byte strings: U+00A0 is the byte 0xA0; VT and FF are not HTTP white space.
    const refused: Array<Record<string, string>> = [
      { apikey: `${key}\xA0` },
      { apikey: `\xA0${key}` },
      { apikey: `${key}\x0B` },
      { apikey: `\x0C${key}` },
      { apikey: `${key}\xE2\x80\x8B` }, // a zero-width space's UTF-8 bytes
      { authorization: `Bearer \xA0${key}` },
      { authorization: `Bearer ${key}\xA0` },
      { authorization: `Bearer\xA0${key}` },
      { authorization: `Bearer${key}` },
      { authorization: `Bearer \x0B${key}` },
    ];
    for (const headers of refused) {
      const response = await status(headers);
      assert.equal(response.status, 401, JSON.stringify(headers).replaceAll(key, "<key>"));
      await response.body?.cancel();
    }
    // HTTP's optional white space (SP, HTAB) around the value is allowed, and the scheme is case-insensitive.
    const accepted: Array<Record<string, string>> = [
      { apikey: ` \t${key}\t ` },
      { authorization: `Bearer\t${key}` },
      { authorization: `bearer   ${key}` },
      { authorization: `BEARER ${key} \t` },
    ];
    for (const headers of accepted) {
      const response = await status(headers);
      assert.equal(response.status, 200, JSON.stringify(headers).replaceAll(key, "<key>"));
      await response.body?.cancel();
    }
  });
});

Deno.test("a body that breaks off or has a malformed Content-Length is the caller's error: 400, nothing changed", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("framing.example", { status_dns: "active" });
    const notDue = await stack.insertSite("framing-later.example");
    await stack.sql`update hosting_automator.jobs set run_at = now() + interval '1 hour'`;
    const before = await snapshot(stack);
    const post = (body: BodyInit, headers: Record<string, string> = {}) =>
      stack.app.fetch(
        new Request("http://functions.test/hosting-automator", {
          method: "POST",
          headers: { apikey: stack.serviceKey, "content-type": "application/json", ...headers },
          body,
        }),
      );
    const breaking = (error: unknown) =>
      new ReadableStream<Uint8Array>({
        pull(controller) {
          controller.enqueue(new TextEncoder().encode(`{"site_id": "${id}`));
          controller.error(error);
        },
      });
    const exact = JSON.stringify({ site_id: id });
    const cases: Array<[string, Promise<Response>, RegExp]> = [
      ["stream error", post(breaking(new Error("connection reset"))), /body: could not be read/],
      ["stream error (not an Error)", post(breaking("gone")), /body: could not be read/],
      [
        "shorter than Content-Length",
        post(exact, { "content-length": String(exact.length + 10) }),
        /Content-Length/,
      ],
      ["longer than Content-Length", post(exact, { "content-length": "2" }), /Content-Length/],
      ["Content-Length not a number", post(exact, { "content-length": "abc" }), /Content-Length/],
      ["Content-Length negative", post(exact, { "content-length": "-1" }), /Content-Length/],
      ["Content-Length fractional", post(exact, { "content-length": "1.5e1" }), /Content-Length/],
      [
        "Content-Length twice, differing",
        post(exact, { "content-length": `${exact.length}, ${exact.length + 1}` }),
        /Content-Length/,
      ],
    ];
    for (const [name, response, message] of cases) {
      const error = await errorOf(await response);
      assert.equal(error.status, 400, `${name}: ${error.message}`);
      assert.equal(error.code, "bad_request", name);
      assert.match(error.message, message, name);
      assert.doesNotMatch(error.message, /connection reset|gone|Error/, name);
    }
    // The same value twice is one length (RFC 9110 §8.6).
    const waiting = JSON.stringify({ site_id: notDue });
    const repeated = await post(waiting, { "content-length": `${waiting.length}, ${waiting.length}` });
    assert.equal(repeated.status, 200);
    assert.equal((await repeated.json()).reason, "not_due");
    assert.deepEqual(await snapshot(stack), before, "no request changed anything");
    assert.equal(stack.logs.filter((line) => line.includes('"level":"error"')).length, 0, "no 500 logged");
  });
});

Deno.test("over real HTTP, a client that sends less body than its Content-Length and closes gets 400, nothing changed", async () => {
  await withStack({ label: "http" }, async (stack) => {
    const id = await stack.insertSite("short-body.example", { status_dns: "active" });
    await stack.sql`update hosting_automator.jobs set run_at = now() + interval '1 hour'`;
    const before = await snapshot(stack);
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, stack.app.fetch);
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
      const partial = `{"site_id": "${id}`;
      await conn.write(new TextEncoder().encode(
        "POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: 127.0.0.1\r\n" +
          `apikey: ${stack.serviceKey}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n${partial}`,
      ));
      await conn.closeWrite(); // the client gives up sending; it can still read the answer
      const answer = new TextDecoder().decode(await readAll(conn));
      conn.close();
      const [head, body] = answer.split("\r\n\r\n");
      assert.match(head, /^HTTP\/1\.1 400 /);
      const parsed = JSON.parse(body);
      assert.equal(parsed.error.code, "bad_request");
      assert.match(parsed.error.message, /body: could not be read/);
    } finally {
      await server.shutdown();
    }
    assert.deepEqual(await snapshot(stack), before);
  });
});

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(4096);
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  return concatBytes(...chunks);
}

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

Deno.test("?wait=true answers with the jobs finished so far and those running, even without waitUntil", async () => {
  // The handler reads only these fields of a job and passes an outcome through as it is.
  const job = (n: number) =>
    ({
      jobId: n,
      leaseToken: "00000000-0000-4000-8000-000000000000",
      siteId: `00000000-0000-4000-8000-00000000000${n}`,
      domain: `site${n}.example`,
    }) as Partial<ClaimedJob> as ClaimedJob;
  const outcome = (n: number) =>
    ({
      job_id: n,
      site_id: job(n).siteId,
      domain: job(n).domain,
      status: "active",
      steps: [],
    }) as Partial<JobOutcome> as JobOutcome;
  let finish!: (result: RunResult) => void;
  const finished = new Promise<RunResult>((resolve) => finish = resolve);
  // A fake invocation: its first job finishes, its second is at the certificate step until `finish`.
  const invocation = {
    run(options: RunOptions): Promise<RunResult> {
      const progress = options.onProgress!;
      progress({ kind: "job_started", job: job(1) });
      progress({ kind: "step_started", job: job(1), step: "cloudpanel_site" });
      progress({ kind: "job_finished", job: job(1), outcome: outcome(1) });
      progress({ kind: "job_started", job: job(2) });
      progress({ kind: "step_started", job: job(2), step: "cloudpanel_site" });
      progress({ kind: "step_started", job: job(2), step: "ssl_certificate" });
      return finished;
    },
  } as unknown as Invocation;
  const logs: string[] = [];
  const handler = createHandler({
    authKeys: ["sb_secret_test"],
    logger: new Logger(new Redactor(), { sink: captureSink(logs) }),
    store: {} as Store, // a drain touches no store method in the handler
    newInvocation: () => invocation,
    waitAnswerMs: 20,
  });
  const response = await handler(
    new Request("http://functions.test/hosting-automator?wait=true", {
      method: "POST",
      headers: { apikey: "sb_secret_test" },
      body: "{}",
    }),
  );
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), {
    outcomes: [outcome(1)],
    running: [{ job_id: 2, site_id: job(2).siteId, domain: "site2.example", step: "ssl_certificate" }],
    complete: false,
  });
  assert.ok(!logs.some((line) => line.includes("invocation finished")), "the run is still going");
  finish({ outcomes: [outcome(1), outcome(2)] });
  await finished;
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.ok(logs.some((line) => line.includes('"msg":"invocation finished"')), "its end is logged");
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
