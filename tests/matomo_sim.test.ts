/**
 * The Matomo simulator's own semantics, over loopback HTTP with plain fetch: what it answers must be what
 * Matomo 5 answers as docs/architecture.md §15.3 describes it, or the client tests prove nothing.
 */
import assert from "node:assert/strict";
import { MatomoSim, MatomoSimOptions, MESSAGES, startMatomoSim } from "../dev/matomo_sim.ts";
import { registerSecret } from "./support/env.ts";

async function withSim(options: MatomoSimOptions, fn: (sim: MatomoSim) => Promise<void>): Promise<void> {
  const sim = await startMatomoSim(options);
  try {
    await fn(sim);
  } finally {
    await sim.close();
  }
}

interface Answer {
  status: number;
  type: string;
  text: string;
}

/** One request; `query` goes to the URL, `body` (if any) is form-encoded. The answer is always read whole. */
async function call(
  sim: MatomoSim,
  query: Record<string, string>,
  body?: Record<string, string> | [string, string][],
  path = "/index.php",
): Promise<Answer> {
  const init: RequestInit = body === undefined ? {} : { method: "POST", body: new URLSearchParams(body) };
  const response = await fetch(`${sim.url}${path}?${new URLSearchParams(query)}`, init);
  return {
    status: response.status,
    type: response.headers.get("content-type") ?? "",
    text: await response.text(),
  };
}

/** JSON API call with the token in the body, the way the client sends it. */
async function api(sim: MatomoSim, method: string, params: Record<string, string> | [string, string][] = {}) {
  const body = Array.isArray(params) ? [["token_auth", sim.token], ...params] as [string, string][] : {
    token_auth: sim.token,
    ...params,
  };
  const answer = await call(sim, { module: "API", method, format: "json" }, body);
  return { status: answer.status, json: JSON.parse(answer.text) };
}

const json = (message: string) => ({ result: "error", message });

Deno.test("the simulator refuses a secure-only token sent in the query string with 401", async () => {
  await withSim({}, async (sim) => {
    const q = { module: "API", method: "API.getMatomoVersion", format: "json" };
    const inQuery = await call(sim, { ...q, token_auth: sim.token });
    assert.equal(inQuery.status, 401);
    assert.deepEqual(JSON.parse(inQuery.text), json(MESSAGES.tokenViaGet));
    assert.equal(
      MESSAGES.tokenViaGet,
      "Unable to authenticate with the provided token. It is either invalid, expired or is required to be sent as a POST parameter.",
    );
    // In both places counts as insecure too: secure means in the body and absent from the query string.
    const inBoth = await call(sim, { ...q, token_auth: sim.token }, { token_auth: sim.token });
    assert.equal(inBoth.status, 401);
    assert.deepEqual(JSON.parse(inBoth.text), json(MESSAGES.tokenViaGet));
  });
});

Deno.test("a secure-only token sent in the POST body is accepted", async () => {
  await withSim({}, async (sim) => {
    assert.deepEqual(await api(sim, "API.getMatomoVersion"), { status: 200, json: { value: "5.2.0" } });
  });
});

Deno.test("a token that is not secure-only also works in the query string", async () => {
  await withSim({ tokens: [{ token: "legacytoken0123456789", secureOnly: false }] }, async (sim) => {
    const answer = await call(sim, {
      module: "API",
      method: "UsersManager.hasSuperUserAccess",
      format: "json",
      token_auth: sim.token,
    });
    assert.deepEqual([answer.status, JSON.parse(answer.text)], [200, { value: true }]);
  });
});

Deno.test("a wrong token in the POST body is 401 'invalid or expired'", async () => {
  await withSim({}, async (sim) => {
    const answer = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "json" }, {
      token_auth: "wrongtoken0123456789",
    });
    assert.equal(answer.status, 401);
    assert.deepEqual(JSON.parse(answer.text), json(MESSAGES.tokenViaPost));
    assert.equal(
      MESSAGES.tokenViaPost,
      "Unable to authenticate with the provided token. It is either invalid or expired.",
    );
  });
});

Deno.test("a failed login is an HTML page when module and method are only in the body", async () => {
  await withSim({}, async (sim) => {
    const answer = await call(sim, {}, {
      module: "API",
      method: "API.getMatomoVersion",
      format: "json",
      token_auth: "wrongtoken0123456789",
    });
    assert.equal(answer.status, 401);
    assert.match(answer.type, /^text\/html/);
    assert.match(answer.text, /It is either invalid or expired\./);
  });
});

