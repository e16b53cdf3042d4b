/**
 * The DNS check before the certificate: the DNS-over-HTTPS client against the resolver simulator over loopback
 * HTTP (a public resolver cannot be reached or steered from a test), and the simulator's own JSON API shape.
 */
import assert from "node:assert/strict";
import { type DohSim, type DohSimOptions, startDohSim } from "../dev/doh_sim.ts";
import {
  canonicalIp,
  checkPointsTo,
  type DnsOptions,
  resolve,
} from "../supabase/functions/hosting-automator/dns.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { registerSecret } from "./support/env.ts";
import { failsWith } from "./support/errors.ts";

const SERVER_V4 = "203.0.113.10";
const SERVER_V6 = "2001:db8::10";
const ELSEWHERE_V4 = "198.51.100.7";
const NAMES = ["example.com", "www.example.com"];

async function withResolver(
  fn: (sim: DohSim, options: DnsOptions) => Promise<void>,
  simOptions: DohSimOptions = {},
  options: Partial<DnsOptions> = {},
): Promise<void> {
  const sim = await startDohSim(simOptions);
  try {
    await fn(sim, { resolverUrl: sim.url, timeoutMs: 2000, ...options });
  } finally {
    await sim.close();
  }
}

/** The resolver as messages name it: host and port, nothing of the path or query. */
const hostOf = (sim: DohSim) => `127.0.0.1:${sim.port}`;

Deno.test("canonicalIp: one spelling per address; anything else is not an address", () => {
  const table: [string, string | null][] = [
    ["203.0.113.10", "203.0.113.10"],
    ["2001:db8::1", "2001:db8::1"],
    ["2001:0db8:0:0:0:0:0:1", "2001:db8::1"],
    ["2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["::ffff:203.0.113.10", "::ffff:cb00:710a"],
    ["203.0.113.010", null], // a leading zero reads as octal to some parsers
    ["203.0.113", null],
    ["256.0.0.1", null],
    ["fe80::1%eth0", null],
    ["2001:db8::1::2", null],
    ["example.com", null],
    ["", null],
  ];
  for (const [input, want] of table) assert.equal(canonicalIp(input), want, input);
});

Deno.test("a domain whose names have only A records at the server is ready, asked with the JSON API's GET", async () => {
  await withResolver(async (sim, options) => {
    for (const name of NAMES) sim.setRecords(name, { A: [SERVER_V4] });
    const result = await checkPointsTo(NAMES, [SERVER_V4, SERVER_V6], options);
    assert.deepEqual(result, { answered: { "example.com": [SERVER_V4], "www.example.com": [SERVER_V4] } });
    const asked = sim.queries.map((q) => `${q.name} ${q.type}`).sort();
    assert.deepEqual(asked, [
      "example.com A",
      "example.com AAAA",
      "www.example.com A",
      "www.example.com AAAA",
    ]);
    for (const q of sim.queries) {
      assert.equal(q.path, "/dns-query");
      assert.equal(q.accept, "application/dns-json");
      assert.equal(q.status, 200);
    }
  });
});

Deno.test("a domain whose names have only AAAA records at the server is ready", async () => {
  await withResolver(async (sim, options) => {
    for (const name of NAMES) sim.setRecords(name, { AAAA: [SERVER_V6] });
    const result = await checkPointsTo(NAMES, [SERVER_V4, SERVER_V6], options);
    assert.deepEqual(result.answered, { "example.com": [SERVER_V6], "www.example.com": [SERVER_V6] });
  });
});

Deno.test("a domain with both A and AAAA records at the server is ready, A first", async () => {
  await withResolver(async (sim, options) => {
    for (const name of NAMES) sim.setRecords(name, { A: [SERVER_V4], AAAA: [SERVER_V6] });
    const result = await checkPointsTo(NAMES, [SERVER_V6, SERVER_V4], options);
    assert.deepEqual(result.answered, {
      "example.com": [SERVER_V4, SERVER_V6],
      "www.example.com": [SERVER_V4, SERVER_V6],
    });
  });
});

Deno.test("Google's endpoint shape (/resolve, a Comment, no accept needed) answers the same", async () => {
  await withResolver(async (sim, options) => {
    assert.match(sim.url, /\/resolve$/);
    for (const name of NAMES) sim.setRecords(name, { A: [SERVER_V4] });
    const result = await checkPointsTo(NAMES, [SERVER_V4], options);
    assert.deepEqual(result.answered, { "example.com": [SERVER_V4], "www.example.com": [SERVER_V4] });
    assert.ok(sim.queries.every((q) => q.path === "/resolve"));
  }, { style: "google" });
});

Deno.test("a domain that points elsewhere is dns_not_ready, saying what DNS answered and what was expected", async () => {
  await withResolver(async (sim, options) => {
    for (const name of NAMES) sim.setRecords(name, { A: [ELSEWHERE_V4] });
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(error.transient, true);
    assert.equal(
      error.publicMessage,
      `DNS does not point at the server yet: example.com → ${ELSEWHERE_V4} (expected ${SERVER_V4}); ` +
        `www.example.com → ${ELSEWHERE_V4} (expected ${SERVER_V4}).`,
    );
    assert.match(error.message, new RegExp(`Resolver: ${hostOf(sim)}\\.$`));
  });
});

Deno.test("an old address left beside the server's is not ready: Let's Encrypt may pick either", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4, ELSEWHERE_V4] });
    sim.setRecords("www.example.com", { A: [SERVER_V4], AAAA: ["2001:db8::bad"] });
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      `DNS does not point at the server yet: example.com → ${SERVER_V4}, ${ELSEWHERE_V4} (expected only ${SERVER_V4}); ` +
        `www.example.com → ${SERVER_V4}, 2001:db8::bad (expected only ${SERVER_V4}).`,
    );
  });
});

