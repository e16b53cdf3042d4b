/**
 * What each route answers, in-process on the bare handler (tests/support/bare_handler.ts): the input it
 * accepts and the 400 that names what it refuses, what it asks the store, the answer it builds from the
 * store's, and the runs it starts (in the background, or for ?wait=true until the answer is due). What the
 * store's answers mean in the database is tested on the real stack (tests/http.test.ts).
 */
import assert from "node:assert/strict";
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
import {
  bareHandler,
  claimedJob,
  errorOf,
  outcomeOf,
  queued,
  siteIdOf,
  statusReport,
} from "./support/bare_handler.ts";

const NO_SITE = { status: 404, code: "not_found", message: "No site has this site_id." };

/** A run that waits for `release`, so a test can look at what happened before it ended. */
function held(result: RunResult = { outcomes: [] }) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  return { run: () => released.then(() => result), release };
}

// ---- POST / (the kick) ----

Deno.test("a kick for a site queues its job and answers 202 with it; the run goes to waitUntil, for that site first", async () => {
  const { run, release } = held({ outcomes: [outcomeOf(1)] });
  const bare = bareHandler({ store: { enqueue: () => queued(41) }, run });
  const id = siteIdOf(1);
  const response = await bare.request("", { body: { site_id: id.toUpperCase() } });
  assert.equal(response.status, 202);
  assert.equal(await response.text(), JSON.stringify({ accepted: true, site_id: id, job_id: 41 }));
  assert.deepEqual(bare.storeCalls, [{ method: "enqueue", args: [id] }], "the id in lower case");
  assert.deepEqual(bare.runs, [{ siteId: id, drain: true }], "that site's job first, then whatever is due");
  assert.equal(bare.pending.size, 1, "answered while the run goes on");
  assert.ok(!bare.logs.some((line) => line.includes("invocation finished")));
  release();
  await bare.settle();
  const finished = bare.logs.map((line) => JSON.parse(line)).find((line) =>
    line.msg === "invocation finished"
  );
  assert.deepEqual([finished.jobs, finished.active], [1, 1]);
});

Deno.test("without waitUntil a kick's run is awaited before the answer", async () => {
  let ended = false;
  const bare = bareHandler({
    waitUntil: false,
    store: { enqueue: () => queued(2) },
    run: async () => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      ended = true;
      return { outcomes: [] };
    },
  });
  const response = await bare.request("", { body: { site_id: siteIdOf(2) } });
  assert.equal(response.status, 202);
  assert.ok(ended, "the run had ended when the answer came");
  assert.ok(bare.logs.some((line) => line.includes('"msg":"invocation finished"')));
});

Deno.test("a kick for a site that is not due answers 200 with why and the site's states, and runs nothing", async () => {
  const bare = bareHandler({
    store: {
      enqueue: () => ({
        found: true,
        queued: false,
        reason: "not_due",
        status_dns: "pending",
        status_hosting: null,
      }),
    },
  });
  const id = siteIdOf(3);
  const response = await bare.request("", { body: { site_id: id } });
  assert.equal(response.status, 200);
  assert.equal(
    await response.text(),
    JSON.stringify({
      accepted: false,
      site_id: id,
      reason: "not_due",
      status_dns: "pending",
      status_hosting: null,
    }),
  );
  assert.deepEqual(bare.runs, []);
});

Deno.test("a kick for a site the store does not know is 404, and nothing runs", async () => {
  const bare = bareHandler({ store: { enqueue: () => ({ found: false }) } });
  assert.deepEqual(await errorOf(await bare.request("", { body: { site_id: siteIdOf(4) } })), NO_SITE);
  assert.deepEqual(bare.runs, []);
});

Deno.test("an empty kick drains without asking the store: 202 {accepted: true}", async () => {
  const bare = bareHandler();
  for (const body of [{}, undefined]) {
    const response = await bare.request("", { body, method: "POST" });
    assert.equal(response.status, 202);
    assert.equal(await response.text(), '{"accepted":true}');
  }
  await bare.settle();
  assert.deepEqual(bare.storeCalls, []);
  assert.deepEqual(bare.runs, [{ siteId: undefined, drain: true }, { siteId: undefined, drain: true }]);
});