Deno.test("format defaults to xml and is case-insensitive", async () => {
  await withSim({}, async (sim) => {
    const xml = await call(sim, { module: "API", method: "API.getMatomoVersion" }, { token_auth: sim.token });
    assert.match(xml.type, /^text\/xml/);
    assert.match(xml.text, /^<\?xml[^>]*>\s*<result>5\.2\.0<\/result>$/);
    const upper = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "JSON" }, {
      token_auth: sim.token,
    });
    assert.deepEqual(JSON.parse(upper.text), { value: "5.2.0" });
  });
});

Deno.test("query-string parameters win over body parameters of the same name", async () => {
  await withSim({}, async (sim) => {
    const answer = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "json" }, {
      token_auth: sim.token,
      method: "SitesManager.addSite",
      siteName: "x",
    });
    assert.deepEqual(JSON.parse(answer.text), { value: "5.2.0" });
    assert.equal(sim.sites.length, 0);
    assert.equal(sim.requests[0].apiMethod, "API.getMatomoVersion");
  });
});

Deno.test("a JSON body is not read, so its token does not authenticate", async () => {
  await withSim({ sites: [{ name: "a", urls: "https://a.example" }] }, async (sim) => {
    // Method parameters in the query string; only the token travels in the (ignored) JSON body.
    const post = (method: string, params: Record<string, string>) =>
      fetch(
        `${sim.url}/index.php?${new URLSearchParams({ module: "API", method, format: "json", ...params })}`,
        {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ token_auth: sim.token }),
        },
      ).then(async (r) => [r.status, await r.json()]);
    // PHP parses no JSON body, so the token is not seen. Anonymous: the lookup sees no site, addSite needs a
    // super user.
    assert.deepEqual(await post("SitesManager.getSitesIdFromSiteUrl", { url: "a.example" }), [200, []]);
    assert.deepEqual(await post("SitesManager.addSite", { siteName: "b" }), [
      401,
      json(MESSAGES.superUserRequired),
    ]);
  });
});

Deno.test("addSite without siteName is an HTTP 200 error", async () => {
  await withSim({}, async (sim) => {
    const expected = { status: 200, json: json("Please specify a value for 'siteName'.") };
    assert.deepEqual(await api(sim, "SitesManager.addSite", { "urls[0]": "https://a.example" }), expected);
    assert.deepEqual(
      await api(sim, "SitesManager.addSite", { siteName: "", urls: "https://a.example" }),
      expected,
    );
    assert.equal(sim.sites.length, 0);
  });
});

Deno.test("addSite normalises URLs the way Matomo does and returns the new idsite", async () => {
  await withSim({}, async (sim) => {
    assert.deepEqual(
      await api(sim, "SitesManager.addSite", { siteName: "one", urls: "piwik.net/another/test/" }),
      {
        status: 200,
        json: { value: 1 },
      },
    );
    // A comma-separated string is one URL, not a list (Matomo wraps a string `urls` as a one-element array).
    await api(sim, "SitesManager.addSite", { siteName: "two", urls: "a.example,b.example" });
    // Arrays keep the order they were sent in; values are urldecoded once more; duplicates are dropped.
    await api(sim, "SitesManager.addSite", [
      ["siteName", "three"],
      ["urls[1]", "https%3A%2F%2Fmain.example%2F"],
      ["urls[0]", "alias.example"],
      ["urls[2]", "http://alias.example"],
    ]);
    await api(sim, "SitesManager.addSite", [["siteName", "four"], ["urls[]", "https://x.example/"], [
      "urls[]",
      "www.x.example",
    ]]);
    assert.deepEqual(sim.sites, [
      { idsite: 1, name: "one", main_url: "http://piwik.net/another/test", alias_urls: [] },
      { idsite: 2, name: "two", main_url: "http://a.example,b.example", alias_urls: [] },
      { idsite: 3, name: "three", main_url: "https://main.example", alias_urls: ["http://alias.example"] },
      { idsite: 4, name: "four", main_url: "https://x.example", alias_urls: ["http://www.x.example"] },
    ]);
  });
});

