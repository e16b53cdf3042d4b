/**
 * Routes, methods and the error answers, in-process on the bare handler (tests/support/bare_handler.ts): which
 * paths reach which route under each prefix a caller uses, the 404 and 405 answers, failures of the store or
 * of the handler itself as 503/500 with the public text only, one log line per request, and the handler that
 * answers a configuration error.
 */
import assert from "node:assert/strict";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { configErrorHandler } from "../supabase/functions/hosting-automator/http.ts";
import { ROUTES } from "../supabase/functions/hosting-automator/http_routes.ts";
import { bareHandler, errorOf, FUNCTION_URL, KEY, statusReport } from "./support/bare_handler.ts";

const NOT_FOUND = '{"error":{"code":"not_found","message":"Not found."}}';
const METHOD_NOT_ALLOWED = '{"error":{"code":"method_not_allowed","message":"Method not allowed."}}';
const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];

/** A handler that answers every route: the path a request reached shows in the store method it called. */
function answering() {
  return bareHandler({
    store: {
      enqueue: () => ({ found: false }),
      status: statusReport,
      retry: () => ({ found: true, requeued: [], skipped: [] }),
      remove: () => ({ found: false }),
    },
  });
}

Deno.test("unknown routes, unknown sites and wrong methods answer 404 and 405", async () => {
  const bare = answering();
  assert.equal((await errorOf(await bare.request("/nope"))).status, 404);
  const unknownSite = await errorOf(await bare.request("", { body: { site_id: crypto.randomUUID() } }));
  assert.deepEqual(unknownSite, { status: 404, code: "not_found", message: "No site has this site_id." });
  const wrong = await bare.request("/status", { method: "POST", body: {} });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get("allow"), "GET");
  await wrong.body?.cancel();
  assert.equal((await bare.request("", { method: "GET" })).status, 405);
});

Deno.test("each route answers its one method; any other is 405 naming it, before the body or the store", async () => {
  const bare = answering();
  for (const [name, { path, method: allowed }] of Object.entries(ROUTES)) {
    for (const method of METHODS.filter((m) => m !== allowed)) {
      const body = method === "GET" || method === "HEAD" ? undefined : "{not json";
      const response = await bare.handler(
        new Request(`${FUNCTION_URL}${path}`, { method, headers: { apikey: KEY }, body }),
      );
      const where = `${method} ${path || "/"} (${name})`;
      assert.equal(response.status, 405, where);
      assert.equal(response.headers.get("allow"), allowed, where);
      assert.equal(response.headers.get("content-type"), "application/json; charset=utf-8", where);
      assert.equal(await response.text(), METHOD_NOT_ALLOWED, where);
    }
  }
  assert.deepEqual(bare.storeCalls, []);
  assert.deepEqual(bare.runs, []);
});

Deno.test("every prefix a caller uses reaches the same routes: Supabase's, the local server's, or none", async () => {
  const bare = answering();
  const id = crypto.randomUUID();
  const prefixes = ["/functions/v1/hosting-automator", "/hosting-automator", ""];
  for (const prefix of prefixes) {
    for (const slash of ["", "/", "//"]) {
      const at = (path: string) => `http://functions.test${prefix}${path}${slash}`;
      const status = await bare.handler(new Request(at("/status"), { headers: { apikey: KEY } }));
      assert.equal(status.status, 200, at("/status"));
      assert.deepEqual(await status.json(), statusReport());
      const post = (path: string, body: unknown) =>
        bare.handler(
          new Request(at(path), { method: "POST", headers: { apikey: KEY }, body: JSON.stringify(body) }),
        );
      // The store's answer tells which route ran: a kick and a removal of an unknown site are 404 alike.
      const before = bare.storeCalls.length;
      assert.equal((await post("/retry", { all_failed: true })).status, 200, at("/retry"));
      assert.equal((await post("/remove", { site_id: id })).status, 404, at("/remove"));
      assert.equal((await post("", { site_id: id })).status, 404, at(""));
      assert.deepEqual(
        bare.storeCalls.slice(before).map((c) => c.method),
        ["retry", "remove", "enqueue"],
        `${prefix}…${slash}`,
      );
    }
  }
  // The bare origin is the kick route too.
  const root = await bare.handler(
    new Request("http://functions.test", { method: "POST", headers: { apikey: KEY }, body: "{}" }),
  );
  assert.equal(root.status, 202);
  assert.equal(await root.text(), '{"accepted":true}');
});

