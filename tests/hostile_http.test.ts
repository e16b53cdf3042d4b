/**
 * Hostile input against the HTTP handler, on the real stack (real Postgres, supabase-js through the PostgREST
 * stand-in, real sshd with the clpctl simulator, the Matomo simulator). One table: each row is a request and
 * its documented answer (status and error code). Every row also checks that no row of public.sites,
 * hosting_automator.jobs, .steps, .events and no queued kick changed, that no command reached the server,
 * and that an error is the usual `{"error": {"code", "message"}}` with nothing internal in it.
 *
 * The fixtures make a wrongly accepted request visible: one site is due now, so a request that got through
 * to the workflow would provision it (rows change, commands reach the simulator). Requests that are accepted
 * use the site that is not due, or read only.
 *
 * Rows with `raw` go over TCP to the handler on `Deno.serve` (127.0.0.1), for framing that a `Request` object
 * cannot express; `by: "server"` marks a refusal that Deno's HTTP server (as the platform's gateway would)
 * sends before the handler runs, without our JSON body.
 */
import assert from "node:assert/strict";
import type { ErrorCode } from "../supabase/functions/hosting-automator/errors.ts";
import { MAX_BODY_BYTES, MAX_JSON_DEPTH } from "../supabase/functions/hosting-automator/http_body.ts";
import { FUNCTION_URL, type Stack, withStack } from "./support/stack.ts";

interface Fixtures {
  key: string;
  /** status_dns active, status_hosting pending, its job due now: anything that runs the workflow takes it. */
  due: string;
  /** status_dns pending: a kick answers 200 not_due and changes nothing. */
  waiting: string;
  /** Active with analytics: a retry skips it. */
  active: string;
}

type Auth = "apikey" | "none";
/** A body: text (UTF-8), bytes, or a stream made per request. */
type Body = string | Uint8Array | (() => ReadableStream<Uint8Array>);

interface Case {
  name: string;
  /** Default POST with a body, else GET. */
  method?: string;
  /** After the function's URL (`…/functions/v1/hosting-automator`); `url` replaces the whole URL. */
  path?: string;
  url?: string;
  query?: string;
  /** Default: the key on `apikey`. Extra headers are appended (a name twice is two fields). */
  auth?: Auth;
  headers?: Array<[string, string]>;
  /** JSON-encoded with `content-type: application/json`. */
  json?: unknown;
  body?: Body;
  /** A whole HTTP/1.1 request sent over TCP; `{key}` is replaced. */
  raw?: string;
  /** After sending `raw`, close the sending side (a client that gives up mid-body). */
  halfClose?: boolean;
  expect: {
    status: number;
    /** The error code; absent for an accepted request. */
    code?: ErrorCode;
    message?: RegExp;
    /** The `allow` header of a 405. */
    allow?: string;
    /** For an accepted request: fields the answer has, with these values. */
    answer?: Record<string, unknown>;
    /** For an accepted request: fields the answer has, whatever their values. */
    has?: string[];
    /** Refused by the HTTP server before the handler (no JSON body). */
    by?: "server";
  };
}

const encoder = new TextEncoder();
const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));
/** A zero-width space as it arrives in a header: its UTF-8 bytes, one character each. */
const ZWSP = "\xE2\x80\x8B";
const BOM = "\uFEFF";

function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

function breakingStream(prefix: string, error: unknown): () => ReadableStream<Uint8Array> {
  return () =>
    new ReadableStream({
      pull(controller) {
        controller.enqueue(encoder.encode(prefix));
        controller.error(error);
      },
    });
}

function endlessStream(): ReadableStream<Uint8Array> {
  const chunk = encoder.encode(" ".repeat(4096));
  return new ReadableStream({ pull: (controller) => controller.enqueue(chunk) });
}

async function gzip(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const WRONG_METHODS: Record<string, { allow: string; wrong: string[] }> = {
  "": { allow: "POST", wrong: ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] },
  "/status": { allow: "GET", wrong: ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] },
  "/retry": { allow: "POST", wrong: ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] },
  "/remove": { allow: "POST", wrong: ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] },
};

