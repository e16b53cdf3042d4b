/**
 * Reading the body, in-process on the bare handler (tests/support/bare_handler.ts): the size limit, framing
 * (Content-Length, streams that break off), encodings and media types, and JSON that parses but is refused
 * (repeated keys, depth). Every refusal is a 400 or 413 that names the problem, calls no store method and
 * starts no run.
 */
import assert from "node:assert/strict";
import { MAX_BODY_BYTES, MAX_JSON_DEPTH } from "../supabase/functions/hosting-automator/http_body.ts";
import { concatBytes } from "../supabase/functions/hosting-automator/bytes.ts";
import { type Bare, bareHandler, errorOf, FUNCTION_URL, KEY } from "./support/bare_handler.ts";

const encoder = new TextEncoder();

/** A handler whose store says every site is not due: an accepted body is answered 200 not_due, and no run. */
function notDueHandler(): Bare {
  return bareHandler({
    store: {
      enqueue: () => ({ found: true, reason: "not_due", status_dns: "pending", status_hosting: "pending" }),
    },
  });
}

function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

/** A POST of raw bytes to `path` with the key and these headers. */
function post(bare: Bare, body: BodyInit | null, headers: Record<string, string> = {}, path = "") {
  return bare.handler(
    new Request(`${FUNCTION_URL}${path}`, { method: "POST", headers: { apikey: KEY, ...headers }, body }),
  );
}

function assertUntouched(bare: Bare) {
  assert.deepEqual(bare.storeCalls, [], "no store method was called");
  assert.deepEqual(bare.runs, [], "no run was started");
}