Deno.test("addSite rejects URLs that do not look like URLs", async () => {
  await withSim({}, async (sim) => {
    for (const bad of ["5http://piwik.net", "???://piwik.net"]) {
      assert.deepEqual(await api(sim, "SitesManager.addSite", { siteName: "x", "urls[0]": bad }), {
        status: 200,
        json: json(`URLs: The url '${bad}' is not a valid URL.`),
      });
    }
    assert.deepEqual(await api(sim, "SitesManager.addSite", { siteName: "x", "urls[0]": "" }), {
      status: 200,
      json: json("URLs: You must specify at least one URL for the website."),
    });
    assert.equal(sim.sites.length, 0);
  });
});

Deno.test("the simulator allows duplicate sites", async () => {
  await withSim({}, async (sim) => {
    const add = () =>
      api(sim, "SitesManager.addSite", { siteName: "dup.example", "urls[0]": "https://dup.example" });
    assert.deepEqual((await add()).json, { value: 1 });
    assert.deepEqual((await add()).json, { value: 2 });
    const found = await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "https://dup.example" });
    assert.deepEqual(found.json, [{ idsite: 1 }, { idsite: 2 }]);
  });
});

Deno.test("getSitesIdFromSiteUrl matches scheme and www variants and alias URLs, not subdomains or paths", async () => {
  await withSim({
    sites: [{ name: "piwik", urls: ["https://piwik.org", "http://alias.piwik.org"] }, {
      name: "special",
      urls: "fb://special-url",
    }],
  }, async (sim) => {
    const lookup = async (url: string) =>
      (await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url })).json;
    for (
      const url of [
        "piwik.org",
        "https://www.piwik.org",
        "http://piwik.org",
        "https://piwik.org/",
        "alias.piwik.org",
      ]
    ) {
      assert.deepEqual(await lookup(url), [{ idsite: 1 }], url);
    }
    assert.deepEqual(await lookup("fb://special-url"), [{ idsite: 2 }]);
    for (const url of ["not-found.piwik.org", "piwik.org/not-found/", "org"]) {
      assert.deepEqual(await lookup(url), [], url);
    }
  });
});

Deno.test("lookup rows can carry idsite as a numeric string", async () => {
  await withSim({ idsiteAsString: true, sites: [{ name: "a", urls: "https://a.example" }] }, async (sim) => {
    const found = await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "a.example" });
    assert.deepEqual(found.json, [{ idsite: "1" }]);
  });
});

Deno.test("list answers stop at 100 rows unless filter_limit=-1", async () => {
  const sites = Array.from({ length: 101 }, () => ({ name: "same", urls: "https://same.example" }));
  await withSim({ sites }, async (sim) => {
    const lookup = (extra: Record<string, string>) =>
      api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "same.example", ...extra });
    assert.equal((await lookup({})).json.length, 100);
    assert.equal((await lookup({ filter_limit: "-1" })).json.length, 101);
  });
});

Deno.test("a token without super user access cannot add sites and sees only its own sites", async () => {
  const options: MatomoSimOptions = {
    tokens: [{ token: "viewertoken0123456789", superUser: false, viewSites: [2] }],
    sites: [{ name: "a", urls: "https://a.example" }, { name: "a2", urls: "https://a.example" }],
  };
  await withSim(options, async (sim) => {
    assert.deepEqual(
      await api(sim, "SitesManager.addSite", { siteName: "b", "urls[0]": "https://b.example" }),
      {
        status: 401,
        json: json("You can't access this resource as it requires a 'superuser' access."),
      },
    );
    assert.deepEqual((await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "a.example" })).json, [{
      idsite: 2,
    }]);
    assert.deepEqual((await api(sim, "UsersManager.hasSuperUserAccess")).json, { value: false });
    assert.equal(sim.sites.length, 2);
  });
});

Deno.test("an unknown method is HTTP 400 naming the method and module", async () => {
  await withSim({}, async (sim) => {
    assert.deepEqual(await api(sim, "SitesManager.getTrackingCode"), {
      status: 400,
      json: json(
        "The method 'getTrackingCode' does not exist or is not available in the module '\\Piwik\\Plugins\\SitesManager\\API'.",
      ),
    });
  });
});

