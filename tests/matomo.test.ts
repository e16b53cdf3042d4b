/**
 * The Matomo client against the Matomo simulator over loopback HTTP (the client's rules and Matomo's
 * behaviour: docs/architecture.md §9 and §15.3; why a simulator: docs/architecture.md §14).
 */
import assert from "node:assert/strict";
import { MatomoSim, MatomoSimOptions, startMatomoSim } from "../dev/matomo_sim.ts";
import type { MatomoConfig } from "../supabase/functions/hosting-automator/config.ts";
import { type Domain, parseDomain } from "../supabase/functions/hosting-automator/domain.ts";
import { type ErrorCode, HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import { MatomoClient } from "../supabase/functions/hosting-automator/matomo.ts";

interface Harness {
  sim: MatomoSim;
  client: MatomoClient;
  /** Every log line, debug included. The redactor knows no secret, so a leaked token would show. */
  lines: string[];
}

interface HarnessOptions {
  config?: Partial<MatomoConfig>;
  fetch?: typeof fetch;
}

async function withMatomo(
  simOptions: MatomoSimOptions,
  fn: (h: Harness) => Promise<void>,
  options: HarnessOptions = {},
): Promise<void> {
  const sim = await startMatomoSim(simOptions);
  const lines: string[] = [];
  const logger = new Logger(new Redactor(), { level: "debug", sink: (line) => lines.push(line) });
  const config = { url: sim.url, token: sim.token, timeoutMs: 2000, ...options.config };
  const client = new MatomoClient(config, logger, { fetch: options.fetch });
  try {
    await fn({ sim, client, lines });
  } finally {
    await sim.close();
  }
}

const d = (name: string): Domain => parseDomain(name);

async function failure(promise: Promise<unknown>, code: ErrorCode): Promise<HostingError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof HostingError, `expected a HostingError, got ${error}`);
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`expected ${code}, but the call succeeded`);
}

const apiMethods = (sim: MatomoSim) => sim.requests.map((r) => r.apiMethod);
const LOOKUP = "SitesManager.getSitesIdFromSiteUrl";
const ADD = "SitesManager.addSite";

Deno.test("an existing site is found with or without www and scheme", async () => {
  const sites = [
    { name: "www", urls: "http://www.example.com" },
    { name: "bare", urls: "example.org" },
    { name: "aliased", urls: ["https://main.example", "http://alias.example.net/"] },
  ];
  await withMatomo({ sites }, async ({ client }) => {
    assert.equal(await client.findSite(d("example.com")), 1);
    assert.equal(await client.findSite(d("www.example.com")), 1);
    assert.equal(await client.findSite(d("example.org")), 2);
    assert.equal(await client.findSite(d("alias.example.net")), 3);
    assert.equal(await client.findSite(d("sub.example.com")), null);
  });
});

Deno.test("ensureSite adds a site once and reuses it after", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    assert.deepEqual(await client.ensureSite(d("new.example")), { idSite: 1, reused: false });
    assert.deepEqual(await client.ensureSite(d("new.example")), { idSite: 1, reused: true });
    assert.deepEqual(sim.sites, [{
      idsite: 1,
      name: "new.example",
      main_url: "https://new.example",
      alias_urls: [],
    }]);
    assert.deepEqual(apiMethods(sim), [LOOKUP, ADD, LOOKUP]);
  });
});

Deno.test("an existing Matomo site for the URL is reused, not duplicated", async () => {
  await withMatomo(
    { sites: [{ idsite: 7, name: "Shop", urls: "http://www.shop.example/" }] },
    async ({ sim, client }) => {
      assert.deepEqual(await client.ensureSite(d("shop.example")), { idSite: 7, reused: true });
      assert.equal(sim.sites.length, 1);
      assert.deepEqual(apiMethods(sim), [LOOKUP]);
    },
  );
});

Deno.test("the lowest idsite is reused when Matomo already holds duplicates", async () => {
  const sites = [
    { idsite: 9, name: "dup", urls: "https://dup.example" },
    { idsite: 4, name: "dup", urls: "http://dup.example" },
  ];
  await withMatomo({ sites }, async ({ client, lines }) => {
    assert.deepEqual(await client.ensureSite(d("dup.example")), { idSite: 4, reused: true });
    assert.ok(lines.some((l) => l.includes('"level":"warn"') && l.includes("several sites")));
  });
});