Deno.test("malformed, unknown and oversized bodies are refused with 400 or 413, name the problem, and change nothing", async () => {
  const bare = notDueHandler();
  const id = crypto.randomUUID();
  const cases: Array<[Promise<Response>, number, RegExp]> = [
    [bare.request("", { rawBody: "{not json" }), 400, /not valid JSON/],
    [bare.request("", { body: [] }), 400, /expected a JSON object/],
    [bare.request("", { body: { site_id: "not-a-uuid" } }), 400, /site_id: must be a UUID/],
    [bare.request("", { body: { site_id: id, extra: 1 } }), 400, /unknown field "extra"/],
    [bare.request("", { body: { domain: "x.example" } }), 400, /unknown field "domain"/],
    [
      bare.request("", { body: { type: "UPDATE", table: "users", schema: "public", record: { id } } }),
      400,
      /table: must be "sites"/,
    ],
    [
      bare.request("", { body: { type: "TRUNCATE", table: "sites", schema: "public", record: null } }),
      400,
      /type:/,
    ],
    [bare.request("", { body: {}, query: "wait=maybe" }), 400, /wait: must be true or false/],
    [
      bare.request("/retry", { body: {} }),
      400,
      /expected \{"site_id": "<uuid>"\} or \{"all_failed": true\}/,
    ],
    [bare.request("/retry", { body: { all_failed: false } }), 400, /all_failed/],
    [
      bare.request("", { rawBody: JSON.stringify({ site_id: id, pad: "x".repeat(70_000) }) }),
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
  const streamed = await bare.handler(
    new Request("http://functions.test/hosting-automator", {
      method: "POST",
      headers: { apikey: KEY },
      body: stream,
    }),
  );
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();
  assertUntouched(bare);
});

Deno.test("a body that breaks off or has a malformed Content-Length is the caller's error: 400, nothing changed", async () => {
  const bare = notDueHandler();
  const id = crypto.randomUUID();
  const notDue = crypto.randomUUID();
  const breaking = (error: unknown) =>
    new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(new TextEncoder().encode(`{"site_id": "${id}`));
        controller.error(error);
      },
    });
  const json = { "content-type": "application/json" };
  const exact = JSON.stringify({ site_id: id });
  const cases: Array<[string, Promise<Response>, RegExp]> = [
    ["stream error", post(bare, breaking(new Error("connection reset")), json), /body: could not be read/],
    ["stream error (not an Error)", post(bare, breaking("gone"), json), /body: could not be read/],
    [
      "shorter than Content-Length",
      post(bare, exact, { ...json, "content-length": String(exact.length + 10) }),
      /Content-Length/,
    ],
    ["longer than Content-Length", post(bare, exact, { ...json, "content-length": "2" }), /Content-Length/],
    [
      "Content-Length not a number",
      post(bare, exact, { ...json, "content-length": "abc" }),
      /Content-Length/,
    ],
    ["Content-Length negative", post(bare, exact, { ...json, "content-length": "-1" }), /Content-Length/],
    [
      "Content-Length fractional",
      post(bare, exact, { ...json, "content-length": "1.5e1" }),
      /Content-Length/,
    ],
    [
      "Content-Length twice, differing",
      post(bare, exact, { ...json, "content-length": `${exact.length}, ${exact.length + 1}` }),
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
  assertUntouched(bare);
  // The same value twice is one length (RFC 9110 §8.6).
  const waiting = JSON.stringify({ site_id: notDue });
  const repeated = await post(bare, waiting, {
    ...json,
    "content-length": `${waiting.length}, ${waiting.length}`,
  });
  assert.equal(repeated.status, 200);
  assert.equal((await repeated.json()).reason, "not_due");
  assert.deepEqual(bare.storeCalls, [{ method: "enqueue", args: [notDue] }], "only the accepted one asked");
  assert.deepEqual(bare.runs, []);
  assert.equal(bare.logs.filter((line) => line.includes('"level":"error"')).length, 0, "no 500 logged");
});

Deno.test("over real HTTP, a client that sends less body than its Content-Length and closes gets 400, nothing changed", async () => {
  const bare = notDueHandler();
  const id = crypto.randomUUID();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, bare.handler);
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    const partial = `{"site_id": "${id}`;
    await conn.write(new TextEncoder().encode(
      "POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: 127.0.0.1\r\n" +
        `apikey: ${KEY}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n${partial}`,
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
  assertUntouched(bare);
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

Deno.test("the limit is MAX_BODY_BYTES exactly, declared or streamed: that many bytes are read, one more is 413", async () => {
  const bare = bareHandler();
  /** `{}` padded with JSON white space to `size` bytes: a drain when accepted. */
  const padded = (size: number) => `{}${" ".repeat(size - 2)}`;
  const streamOf = (text: string) => {
    const bytes = encoder.encode(text);
    return new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 1000) controller.enqueue(bytes.slice(i, i + 1000));
        controller.close();
      },
    });
  };
  const declared = (size: number) => post(bare, padded(size), { "content-length": String(size) });
  for (
    const [name, response] of [["declared", declared(MAX_BODY_BYTES)], [
      "streamed",
      post(bare, streamOf(padded(MAX_BODY_BYTES))),
    ]] as const
  ) {
    const accepted = await response;
    assert.equal(accepted.status, 202, `${name}: at the limit`);
    assert.equal(await accepted.text(), '{"accepted":true}');
  }
  for (
    const [name, response] of [["declared", declared(MAX_BODY_BYTES + 1)], [
      "streamed",
      post(bare, streamOf(padded(MAX_BODY_BYTES + 1))),
    ]] as const
  ) {
    const refused = await response;
    assert.equal(refused.status, 413, `${name}: one byte over`);
    assert.equal(refused.headers.get("content-type"), "application/json; charset=utf-8");
    assert.equal(
      await refused.text(),
      '{"error":{"code":"payload_too_large","message":"The request body is larger than 65536 bytes."}}',
    );
  }
  await bare.settle();
  assert.equal(bare.runs.length, 2, "only the two at the limit ran (a drain each)");
  assert.deepEqual(bare.storeCalls, []);
});

Deno.test("a body over the limit is not read past it: a declared length is refused before reading, a stream is cancelled", async () => {
  const bare = bareHandler();
  let pulls = 0;
  const unread = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulls++;
      controller.enqueue(encoder.encode("{}"));
      controller.close();
    },
  }, { highWaterMark: 0 });
  const declared = await post(bare, unread, { "content-length": String(MAX_BODY_BYTES + 1) });
  assert.equal((await errorOf(declared)).status, 413);
  assert.equal(pulls, 0, "a body declared too large is not read at all");

  let read = 0;
  let cancelled = false;
  const chunk = encoder.encode(" ".repeat(4096));
  const endless = new ReadableStream<Uint8Array>({
    pull(controller) {
      read += chunk.byteLength;
      controller.enqueue(chunk);
    },
    cancel() {
      cancelled = true;
    },
  }, { highWaterMark: 0 });
  const streamed = await post(bare, endless);
  assert.equal((await errorOf(streamed)).status, 413);
  assert.ok(cancelled, "the stream was cancelled");
  assert.ok(
    read <= MAX_BODY_BYTES + chunk.byteLength,
    `read ${read} bytes, no more than one chunk past the limit`,
  );
  assertUntouched(bare);
});