Deno.test("other paths are 404 and other modules are HTML pages", async () => {
  await withSim({}, async (sim) => {
    const q = { module: "API", method: "API.getMatomoVersion", format: "json" };
    const root = await call(sim, q, { token_auth: sim.token }, "/");
    assert.deepEqual(JSON.parse(root.text), { value: "5.2.0" });
    assert.equal((await call(sim, q, { token_auth: sim.token }, "/api")).status, 404);
    const ui = await call(sim, { module: "CoreHome" }, { token_auth: sim.token });
    assert.deepEqual([ui.status, ui.type.startsWith("text/html")], [200, true]);
  });
});

Deno.test("faults apply to the next N requests, then the API answers again", async () => {
  await withSim({}, async (sim) => {
    sim.fail({ kind: "error", message: "Mysql error" }, 2);
    assert.deepEqual(await api(sim, "API.getMatomoVersion"), { status: 200, json: json("Mysql error") });
    assert.deepEqual(await api(sim, "API.getMatomoVersion"), { status: 200, json: json("Mysql error") });
    assert.deepEqual((await api(sim, "API.getMatomoVersion")).json, { value: "5.2.0" });

    sim.fail({ kind: "html", status: 200 }, 1);
    const html = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "json" }, {
      token_auth: sim.token,
    });
    assert.deepEqual([html.status, html.type.startsWith("text/html")], [200, true]);

    sim.fail({ kind: "garbage" });
    for (let i = 0; i < 3; i++) {
      const garbage = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "json" }, {
        token_auth: sim.token,
      });
      assert.throws(() => JSON.parse(garbage.text), SyntaxError);
    }
    sim.clearFaults();
    assert.deepEqual((await api(sim, "API.getMatomoVersion")).json, { value: "5.2.0" });
    assert.deepEqual(sim.requests.map((r) => r.fault ?? null), [
      "error",
      "error",
      null,
      "html",
      "garbage",
      "garbage",
      "garbage",
      null,
    ]);
  });
});

Deno.test("latency delays every answer", async () => {
  await withSim({ latencyMs: 150 }, async (sim) => {
    const started = performance.now();
    await api(sim, "API.getMatomoVersion");
    assert.ok(performance.now() - started >= 140);
    sim.setLatency(0);
    const again = performance.now();
    await api(sim, "API.getMatomoVersion");
    assert.ok(performance.now() - again < 140);
  });
});

Deno.test("a hanging request is released when the simulator closes", async () => {
  const sim = await startMatomoSim();
  sim.fail({ kind: "hang" });
  const pending = fetch(`${sim.url}/index.php?module=API&method=API.getMatomoVersion&format=json`, {
    method: "POST",
    body: new URLSearchParams({ token_auth: sim.token }),
  }).then((r) => r.text().then(() => r.status), () => "failed");
  let settled = false;
  pending.finally(() => settled = true);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(settled, false);
  await sim.close();
  assert.ok([503, "failed"].includes(await pending));
});

Deno.test("down refuses connections and up listens again on the same port with the same sites", async () => {
  await withSim({}, async (sim) => {
    await api(sim, "SitesManager.addSite", { siteName: "kept.example", "urls[0]": "https://kept.example" });
    const port = sim.port;
    await sim.down();
    await assert.rejects(fetch(`${sim.url}/index.php`), TypeError);
    await sim.up();
    assert.equal(sim.port, port);
    assert.deepEqual((await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "kept.example" })).json, [{
      idsite: 1,
    }]);
  });
});

Deno.test("after too many failed logins every token is refused", async () => {
  await withSim({ bruteForceLimit: 3 }, async (sim) => {
    for (let i = 0; i < 3; i++) {
      const bad = await call(sim, { module: "API", method: "API.getMatomoVersion", format: "json" }, {
        token_auth: "wrongtoken0123456789",
      });
      assert.equal(bad.status, 401);
    }
    assert.deepEqual(await api(sim, "API.getMatomoVersion"), {
      status: 401,
      json: json("Too many failed logins. Please wait and try logging in again later."),
    });
  });
});

