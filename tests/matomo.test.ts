/**
 * The Matomo client against the Matomo simulator over loopback HTTP (the client's rules and Matomo's
 * behaviour: docs/architecture.md §9 and §15.3; why a simulator: docs/architecture.md §14).
 */
import assert from "node:assert/strict";
import { MatomoSim, MatomoSimOptions, startMatomoSim } from "../dev/matomo_sim.ts";
import type { MatomoConfig } from "../supabase/functions/hosting-automator/config.ts";
import { type Domain, parseDomain } from "../supabase/functions/hosting-automator/domain.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import { isDomainUrl, MatomoClient } from "../supabase/functions/hosting-automator/matomo.ts";
import { captureSink, registerSecret } from "./support/env.ts";
import { failsWith } from "./support/errors.ts";

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
  registerSecret(sim.token);
  const lines: string[] = [];
  // Every line also goes to the suite's final scan for leaked secrets.
  const logger = new Logger(new Redactor(), { level: "debug", sink: captureSink(lines) });
  const config = { url: sim.url, token: sim.token, timeoutMs: 2000, ...options.config };
  const client = new MatomoClient(config, logger, { fetch: options.fetch });
  try {
    await fn({ sim, client, lines });
  } finally {
    await sim.close();
  }
}

const d = (name: string): Domain => parseDomain(name);

const apiMethods = (sim: MatomoSim) => sim.requests.map((r) => r.apiMethod);
const LOOKUP = "SitesManager.getSitesIdFromSiteUrl";
const ADD = "SitesManager.addSite";
const GET = "SitesManager.getSiteFromId";
const DELETE = "SitesManager.deleteSite";

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
    const error = await failsWith(client.ensureSite(d("a.example")), "matomo_error");
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
    const error = await failsWith(client.findSite(d("a.example")), "matomo_error");
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
    const error = await failsWith(client.ensureSite(d("a.example")), "matomo_error");
    assert.match(error.message, /'superuser' access/);
    assert.match(error.publicMessage, /super user/);
    assert.deepEqual(apiMethods(sim), [LOOKUP, ADD]);
  });
});

Deno.test("an HTML answer is matomo_bad_response", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 200 }, 1);
    const error = await failsWith(client.findSite(d("a.example")), "matomo_bad_response");
    assert.match(error.message, /an HTML page \(HTTP 200\)/);
    assert.match(error.publicMessage, /MATOMO_API_URL/);
    sim.fail({ kind: "html", status: 500 }, 1);
    await failsWith(client.addSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.sites.length, 0);
  });
});

Deno.test("an answer that is not JSON is matomo_bad_response", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "garbage" });
    const error = await failsWith(client.findSite(d("a.example")), "matomo_bad_response");
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
      const error = await failsWith(call, "matomo_bad_response");
      assert.match(error.message, /unexpected shape/, answer);
    }, { fetch: fake });
  }
});

Deno.test("a refused connection is matomo_unreachable", async () => {
  await withMatomo({}, async ({ sim, client, lines }) => {
    await sim.down();
    const error = await failsWith(client.findSite(d("a.example")), "matomo_unreachable");
    assert.equal(error.transient, true);
    assert.equal(
      lines.filter((l) => l.includes("matomo: retrying")).length,
      2,
      "the lookup is retried twice",
    );
    await sim.up();
    assert.deepEqual(await client.ensureSite(d("a.example")), { idSite: 1, reused: false });
  });
});

Deno.test("a hanging Matomo times out as matomo_unreachable", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "hang" });
    const started = performance.now();
    const error = await failsWith(client.findSite(d("a.example")), "matomo_unreachable");
    const elapsed = performance.now() - started;
    assert.match(error.message, /within 300 ms/);
    assert.ok(elapsed >= 290 && elapsed < 1500, `took ${elapsed} ms`);
    await failsWith(client.addSite(d("a.example")), "matomo_unreachable");
    assert.equal(sim.requests.length, 2, "timeouts are not retried");
  }, { config: { timeoutMs: 300 } });
});

