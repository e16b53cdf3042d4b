/**
 * Authentication, in-process on the bare handler (tests/support/bare_handler.ts): only a configured key, byte
 * for byte, on `apikey` or as a Bearer token; checked before anything else, so a refused request reads no
 * body, calls no store method and starts no run.
 */
import assert from "node:assert/strict";
import { MAX_BODY_BYTES } from "../supabase/functions/hosting-automator/http_body.ts";
import { registerSecret } from "./support/env.ts";
import { bareHandler, errorOf, FUNCTION_URL, KEY, queued, statusReport } from "./support/bare_handler.ts";

const UNAUTHORIZED = '{"error":{"code":"unauthorized","message":"Missing or wrong credentials."}}';

/** A handler on which a request that got through would be seen: the store queues any site, the status reads. */
function guarded(options: { authKeys?: string[] } = {}) {
  return bareHandler({
    ...options,
    store: {
      enqueue: () => queued(1),
      status: statusReport,
      retry: () => ({ found: true, requeued: [], skipped: [] }),
    },
  });
}

Deno.test("missing or wrong credentials are refused with 401 and change nothing", async () => {
  const bare = guarded();
  const id = crypto.randomUUID();
  const attempts = [
    bare.request("", { body: { site_id: id }, key: null }),
    bare.request("", { body: { site_id: id }, key: "sb_secret_wrong" }),
    bare.request("", { body: { site_id: id }, key: KEY.slice(0, -1) }),
    bare.request("/status", { key: null }),
    bare.request("/retry", { body: { all_failed: true }, key: "" }),
    bare.handler(
      new Request("http://functions.test/hosting-automator", {
        method: "POST",
        headers: { authorization: "Basic " + btoa(`x:${KEY}`) },
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
  await bare.settle();
  assert.deepEqual(bare.storeCalls, [], "no store method was called");
  assert.deepEqual(bare.runs, [], "no run was started");
});

Deno.test("the key is accepted on the apikey header or as a Bearer token", async () => {
  const bare = guarded();
  const bearer = await bare.handler(
    new Request("http://functions.test/hosting-automator/status", {
      headers: { authorization: `Bearer ${KEY}` },
    }),
  );
  assert.equal(bearer.status, 200);
  assert.deepEqual(await bearer.json(), statusReport());
  assert.equal((await bare.request("/status")).status, 200);
  assert.deepEqual(bare.storeCalls.map((c) => c.method), ["status", "status"]);
});

Deno.test("only the exact bytes of a key authenticate: Unicode white space or a near miss around it is refused", async () => {
  const bare = guarded();
  const key = KEY;
  const status = (headers: Record<string, string>) =>
    bare.handler(new Request("http://functions.test/hosting-automator/status", { headers }));
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
  assert.deepEqual(bare.storeCalls, [], "no refused request reached the store");
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

Deno.test("a refusal is exactly the 401 error as JSON, whatever was presented", async () => {
  const bare = guarded();
  const cases: Array<[string, Record<string, string>]> = [
    ["nothing", {}],
    ["an empty apikey", { apikey: "" }],
    ["an apikey of spaces", { apikey: " \t " }],
    ["the key upper-cased", { apikey: KEY.toUpperCase() }],
    ["a suffix of the key", { apikey: KEY.slice(1) }],
    ["the key and a character", { apikey: `${KEY}x` }],
    ["the key twice", { apikey: `${KEY}${KEY}` }],
    ["the key in two apikey fields (joined: key, key)", { apikey: `${KEY}, ${KEY}` }],
    ["the key of 100 KB", { apikey: KEY + "x".repeat(100_000) }],
    ["Bearer with nothing", { authorization: "Bearer " }],
    ["Bearer with the key twice", { authorization: `Bearer ${KEY} ${KEY}` }],
    ["the key without a scheme", { authorization: KEY }],
    ["another scheme", { authorization: `Token ${KEY}` }],
    ["Basic with the key", { authorization: `Basic ${KEY}` }],
    ["x-api-key", { "x-api-key": KEY }],
    ["a wrong apikey and a user's JWT as Bearer", {
      apikey: "sb_publishable_x",
      authorization: "Bearer eyJ.x.y",
    }],
  ];
  for (const [name, headers] of cases) {
    const response = await bare.handler(new Request(`${FUNCTION_URL}/status`, { headers }));
    assert.equal(response.status, 401, name);
    assert.equal(response.headers.get("content-type"), "application/json; charset=utf-8", name);
    assert.equal(await response.text(), UNAUTHORIZED, name);
  }
  // Neither the query string nor the body presents a key.
  const inQuery = await bare.request("", {
    body: { site_id: crypto.randomUUID() },
    key: null,
    query: `apikey=${KEY}`,
  });
  assert.equal(await inQuery.text(), UNAUTHORIZED);
  const inBody = await bare.request("", { body: { apikey: KEY }, key: null });
  assert.equal(await inBody.text(), UNAUTHORIZED);
  assert.deepEqual(bare.storeCalls, []);
});

Deno.test("one of the two keys a request presents is enough: a wrong one beside it, or a user's JWT, is ignored", async () => {
  const bare = guarded();
  const accepted: Array<Record<string, string>> = [
    { apikey: "sb_publishable_x", authorization: `Bearer ${KEY}` },
    { apikey: KEY, authorization: "Bearer eyJ.x.y" },
    { apikey: KEY, authorization: `Basic ${btoa("x:y")}` },
  ];
  for (const headers of accepted) {
    const response = await bare.handler(new Request(`${FUNCTION_URL}/status`, { headers }));
    assert.equal(response.status, 200, JSON.stringify(headers).replaceAll(KEY, "<key>"));
    await response.body?.cancel();
  }
});

Deno.test("every configured key authenticates, and only it: a key that contains another is not that key", async () => {
  const jwt = registerSecret(
    `eyJhbGciOiJIUzI1NiJ9.${btoa('{"role":"service_role"}')}.${crypto.randomUUID()}`,
  );
  const bare = guarded({ authKeys: [KEY, jwt] });
  const status = (headers: Record<string, string>) =>
    bare.handler(new Request(`${FUNCTION_URL}/status`, { headers })).then(async (response) => {
      await response.body?.cancel();
      return response.status;
    });
  assert.equal(await status({ apikey: KEY }), 200);
  assert.equal(await status({ apikey: jwt }), 200);
  assert.equal(await status({ authorization: `Bearer ${jwt}` }), 200);
  assert.equal(await status({ apikey: jwt, authorization: `Bearer ${jwt}` }), 200);
  assert.equal(await status({ apikey: `${jwt}${KEY}` }), 401);
  assert.equal(await status({ apikey: jwt.slice(0, KEY.length) }), 401);
  assert.equal(await status({ apikey: `${KEY.slice(0, 10)}${jwt.slice(10)}` }), 401);

  const none = guarded({ authKeys: [] });
  const refused = await none.request("/status");
  assert.equal(refused.status, 401, "with no key configured, nothing authenticates");
  await refused.body?.cancel();
  const empty = await none.request("/status", { key: "" });
  assert.equal(empty.status, 401);
  await empty.body?.cancel();
});

Deno.test("the key is checked first: a request without it gets 401 whatever else is wrong, and its body is not read", async () => {
  const bare = guarded();
  let pulls = 0;
  /** A body that counts every read (highWaterMark 0: nothing is read before someone asks). */
  const counted = () =>
    new ReadableStream<Uint8Array>({
      pull(controller) {
        pulls++;
        controller.enqueue(new TextEncoder().encode("{}"));
        controller.close();
      },
    }, { highWaterMark: 0 });
  const cases: Array<[string, Promise<Response>]> = [
    ["an unknown path", bare.request("/nope", { key: null })],
    ["a wrong method", bare.request("/status", { method: "DELETE", key: null })],
    ["an OPTIONS preflight", bare.request("", { method: "OPTIONS", key: null })],
    ["wait=maybe", bare.request("", { body: {}, query: "wait=maybe", key: null })],
    ["invalid JSON", bare.request("", { rawBody: "{not json", key: "wrong" })],
    [
      "a declared length over the limit",
      bare.request("", {
        rawBody: "{}",
        key: "wrong",
        headers: { "content-length": String(MAX_BODY_BYTES + 1) },
      }),
    ],
    ["gzip", bare.request("", { rawBody: "{}", key: null, headers: { "content-encoding": "gzip" } })],
    ["a body to read", bare.request("", { rawBody: counted(), key: null })],
    ["a body to read, on /remove", bare.request("/remove", { rawBody: counted(), key: "wrong" })],
  ];
  for (const [name, response] of cases) {
    const answer = await response;
    assert.equal(answer.status, 401, name);
    assert.equal(await answer.text(), UNAUTHORIZED, name);
  }
  assert.equal(pulls, 0, "no refused body was read");
  assert.deepEqual(bare.storeCalls, []);
  assert.deepEqual(bare.runs, []);
});

Deno.test("a refusal is logged as a request with its status, never as an error, and no key is in any log line", async () => {
  const bare = guarded();
  await (await bare.request("/status", { key: `${KEY}x` })).body?.cancel();
  await (await bare.request("/status", { key: null, headers: { authorization: `Bearer ${KEY}\xA0` } })).body
    ?.cancel();
  await (await bare.request("/status")).body?.cancel();
  const lines = bare.logs.map((line) => JSON.parse(line));
  assert.deepEqual(
    lines.map((line) => [line.level, line.msg, line.method, line.path, line.status]),
    [
      ["info", "request", "GET", "/functions/v1/hosting-automator/status", 401],
      ["info", "request", "GET", "/functions/v1/hosting-automator/status", 401],
      ["info", "request", "GET", "/functions/v1/hosting-automator/status", 200],
    ],
  );
  for (const line of bare.logs) assert.ok(!line.includes(KEY.slice(10)), "no part of the key is logged");
});