Deno.test("an idsite sent as a numeric string is accepted", async () => {
  await withMatomo(
    { idsiteAsString: true, sites: [{ name: "s", urls: "https://s.example" }] },
    async ({ client }) => {
      assert.deepEqual(await client.ensureSite(d("s.example")), { idSite: 1, reused: true });
    },
  );
});

Deno.test("result:error with HTTP 200 is an error", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "error", message: "Mysql error: table piwik_site is locked" });
    const error = await failure(client.ensureSite(d("a.example")), "matomo_error");
    assert.match(error.message, /HTTP 200.*table piwik_site is locked/);
    assert.equal(error.transient, false);
    assert.equal(error.publicMessage, `Matomo refused ${LOOKUP}.`);
    assert.equal(sim.requests.length, 1, "a Matomo error is an answer, not retried");
  });
});

Deno.test("a refused token is matomo_error telling the operator to use a super user's token by POST", async () => {
  await withMatomo({}, async ({ sim }) => {
    const lines: string[] = [];
    const logger = new Logger(new Redactor(), { level: "debug", sink: (l) => lines.push(l) });
    const wrong = "wrongtoken0123456789abcdef";
    const client = new MatomoClient({ url: sim.url, token: wrong, timeoutMs: 2000 }, logger);
    const error = await failure(client.findSite(d("a.example")), "matomo_error");
    assert.match(error.message, /HTTP 401.*invalid or expired/);
    assert.match(error.publicMessage, /super user/);
    assert.match(error.publicMessage, /POST/);
    assert.equal(error.transient, false);
    for (const text of [error.message, error.publicMessage, ...lines]) {
      assert.equal(text.includes(wrong), false);
    }
    assert.equal(sim.requests.length, 1, "a 401 is not retried (brute-force detection counts it)");
  });
});

Deno.test("a token without super user access fails addSite with the same guidance", async () => {
  const tokens = [{ token: "viewertoken0123456789", superUser: false }];
  await withMatomo({ tokens }, async ({ sim, client }) => {
    const error = await failure(client.ensureSite(d("a.example")), "matomo_error");
    assert.match(error.message, /'superuser' access/);
    assert.match(error.publicMessage, /super user/);
    assert.deepEqual(apiMethods(sim), [LOOKUP, ADD]);
  });
});

Deno.test("an HTML answer is matomo_bad_response", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 200 }, 1);
    const error = await failure(client.findSite(d("a.example")), "matomo_bad_response");
    assert.match(error.message, /an HTML page \(HTTP 200\)/);
    assert.match(error.publicMessage, /MATOMO_API_URL/);
    sim.fail({ kind: "html", status: 500 }, 1);
    await failure(client.addSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.sites.length, 0);
  });
});

Deno.test("an answer that is not JSON is matomo_bad_response", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "garbage" });
    const error = await failure(client.findSite(d("a.example")), "matomo_bad_response");
    assert.match(error.message, /text that is not JSON \(HTTP 200\): PHP Warning/);
  });
});

Deno.test("JSON of an unexpected shape is matomo_bad_response", async () => {
  const answers = ['{"idsite":1}', '[{"idsite":"abc"}]', '[{"idsite":0}]', '{"value":"x"}'];
  for (const answer of answers) {
    const fake = (() => Promise.resolve(new Response(answer))) as typeof fetch;
    await withMatomo({}, async ({ client }) => {
      const call = answer.startsWith('{"value"')
        ? client.addSite(d("a.example"))
        : client.findSite(d("a.example"));
      const error = await failure(call, "matomo_bad_response");
      assert.match(error.message, /unexpected shape/, answer);
    }, { fetch: fake });
  }
});

Deno.test("a refused connection is matomo_unreachable", async () => {
  await withMatomo({}, async ({ sim, client, lines }) => {
    await sim.down();
    const error = await failure(client.findSite(d("a.example")), "matomo_unreachable");
    assert.equal(error.transient, true);
    assert.equal(
      lines.filter((l) => l.includes("matomo: retrying")).length,
      2,
      "the lookup is retried twice",
    );
    sim.up();
    assert.deepEqual(await client.ensureSite(d("a.example")), { idSite: 1, reused: false });
  });
});

Deno.test("a hanging Matomo times out as matomo_unreachable", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "hang" });
    const started = performance.now();
    const error = await failure(client.findSite(d("a.example")), "matomo_unreachable");
    const elapsed = performance.now() - started;
    assert.match(error.message, /within 300 ms/);
    assert.ok(elapsed >= 290 && elapsed < 1500, `took ${elapsed} ms`);
    await failure(client.addSite(d("a.example")), "matomo_unreachable");
    assert.equal(sim.requests.length, 2, "timeouts are not retried");
  }, { config: { timeoutMs: 300 } });
});