Deno.test("an answer whose body never ends times out as matomo_unreachable", async () => {
  const stalled = (() =>
    Promise.resolve(
      new Response(new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode("[")) })),
    )) as typeof fetch;
  await withMatomo({}, async ({ client }) => {
    const error = await failsWith(client.findSite(d("a.example")), "matomo_unreachable");
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
    await failsWith(client.findSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.requests.length, 3);
  });
});

Deno.test("addSite is never retried", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    sim.fail({ kind: "html", status: 503 });
    await failsWith(client.addSite(d("a.example")), "matomo_bad_response");
    assert.equal(sim.requests.length, 1);
  });
  // Nor on a network failure; the lookup is, twice.
  let calls = 0;
  const refusing = (() => {
    calls++;
    return Promise.reject(new TypeError("error sending request: Connection refused"));
  }) as typeof fetch;
  await withMatomo({}, async ({ client }) => {
    await failsWith(client.addSite(d("a.example")), "matomo_unreachable");
    assert.equal(calls, 1);
    await failsWith(client.findSite(d("a.example")), "matomo_unreachable");
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

// -------------------------------------------------------------------------------------------------------------
// Deleting a removed domain's site

const ids = (sim: MatomoSim) => sim.sites.map((s) => s.idsite);

Deno.test("deleteSite with the recorded id deletes that site after reading that it is the domain's", async () => {
  const sites = [
    { idsite: 3, name: "a", urls: "https://a.example" },
    { idsite: 4, name: "b", urls: "https://b.example" },
  ];
  await withMatomo({ sites }, async ({ sim, client, lines }) => {
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 3 }), { deleted: [3] });
    assert.deepEqual(ids(sim), [4]);
    assert.deepEqual(apiMethods(sim), [GET, DELETE]);
    const [get, del] = sim.requests;
    assert.deepEqual(get.bodyParams, ["token_auth", "idSite"]);
    assert.deepEqual(del.bodyParams, ["token_auth", "idSite"]);
    for (const r of sim.requests) {
      assert.deepEqual([r.method, r.tokenInQuery, r.status], ["POST", false, 200]);
    }
    assert.ok(lines.some((l) => l.includes("matomo: site deleted") && l.includes('"matomo_site_id":3')));
    for (const line of lines) assert.equal(line.includes(sim.token), false, line);
  });
});

Deno.test("deleteSite without an id deletes every site the lookup finds whose main URL is the domain", async () => {
  const sites = [
    { idsite: 2, name: "old", urls: "http://www.a.example/" },
    { idsite: 5, name: "dup", urls: "https://a.example" },
    { idsite: 7, name: "b", urls: "https://b.example" },
    // Found by the lookup through its alias, but it is the shop's site: it must stay.
    { idsite: 8, name: "shop", urls: ["https://shop.example", "https://a.example"] },
  ];
  await withMatomo({ sites }, async ({ sim, client, lines }) => {
    assert.deepEqual(await client.deleteSite(d("a.example")), { deleted: [2, 5] });
    assert.deepEqual(ids(sim), [7, 8]);
    assert.deepEqual(apiMethods(sim), [LOOKUP, GET, DELETE, GET, DELETE, GET]);
    assert.ok(lines.some((l) => l.includes('"level":"warn"') && l.includes('"matomo_site_id":8')));
    // A second removal finds only the shop's site, and leaves it.
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: null }), { deleted: [] });
    assert.deepEqual(ids(sim), [7, 8]);
  });
});

Deno.test("a recorded id that now names another domain's site is not deleted", async () => {
  const sites = [
    { idsite: 3, name: "reused", urls: "https://someone-else.example" },
    { idsite: 9, name: "a", urls: "https://a.example" },
  ];
  await withMatomo({ sites }, async ({ sim, client, lines }) => {
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 3 }), { deleted: [] });
    assert.deepEqual(ids(sim), [3, 9], "neither the other domain's site nor an unrecorded one is touched");
    assert.deepEqual(apiMethods(sim), [GET]);
    const warning = lines.find((l) => l.includes("not deleted"));
    assert.ok(warning?.includes('"level":"warn"') && warning.includes("someone-else.example"), warning);
  });
});