Deno.test("a missing www is named, beside an apex that points elsewhere", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [ELSEWHERE_V4] });
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      "DNS does not point at the server yet: example.com → 198.51.100.7 (expected 203.0.113.10); " +
        "www.example.com has no A or AAAA record (NXDOMAIN: the name does not exist).",
    );
  });
});

Deno.test("a missing www alone: not ready, and the server's addresses are said once", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4], AAAA: [SERVER_V6] });
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4, SERVER_V6], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      "DNS does not point at the server yet: www.example.com has no A or AAAA record " +
        `(NXDOMAIN: the name does not exist). The server's addresses: ${SERVER_V4} or ${SERVER_V6}.`,
    );
  });
});

Deno.test("a name that exists without an address (NODATA) is not ready, and not called NXDOMAIN", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    sim.setRecords("www.example.com", {}); // exists, e.g. with only MX or TXT records
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      `DNS does not point at the server yet: www.example.com has no A or AAAA record. The server's addresses: ${SERVER_V4}.`,
    );
  });
});

Deno.test("NXDOMAIN resolves to no addresses, and a domain that does not exist at all is not ready", async () => {
  await withResolver(async (sim, options) => {
    assert.deepEqual(await resolve("example.com", "A", options), []);
    assert.deepEqual(await resolve("example.com", "AAAA", options), []);
    assert.ok(sim.queries.every((q) => q.rcode === 3));
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      "DNS does not point at the server yet: example.com has no A or AAAA record (NXDOMAIN: the name does not exist); " +
        "www.example.com has no A or AAAA record (NXDOMAIN: the name does not exist). The server's addresses: 203.0.113.10.",
    );
  });
});

Deno.test("a CNAME chain is followed to its addresses; only records of the asked type count", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    sim.setRecords("www.example.com", { CNAME: "example.com" });
    sim.setRecords("shop.example.com", { CNAME: "edge.cdn.example.net" });
    sim.setRecords("edge.cdn.example.net", { CNAME: "lb.example.org" });
    sim.setRecords("lb.example.org", { A: [SERVER_V4], AAAA: [SERVER_V6] });
    assert.deepEqual(await resolve("shop.example.com", "A", options), [SERVER_V4]);
    assert.deepEqual(await resolve("shop.example.com", "AAAA", options), [SERVER_V6]);
    const result = await checkPointsTo(
      ["example.com", "www.example.com", "shop.example.com"],
      [SERVER_V4, SERVER_V6],
      options,
    );
    assert.deepEqual(result.answered, {
      "example.com": [SERVER_V4],
      "www.example.com": [SERVER_V4],
      "shop.example.com": [SERVER_V4, SERVER_V6],
    });
  });
});