function cases(f: Fixtures, gzipped: Uint8Array): Case[] {
  const { key, due, waiting, active } = f;
  const unauthorized = {
    status: 401,
    code: "unauthorized",
    message: /^Missing or wrong credentials\.$/,
  } as const;
  const bad = (message: RegExp) => ({ status: 400, code: "bad_request" as const, message });
  const notDue = { status: 200, answer: { accepted: false, site_id: waiting, reason: "not_due" } };
  const statusOk = { status: 200, has: ["sites", "queue"] };
  const hook = (fields: Record<string, unknown>) => ({
    type: "UPDATE",
    table: "sites",
    schema: "public",
    record: { id: due, status_dns: "active", status_hosting: "pending" },
    old_record: { id: due, status_dns: "pending", status_hosting: "pending" },
    ...fields,
  });
  const withKey = (
    name: string,
    headers: Array<[string, string]>,
    expect: Case["expect"] = unauthorized,
  ) => ({
    name,
    auth: "none" as const,
    headers,
    json: { site_id: due },
    expect,
  });
  const readWithKey = (name: string, headers: Array<[string, string]>, expect: Case["expect"]) => ({
    name,
    path: "/status",
    auth: "none" as const,
    headers,
    expect,
  });

  return [
    // ---- authentication: only the exact key, with SP/HTAB around it, on apikey or as a Bearer token ----
    { name: "no credentials", auth: "none", json: { site_id: due }, expect: unauthorized },
    withKey("empty apikey", [["apikey", ""]]),
    withKey("wrong apikey", [["apikey", "sb_secret_0123456789abcdef0123456789abcdef"]]),
    withKey("apikey with NBSP after", [["apikey", `${key}\xA0`]]),
    withKey("apikey with NBSP before", [["apikey", `\xA0${key}`]]),
    withKey("apikey with zero-width space after", [["apikey", `${key}${ZWSP}`]]),
    withKey("apikey with a byte order mark before", [["apikey", `\xEF\xBB\xBF${key}`]]),
    withKey("apikey with vertical tab after", [["apikey", `${key}\x0B`]]),
    withKey("apikey with form feed after", [["apikey", `${key}\x0C`]]),
    withKey("apikey upper-cased", [["apikey", key.toUpperCase()]]),
    withKey("apikey with one letter's case changed", [["apikey", `S${key.slice(1)}`]]),
    withKey("apikey a prefix of the key", [["apikey", key.slice(0, -1)]]),
    withKey("apikey a suffix of the key", [["apikey", key.slice(1)]]),
    withKey("apikey the key plus a character", [["apikey", `${key}x`]]),
    withKey("apikey the key twice", [["apikey", `${key}${key}`]]),
    withKey("apikey twice, both right (one field: key, key)", [["apikey", key], ["apikey", key]]),
    withKey("apikey twice, one wrong", [["apikey", key], ["apikey", "sb_secret_wrong"]]),
    withKey("apikey of 100 KB", [["apikey", key + "x".repeat(100_000)]]),
    withKey("Authorization of 100 KB", [["authorization", `Bearer ${key}${"x".repeat(100_000)}`]]),
    withKey("Bearer without a space", [["authorization", `Bearer${key}`]]),
    withKey("Bearer, NBSP as separator", [["authorization", `Bearer\xA0${key}`]]),
    withKey("Bearer, NBSP before the key", [["authorization", `Bearer \xA0${key}`]]),
    withKey("Bearer, NBSP after the key", [["authorization", `Bearer ${key}\xA0`]]),
    withKey("Bearer, zero-width space before the key", [["authorization", `Bearer ${ZWSP}${key}`]]),
    withKey("Bearer with the key twice", [["authorization", `Bearer ${key} ${key}`]]),
    withKey("Bearer with nothing", [["authorization", "Bearer "]]),
    withKey("Basic with the key as password", [["authorization", `Basic ${btoa(`x:${key}`)}`]]),
    withKey("Basic with the key", [["authorization", `Basic ${key}`]]),
    withKey("Token scheme", [["authorization", `Token ${key}`]]),
    withKey("the key without a scheme", [["authorization", key]]),
    withKey("x-api-key header", [["x-api-key", key]]),
    withKey("api-key header", [["api-key", key]]),
    {
      name: "the key in the query string",
      auth: "none",
      query: `apikey=${key}`,
      json: { site_id: due },
      expect: unauthorized,
    },
    { name: "the key in the body", auth: "none", json: { apikey: key }, expect: unauthorized },
    {
      name: "no credentials, unknown path (checked first)",
      auth: "none",
      path: "/nope",
      expect: unauthorized,
    },
    { name: "no credentials, OPTIONS preflight", auth: "none", method: "OPTIONS", expect: unauthorized },
    readWithKey("apikey with SP/HTAB around it", [["apikey", ` \t${key}\t `]], statusOk),
    readWithKey("Bearer with two spaces", [["authorization", `Bearer  ${key}`]], statusOk),
    readWithKey("bearer in lower case", [["authorization", `bearer ${key}`]], statusOk),
    readWithKey("BeArEr with HTAB", [["authorization", `BeArEr\t${key}`]], statusOk),
    readWithKey("wrong apikey, right Bearer", [["apikey", "sb_publishable_x"], [
      "authorization",
      `Bearer ${key}`,
    ]], statusOk),
    readWithKey("right apikey, a user's JWT as Bearer", [["apikey", key], [
      "authorization",
      "Bearer eyJ.x.y",
    ]], statusOk),

    // ---- methods and paths ----
    ...Object.entries(WRONG_METHODS).flatMap(([path, { allow, wrong }]) =>
      wrong.map((method): Case => ({
        name: `${method} ${path || "/"}`,
        method,
        path,
        expect: { status: 405, code: "method_not_allowed", allow },
      }))
    ),
    { name: "unknown path", path: "/nope", expect: { status: 404, code: "not_found" } },
    { name: "a path below /status", path: "/status/extra", expect: { status: 404, code: "not_found" } },
    { name: "/Status (case)", path: "/Status", expect: { status: 404, code: "not_found" } },
    { name: "/RETRY (case)", path: "/RETRY", json: {}, expect: { status: 404, code: "not_found" } },
    { name: "a path below /retry", path: "/retry/all", json: {}, expect: { status: 404, code: "not_found" } },
    {
      name: "a look-alike function name",
      url: `${FUNCTION_URL}-evil/status`,
      expect: { status: 404, code: "not_found" },
    },
    { name: "encoded slash", url: `${FUNCTION_URL}%2Fstatus`, expect: { status: 404, code: "not_found" } },
    { name: "encoded slash at the end", path: "/status%2F", expect: { status: 404, code: "not_found" } },
    { name: "double slash", path: "//status", expect: { status: 404, code: "not_found" } },
    {
      name: "double slash in the prefix",
      url: "http://functions.test/functions/v1//hosting-automator/status",
      expect: { status: 404, code: "not_found" },
    },
    { name: "NUL in the path", path: "/status%00", expect: { status: 404, code: "not_found" } },
    {
      name: "a path of 10 000 characters",
      path: `/${"a".repeat(10_000)}`,
      expect: { status: 404, code: "not_found" },
    },
    { name: "non-ASCII path", path: "/stätus", expect: { status: 404, code: "not_found" } },
    { name: "/status;x", path: "/status;x", expect: { status: 404, code: "not_found" } },
    // URLs resolve dot segments (as every HTTP server does) before the route is chosen.
    { name: "dot segments that resolve to /status", path: "/x/../status", expect: statusOk },
    { name: "encoded dot segments resolve too", path: "/x/%2e%2e/status", expect: statusOk },
    {
      name: "dot segments that climb to the kick route, with GET",
      path: "/status/..",
      expect: { status: 405, code: "method_not_allowed", allow: "POST" },
    },
    { name: "trailing slash on /status", path: "/status/", expect: statusOk },
    { name: "trailing slash on the kick route", path: "/", json: { site_id: waiting }, expect: notDue },
    { name: "query junk is ignored", path: "/status", query: "x=1&&=&%%&a[]=b", expect: statusOk },
    {
      name: "unknown query on a kick is ignored",
      query: "forceFunctionRegion=eu-central-1&x",
      json: { site_id: waiting },
      expect: notDue,
    },
    {
      name: "wait=maybe",
      query: "wait=maybe",
      json: { site_id: due },
      expect: bad(/^wait: must be true or false$/),
    },
    {
      name: "wait=TRUE",
      query: "wait=TRUE",
      json: { site_id: due },
      expect: bad(/^wait: must be true or false$/),
    },
    {
      name: "wait twice",
      query: "wait=true&wait=false",
      json: { site_id: due },
      expect: bad(/^wait: given more than once$/),
    },
    {
      name: "wait on /retry, junk",
      path: "/retry",
      query: "wait=yes",
      json: { site_id: active },
      expect: bad(/^wait:/),
    },

    // ---- bodies and framing ----
    { name: "invalid JSON", body: "{not json", expect: bad(/^body: is not valid JSON$/) },
    { name: "JSON cut short", body: `{"site_id": "${due}"`, expect: bad(/^body: is not valid JSON$/) },
    {
      name: "JSON with a byte order mark (ignored)",
      body: `${BOM}${JSON.stringify({ site_id: waiting })}`,
      expect: notDue,
    },
    {
      name: "two byte order marks",
      body: `${BOM}${BOM}${JSON.stringify({ site_id: due })}`,
      expect: bad(/not valid JSON/),
    },
    { name: "UTF-16 JSON", body: new Uint8Array([0x7B, 0, 0x7D, 0]), expect: bad(/not valid JSON/) },
    {
      name: "invalid UTF-8",
      body: latin1(`{"site_id": "${due}\xFF"}`),
      expect: bad(/^body: is not valid UTF-8$/),
    },
    { name: "only NBSP", body: "\u00A0", expect: bad(/not valid JSON/) },
    { name: "LINE SEPARATOR before JSON", body: "\u2028{}", expect: bad(/not valid JSON/) },
    {
      name: `nesting ${MAX_JSON_DEPTH + 1} levels deep`,
      body: JSON.stringify({ site_id: due, x: nested(MAX_JSON_DEPTH) }),
      expect: bad(/^body: nested deeper than 64 levels$/),
    },
    {
      name: "nesting 20 000 levels deep",
      body: "[".repeat(20_000) + "]".repeat(20_000),
      expect: bad(/nested deeper/),
    },
    {
      name: `nesting within ${MAX_JSON_DEPTH} levels in a webhook record is accepted`,
      json: hook({
        type: "INSERT",
        record: { id: waiting, meta: nested(MAX_JSON_DEPTH - 3) },
        old_record: null,
      }),
      expect: notDue,
    },
    { name: "huge number as site_id", body: `{"site_id": 1e999}`, expect: bad(/^site_id: must be a UUID$/) },
    {
      name: "long integer as site_id",
      body: `{"site_id": ${"9".repeat(400)}}`,
      expect: bad(/^site_id: must be a UUID$/),
    },
    { name: "an empty array", json: [], expect: bad(/^body: expected a JSON object/) },
    { name: "an array of a request", json: [{ site_id: due }], expect: bad(/expected a JSON object/) },
    { name: "a string", json: "site_id", expect: bad(/expected a JSON object/) },
    { name: "null", json: null, expect: bad(/expected a JSON object/) },
    { name: "true", json: true, expect: bad(/expected a JSON object/) },
    { name: "a number", json: 42, expect: bad(/expected a JSON object/) },
    {
      name: "duplicate keys",
      body: `{"site_id": "${waiting}", "site_id": "${due}"}`,
      expect: bad(/^body: the key "site_id" appears twice in one object$/),
    },
    {
      name: "duplicate keys, one escaped",
      body: `{"site_id": "${waiting}", "site\\u005fid": "${due}"}`,
      expect: bad(/appears twice/),
    },
    {
      name: "duplicate keys in a webhook record",
      body: `{"type":"UPDATE","table":"sites","schema":"public","record":{"id":"${waiting}","id":"${due}"}}`,
      expect: bad(/appears twice/),
    },
    { name: "site_id not a UUID", json: { site_id: "abc" }, expect: bad(/^site_id: must be a UUID$/) },
    {
      name: "site_id without dashes",
      json: { site_id: due.replaceAll("-", "") },
      expect: bad(/must be a UUID/),
    },
    { name: "site_id in braces", json: { site_id: `{${due}}` }, expect: bad(/must be a UUID/) },
    { name: "site_id with a space before", json: { site_id: ` ${due}` }, expect: bad(/must be a UUID/) },
    { name: "site_id with NBSP after", json: { site_id: `${due}\u00A0` }, expect: bad(/must be a UUID/) },
    {
      name: "site_id SQL",
      json: { site_id: `${due}'; delete from public.sites; --` },
      expect: bad(/must be a UUID/),
    },
    { name: "site_id a number", json: { site_id: 7 }, expect: bad(/must be a UUID/) },
    { name: "site_id null", json: { site_id: null }, expect: bad(/must be a UUID/) },
    { name: "site_id an array", json: { site_id: [due] }, expect: bad(/must be a UUID/) },
    { name: "site_id an object", json: { site_id: { id: due } }, expect: bad(/must be a UUID/) },
    {
      name: "site_id in upper case (same site)",
      json: { site_id: waiting.toUpperCase() },
      expect: notDue,
    },
    {
      name: "site_id of no site",
      json: { site_id: crypto.randomUUID() },
      expect: { status: 404, code: "not_found", message: /^No site has this site_id\.$/ },
    },
    {
      name: "the nil UUID",
      json: { site_id: "00000000-0000-0000-0000-000000000000" },
      expect: { status: 404, code: "not_found" },
    },
    {
      name: "an extra field",
      json: { site_id: due, extra: 1 },
      expect: bad(/^body: unknown field "extra"$/),
    },
    {
      name: "__proto__ field",
      body: `{"site_id": "${due}", "__proto__": {"x": 1}}`,
      expect: bad(/unknown field "__proto__"/),
    },
    { name: "constructor field", json: { constructor: {} }, expect: bad(/unknown field "constructor"/) },
    {
      name: "a domain instead of a site_id",
      json: { domain: "x.example" },
      expect: bad(/unknown field "domain"/),
    },
    {
      name: "an unknown field of 1000 characters is named cut short",
      json: { ["k".repeat(1000)]: 1 },
      expect: bad(/^body: unknown field "k{40}…"/),
    },
    {
      name: "over 64 KiB",
      json: { site_id: due, pad: "x".repeat(MAX_BODY_BYTES) },
      expect: { status: 413, code: "payload_too_large", message: /larger than 65536 bytes/ },
    },
    {
      name: "Content-Length over 64 KiB",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-length", String(MAX_BODY_BYTES + 1)]],
      expect: { status: 413, code: "payload_too_large" },
    },
    { name: "an endless stream", body: endlessStream, expect: { status: 413, code: "payload_too_large" } },
    {
      name: "truncated body (the stream fails)",
      body: breakingStream(`{"site_id": "${due}`, new Error("connection reset by peer")),
      expect: bad(/^body: could not be read to its end/),
    },
    {
      name: "the stream fails with a non-Error",
      body: breakingStream("{", { secret: key }),
      expect: bad(/could not be read/),
    },
    {
      name: "body shorter than its Content-Length",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-length", "100"]],
      expect: bad(/^body: \d+ bytes, but Content-Length says 100$/),
    },
    {
      name: "body longer than its Content-Length",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-length", "10"]],
      expect: bad(/Content-Length says 10/),
    },
    {
      name: "Content-Length not a number",
      body: "{}",
      headers: [["content-length", "two"]],
      expect: bad(/^Content-Length:/),
    },
    {
      name: "Content-Length negative",
      body: "{}",
      headers: [["content-length", "-2"]],
      expect: bad(/^Content-Length:/),
    },
    {
      name: "Content-Length with a sign",
      body: "{}",
      headers: [["content-length", "+2"]],
      expect: bad(/^Content-Length:/),
    },
    {
      name: "Content-Length empty",
      body: "{}",
      headers: [["content-length", ""]],
      expect: bad(/^Content-Length:/),
    },
    {
      name: "Content-Length twice, differing",
      body: "{}",
      headers: [["content-length", "2"], ["content-length", "3"]],
      expect: bad(/^Content-Length:/),
    },
    {
      name: "Content-Length twice, the same",
      body: JSON.stringify({ site_id: waiting }),
      headers: [["content-length", String(JSON.stringify({ site_id: waiting }).length)], [
        "content-length",
        String(JSON.stringify({ site_id: waiting }).length),
      ]],
      expect: notDue,
    },
    {
      name: "content-type text/html",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-type", "text/html"]],
      expect: bad(/^Content-Type: must be application\/json$/),
    },
    {
      name: "a form",
      body: `site_id=${due}`,
      headers: [["content-type", "application/x-www-form-urlencoded"]],
      expect: bad(/^Content-Type: must be application\/json$/),
    },
    {
      name: "multipart",
      body: `--b\r\ncontent-disposition: form-data; name="site_id"\r\n\r\n${due}\r\n--b--\r\n`,
      headers: [["content-type", "multipart/form-data; boundary=b"]],
      expect: bad(/^Content-Type:/),
    },
    {
      name: "application/xml",
      body: `<site_id>${due}</site_id>`,
      headers: [["content-type", "application/xml"]],
      expect: bad(/^Content-Type:/),
    },
    {
      name: "JSON in another charset",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-type", "application/json; charset=iso-8859-1"]],
      expect: bad(/^Content-Type: charset must be utf-8$/),
    },
    {
      name: "application/json; charset=utf-8",
      body: JSON.stringify({ site_id: waiting }),
      headers: [["content-type", "application/json; charset=utf-8"]],
      expect: notDue,
    },
    {
      name: "APPLICATION/JSON",
      body: JSON.stringify({ site_id: waiting }),
      headers: [["content-type", "APPLICATION/JSON"]],
      expect: notDue,
    },
    {
      name: "text/plain (supabase-js, string body)",
      body: JSON.stringify({ site_id: waiting }),
      headers: [["content-type", "text/plain;charset=UTF-8"]],
      expect: notDue,
    },
    {
      name: "gzip content-encoding",
      body: gzipped,
      headers: [["content-type", "application/json"], ["content-encoding", "gzip"]],
      expect: bad(/^Content-Encoding: not supported/),
    },
    {
      name: "br content-encoding",
      body: JSON.stringify({ site_id: due }),
      headers: [["content-encoding", "br"]],
      expect: bad(/^Content-Encoding:/),
    },

    // ---- Database Webhook payloads ----
    {
      name: "webhook for another table",
      json: hook({ table: "users" }),
      expect: bad(/table: must be "sites"/),
    },
    {
      name: "webhook for another schema",
      json: hook({ schema: "auth" }),
      expect: bad(/schema: must be "public"/),
    },
    {
      name: "webhook type TRUNCATE",
      json: hook({ type: "TRUNCATE" }),
      expect: bad(/^Database Webhook payload: type:/),
    },
    { name: "webhook type in lower case", json: hook({ type: "update" }), expect: bad(/type:/) },
    { name: "webhook without table", json: hook({ table: undefined }), expect: bad(/table:/) },
    { name: "webhook without schema", json: hook({ schema: undefined }), expect: bad(/schema:/) },
    {
      name: "webhook record without id",
      json: hook({ record: { domain: "x.example" } }),
      expect: bad(/record\.id:/),
    },
    {
      name: "webhook record id not a UUID",
      json: hook({ record: { id: "1" } }),
      expect: bad(/record\.id: must be a UUID/),
    },
    { name: "webhook record an array", json: hook({ record: [due] }), expect: bad(/record:/) },
    {
      name: "webhook UPDATE with record null",
      json: hook({ record: null }),
      expect: bad(/record: required for UPDATE/),
    },
    {
      name: "webhook INSERT with record null",
      json: hook({ type: "INSERT", record: null }),
      expect: bad(/required for INSERT/),
    },
    {
      name: "webhook with an extra field",
      json: hook({ extra: true }),
      expect: bad(/unknown field "extra"/),
    },
    { name: "only a type", json: { type: "UPDATE" }, expect: bad(/^Database Webhook payload:/) },
    { name: "only a record", json: { record: { id: due } }, expect: bad(/^Database Webhook payload:/) },
    {
      name: "webhook record of no site",
      json: hook({ record: { id: crypto.randomUUID() } }),
      expect: { status: 404, code: "not_found" },
    },
    {
      name: "webhook DELETE (acknowledged, ignored)",
      json: hook({ type: "DELETE", record: null, old_record: { id: due } }),
      expect: { status: 200, answer: { accepted: false, reason: "the row was deleted" } },
    },
    {
      name: "webhook DELETE with the row in record (ignored)",
      json: hook({ type: "DELETE" }),
      expect: { status: 200, answer: { accepted: false, reason: "the row was deleted" } },
    },
    {
      name: "webhook INSERT of a site not due",
      json: hook({ type: "INSERT", record: { id: waiting }, old_record: null }),
      expect: notDue,
    },

    // ---- /retry ----
    {
      name: "retry with both fields",
      path: "/retry",
      json: { site_id: active, all_failed: true },
      expect: bad(/^body: expected/),
    },
    { name: "retry with neither", path: "/retry", json: {}, expect: bad(/^body: expected/) },
    { name: "retry with no body", path: "/retry", method: "POST", expect: bad(/^body: expected/) },
    {
      name: "retry all_failed false",
      path: "/retry",
      json: { all_failed: false },
      expect: bad(/^body: expected/),
    },
    {
      name: 'retry all_failed "true"',
      path: "/retry",
      json: { all_failed: "true" },
      expect: bad(/^body: expected/),
    },
    { name: "retry all_failed 1", path: "/retry", json: { all_failed: 1 }, expect: bad(/^body: expected/) },
    {
      name: "retry all_failed null",
      path: "/retry",
      json: { all_failed: null },
      expect: bad(/^body: expected/),
    },
    {
      name: "retry site_id not a UUID",
      path: "/retry",
      json: { site_id: "x" },
      expect: bad(/^body: expected/),
    },
    {
      name: "retry with an extra field",
      path: "/retry",
      json: { all_failed: true, x: 1 },
      expect: bad(/^body: expected/),
    },
    { name: "retry an array", path: "/retry", json: [{ all_failed: true }], expect: bad(/^body: expected/) },
    { name: "retry invalid JSON", path: "/retry", body: "{all_failed: true}", expect: bad(/not valid JSON/) },
    {
      name: "retry site_id of no site",
      path: "/retry",
      json: { site_id: crypto.randomUUID() },
      expect: { status: 404, code: "not_found" },
    },
    {
      name: "retry a site that has not failed (skipped)",
      path: "/retry",
      json: { site_id: active },
      expect: { status: 200, answer: { requeued: [] } },
    },
    {
      name: "retry all_failed with nothing failed",
      path: "/retry",
      json: { all_failed: true },
      expect: { status: 200, answer: { requeued: [], skipped: [] } },
    },

    // ---- /remove: every refusal leaves the due site (and every other) as it was ----
    ...removeCases(f),

    // ---- over TCP: framing a Request object cannot express ----
    {
      name: "TCP: body shorter than its Content-Length, then the client stops sending",
      raw: `POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\napikey: {key}\r\n` +
        `content-type: application/json\r\ncontent-length: 500\r\n\r\n{"site_id": "${due}`,
      halfClose: true,
      expect: bad(/^body: could not be read to its end/),
    },
    {
      name: "TCP: /remove, body shorter than its Content-Length, then the client stops sending",
      raw: `POST /functions/v1/hosting-automator/remove HTTP/1.1\r\nhost: t\r\napikey: {key}\r\n` +
        `content-type: application/json\r\ncontent-length: 500\r\n\r\n{"site_id": "${due}`,
      halfClose: true,
      expect: bad(/^body: could not be read to its end/),
    },
    {
      name: "TCP: a broken chunk size",
      raw:
        `POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\nconnection: close\r\napikey: {key}\r\n` +
        `transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
      expect: bad(/could not be read/),
    },
    {
      name: "TCP: a chunked body is read whole",
      raw:
        `POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\nconnection: close\r\napikey: {key}\r\n` +
        `transfer-encoding: chunked\r\n\r\n${chunked(JSON.stringify({ site_id: waiting }))}`,
      expect: notDue,
    },
    {
      name: "TCP: NBSP after the key (UTF-8 on the wire)",
      raw: `GET /functions/v1/hosting-automator/status HTTP/1.1\r\nhost: t\r\nconnection: close\r\n` +
        `apikey: {key}\u00A0\r\n\r\n`,
      expect: unauthorized,
    },
    {
      name: "TCP: TRACE",
      raw:
        `TRACE /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\nconnection: close\r\napikey: {key}\r\n\r\n`,
      expect: { status: 405, code: "method_not_allowed", allow: "POST" },
    },
    {
      name: "TCP: Content-Length not a number",
      raw:
        `POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\nconnection: close\r\napikey: {key}\r\n` +
        `content-length: 2x\r\n\r\n{}`,
      expect: { status: 400, by: "server" },
    },
    {
      name: "TCP: two differing Content-Lengths",
      raw:
        `POST /functions/v1/hosting-automator HTTP/1.1\r\nhost: t\r\nconnection: close\r\napikey: {key}\r\n` +
        `content-length: 2\r\ncontent-length: 3\r\n\r\n{}`,
      expect: { status: 400, by: "server" },
    },
  ];
}

/**
 * Refused removals. Each names the due site where a site is named, so a request wrongly let through would set
 * its row to `removing`, queue a removal and cancel its job: the snapshot would show it.
 */
function removeCases(f: Fixtures): Case[] {
  const { key, due } = f;
  const bad = (message: RegExp) => ({ status: 400, code: "bad_request" as const, message });
  const expected = /^body: expected \{"site_id": "<uuid>"\}$/;
  const remove = (name: string, fields: Omit<Case, "name" | "path">): Case => ({
    name: `remove: ${name}`,
    path: "/remove",
    ...fields,
  });
  return [
    remove("no credentials", {
      auth: "none",
      json: { site_id: due },
      expect: { status: 401, code: "unauthorized" },
    }),
    remove("a wrong key", {
      auth: "none",
      headers: [["apikey", `${key}x`]],
      json: { site_id: due },
      expect: { status: 401, code: "unauthorized" },
    }),
    remove("the key as Basic", {
      auth: "none",
      headers: [["authorization", `Basic ${btoa(`x:${key}`)}`]],
      json: { site_id: due },
      expect: { status: 401, code: "unauthorized" },
    }),
    remove("no body", { method: "POST", expect: bad(expected) }),
    remove("an empty object", { json: {}, expect: bad(expected) }),
    remove("all_failed instead of a site", { json: { all_failed: true }, expect: bad(expected) }),
    remove("a domain instead of a site_id", { json: { domain: "due.example" }, expect: bad(expected) }),
    remove("an array of a request", { json: [{ site_id: due }], expect: bad(expected) }),
    remove("null", { json: null, expect: bad(expected) }),
    remove("a string", { json: due, expect: bad(expected) }),
    remove("a Database Webhook payload", {
      json: { type: "DELETE", table: "sites", schema: "public", record: null, old_record: { id: due } },
      expect: bad(expected),
    }),
    remove("site_id not a UUID", {
      json: { site_id: "due.example" },
      expect: bad(/^site_id: must be a UUID$/),
    }),
    remove("site_id SQL", {
      json: { site_id: `${due}'; update public.sites set status_hosting = 'removing'; --` },
      expect: bad(/^site_id: must be a UUID$/),
    }),
    remove("site_id null", { json: { site_id: null }, expect: bad(/must be a UUID/) }),
    remove("site_id an array", { json: { site_id: [due] }, expect: bad(/must be a UUID/) }),
    remove("site_id with NBSP after", { json: { site_id: `${due}\u00A0` }, expect: bad(/must be a UUID/) }),
    remove("an extra field", {
      json: { site_id: due, force: true },
      expect: bad(/^body: unknown field "force"$/),
    }),
    remove("two sites", { json: { site_id: due, site_ids: [due] }, expect: bad(/unknown field "site_ids"/) }),
    remove("duplicate keys", {
      body: `{"site_id": "${crypto.randomUUID()}", "site_id": "${due}"}`,
      expect: bad(/^body: the key "site_id" appears twice in one object$/),
    }),
    remove("invalid JSON", { body: `{"site_id": "${due}"`, expect: bad(/^body: is not valid JSON$/) }),
    remove("invalid UTF-8", { body: latin1(`{"site_id": "${due}\xFF"}`), expect: bad(/not valid UTF-8/) }),
    remove(`nesting ${MAX_JSON_DEPTH + 1} levels deep`, {
      body: JSON.stringify({ site_id: due, x: nested(MAX_JSON_DEPTH) }),
      expect: bad(/nested deeper/),
    }),
    remove("over 64 KiB", {
      json: { site_id: due, pad: "x".repeat(MAX_BODY_BYTES) },
      expect: { status: 413, code: "payload_too_large" },
    }),
    remove("an endless stream", { body: endlessStream, expect: { status: 413, code: "payload_too_large" } }),
    remove("truncated body (the stream fails)", {
      body: breakingStream(`{"site_id": "${due}`, new Error("connection reset by peer")),
      expect: bad(/^body: could not be read to its end/),
    }),
    remove("body longer than its Content-Length", {
      body: JSON.stringify({ site_id: due }),
      headers: [["content-length", "10"]],
      expect: bad(/Content-Length says 10/),
    }),
    remove("a form", {
      body: `site_id=${due}`,
      headers: [["content-type", "application/x-www-form-urlencoded"]],
      expect: bad(/^Content-Type: must be application\/json$/),
    }),
    remove("gzip content-encoding", {
      body: JSON.stringify({ site_id: due }),
      headers: [["content-encoding", "gzip"]],
      expect: bad(/^Content-Encoding:/),
    }),
    remove("wait=maybe", {
      query: "wait=maybe",
      json: { site_id: due },
      expect: bad(/^wait: must be true or false$/),
    }),
    remove("wait twice", {
      query: "wait=true&wait=true",
      json: { site_id: due },
      expect: bad(/^wait: given more than once$/),
    }),
    remove("site_id of no site", {
      json: { site_id: crypto.randomUUID() },
      expect: { status: 404, code: "not_found", message: /^No site has this site_id\.$/ },
    }),
    remove("the nil UUID", {
      json: { site_id: "00000000-0000-0000-0000-000000000000" },
      expect: { status: 404, code: "not_found" },
    }),
    {
      name: "/REMOVE (case)",
      path: "/REMOVE",
      json: { site_id: due },
      expect: { status: 404, code: "not_found" },
    },
    {
      name: "a path below /remove",
      path: `/remove/${due}`,
      json: { site_id: due },
      expect: { status: 404, code: "not_found" },
    },
    {
      name: "the kick route with a remove field",
      json: { site_id: due, remove: true },
      expect: bad(/^body: unknown field "remove"$/),
    },
  ];
}