Deno.test("a site that is already gone is done: a stale id, no site for the domain, or deleted meanwhile", async () => {
  await withMatomo(
    { sites: [{ idsite: 1, name: "b", urls: "https://b.example" }] },
    async ({ sim, client }) => {
      assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 42 }), { deleted: [] });
      assert.deepEqual(await client.deleteSite(d("a.example")), { deleted: [] });
      assert.deepEqual(apiMethods(sim), [GET, LOOKUP]);
      assert.equal(sim.sites.length, 1);
    },
  );
  // Someone else deletes the site between our read and our delete: Matomo's "website id = N not found".
  const sites = [{ idsite: 1, name: "a", urls: "https://a.example" }, {
    name: "b",
    urls: "https://b.example",
  }];
  const racing = (async (input: Request) => {
    if (new URL(input.url).searchParams.get("method") === DELETE) {
      const other = await fetch(input.clone());
      assert.deepEqual(await other.json(), { result: "success", message: "ok" });
    }
    return fetch(input);
  }) as typeof fetch;
  await withMatomo({ sites }, async ({ sim, client }) => {
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 1 }), { deleted: [] });
    assert.deepEqual(ids(sim), [2]);
    assert.deepEqual(apiMethods(sim), [GET, DELETE, DELETE]);
  }, { fetch: racing });
});

Deno.test("a deletion whose answer was lost is repeated and the repeat's 'not found' counts as done", async () => {
  const sites = [{ idsite: 1, name: "a", urls: "https://a.example" }, {
    name: "b",
    urls: "https://b.example",
  }];
  let lost = 0;
  const losing = (async (input: Request) => {
    const response = await fetch(input.clone());
    if (new URL(input.url).searchParams.get("method") === DELETE && lost++ === 0) {
      await response.body?.cancel();
      throw new TypeError("error reading a body from connection: connection reset");
    }
    return response;
  }) as typeof fetch;
  await withMatomo({ sites }, async ({ sim, client }) => {
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 1 }), { deleted: [] });
    assert.deepEqual(ids(sim), [2]);
    assert.deepEqual(apiMethods(sim), [GET, DELETE, DELETE]);
  }, { fetch: losing });
});

Deno.test("Matomo's refusal to delete its only site is matomo_only_site, permanent, and says what to do", async () => {
  await withMatomo({ sites: [{ name: "a", urls: "https://a.example" }] }, async ({ sim, client }) => {
    const error = await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_only_site");
    assert.equal(error.transient, false);
    assert.match(error.message, /deleteSite\(1\).*only registered website/);
    assert.match(error.publicMessage, /only site registered in Matomo/);
    assert.match(error.publicMessage, /add another site/);
    assert.deepEqual(ids(sim), [1]);
    assert.deepEqual(apiMethods(sim), [GET, DELETE], "a refusal is an answer, not retried");
  });
});

Deno.test("a deletion that meets 5xx is retried like a lookup and then succeeds", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withMatomo({ sites }, async ({ sim, client, lines }) => {
    let faulted = 0;
    sim.failWhen((r) => r.apiMethod === DELETE && faulted++ < 2, { kind: "html", status: 503 });
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 1 }), { deleted: [1] });
    assert.deepEqual(sim.requests.map((r) => [r.apiMethod, r.status]), [
      [GET, 200],
      [DELETE, 503],
      [DELETE, 503],
      [DELETE, 200],
    ]);
    assert.equal(lines.filter((l) => l.includes("matomo: retrying")).length, 2);
  });
});