Deno.test("a CNAME chain that ends elsewhere, or nowhere, is not ready", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { CNAME: "old-host.example.net" });
    sim.setRecords("old-host.example.net", { A: [ELSEWHERE_V4] });
    sim.setRecords("www.example.com", { CNAME: "gone.example.net" }); // the target does not exist
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      `DNS does not point at the server yet: example.com → ${ELSEWHERE_V4} (expected ${SERVER_V4}); ` +
        "www.example.com has no A or AAAA record (NXDOMAIN: the name does not exist).",
    );
  });
});

Deno.test("IPv6 addresses compare in any spelling, from DNS and from the settings", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { AAAA: ["2001:0db8:0000:0000:0000:0000:0000:0010"] });
    sim.setRecords("www.example.com", { AAAA: ["2001:DB8::10"] });
    const result = await checkPointsTo(NAMES, ["2001:0DB8:0:0:0:0:0:10"], options);
    assert.deepEqual(result.answered, { "example.com": [SERVER_V6], "www.example.com": [SERVER_V6] });
    // and a different address stays different, shown in its canonical spelling
    sim.setRecords("www.example.com", { AAAA: ["2001:0db8:0:0:0:0:0:0011"] });
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V6], options), "dns_not_ready");
    assert.equal(
      error.publicMessage,
      `DNS does not point at the server yet: www.example.com → 2001:db8::11 (expected ${SERVER_V6}).`,
    );
  });
});

Deno.test("a resolver that is down is dns_resolver_unavailable, named by its host", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    await sim.down();
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_resolver_unavailable");
    assert.equal(error.transient, true);
    assert.equal(error.publicMessage, `The DNS resolver ${hostOf(sim)} could not be reached; will retry.`);
    sim.up();
    assert.deepEqual(await resolve("example.com", "A", options), [SERVER_V4]);
  });
});

Deno.test("a resolver URL's path and query never reach a message (a private resolver's profile id)", async () => {
  await withResolver(async (sim) => {
    const profile = registerSecret(`profile-${crypto.randomUUID()}`);
    const options = { resolverUrl: `${sim.url}?profile=${profile}`, timeoutMs: 2000 };
    sim.setRecords("example.com", { A: [ELSEWHERE_V4] });
    const notReady = await failsWith(checkPointsTo(["example.com"], [SERVER_V4], options), "dns_not_ready");
    await sim.down();
    const down = await failsWith(
      checkPointsTo(["example.com"], [SERVER_V4], options),
      "dns_resolver_unavailable",
    );
    for (const error of [notReady, down]) {
      for (const text of [error.message, error.publicMessage, String(error.cause ?? "")]) {
        assert.ok(!text.includes(profile), text);
        assert.ok(!text.includes("/dns-query"), text);
      }
    }
    assert.match(down.message, new RegExp(`could not be reached for example\\.com A+: .*<${hostOf(sim)}>`));
  });
});

Deno.test("a resolver answering 503 is dns_resolver_unavailable with the status", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    await sim.down("503");
    const error = await failsWith(resolve("example.com", "A", options), "dns_resolver_unavailable");
    assert.equal(error.publicMessage, `The DNS resolver ${hostOf(sim)} answered HTTP 503; will retry.`);
    assert.match(error.message, /answered HTTP 503 to the query for example\.com A$/);
    sim.up();
    sim.fail({ kind: "status", status: 502 }, 1);
    const once = await failsWith(resolve("example.com", "A", options), "dns_resolver_unavailable");
    assert.equal(once.publicMessage, `The DNS resolver ${hostOf(sim)} answered HTTP 502; will retry.`);
    assert.deepEqual(await resolve("example.com", "A", options), [SERVER_V4]);
  });
});

Deno.test("SERVFAIL and REFUSED are the resolver's trouble, not an answer", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    sim.setRecords("www.example.com", { A: [SERVER_V4] });
    sim.servfail("www.example.com");
    const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_resolver_unavailable");
    assert.match(
      error.publicMessage,
      /^The DNS resolver 127\.0\.0\.1:\d+ answered SERVFAIL for www\.example\.com A+; will retry\.$/,
    );
    assert.match(error.message, /answered SERVFAIL \(Status 2\)/);
    sim.clearFaults();
    sim.servfail("example.com", 5);
    const refused = await failsWith(resolve("example.com", "AAAA", options), "dns_resolver_unavailable");
    assert.equal(
      refused.publicMessage,
      `The DNS resolver ${hostOf(sim)} answered REFUSED for example.com AAAA; will retry.`,
    );
  });
});