Deno.test("paths that are not a route are 404 with the same body, whatever their method", async () => {
  const bare = answering();
  const paths = [
    "/nope",
    "/status/extra",
    "/Status",
    "/RETRY",
    "/REMOVE",
    "/retry/all",
    `/remove/${crypto.randomUUID()}`,
    "//status",
    "/status%2F",
    "%2Fstatus",
    "-evil/status",
    "/status;x",
    "/status%00",
    "/stätus",
    `/${"a".repeat(10_000)}`,
  ];
  for (const path of paths) {
    for (const method of ["GET", "POST"]) {
      const response = await bare.handler(
        new Request(`${FUNCTION_URL}${path}`, { method, headers: { apikey: KEY } }),
      );
      assert.equal(response.status, 404, `${method} ${path.slice(0, 40)}`);
      assert.equal(response.headers.get("allow"), null);
      assert.equal(await response.text(), NOT_FOUND, path.slice(0, 40));
    }
  }
  const doubled = await bare.handler(
    new Request("http://functions.test/functions/v1//hosting-automator/status", { headers: { apikey: KEY } }),
  );
  assert.equal(doubled.status, 404);
  await doubled.body?.cancel();
  assert.deepEqual(bare.storeCalls, []);
});

Deno.test("dot segments resolve before the route is chosen, as the URL parser resolves them", async () => {
  const bare = answering();
  for (const path of ["/x/../status", "/x/%2e%2e/status", "/./status"]) {
    const response = await bare.request(path);
    assert.equal(response.status, 200, path);
    await response.body?.cancel();
  }
  const climbed = await bare.request("/status/..");
  assert.equal(climbed.status, 405, "climbs to the kick route, which takes POST");
  assert.equal(climbed.headers.get("allow"), "POST");
  await climbed.body?.cancel();
});

Deno.test("a store that cannot be reached is 503 and any other failure 500, with the public text only; the detail is logged", async () => {
  const secretDetail = "connect ECONNREFUSED 10.0.0.7:5432";
  const failing = bareHandler({
    store: {
      status: () => {
        throw new HostingError("store_failed", `hosting_status failed: ${secretDetail}`);
      },
      enqueue: () => {
        throw new TypeError("cannot read properties of undefined (reading 'job_id')");
      },
    },
  });
  const unreachable = await failing.request("/status");
  assert.equal(unreachable.status, 503);
  assert.equal(
    await unreachable.text(),
    '{"error":{"code":"store_failed","message":"The database could not be reached."}}',
  );
  const broken = await failing.request("", { body: { site_id: crypto.randomUUID() } });
  assert.equal(broken.status, 500);
  assert.equal(await broken.text(), '{"error":{"code":"internal","message":"Internal error."}}');
  assert.deepEqual(failing.runs, [], "nothing ran");

  const errors = failing.logs.map((line) => JSON.parse(line)).filter((line) => line.level === "error");
  assert.deepEqual(errors.map((line) => [line.msg, line.code]), [
    ["request failed", "store_failed"],
    ["request failed", "internal"],
  ]);
  assert.match(errors[0].detail, /ECONNREFUSED/, "the detail is in the log");
  assert.match(errors[1].detail, /^TypeError: cannot read properties/);
});

Deno.test("a refused request is not logged as an error; every request, a 405 too, is logged once", async () => {
  const bare = answering();
  const answers = [
    await bare.request("/status"),
    await bare.request("/nope"),
    await bare.request("/status", { method: "PUT" }),
    await bare.request("", { rawBody: "{" }),
    await bare.request("", { body: { site_id: crypto.randomUUID() } }),
  ];
  for (const answer of answers) await answer.body?.cancel();
  const lines = bare.logs.map((line) => JSON.parse(line));
  assert.deepEqual(
    lines.map((line) => [line.level, line.msg, line.method, line.path, line.status]),
    [
      ["info", "request", "GET", "/functions/v1/hosting-automator/status", 200],
      ["info", "request", "GET", "/functions/v1/hosting-automator/nope", 404],
      ["info", "request", "PUT", "/functions/v1/hosting-automator/status", 405],
      ["info", "request", "POST", "/functions/v1/hosting-automator", 400],
      ["info", "request", "POST", "/functions/v1/hosting-automator", 404],
    ],
  );
  for (const line of lines) assert.equal(typeof line.duration_ms, "number");
});

Deno.test("with the configuration invalid, every request gets its error as 500 config_invalid, key or not", async () => {
  const handler = configErrorHandler(
    new HostingError("config_invalid", "bad", {
      publicMessage: "CLOUDPANEL_SSH_PORT: must be a whole number from 1 to 65535",
    }),
  );
  const body =
    '{"error":{"code":"config_invalid","message":"CLOUDPANEL_SSH_PORT: must be a whole number from 1 to 65535"}}';
  for (
    const request of [
      new Request(`${FUNCTION_URL}/status`),
      new Request(FUNCTION_URL, { method: "POST", headers: { apikey: KEY }, body: "{}" }),
      new Request(`${FUNCTION_URL}/nope`, { method: "DELETE" }),
    ]
  ) {
    const response = await handler(request);
    assert.equal(response.status, 500);
    assert.equal(response.headers.get("content-type"), "application/json; charset=utf-8");
    assert.equal(await response.text(), body);
  }
});