function chunked(text: string): string {
  const bytes = encoder.encode(text);
  return `${bytes.length.toString(16)}\r\n${text}\r\n0\r\n\r\n`;
}

function requestOf(c: Case, key: string): Request {
  const headers = new Headers();
  if ((c.auth ?? "apikey") === "apikey") headers.set("apikey", key);
  let body: BodyInit | undefined;
  if (c.json !== undefined) {
    body = JSON.stringify(c.json);
    headers.set("content-type", "application/json");
  } else if (typeof c.body === "function") body = c.body();
  else if (c.body !== undefined) body = c.body;
  for (const [name, value] of c.headers ?? []) {
    // A header given by the case replaces the default one the first time, then adds a field.
    if (name === "content-type" && c.json !== undefined) headers.delete(name);
    headers.append(name, value);
  }
  const url = (c.url ?? `${FUNCTION_URL}${c.path ?? ""}`) + (c.query ? `?${c.query}` : "");
  return new Request(url, { method: c.method ?? (body !== undefined ? "POST" : "GET"), headers, body });
}

async function sendRaw(port: number, text: string, halfClose: boolean): Promise<Response> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(text));
    if (halfClose) await conn.closeWrite();
    const bytes = new Uint8Array(await new Response(conn.readable).arrayBuffer());
    const split = findHeadEnd(bytes);
    const head = new TextDecoder().decode(bytes.subarray(0, split));
    const [statusLine, ...lines] = head.split("\r\n");
    const headers = new Headers();
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon > 0) headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
    }
    return new Response(bytes.subarray(split + 4), { status: Number(statusLine.split(" ")[1]), headers });
  } catch (error) {
    try {
      conn.close();
    } catch { /* already closed by reading to the end */ }
    throw error;
  }
}

function findHeadEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  throw new Error("no end of the response head");
}

/** Everything a request could change, one query per table, and the commands the simulator received. */
async function snapshot(stack: Stack) {
  const [sites] = await stack
    .sql`select coalesce(jsonb_agg(t order by t::text), '[]') as rows from public.sites t`;
  const [jobs] = await stack
    .sql`select coalesce(jsonb_agg(t order by t::text), '[]') as rows from hosting_automator.jobs t`;
  const [steps] = await stack
    .sql`select coalesce(jsonb_agg(t order by t::text), '[]') as rows from hosting_automator.steps t`;
  const [events] = await stack
    .sql`select coalesce(jsonb_agg(t order by t::text), '[]') as rows from hosting_automator.events t`;
  const [kicks] = await stack
    .sql`select coalesce(jsonb_agg(t order by t::text), '[]') as rows from net.http_request_queue t`;
  return {
    sites: sites.rows,
    jobs: jobs.rows,
    steps: steps.rows,
    events: events.rows,
    kicks: kicks.rows,
    calls: (await stack.simState()).calls,
  };
}

/** Text that would betray internals: stack frames, error class names, SQL, library names, the key. */
function internals(key: string): RegExp {
  return new RegExp(
    [
      "\\bat \\S+:\\d+",
      "Error\\b",
      "\\bstack\\b",
      "postgres",
      "\\bselect\\b",
      "\\bsql\\b",
      "zod",
      "file:",
      "hosting_automator\\.",
      "\\n",
      "connection reset",
      key,
    ].join("|"),
    "i",
  );
}

