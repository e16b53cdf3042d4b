/**
 * A Hub calls the function with supabase-js: `supabase.functions.invoke('hosting-automator', { body })` on a
 * client built with the secret key. The client's `fetch` routes to the handler in-process (the Edge gateway
 * cannot run here), so what reaches the handler is exactly what supabase-js sends: `apikey`, `X-Client-Info`,
 * `Content-Type` from the body's kind, and `Authorization: Bearer` only for a legacy JWT key or a session.
 */
import assert from "node:assert/strict";
import {
  createClient,
  FunctionRegion,
  FunctionsHttpError,
  type SupabaseClient,
} from "npm:@supabase/supabase-js@2.119.1";
import { registerSecret } from "./support/env.ts";
import { type Stack, withStack } from "./support/stack.ts";

/** What the handler received, per request. */
interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string;
}

function hubClient(
  stack: Stack,
  key: string,
  options: { accessToken?: () => Promise<string>; app?: Stack["app"] } = {},
) {
  const seen: Seen[] = [];
  const app = options.app ?? stack.app;
  const client: SupabaseClient = createClient("http://functions.test", key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    accessToken: options.accessToken,
    global: {
      fetch: async (input, init) => {
        const request = new Request(input, init);
        seen.push({
          method: request.method,
          url: request.url,
          headers: Object.fromEntries(request.headers),
          body: await request.clone().text(),
        });
        return app.fetch(request);
      },
    },
  });
  return { client, seen };
}