Deno.test("no body, an empty one or JSON white space only is {} (a drain); any other white space is not JSON", async () => {
  const bare = bareHandler();
  for (const body of [null, "", " \t\r\n "]) {
    const response = await post(bare, body);
    assert.equal(response.status, 202, JSON.stringify(body));
    assert.equal(await response.text(), '{"accepted":true}');
  }
  await bare.settle();
  assert.deepEqual(bare.runs, [
    { siteId: undefined, drain: true },
    { siteId: undefined, drain: true },
    { siteId: undefined, drain: true },
  ]);
  const other = bareHandler();
  for (const body of ["\u00A0", "\u2028{}", "\u3000", "\v{}", "\f"]) {
    assert.deepEqual(await errorOf(await post(other, body)), {
      status: 400,
      code: "bad_request",
      message: "body: is not valid JSON",
    }, JSON.stringify(body));
  }
  assertUntouched(other);
});

Deno.test("UTF-8 only: a byte order mark is dropped, invalid UTF-8 and UTF-16 are refused", async () => {
  const bare = notDueHandler();
  const id = crypto.randomUUID();
  const bom = await post(bare, `\uFEFF${JSON.stringify({ site_id: id })}`);
  assert.equal((await bom.json()).reason, "not_due");
  assert.deepEqual(bare.storeCalls, [{ method: "enqueue", args: [id] }]);

  const refused = notDueHandler();
  const latin1 = Uint8Array.from(`{"site_id": "${id}\xFF"}`, (c) => c.charCodeAt(0));
  const cases: Array<[string, BodyInit, string]> = [
    ["invalid UTF-8", latin1, "body: is not valid UTF-8"],
    ["a lone continuation byte", new Uint8Array([0x7B, 0x80, 0x7D]), "body: is not valid UTF-8"],
    ["UTF-16", new Uint8Array([0x7B, 0, 0x7D, 0]), "body: is not valid JSON"],
    ["two byte order marks", `\uFEFF\uFEFF{}`, "body: is not valid JSON"],
  ];
  for (const [name, body, message] of cases) {
    assert.deepEqual(
      await errorOf(await post(refused, body)),
      { status: 400, code: "bad_request", message },
      name,
    );
  }
  assertUntouched(refused);
});

Deno.test("only uncompressed JSON: media types, charsets and content encodings are checked before reading", async () => {
  const accepting = notDueHandler();
  const body = JSON.stringify({ site_id: crypto.randomUUID() });
  const accepted: Array<Record<string, string>> = [
    {},
    { "content-type": "application/json" },
    { "content-type": "APPLICATION/JSON" },
    { "content-type": " application/json \t" },
    { "content-type": "application/json; charset=utf-8" },
    { "content-type": 'application/json; charset="UTF-8"' },
    { "content-type": "application/json;charset=utf8" },
    { "content-type": "text/plain;charset=UTF-8" },
    { "content-encoding": "identity" },
    { "content-encoding": " IDENTITY " },
  ];
  for (const headers of accepted) {
    const response = await post(accepting, body, headers);
    assert.equal(response.status, 200, JSON.stringify(headers));
    assert.equal((await response.json()).reason, "not_due");
  }
  assert.equal(accepting.storeCalls.length, accepted.length);

  const refusing = notDueHandler();
  const refused: Array<[Record<string, string>, string]> = [
    [{ "content-type": "text/html" }, "Content-Type: must be application/json"],
    [{ "content-type": "application/x-www-form-urlencoded" }, "Content-Type: must be application/json"],
    [{ "content-type": "multipart/form-data; boundary=b" }, "Content-Type: must be application/json"],
    [{ "content-type": "application/json-patch+json" }, "Content-Type: must be application/json"],
    [{ "content-type": "application/json; charset=iso-8859-1" }, "Content-Type: charset must be utf-8"],
    [{ "content-type": "application/json; charset=utf-16" }, "Content-Type: charset must be utf-8"],
    [{ "content-encoding": "gzip" }, "Content-Encoding: not supported; send the body uncompressed"],
    [{ "content-encoding": "br" }, "Content-Encoding: not supported; send the body uncompressed"],
    [{ "content-encoding": "identity, gzip" }, "Content-Encoding: not supported; send the body uncompressed"],
  ];
  for (const [headers, message] of refused) {
    assert.deepEqual(
      await errorOf(await post(refusing, body, headers)),
      { status: 400, code: "bad_request", message },
      JSON.stringify(headers),
    );
  }
  assertUntouched(refusing);
});