Deno.test("a Database Webhook payload kicks its record's site; a DELETE is acknowledged and ignored", async () => {
  const bare = bareHandler({ store: { enqueue: () => queued(5) } });
  const id = siteIdOf(5);
  const payload = {
    type: "UPDATE",
    table: "sites",
    schema: "public",
    record: { id: id.toUpperCase(), domain: "webhook.example", status_dns: "active" },
    old_record: { id, domain: "webhook.example", status_dns: "pending" },
  };
  const variants = [
    payload,
    { ...payload, type: "INSERT", old_record: null },
    { ...payload, type: "INSERT", old_record: undefined, user_id: null },
  ];
  for (const body of variants) {
    const response = await bare.request("", { body });
    assert.equal(response.status, 202, JSON.stringify(body));
    assert.deepEqual(await response.json(), { accepted: true, site_id: id, job_id: 5 });
  }
  const deletes = [
    { ...payload, type: "DELETE", record: null },
    { ...payload, type: "DELETE" },
  ];
  for (const body of deletes) {
    const response = await bare.request("", { body });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), '{"accepted":false,"reason":"the row was deleted"}');
  }
  await bare.settle();
  assert.deepEqual(bare.storeCalls.map((c) => c.args), [[id], [id], [id]], "a DELETE asks nothing");
  assert.equal(bare.runs.length, 3);
});

Deno.test("the kick's body is one of three shapes; anything else is a 400 naming the field and the rule", async () => {
  const bare = bareHandler();
  const id = siteIdOf(6);
  const hook = (fields: Record<string, unknown>) => ({
    type: "UPDATE",
    table: "sites",
    schema: "public",
    record: { id },
    ...fields,
  });
  const expected = 'expected {"site_id": "<uuid>"}, {} or a Database Webhook payload';
  const cases: Array<[unknown, string]> = [
    [[], `body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload`],
    [null, `body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload`],
    ["x", `body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload`],
    [42, `body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload`],
    [{ site_id: "abc" }, "site_id: must be a UUID"],
    [{ site_id: `{${id}}` }, "site_id: must be a UUID"],
    [{ site_id: 7 }, "site_id: must be a UUID"],
    [{ site_id: null }, "site_id: must be a UUID"],
    [{ site_id: id, extra: 1 }, 'body: unknown field "extra"'],
    [{ site_id: id, remove: true }, 'body: unknown field "remove"'],
    [{ domain: "x.example" }, `body: unknown field "domain"; ${expected}`],
    [{ all_failed: true }, `body: unknown field "all_failed"; ${expected}`],
    [{ ["k".repeat(100)]: 1 }, `body: unknown field "${"k".repeat(40)}…"; ${expected}`],
    [hook({ table: "users" }), 'Database Webhook payload: table: must be "sites"'],
    [hook({ schema: "auth" }), 'Database Webhook payload: schema: must be "public"'],
    [hook({ record: null }), "Database Webhook payload: record: required for UPDATE"],
    [hook({ type: "INSERT", record: null }), "Database Webhook payload: record: required for INSERT"],
    [hook({ record: { id: "1" } }), "Database Webhook payload: record.id: must be a UUID"],
    [hook({ extra: true }), 'Database Webhook payload: body: unknown field "extra"'],
  ];
  for (const [body, message] of cases) {
    assert.deepEqual(
      await errorOf(await bare.request("", { body })),
      { status: 400, code: "bad_request", message },
      JSON.stringify(body),
    );
  }
  for (
    const body of [hook({ type: "TRUNCATE" }), hook({ type: "update" }), { type: "UPDATE" }, {
      record: { id },
    }]
  ) {
    const error = await errorOf(await bare.request("", { body }));
    assert.equal(error.status, 400);
    assert.match(error.message, /^Database Webhook payload: /, JSON.stringify(body));
  }
  assert.deepEqual(bare.storeCalls, []);
  assert.deepEqual(bare.runs, []);
});

Deno.test("?wait=true runs only the kicked site's job and answers 200 with the whole result", async () => {
  const bare = bareHandler({
    store: { enqueue: () => queued(7) },
    run: () =>
      Promise.resolve({ outcomes: [outcomeOf(7)], stopped: { code: "budget", message: "time is up" } }),
  });
  const id = siteIdOf(7);
  const response = await bare.request("", { body: { site_id: id }, query: "wait=true" });
  assert.equal(response.status, 200);
  assert.equal(
    await response.text(),
    JSON.stringify({
      site_id: id,
      outcomes: [outcomeOf(7)],
      stopped: { code: "budget", message: "time is up" },
      running: [],
      complete: true,
    }),
  );
  assert.equal(bare.runs.length, 1);
  const [{ onProgress, ...options }] = bare.runs;
  assert.deepEqual(options, { siteId: id, drain: false });
  assert.equal(typeof onProgress, "function", "the run reports its progress");
  assert.equal(bare.pending.size, 0, "nothing left in the background");
});