Deno.test("the request log records where the token was sent, never body values", async () => {
  await withSim({}, async (sim) => {
    await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url: "a.example" });
    await call(sim, { module: "API", method: "API.getMatomoVersion", token_auth: sim.token });
    const [body, query] = sim.requests;
    assert.deepEqual(
      { ...body, contentType: body.contentType?.split(";")[0] },
      {
        method: "POST",
        path: "/index.php",
        query: { module: "API", method: "SitesManager.getSitesIdFromSiteUrl", format: "json" },
        bodyParams: ["token_auth", "url"],
        contentType: "application/x-www-form-urlencoded",
        tokenInQuery: false,
        apiMethod: "SitesManager.getSitesIdFromSiteUrl",
        status: 200,
      },
    );
    assert.equal(JSON.stringify(body).includes(sim.token), false);
    assert.deepEqual([query.method, query.tokenInQuery, query.status], ["GET", true, 401]);
  });
});

// -------------------------------------------------------------------------------------------------------------
// Reading and deleting a site by id

Deno.test("getSiteFromId answers the site as an object, creator_login only for a super user", async () => {
  const viewer = registerSecret("viewertoken-sim-0123456789");
  const options: MatomoSimOptions = {
    tokens: [{ token: registerSecret("supertoken-sim-0123456789") }, {
      token: viewer,
      superUser: false,
      viewSites: [2],
    }],
    sites: [{ name: "a", urls: "https://a.example" }, {
      name: "b",
      urls: ["http://b.example/", "b2.example"],
    }],
  };
  await withSim(options, async (sim) => {
    const { status, json: site } = await api(sim, "SitesManager.getSiteFromId", { idSite: "2" });
    assert.equal(status, 200);
    assert.equal(Array.isArray(site), false);
    assert.deepEqual(
      [site.idsite, site.name, site.main_url, site.creator_login, site.timezone, site.currency],
      [2, "b", "http://b.example", "admin", "UTC", "USD"],
    );
    assert.match(site.ts_created, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    assert.equal("alias_urls" in site, false, "aliases are not part of getSiteFromId");

    const asViewer = await call(
      sim,
      { module: "API", method: "SitesManager.getSiteFromId", format: "json" },
      {
        token_auth: viewer,
        idSite: "2",
      },
    );
    const viewed = JSON.parse(asViewer.text);
    assert.deepEqual([asViewer.status, viewed.main_url, "creator_login" in viewed], [
      200,
      "http://b.example",
      false,
    ]);
  });
});

Deno.test("getSiteFromId of a missing site: HTTP 200 error for a super user, 401 for others", async () => {
  const viewer = registerSecret("viewertoken-sim-0123456789");
  const options: MatomoSimOptions = {
    tokens: [{ token: registerSecret("supertoken-sim-0123456789") }, {
      token: viewer,
      superUser: false,
      viewSites: [1],
    }],
    sites: [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }],
  };
  await withSim(options, async (sim) => {
    assert.deepEqual(await api(sim, "SitesManager.getSiteFromId", { idSite: "99" }), {
      status: 200,
      json: json("An unexpected website was found in the request: website id was set to '99' ."),
    });
    assert.deepEqual(await api(sim, "SitesManager.getSiteFromId", {}), {
      status: 200,
      json: json("Please specify a value for 'idSite'."),
    });
    for (const idSite of ["99", "2"]) {
      const answer = await call(
        sim,
        { module: "API", method: "SitesManager.getSiteFromId", format: "json" },
        {
          token_auth: viewer,
          idSite,
        },
      );
      assert.deepEqual([answer.status, JSON.parse(answer.text)], [
        401,
        json(`You can't access this resource as it requires 'view' access for the website id = ${idSite}.`),
      ]);
    }
  });
});

Deno.test("getSiteFromId can carry its numbers as strings", async () => {
  await withSim({ idsiteAsString: true, sites: [{ name: "a", urls: "https://a.example" }] }, async (sim) => {
    const site = (await api(sim, "SitesManager.getSiteFromId", { idSite: "1" })).json;
    assert.deepEqual([site.idsite, site.ecommerce], ["1", "0"]);
  });
});

Deno.test("deleteSite removes the site and answers success; lookups no longer find it", async () => {
  const sites = [{ name: "a", urls: ["https://a.example", "https://alias.example"] }, {
    name: "b",
    urls: "https://b.example",
  }];
  await withSim({ sites }, async (sim) => {
    assert.deepEqual(await api(sim, "SitesManager.deleteSite", { idSite: "1" }), {
      status: 200,
      json: { result: "success", message: "ok" },
    });
    assert.deepEqual(sim.sites.map((s) => s.idsite), [2]);
    for (const url of ["a.example", "alias.example"]) {
      assert.deepEqual((await api(sim, "SitesManager.getSitesIdFromSiteUrl", { url })).json, [], url);
    }
    assert.deepEqual(
      (await api(sim, "SitesManager.getSiteFromId", { idSite: "1" })).json,
      json("An unexpected website was found in the request: website id was set to '1' ."),
    );
    // An id is not reused after a deletion of a lower one.
    const added = await api(sim, "SitesManager.addSite", { siteName: "c", "urls[0]": "https://c.example" });
    assert.deepEqual(added.json, { value: 3 });
  });
});