Deno.test("hostile requests get their documented answer, change nothing and reach no server", async (t) => {
  await withStack({ label: "hostile" }, async (stack) => {
    const due = await stack.insertSite("due.example", { status_dns: "active" });
    const waiting = await stack.insertSite("waiting.example");
    const active = await stack.insertSite("active.example", {
      status_dns: "active",
      status_hosting: "active",
    });
    await stack
      .sql`update public.sites set matomo_site_id = 7, hosting_doc_root = '/home/x/htdocs/active.example'
      where id = ${active}`;
    await stack.sql`update hosting_automator.jobs set run_at = now() where site_id = ${due}`;
    await stack.sql`delete from net.http_request_queue`;
    const [{ queued }] = await stack.sql`select count(*)::int as queued from hosting_automator.jobs
      where site_id = ${due} and state = 'queued' and run_at <= now()`;
    assert.equal(queued, 1, "the due site's job is due now: a request that ran the workflow would take it");

    const key = stack.serviceKey;
    const table = cases({ key, due, waiting, active }, await gzip(JSON.stringify({ site_id: due })));
    assert.ok(table.length >= 100, `${table.length} cases`);
    assert.equal(new Set(table.map((c) => c.name)).size, table.length, "case names are unique");
    const leaks = internals(key);
    const initial = await snapshot(stack);
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, stack.app.fetch);
    try {
      for (const c of table) {
        await t.step(`${c.expect.status} ${c.expect.code ?? ""} ← ${c.name}`, async () => {
          const before = await snapshot(stack);
          const response = c.raw
            ? await sendRaw(server.addr.port, c.raw.replaceAll("{key}", key), c.halfClose ?? false)
            : await stack.app.fetch(requestOf(c, key));
          await stack.settle();
          const text = await response.text();
          const shown = text.replaceAll(key, "<key>").slice(0, 300);
          assert.equal(response.status, c.expect.status, `status; body: ${shown}`);
          if (c.expect.by === "server") {
            assert.doesNotMatch(text, /"error"/, "refused by the server, before the handler");
          } else if (c.expect.code) {
            assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
            const body = JSON.parse(text);
            assert.deepEqual(Object.keys(body), ["error"]);
            assert.deepEqual(Object.keys(body.error).sort(), ["code", "message"]);
            assert.equal(body.error.code, c.expect.code);
            assert.equal(typeof body.error.message, "string");
            assert.ok(body.error.message.length > 0 && body.error.message.length <= 300, "a short message");
            assert.doesNotMatch(body.error.message, leaks, `nothing internal in: ${shown}`);
            if (c.expect.message) assert.match(body.error.message, c.expect.message);
            if (c.expect.allow) assert.equal(response.headers.get("allow"), c.expect.allow);
          } else {
            const body = JSON.parse(text);
            assert.equal(body.error, undefined);
            for (const [field, value] of Object.entries(c.expect.answer ?? {})) {
              assert.deepEqual(body[field], value, field);
            }
            for (const field of c.expect.has ?? []) assert.ok(field in body, `the answer has ${field}`);
          }
          assert.deepEqual(await snapshot(stack), before, "nothing changed");
        });
      }
    } finally {
      await server.shutdown();
    }
    assert.deepEqual(await snapshot(stack), initial, "the whole table changed nothing");
    assert.equal(
      stack.logs.filter((line) => line.includes('"level":"error"')).length,
      0,
      "no 500 on the way",
    );
  });
});