Deno.test("?wait=true with an empty kick drains and answers without a site_id", async () => {
  const bare = bareHandler({
    run: () => Promise.resolve({ outcomes: [outcomeOf(1), outcomeOf(2, "failed")] }),
  });
  const response = await bare.request("", { body: {}, query: "wait=1" });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), {
    outcomes: [outcomeOf(1), outcomeOf(2, "failed")],
    running: [],
    complete: true,
  });
  assert.equal(bare.runs[0].drain, true);
  assert.equal(bare.runs[0].siteId, undefined);
});

Deno.test("?wait= is true, 1, empty, false or 0, given once; other query parameters are ignored", async () => {
  const bare = bareHandler();
  const waits: Array<[string, number]> = [
    ["wait=true", 200],
    ["wait=1", 200],
    ["wait", 200],
    ["wait=", 200],
    ["wait=false", 202],
    ["wait=0", 202],
    ["", 202],
    ["forceFunctionRegion=eu-central-1&x&wait=true", 200],
    ["x=1&&=&%%&a[]=b", 202],
  ];
  for (const [query, status] of waits) {
    const response = await bare.request("", { body: {}, query });
    assert.equal(response.status, status, query);
    await response.body?.cancel();
  }
  const refused = bareHandler();
  const cases: Array<[string, string, string]> = [
    ["", "wait=maybe", "wait: must be true or false"],
    ["", "wait=TRUE", "wait: must be true or false"],
    ["", "wait=yes", "wait: must be true or false"],
    ["", "wait=true&wait=false", "wait: given more than once"],
    ["/retry", "wait=yes", "wait: must be true or false"],
    ["/remove", "wait=true&wait=true", "wait: given more than once"],
  ];
  for (const [path, query, message] of cases) {
    assert.deepEqual(
      await errorOf(await refused.request(path, { body: { site_id: siteIdOf(1) }, query })),
      { status: 400, code: "bad_request", message },
      `${path} ${query}`,
    );
  }
  assert.deepEqual(refused.storeCalls, [], "?wait= is checked before the store is asked");
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

Deno.test("a ?wait=true answer that is due before the run ends hands the rest to waitUntil; a job not yet at a step shows step null", async () => {
  const { run: finish, release } = held({ outcomes: [outcomeOf(8)] });
  const bare = bareHandler({
    store: { enqueue: () => queued(8) },
    waitAnswerMs: 20,
    run: (options) => {
      options.onProgress!({ kind: "job_started", job: claimedJob(8) });
      return finish();
    },
  });
  const response = await bare.request("", { body: { site_id: siteIdOf(8) }, query: "wait=true" });
  assert.deepEqual(await response.json(), {
    site_id: siteIdOf(8),
    outcomes: [],
    running: [{ job_id: 8, site_id: siteIdOf(8), domain: "site8.example", step: null }],
    complete: false,
  });
  assert.equal(bare.pending.size, 1, "the run goes on under waitUntil");
  release();
  await bare.settle();
  assert.ok(bare.logs.some((line) => line.includes('"msg":"invocation finished"')));
});

Deno.test("a run that fails in the background is logged as an error; the 202 was already sent", async () => {
  const bare = bareHandler({
    store: { enqueue: () => queued(9) },
    run: () => Promise.reject(new Error("the pool is closed")),
  });
  const response = await bare.request("", { body: { site_id: siteIdOf(9) } });
  assert.equal(response.status, 202);
  await response.body?.cancel();
  await bare.settle();
  const failed = bare.logs.map((line) => JSON.parse(line)).filter((line) => line.level === "error");
  assert.deepEqual(failed.map((line) => [line.msg, line.error.code]), [["invocation failed", "internal"]]);
});

// ---- GET /status ----

Deno.test("GET /status answers the store's report as it is", async () => {
  const bare = bareHandler({ store: { status: statusReport } });
  const response = await bare.request("/status", { query: "verbose=1" });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "application/json; charset=utf-8");
  assert.equal(await response.text(), JSON.stringify(statusReport()));
  assert.deepEqual(bare.storeCalls, [{ method: "status", args: [] }]);
  assert.deepEqual(bare.runs, []);
});

// ---- POST /retry ----

const requeued = (n: number) => ({ site_id: siteIdOf(n), domain: `site${n}.example`, reason: "failed" });
const skipped = (n: number) => ({
  site_id: siteIdOf(n),
  domain: `site${n}.example`,
  status_hosting: "active",
});

Deno.test("POST /retry asks the store for one site or for every failed one, and answers what it re-queued and skipped", async () => {
  const bare = bareHandler({
    store: {
      retry: (target) =>
        "siteId" in target
          ? { found: true, requeued: [], skipped: [skipped(1)] }
          : { found: true, requeued: [], skipped: [] },
    },
  });
  const one = await bare.request("/retry", { body: { site_id: siteIdOf(1).toUpperCase() } });
  assert.equal(one.status, 200);
  assert.equal(await one.text(), JSON.stringify({ requeued: [], skipped: [skipped(1)] }));
  const all = await bare.request("/retry", { body: { all_failed: true }, query: "wait=true" });
  assert.equal(await all.text(), '{"requeued":[],"skipped":[]}', "nothing re-queued: nothing to wait for");
  assert.deepEqual(bare.storeCalls.map((c) => c.args), [[{ siteId: siteIdOf(1) }], [{ allFailed: true }]]);
  assert.deepEqual(bare.runs, [], "nothing re-queued, nothing run");
});

Deno.test("POST /retry that re-queued jobs runs them under waitUntil; without it they wait for the database's kick", async () => {
  const answer = { found: true, requeued: [requeued(1)], skipped: [skipped(2)] };
  const withWaitUntil = bareHandler({ store: { retry: () => answer } });
  const response = await withWaitUntil.request("/retry", { body: { all_failed: true } });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), JSON.stringify({ requeued: [requeued(1)], skipped: [skipped(2)] }));
  await withWaitUntil.settle();
  assert.deepEqual(withWaitUntil.runs, [{ drain: true }]);

  const without = bareHandler({ waitUntil: false, store: { retry: () => answer } });
  const alone = await without.request("/retry", { body: { all_failed: true } });
  assert.equal(await alone.text(), JSON.stringify({ requeued: [requeued(1)], skipped: [skipped(2)] }));
  assert.deepEqual(without.runs, []);
});