Deno.test(`JSON that parses is still refused for a key repeated in one object or nesting over ${MAX_JSON_DEPTH} levels`, async () => {
  const bare = notDueHandler();
  const id = crypto.randomUUID();
  const hook = (meta: unknown) =>
    JSON.stringify({
      type: "INSERT",
      table: "sites",
      schema: "public",
      record: { id, meta },
      old_record: null,
    });
  // The top object and the record are two levels: the record's field adds the rest.
  const atLimit = await post(bare, hook(nested(MAX_JSON_DEPTH - 2)));
  assert.equal(atLimit.status, 200, `${MAX_JSON_DEPTH} levels are accepted`);
  await atLimit.body?.cancel();
  // The same key in different objects, keys and strings that look like structure: all accepted.
  const lookalikes = [
    JSON.stringify({ type: "UPDATE", table: "sites", schema: "public", record: { id }, old_record: { id } }),
    hook({ note: '{"x": 1, "x": 2}', list: [{ a: 1 }, { a: 2 }], 'a"b': 1, "a\\b": [1, "]"] }),
    hook([{ id: 1 }, { id: 2 }]),
  ];
  for (const body of lookalikes) {
    const response = await post(bare, body);
    assert.equal(response.status, 200, body);
    await response.body?.cancel();
  }
  assert.equal(bare.storeCalls.length, 1 + lookalikes.length);

  const refusing = notDueHandler();
  const refused: Array<[string, string, string]> = [
    ["one level over", hook(nested(MAX_JSON_DEPTH - 1)), `body: nested deeper than ${MAX_JSON_DEPTH} levels`],
    [
      "20 000 levels",
      "[".repeat(20_000) + "]".repeat(20_000),
      `body: nested deeper than ${MAX_JSON_DEPTH} levels`,
    ],
    [
      "a repeated key",
      `{"site_id": "${id}", "site_id": "${crypto.randomUUID()}"}`,
      'body: the key "site_id" appears twice in one object',
    ],
    [
      "a repeated key, escaped",
      `{"site_id": "${id}", "site\\u005fid": "${id}"}`,
      'body: the key "site_id" appears twice in one object',
    ],
    [
      "a key repeated in the record",
      `{"type":"UPDATE","table":"sites","schema":"public","record":{"id":"${id}","id":"${id}"}}`,
      'body: the key "id" appears twice in one object',
    ],
    [
      "a key repeated in an object in an array",
      hook([{ a: 1 }]).replace('{"a":1}', '{"a":1,"a":2}'),
      'body: the key "a" appears twice in one object',
    ],
    [
      "a long key repeated is named cut short",
      `{"${"k".repeat(100)}": 1, "${"k".repeat(100)}": 2}`,
      `body: the key "${"k".repeat(40)}…" appears twice in one object`,
    ],
  ];
  for (const [name, body, message] of refused) {
    assert.deepEqual(
      await errorOf(await post(refusing, body)),
      { status: 400, code: "bad_request", message },
      name,
    );
  }
  assertUntouched(refusing);
});

Deno.test("every route that takes a body reads it the same way: /retry and /remove refuse what the kick refuses", async () => {
  const bare = bareHandler();
  const id = crypto.randomUUID();
  for (const path of ["", "/retry", "/remove"]) {
    const cases: Array<[string, Promise<Response>, number, string]> = [
      ["invalid JSON", post(bare, "{", {}, path), 400, "body: is not valid JSON"],
      ["invalid UTF-8", post(bare, new Uint8Array([0xFF]), {}, path), 400, "body: is not valid UTF-8"],
      [
        "a repeated key",
        post(bare, `{"site_id": "${id}", "site_id": "${id}"}`, {}, path),
        400,
        'body: the key "site_id" appears twice in one object',
      ],
      [
        "too large",
        post(bare, JSON.stringify({ site_id: id, pad: "x".repeat(MAX_BODY_BYTES) }), {}, path),
        413,
        "The request body is larger than 65536 bytes.",
      ],
      [
        "a form",
        post(bare, `site_id=${id}`, { "content-type": "application/x-www-form-urlencoded" }, path),
        400,
        "Content-Type: must be application/json",
      ],
      [
        "a short body",
        post(bare, "{}", { "content-length": "3" }, path),
        400,
        "body: 2 bytes, but Content-Length says 3",
      ],
    ];
    for (const [name, response, status, message] of cases) {
      const error = await errorOf(await response);
      assert.deepEqual([error.status, error.message], [status, message], `${path || "/"}: ${name}`);
    }
  }
  assertUntouched(bare);
});