Deno.test("supabase-js functions.invoke with the secret key sends apikey, X-Client-Info and JSON, and is accepted", async () => {
  await withStack({ label: "invoke" }, async (stack) => {
    const id = await stack.insertSite("invoke.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    const { client, seen } = hubClient(stack, stack.serviceKey);

    const { data, error } = await client.functions.invoke("hosting-automator", { body: { site_id: id } });
    assert.equal(error, null);
    assert.deepEqual({ ...data, job_id: typeof data.job_id }, {
      accepted: true,
      site_id: id,
      job_id: "number",
    });
    await stack.settle();
    assert.equal((await stack.site(id)).status_hosting, "active");

    const [request] = seen;
    assert.equal(request.method, "POST");
    assert.equal(request.url, "http://functions.test/functions/v1/hosting-automator");
    assert.equal(request.headers["apikey"], stack.serviceKey);
    assert.match(request.headers["x-client-info"], /^supabase-js\/2\./);
    assert.equal(request.headers["content-type"], "application/json");
    // A new-format secret key is never sent as a Bearer token without a session.
    assert.equal(request.headers["authorization"], undefined);
    assert.deepEqual(JSON.parse(request.body), { site_id: id });
  });
});

Deno.test("every body shape the handler accepts works through functions.invoke", async () => {
  await withStack({ label: "invoke" }, async (stack) => {
    const due = await stack.insertSite("due.example", { status_dns: "active" });
    const waiting = await stack.insertSite("waiting.example");
    const hooked = await stack.insertSite("hooked.example", { status_dns: "active" });
    await stack.sql`delete from net.http_request_queue`;
    const { client } = hubClient(stack, stack.serviceKey);
    const invoke = async (name: string, options: Parameters<typeof client.functions.invoke>[1] = {}) => {
      const { data, error } = await client.functions.invoke(name, options);
      assert.equal(error, null, `${name}: ${error}`);
      await stack.settle();
      return data;
    };

    // {"site_id"} with ?wait=true: the run's outcome.
    const waited = await invoke("hosting-automator?wait=true", { body: { site_id: due } });
    assert.equal(waited.complete, true);
    assert.equal(waited.outcomes[0].site_id, due);
    assert.equal(waited.outcomes[0].status, "active");

    // {"site_id"} of a site that is not due: the answer says why.
    assert.deepEqual(await invoke("hosting-automator", { body: { site_id: waiting } }), {
      accepted: false,
      site_id: waiting,
      reason: "not_due",
      status_dns: "pending",
      status_hosting: "pending",
    });

    // A Database Webhook payload, and its DELETE.
    const hook = {
      type: "UPDATE",
      table: "sites",
      schema: "public",
      record: { id: hooked, domain: "hooked.example", status_dns: "active", status_hosting: "pending" },
      old_record: { id: hooked, domain: "hooked.example", status_dns: "pending", status_hosting: "pending" },
    };
    assert.equal((await invoke("hosting-automator", { body: hook })).accepted, true);
    assert.equal((await stack.site(hooked)).status_hosting, "active");
    assert.deepEqual(
      await invoke("hosting-automator", { body: { ...hook, type: "DELETE", record: null } }),
      { accepted: false, reason: "the row was deleted" },
    );

    // A string body goes as text/plain; it is still JSON. (Inserted now: the drains above would run it.)
    const asText = await stack.insertSite("as-text.example", { status_dns: "active" });
    const text = await invoke("hosting-automator", { body: JSON.stringify({ site_id: asText }) });
    assert.equal(text.accepted, true);
    assert.equal((await stack.site(asText)).status_hosting, "active");

    // {} and no body at all: drain.
    assert.deepEqual(await invoke("hosting-automator", { body: {} }), { accepted: true });
    assert.deepEqual(await invoke("hosting-automator"), { accepted: true });

    // A region: supabase-js adds ?forceFunctionRegion= and x-region, which the handler ignores.
    const regional = await invoke("hosting-automator", {
      body: { site_id: waiting },
      region: FunctionRegion.EuCentral1,
    });
    assert.equal(regional.reason, "not_due");

    // GET /status and POST /retry.
    const status = await invoke("hosting-automator/status", { method: "GET" });
    assert.equal(status.sites.active, 3);
    assert.deepEqual(await invoke("hosting-automator/retry", { body: { all_failed: true } }), {
      requeued: [],
      skipped: [],
    });
    assert.deepEqual(await invoke("hosting-automator/retry", { body: { site_id: waiting } }), {
      requeued: [],
      skipped: [{ site_id: waiting, domain: "waiting.example", status_hosting: "pending" }],
    });

    // POST /remove: a site with something on the server runs its removal (202); one without is removed at once.
    const removed = await invoke("hosting-automator/remove", { body: { site_id: due } });
    assert.deepEqual({ ...removed, job_id: typeof removed.job_id }, {
      accepted: true,
      site_id: due,
      job_id: "number",
    });
    assert.equal((await stack.site(due)).status_hosting, "removed");
    assert.equal((await stack.simState()).sites["due.example"], undefined);
    assert.deepEqual(await invoke("hosting-automator/remove", { body: { site_id: waiting } }), {
      accepted: false,
      site_id: waiting,
      reason: "nothing_to_remove",
      status_hosting: "removed",
    });
  });
});

Deno.test("functions.invoke with a legacy JWT key (sent as apikey and Bearer) or with a user session is accepted", async () => {
  await withStack({ label: "invoke" }, async (stack) => {
    const jwt = registerSecret(
      `eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.${btoa(JSON.stringify({ role: "service_role" }))}.${
        crypto.randomUUID().replaceAll("-", "")
      }`,
    );
    const app = stack.newApp({ SUPABASE_SERVICE_ROLE_KEY: jwt });
    const legacy = hubClient(stack, jwt, { app });
    const { data, error } = await legacy.client.functions.invoke("hosting-automator/status", {
      method: "GET",
    });
    assert.equal(error, null);
    assert.equal(typeof data.sites, "object");
    assert.equal(legacy.seen[0].headers["authorization"], `Bearer ${jwt}`);
    assert.equal(legacy.seen[0].headers["apikey"], jwt);

    // A Hub client that also carries a signed-in user's JWT: the secret key on apikey authenticates.
    const session = hubClient(stack, stack.serviceKey, {
      accessToken: () => Promise.resolve("eyJ.user.jwt"),
    });
    const withUser = await session.client.functions.invoke("hosting-automator/status", { method: "GET" });
    assert.equal(withUser.error, null);
    assert.equal(session.seen[0].headers["authorization"], "Bearer eyJ.user.jwt");
  });
});

Deno.test("functions.invoke reports a refusal as FunctionsHttpError whose response is the JSON error", async () => {
  await withStack({ label: "invoke" }, async (stack) => {
    const wrong = hubClient(stack, "sb_secret_not_the_key");
    const refused = await wrong.client.functions.invoke("hosting-automator", { body: {} });
    assert.ok(refused.error instanceof FunctionsHttpError);
    assert.equal(refused.response?.status, 401);
    assert.deepEqual(await refused.error.context.json(), {
      error: { code: "unauthorized", message: "Missing or wrong credentials." },
    });

    const { client } = hubClient(stack, stack.serviceKey);
    const bad = await client.functions.invoke("hosting-automator", { body: { site_id: "nope" } });
    assert.ok(bad.error instanceof FunctionsHttpError);
    assert.equal(bad.response?.status, 400);
    assert.deepEqual(await bad.error.context.json(), {
      error: { code: "bad_request", message: "site_id: must be a UUID" },
    });
    const missing = await client.functions.invoke("hosting-automator", {
      body: { site_id: crypto.randomUUID() },
    });
    assert.equal(missing.response?.status, 404);
    await missing.response?.body?.cancel();
    const removeMissing = await client.functions.invoke("hosting-automator/remove", {
      body: { site_id: crypto.randomUUID() },
    });
    assert.ok(removeMissing.error instanceof FunctionsHttpError);
    assert.deepEqual(await removeMissing.error.context.json(), {
      error: { code: "not_found", message: "No site has this site_id." },
    });
    assert.equal((await stack.simState()).calls.length, 0);
  });
});