Deno.test("POST /retry?wait=true answers what it re-queued with the run's result", async () => {
  const bare = bareHandler({
    store: { retry: () => ({ found: true, requeued: [requeued(1)], skipped: [] }) },
    run: () => Promise.resolve({ outcomes: [outcomeOf(1)] }),
  });
  const response = await bare.request("/retry", { body: { site_id: siteIdOf(1) }, query: "wait=true" });
  assert.equal(
    await response.text(),
    JSON.stringify({
      requeued: [requeued(1)],
      skipped: [],
      outcomes: [outcomeOf(1)],
      running: [],
      complete: true,
    }),
  );
  assert.equal(bare.runs.length, 1);
  assert.equal(bare.runs[0].drain, true);
});

Deno.test("POST /retry of a site the store does not know is 404; a body of another shape is 400", async () => {
  const bare = bareHandler({ store: { retry: () => ({ found: false, requeued: [], skipped: [] }) } });
  assert.deepEqual(await errorOf(await bare.request("/retry", { body: { site_id: siteIdOf(3) } })), NO_SITE);
  const refused = bareHandler();
  const expected = 'body: expected {"site_id": "<uuid>"} or {"all_failed": true}';
  const bodies: unknown[] = [
    {},
    undefined,
    { site_id: siteIdOf(1), all_failed: true },
    { all_failed: false },
    { all_failed: "true" },
    { all_failed: 1 },
    { all_failed: null },
    { site_id: "x" },
    { all_failed: true, x: 1 },
    [{ all_failed: true }],
    null,
  ];
  for (const body of bodies) {
    const response = await refused.request("/retry", { body, method: "POST" });
    assert.deepEqual(
      await errorOf(response),
      { status: 400, code: "bad_request", message: expected },
      `${body}`,
    );
  }
  assert.deepEqual(refused.storeCalls, []);
});

// ---- POST /remove ----