Deno.test("garbage from the resolver is dns_resolver_unavailable: not JSON, another shape, an HTML page", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    sim.fail({ kind: "garbage" }, 1);
    const garbage = await failsWith(resolve("example.com", "A", options), "dns_resolver_unavailable");
    assert.equal(
      garbage.publicMessage,
      `The DNS resolver ${
        hostOf(sim)
      } answered something that is not a DNS JSON answer (text that is not JSON); check the resolver URL. Will retry.`,
    );
    assert.match(garbage.message, /with text that is not JSON: \{"Status":0/);
    sim.fail({ kind: "shape" }, 1);
    const shape = await failsWith(resolve("example.com", "A", options), "dns_resolver_unavailable");
    assert.match(shape.publicMessage, /\(JSON of another shape\); check the resolver URL/);
  });
  const html = fakeResolver(() => new Response("<!doctype html><title>Sign in</title>", { status: 200 }));
  const error = await failsWith(resolve("example.com", "A", html), "dns_resolver_unavailable");
  assert.equal(
    error.publicMessage,
    "The DNS resolver doh.example.net answered something that is not a DNS JSON answer (an HTML page); check the resolver URL. Will retry.",
  );
});

/** A resolver that answers whatever `answer` builds: for answers the simulator, faithful, never gives. */
function fakeResolver(answer: (url: URL) => Response): DnsOptions {
  return {
    resolverUrl: "https://doh.example.net/dns-query",
    timeoutMs: 1000,
    fetch: (input) => Promise.resolve(answer(new URL(String(input)))),
  };
}

function dnsJson(body: Record<string, unknown>): Response {
  return new Response(
    JSON.stringify({ Status: 0, TC: false, RD: true, RA: true, AD: false, CD: false, ...body }),
    { status: 200, headers: { "content-type": "application/dns-json" } },
  );
}

Deno.test("a well-formed answer that does not fit the question is not trusted", async () => {
  const question = [{ name: "example.com.", type: 1 }];
  const cases: [string, Record<string, unknown>, RegExp][] = [
    [
      "an A record holding a name",
      { Question: question, Answer: [{ name: "example.com.", type: 1, TTL: 60, data: "example.net." }] },
      /\(an A record whose data is not an address\)/,
    ],
    [
      "an A record holding an IPv6 address",
      { Question: question, Answer: [{ name: "example.com.", type: 1, TTL: 60, data: SERVER_V6 }] },
      /\(an A record whose data is not an address\)/,
    ],
    [
      "the answer to another name",
      { Question: [{ name: "example.org.", type: 1 }], Answer: [] },
      /\(an answer to another question\)/,
    ],
    ["a truncated answer", { TC: true, Question: question, Answer: [] }, /\(a truncated answer \(TC\)\)/],
    ["a Status that is not a number", { Status: "NOERROR", Question: question }, /\(JSON of another shape\)/],
  ];
  for (const [what, body, message] of cases) {
    const error = await failsWith(
      resolve("example.com", "A", fakeResolver(() => dnsJson(body))),
      "dns_resolver_unavailable",
    );
    assert.match(error.publicMessage, message, what);
  }
  // The question's name may differ in case and in its trailing dot (RFC 4343).
  const upper = fakeResolver(() =>
    dnsJson({
      Question: [{ name: "EXAMPLE.com", type: 1 }],
      Answer: [{ name: "EXAMPLE.com", type: 1, TTL: 60, data: SERVER_V4 }],
    })
  );
  assert.deepEqual(await resolve("example.com", "A", upper), [SERVER_V4]);
});

Deno.test("a resolver slower than the timeout is dns_resolver_unavailable, on time", async () => {
  await withResolver(
    async (sim, options) => {
      sim.setRecords("example.com", { A: [SERVER_V4] });
      sim.setLatency(5000);
      const started = performance.now();
      const error = await failsWith(checkPointsTo(NAMES, [SERVER_V4], options), "dns_resolver_unavailable");
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 2000, `gave up after ${Math.round(elapsed)} ms`);
      assert.equal(
        error.publicMessage,
        `The DNS resolver ${hostOf(sim)} did not answer within 0.3 s; will retry.`,
      );
      assert.match(error.message, /did not answer the query for (www\.)?example\.com A+ within 300 ms/);
      sim.setLatency(0);
      sim.fail({ kind: "hang" }, 1);
      await failsWith(resolve("example.com", "A", options), "dns_resolver_unavailable");
    },
    {},
    { timeoutMs: 300 },
  );
});