Deno.test("a deletion that keeps failing ends transient: 5xx, refused connection, timeout", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withMatomo({ sites }, async ({ sim, client }) => {
    sim.failWhen((r) => r.apiMethod === DELETE, { kind: "html", status: 502 });
    const bad = await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_bad_response");
    assert.equal(bad.transient, true);
    assert.deepEqual(apiMethods(sim), [GET, DELETE, DELETE, DELETE]);
    sim.clearFaults();
    sim.clearRequests();

    sim.failWhen((r) => r.apiMethod === DELETE, { kind: "hang" });
    const slow = await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_unreachable");
    assert.equal(slow.transient, true);
    assert.deepEqual(apiMethods(sim), [GET, DELETE], "a timeout is not retried, as for lookups");
    sim.clearFaults();

    await sim.down();
    const down = await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_unreachable");
    assert.equal(down.transient, true);
    await sim.up();
    assert.deepEqual(ids(sim), [1, 2], "nothing was deleted");
    assert.deepEqual(await client.deleteSite(d("a.example"), { idSite: 1 }), { deleted: [1] });
  }, { config: { timeoutMs: 300 } });
});

Deno.test("deleteSite needs a super user's token and says so", async () => {
  const token = registerSecret("viewertoken-delete-0123456789");
  const options: MatomoSimOptions = {
    tokens: [{ token, superUser: false, viewSites: [1] }],
    sites: [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }],
  };
  await withMatomo(options, async ({ sim, client }) => {
    const error = await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_error");
    assert.match(error.message, /HTTP 401.*'superuser' access/);
    assert.match(error.publicMessage, /super user/);
    assert.equal(error.transient, false);
    assert.deepEqual(apiMethods(sim), [GET, DELETE]);
    assert.equal(sim.sites.length, 2);
  });
});

Deno.test("getSiteFromId's numbers as strings are accepted", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withMatomo({ sites, idsiteAsString: true }, async ({ sim, client }) => {
    assert.deepEqual(await client.deleteSite(d("a.example")), { deleted: [1] });
    assert.deepEqual(ids(sim), [2]);
  });
});

Deno.test("an answer about another site than asked for is matomo_bad_response, and nothing is deleted", async () => {
  const wrong = (async (input: Request) => {
    const method = new URL(input.url).searchParams.get("method");
    if (method === GET) {
      await input.body?.cancel();
      return new Response(JSON.stringify({ idsite: 2, main_url: "https://a.example" }));
    }
    return fetch(input);
  }) as typeof fetch;
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withMatomo({ sites }, async ({ sim, client }) => {
    await failsWith(client.deleteSite(d("a.example"), { idSite: 1 }), "matomo_bad_response");
    assert.deepEqual(ids(sim), [1, 2]);
  }, { fetch: wrong });
});

Deno.test("a recorded id that is not a positive integer is refused before any call", async () => {
  await withMatomo({}, async ({ sim, client }) => {
    for (const idSite of [0, -1, 1.5, Number.NaN]) {
      await assert.rejects(client.deleteSite(d("a.example"), { idSite }), RangeError);
    }
    assert.equal(sim.requests.length, 0);
  });
});

Deno.test("a site's URL is the domain's only for http(s), with or without www, and nothing after the host", () => {
  const domain = d("a.example");
  for (
    const url of ["https://a.example", "http://www.a.example/", "HTTPS://A.Example", " https://a.example "]
  ) {
    assert.equal(isDomainUrl(url, domain), true, url);
  }
  for (
    const url of [
      "https://a.example/blog",
      "https://a.example:8443",
      "https://sub.a.example",
      "https://a.example.evil.example",
      "https://awww.a.example",
      "https://a.example/?x=1",
      "ftp://a.example",
      "a.example",
      "",
    ]
  ) {
    assert.equal(isDomainUrl(url, domain), false, url);
  }
  assert.equal(isDomainUrl("https://a.example", d("www.a.example")), true);
  assert.equal(isDomainUrl("https://bücher.example", d("bücher.example")), true);
  assert.equal(isDomainUrl("https://xn--bcher-kva.example", d("bücher.example")), true);
});