Deno.test("POST /remove of a site whose removal is open runs it like a kick: 202, or 200 with ?wait=true", async () => {
  for (const job_state of ["queued", "running"]) {
    const bare = bareHandler({
      store: {
        remove: () => ({ found: true, status_hosting: "removing", queued: true, job_id: 12, job_state }),
      },
      run: () => Promise.resolve({ outcomes: [outcomeOf(12, "removed")] }),
    });
    const id = siteIdOf(12);
    const accepted = await bare.request("/remove", { body: { site_id: id.toUpperCase() } });
    assert.equal(accepted.status, 202, job_state);
    assert.equal(await accepted.text(), JSON.stringify({ accepted: true, site_id: id, job_id: 12 }));
    const waited = await bare.request("/remove", { body: { site_id: id }, query: "wait=true" });
    assert.equal(waited.status, 200);
    assert.deepEqual(await waited.json(), {
      site_id: id,
      outcomes: [outcomeOf(12, "removed")],
      running: [],
      complete: true,
    });
    await bare.settle();
    assert.deepEqual(bare.storeCalls.map((c) => [c.method, c.args]), [["remove", [id]], ["remove", [id]]]);
    assert.deepEqual(bare.runs.map(({ siteId, drain }) => ({ siteId, drain })), [
      { siteId: id, drain: true },
      { siteId: id, drain: false },
    ]);
  }
});

Deno.test("POST /remove with no removal open answers 200 and why, naming a finished job; nothing runs", async () => {
  const id = siteIdOf(13);
  const cases: Array<[Parameters<typeof bareHandler>[0], Record<string, unknown>]> = [
    [
      {
        store: {
          remove: () => ({
            found: true,
            status_hosting: "removed",
            queued: false,
            reason: "nothing_to_remove",
          }),
        },
      },
      { accepted: false, site_id: id, reason: "nothing_to_remove", status_hosting: "removed" },
    ],
    [
      {
        store: {
          remove: () => ({
            found: true,
            status_hosting: null,
            queued: false,
            reason: "row_deleted",
            job_id: 4,
            job_state: "succeeded",
          }),
        },
      },
      {
        accepted: false,
        site_id: id,
        reason: "row_deleted",
        status_hosting: null,
        job_id: 4,
        job_state: "succeeded",
      },
    ],
    [
      {
        store: {
          remove: () => ({
            found: true,
            status_hosting: "removing",
            queued: false,
            job_id: 5,
            job_state: "failed",
          }),
        },
      },
      {
        accepted: false,
        site_id: id,
        reason: "not_queued",
        status_hosting: "removing",
        job_id: 5,
        job_state: "failed",
      },
    ],
    [
      { store: { remove: () => ({ found: true, status_hosting: "removing", queued: false }) } },
      { accepted: false, site_id: id, reason: "not_queued", status_hosting: "removing" },
    ],
  ];
  for (const [options, expected] of cases) {
    const bare = bareHandler(options);
    const response = await bare.request("/remove", { body: { site_id: id }, query: "wait=true" });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), JSON.stringify(expected), "the fields in this order");
    assert.deepEqual(bare.runs, []);
  }
});

Deno.test('POST /remove of a site the store does not know is 404; it takes {"site_id"} only', async () => {
  const bare = bareHandler({ store: { remove: () => ({ found: false }) } });
  assert.deepEqual(
    await errorOf(await bare.request("/remove", { body: { site_id: siteIdOf(14) } })),
    NO_SITE,
  );
  assert.deepEqual(bare.runs, []);

  const refused = bareHandler();
  const id = siteIdOf(15);
  const expected = 'body: expected {"site_id": "<uuid>"}';
  const cases: Array<[unknown, string]> = [
    [undefined, expected],
    [{}, expected],
    [{ all_failed: true }, expected],
    [{ domain: "x.example" }, expected],
    [[{ site_id: id }], expected],
    [null, expected],
    [id, expected],
    [{ type: "DELETE", table: "sites", schema: "public", record: null, old_record: { id } }, expected],
    [{ site_id: "x.example" }, "site_id: must be a UUID"],
    [{ site_id: null }, "site_id: must be a UUID"],
    [{ site_id: [id] }, "site_id: must be a UUID"],
    [{ site_id: `${id}\u00A0` }, "site_id: must be a UUID"],
    [{ site_id: id, force: true }, 'body: unknown field "force"'],
    [{ site_id: id, site_ids: [id] }, 'body: unknown field "site_ids"'],
  ];
  for (const [body, message] of cases) {
    assert.deepEqual(
      await errorOf(await refused.request("/remove", { body, method: "POST" })),
      { status: 400, code: "bad_request", message },
      JSON.stringify(body),
    );
  }
  assert.deepEqual(refused.storeCalls, []);
  assert.deepEqual(refused.runs, []);
});