Deno.test("the step's abort stops the query and its reason is what the caller gets", async () => {
  await withResolver(async (sim, options) => {
    sim.setRecords("example.com", { A: [SERVER_V4] });
    sim.setLatency(5000);
    const step = new AbortController();
    const lost = new HostingError("lease_lost", "lease lost (test)");
    const pending = checkPointsTo(NAMES, [SERVER_V4], { ...options, signal: step.signal });
    setTimeout(() => step.abort(lost), 100);
    const started = performance.now();
    const error = await failsWith(pending, "lease_lost");
    assert.equal(error, lost);
    assert.ok(performance.now() - started < 1500);
    const aborted = await failsWith(
      resolve("example.com", "A", { ...options, signal: AbortSignal.abort("shutdown") }),
      "interrupted",
    );
    assert.match(aborted.message, /aborted \(shutdown\)/);
  });
});

Deno.test("settings that cannot work are config_invalid before any query", async () => {
  await withResolver(async (sim, options) => {
    const noAddress = await failsWith(checkPointsTo(NAMES, [], options), "config_invalid");
    assert.match(noAddress.publicMessage, /no public address/);
    const badAddress = await failsWith(checkPointsTo(NAMES, ["203.0.113.300"], options), "config_invalid");
    assert.equal(
      badAddress.publicMessage,
      "The server's public address '203.0.113.300' is not an IPv4 or IPv6 address.",
    );
    await failsWith(
      checkPointsTo(NAMES, [SERVER_V4], { ...options, resolverUrl: "dns.example.net" }),
      "config_invalid",
    );
    assert.equal(sim.queries.length, 0);
  });
});

Deno.test("simulator: the JSON API's shape, Cloudflare's accept rule, a CNAME loop and 503 while down", async () => {
  await withResolver(async (sim) => {
    sim.setRecords("www.example.com", { CNAME: "example.com" });
    sim.setRecords("example.com", { A: [SERVER_V4] });
    const ask = (query: string, headers: HeadersInit = { accept: "application/dns-json" }) =>
      fetch(`${sim.url}?${query}`, { headers }).then(async (r) => ({
        status: r.status,
        body: await r.json(),
      }));

    const chain = await ask("name=WWW.example.com&type=a");
    assert.equal(chain.status, 200);
    assert.deepEqual(chain.body, {
      Status: 0,
      TC: false,
      RD: true,
      RA: true,
      AD: false,
      CD: false,
      Question: [{ name: "www.example.com.", type: 1 }],
      Answer: [
        { name: "www.example.com.", type: 5, TTL: 300, data: "example.com." },
        { name: "example.com.", type: 1, TTL: 300, data: SERVER_V4 },
      ],
    });
    const byNumber = await ask("name=example.com&type=28");
    assert.equal(byNumber.body.Status, 0);
    assert.equal(byNumber.body.Answer, undefined);
    assert.equal(byNumber.body.Authority[0].type, 6);
    const nx = await ask("name=nowhere.example.com");
    assert.equal(nx.body.Status, 3);

    assert.equal((await ask("name=example.com&type=A", {})).status, 400); // no accept: the binary form expected
    assert.equal((await ask("name=example.com&type=A&ct=application/dns-json", {})).status, 200);
    assert.equal((await ask("name=example..com")).status, 400);

    sim.setRecords("a.example.com", { CNAME: "b.example.com" });
    sim.setRecords("b.example.com", { CNAME: "a.example.com" });
    assert.equal((await ask("name=a.example.com&type=A")).body.Status, 2);

    await sim.down("503");
    const unavailable = await fetch(`${sim.url}?name=example.com`);
    await unavailable.body?.cancel();
    assert.equal(unavailable.status, 503);
    assert.deepEqual(
      sim.queries.map((q) => q.status),
      [200, 200, 200, 400, 200, 400, 200, 503],
    );
  });
});