Deno.test("deleteSite of a missing site is 'website id = N not found', HTTP 200", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withSim({ sites }, async (sim) => {
    for (const idSite of ["7", "abc"]) {
      assert.deepEqual(await api(sim, "SitesManager.deleteSite", { idSite }), {
        status: 200,
        json: json(`website id = ${idSite} not found`),
      });
    }
    assert.deepEqual(await api(sim, "SitesManager.deleteSite", {}), {
      status: 200,
      json: json("Please specify a value for 'idSite'."),
    });
    assert.equal(sim.sites.length, 2);
  });
});

Deno.test("deleteSite refuses to remove the only site", async () => {
  await withSim({ sites: [{ name: "a", urls: "https://a.example" }] }, async (sim) => {
    assert.deepEqual(await api(sim, "SitesManager.deleteSite", { idSite: "1" }), {
      status: 200,
      json: json(
        "It is not possible to delete this website as it is the only registered website. Add a new website first, then delete this one.",
      ),
    });
    assert.equal(sim.sites.length, 1);
  });
});

Deno.test("deleteSite needs a super user, checked before the site exists", async () => {
  const viewer = registerSecret("viewertoken-sim-0123456789");
  const options: MatomoSimOptions = {
    tokens: [{ token: viewer, superUser: false, viewSites: [1, 2] }],
    sites: [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }],
  };
  await withSim(options, async (sim) => {
    for (const idSite of ["1", "99"]) {
      assert.deepEqual(await api(sim, "SitesManager.deleteSite", { idSite }), {
        status: 401,
        json: json(MESSAGES.superUserRequired),
      });
    }
    assert.equal(sim.sites.length, 2);
  });
});

Deno.test("deleteSite's success renders as XML too", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withSim({ sites }, async (sim) => {
    const xml = await call(sim, { module: "API", method: "SitesManager.deleteSite" }, {
      token_auth: sim.token,
      idSite: "1",
    });
    assert.match(xml.type, /^text\/xml/);
    assert.match(xml.text, /<result>\s*<success message="ok" \/>\s*<\/result>$/);
  });
});

Deno.test("injected faults apply to getSiteFromId and deleteSite, and a faulted deletion deletes nothing", async () => {
  const sites = [{ name: "a", urls: "https://a.example" }, { name: "b", urls: "https://b.example" }];
  await withSim({ sites }, async (sim) => {
    sim.fail({ kind: "html", status: 502 }, 2);
    assert.equal(
      (await call(sim, { module: "API", method: "SitesManager.getSiteFromId", format: "json" }, {
        token_auth: sim.token,
        idSite: "1",
      })).status,
      502,
    );
    assert.equal(
      (await call(sim, { module: "API", method: "SitesManager.deleteSite", format: "json" }, {
        token_auth: sim.token,
        idSite: "1",
      })).status,
      502,
    );
    assert.equal(sim.sites.length, 2, "a faulted deleteSite did not run");

    // failWhen sees the idSite parameter: one site's calls fail, the other's go through.
    sim.failWhen((r) => r.apiMethod === "SitesManager.deleteSite" && r.params.idSite === "1", {
      kind: "error",
      message: "Mysql error: lock wait timeout",
    });
    assert.deepEqual(
      await api(sim, "SitesManager.deleteSite", { idSite: "1" }),
      { status: 200, json: json("Mysql error: lock wait timeout") },
    );
    sim.addExistingSite({ name: "c", urls: "https://c.example" });
    assert.deepEqual((await api(sim, "SitesManager.deleteSite", { idSite: "2" })).json, {
      result: "success",
      message: "ok",
    });
    assert.deepEqual(sim.sites.map((s) => s.idsite), [1, 3]);
    assert.deepEqual(sim.requests.map((r) => r.fault ?? null), ["html", "html", "error", null]);
  });
});