Deno.test("an answer whose body never ends times out as matomo_unreachable", async () => {
  const stalled = (() =>
    Promise.resolve(
      new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode("[")) })),
    )) as typeof fetch;
  await withMatomo({}, async ({ client }) => {
    const error = await failure(client.findSite(d("a.example")), "matomo_unreachable");
    assert.match(error.message, /did not complete within 200 ms/);
  }, { fetch: stalled, config: { timeoutMs: 200 } });
});

Deno.test("a slow Matomo that answers within the timeout is fine", async () => {
  await withMatomo({ latencyMs: 200 }, async ({ client }) => {
    assert.deepEqual(await client.ensureSite(d("a.example")), { idSite: 1, reused: false });
  }, { config: { timeoutMs: 1000 } });
});

Deno.test("a lookup that meets a 5xx is retried and then succeeds", async () => {
  await withMatomo({ sites: [{ name: "a", urls: "https://a.example" }] }, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 502 }, 2);
    assert.equal(await client.findSite(d("a.example")), 1);
    assert.deepEqual(sim.requests.map((r) => r.status), [502, 502, 200]);
  });
});

Deno.test("a lookup gives up after two retries", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 503 });
    await failure(client.findSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.requests.length, 3);
  });
});

Deno.test("addSite is never retried", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 503 });
    await failure(client.addSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.requests.length, 1);
  });
  // Nor on a network failure; the lookup is, twice.
  let calls = 0;
  const refusing = (() => {
    calls++;
    return Promise.reject(new TypeError("error sending request: Connection refused"));
  }) as typeof fetch;
  await withMatomo({}, async ({ client }) => {
    await failure(client.addSite(d("a.example")), "matomo_unreachable");
    assert.equal(calls, 1);
    await failure(client.findSite(d("a.example")), "matomo_unreachable");
    assert.equal(calls, 4);
  }, { fetch: refusing });
});

Deno.test("the token is never in the query string", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    await client.ensureSite(d("a.example"));
    await client.ensureSite(d("a.example"));
    sim.fail({ kind: "html", status: 502 }, 1);
    await client.findSite(d("a.example"));
    assert.equal(sim.requests.length, 5);
    for (const r of sim.requests) {
      assert.equal(r.method, "POST");
      assert.equal(r.tokenInQuery, false);
      assert.deepEqual(Object.keys(r.query), ["module", "method", "format"]);
      assert.equal(r.query.format, "json");
      assert.equal(r.bodyParams[0], "token_auth");
      assert.match(r.contentType ?? "", /^application\/x-www-form-urlencoded/);
    }
    assert.deepEqual(sim.requests[1].bodyParams, ["token_auth", "siteName", "urls[0]"]);
  });
});

Deno.test("the token never appears in a log line or an error message", async () => {
  await withMatomo({}, async ({ sim, client, lines }) => {
    const errors: HostingError[] = [];
    const attempt = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (e) {
        errors.push(e as HostingError);
      }
    };
    await attempt(client.ensureSite(d("a.example")));
    // An answer that echoes the token must not carry it into the error.
    sim.fail({ kind: "error", message: `token_auth ${sim.token} is not allowed here` }, 1);
    await attempt(client.findSite(d("a.example")));
    sim.fail({ kind: "garbage" }, 1);
    await attempt(client.addSite(d("b.example")));
    sim.fail({ kind: "hang" }, 1);
    await attempt(client.addSite(d("c.example")));
    await sim.down();
    await attempt(client.findSite(d("a.example")));
    assert.equal(errors.length, 4);
    assert.ok(errors[0].message.includes("[REDACTED]"));
    const texts = [...lines, ...errors.flatMap((e) => [e.message, e.publicMessage, String(e.cause ?? "")])];
    assert.ok(lines.length >= 8);
    for (const text of texts) assert.equal(text.includes(sim.token), false, text);
  }, { config: { timeoutMs: 300 } });
});

Deno.test("an endpoint URL that already ends in /index.php is used as it is", async () => {
  const sim = await startMatomoSim();
  try {
    const logger = new Logger(new Redactor(), { sink: () => {} });
    const client = new MatomoClient(
      { url: `${sim.url}/index.php`, token: sim.token, timeoutMs: 2000 },
      logger,
    );
    assert.equal(await client.findSite(d("a.example")), null);
    assert.equal(sim.requests[0].path, "/index.php");
  } finally {
    await sim.close();
  }
});
