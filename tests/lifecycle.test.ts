/**
 * The lifecycle end to end on the real stack (real Postgres with the migrations, supabase-js through the
 * PostgREST stand-in, real sshd with the clpctl simulator behind it, the Matomo simulator, Vault's stand-in):
 * removal of a site (row kept or deleted, while provisioning, twice, never provisioned), provisioning the same
 * domain again, and the site user's password kept in Vault for service_role only.
 */
import assert from "node:assert/strict";
import { addExistingSite, setFaults, type SimState } from "../dev/clpctl_sim.ts";
import { type Domain, siteUserFor } from "../supabase/functions/hosting-automator/domain.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { registerSecret } from "./support/env.ts";
import { type Stack, withStack } from "./support/stack.ts";

/** Runs whatever is due, synchronously, until nothing is (POST {} ?wait=true). */
async function drain(stack: Stack, rounds = 4) {
  for (let i = 0; i < rounds; i++) {
    const response = await stack.request("", { body: {}, query: "wait=true" });
    assert.equal(response.status, 200);
    await response.json();
    const [{ due }] = await stack.sql<{ due: number }[]>`
      select count(*)::int as due from hosting_automator.jobs where state in ('queued', 'running')`;
    if (due === 0) return;
    await stack.sql`update hosting_automator.jobs set run_at = now() where state = 'queued'`;
  }
}

async function provision(stack: Stack, domain: string): Promise<string> {
  const id = await stack.insertSite(domain, { status_dns: "active" });
  await drain(stack);
  assert.equal((await stack.site(id)).status_hosting, "active", `${domain} is active`);
  return id;
}

const siteDeletes = (state: SimState) => state.calls.filter((c) => c.verb === "site:delete");
const certificates = (state: SimState) =>
  state.calls.filter((c) => c.verb === "lets-encrypt:install:certificate");

async function jobsOf(stack: Stack, siteId: string) {
  return await stack.sql<{ kind: string; state: string; last_error_code: string | null }[]>`
    select kind, state::text, last_error_code from hosting_automator.jobs where site_id = ${siteId} order by id`;
}

async function vaultSecrets(stack: Stack): Promise<number> {
  const [{ n }] = await stack.sql<{ n: number }[]>`
    select count(*)::int as n from vault.secrets where name like 'hosting_automator_site_%'`;
  return n;
}

Deno.test("removing an active site deletes it on CloudPanel, keeps its analytics, clears the row and its stored password", async () => {
  await withStack({ label: "remove_active" }, async (stack) => {
    const id = await provision(stack, "remove-me.example");
    const store = stack.app.store!;
    const login = await store.siteCredentials(id);
    registerSecret(login.password);
    const sim = await stack.simState();
    assert.equal(
      login.password,
      sim.sites["remove-me.example"].siteUserPassword,
      "the stored password is the site user's",
    );
    assert.equal(login.site_user, siteUserFor("remove-me.example" as Domain));
    assert.equal(login.host, stack.sshd.host);
    assert.equal(login.port, stack.sshd.port);
    assert.equal(login.doc_root, (await stack.site(id)).hosting_doc_root);
    assert.equal(await vaultSecrets(stack), 1, "one Vault secret per site");

    await stack.sql`update public.sites set status_hosting = 'removing' where id = ${id}`;
    await stack.deliverKicks();
    await stack.settle();
    await drain(stack);

    const row = await stack.site(id);
    assert.deepEqual([row.status_hosting, row.hosting_doc_root, row.matomo_site_id, row.error_message], [
      "removed",
      null,
      null,
      null,
    ]);
    const state = await stack.simState();
    assert.deepEqual(Object.keys(state.sites), [], "the CloudPanel site is gone");
    assert.equal(state.users[login.site_user], undefined, "with its site user");
    assert.equal(stack.matomo!.sites.length, 1, "the analytics data is kept by default");
    assert.equal(await vaultSecrets(stack), 0, "the password is deleted from Vault");
    await assert.rejects(store.siteCredentials(id), (e) => isHostingError(e) && e.code === "not_found");
    assert.deepEqual((await jobsOf(stack, id)).map((j) => `${j.kind}:${j.state}`), [
      "provision:succeeded",
      "remove:succeeded",
    ]);
    const codes = (await stack.events(id)).map((e) => e.code);
    for (
      const code of ["removal_queued", "cloudpanel_site_delete_done", "matomo_site_delete", "site_removed"]
    ) {
      if (code === "matomo_site_delete") {
        assert.ok(codes.includes("matomo_kept"), "the kept analytics is journaled");
      } else assert.ok(codes.includes(code), `event ${code}`);
    }

    // Removing it again finds nothing made: no command is sent.
    await stack.sql`update public.sites set status_hosting = 'active' where id = ${id}`;
    const again = await store.remove(id);
    assert.deepEqual(again, {
      found: true,
      status_hosting: "removed",
      queued: false,
      reason: "nothing_to_remove",
    });
    assert.equal(siteDeletes(await stack.simState()).length, 1, "one site:delete in all");
  });
});

Deno.test("with MATOMO_ON_REMOVE=delete the removal deletes the Matomo site too", async () => {
  await withStack({ label: "remove_matomo", env: { MATOMO_ON_REMOVE: "delete" } }, async (stack) => {
    // Matomo keeps at least one site: another domain's stays.
    await provision(stack, "stays.example");
    const id = await provision(stack, "goes.example");
    assert.equal(stack.matomo!.sites.length, 2);
    await stack.app.store!.remove(id);
    await drain(stack);
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.deepEqual(stack.matomo!.sites.map((s) => s.main_url), ["https://stays.example"]);
  });
});

Deno.test("deleting the row of an active site removes it, and the same domain can be provisioned again", async () => {
  await withStack({ label: "remove_deleted" }, async (stack) => {
    const id = await provision(stack, "again.example");
    // The Hub deletes the row and at once inserts a new one for the same domain.
    await stack.sql`delete from public.sites where id = ${id}`;
    const second = await stack.insertSite("again.example", { status_dns: "active" });
    await drain(stack, 6);

    assert.deepEqual((await jobsOf(stack, id)).map((j) => `${j.kind}:${j.state}`), [
      "provision:succeeded",
      "remove:succeeded",
    ], "the removal outlived the row");
    const row = await stack.site(second);
    assert.equal(row.status_hosting, "active", "the new row is provisioned after the removal");
    const state = await stack.simState();
    assert.deepEqual(Object.keys(state.sites), ["again.example"], "one site on CloudPanel: the new one");
    const order = state.calls.filter((c) => c.verb !== "lets-encrypt:install:certificate").map((c) => c.verb);
    assert.deepEqual(
      order,
      ["site:add:static", "site:delete", "site:add:static"],
      "removed before it is re-created",
    );
    const login = await stack.app.store!.siteCredentials(second);
    registerSecret(login.password);
    assert.equal(login.password, state.sites["again.example"].siteUserPassword, "the new site's password");
  });
});

Deno.test("a removal asked for while the site is being provisioned stops it and leaves nothing behind", async () => {
  await withStack({ label: "remove_while_provisioning" }, async (stack) => {
    await setFaults(stack.clpctlState, { delayMs: 1_500 });
    const id = await stack.insertSite("busy.example", { status_dns: "active" });
    const kicked = stack.deliverKicks();
    // Wait until the site step runs, then ask for the removal.
    for (let i = 0; i < 100; i++) {
      const [job] = await stack.sql`
        select current_step from hosting_automator.jobs where site_id = ${id} and state = 'running'`;
      if (job?.current_step === "cloudpanel_site") break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await stack.sql`update public.sites set status_hosting = 'removing' where id = ${id}`;
    await kicked;
    await stack.settle();
    await setFaults(stack.clpctlState, {});
    await drain(stack);

    assert.deepEqual((await jobsOf(stack, id)).map((j) => `${j.kind}:${j.state}`), [
      "provision:cancelled",
      "remove:succeeded",
    ]);
    const state = await stack.simState();
    assert.deepEqual(Object.keys(state.sites), [], "no half-made site");
    assert.equal(certificates(state).length, 0, "no certificate for a site being removed");
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.equal(await vaultSecrets(stack), 0);
  });
});

Deno.test("removing or deleting a row that never got hosting sends nothing and queues nothing", async () => {
  await withStack({ label: "remove_never" }, async (stack) => {
    const waiting = await stack.insertSite("waiting.example");
    const queued = await stack.insertSite("queued.example", { status_dns: "active" });
    assert.deepEqual(await stack.app.store!.remove(queued), {
      found: true,
      status_hosting: "removed",
      queued: false,
      reason: "nothing_to_remove",
    });
    await stack.sql`delete from public.sites where id = ${waiting}`;
    await drain(stack);
    assert.deepEqual((await jobsOf(stack, queued)).map((j) => `${j.kind}:${j.state}`), [
      "provision:cancelled",
    ]);
    assert.deepEqual([...await jobsOf(stack, waiting)], []);
    assert.deepEqual((await stack.simState()).calls, [], "no command reached the server");
    assert.deepEqual(await stack.app.store!.remove(crypto.randomUUID()), { found: false });
  });
});

Deno.test("a failed removal leaves the row removing with the reason, and a retry finishes it", async () => {
  await withStack({ label: "remove_failed" }, async (stack) => {
    const id = await provision(stack, "stuck.example");
    await setFaults(stack.clpctlState, { deleteFailures: 1, deleteFailureKind: "unrecognised" });
    await stack.sql`update hosting_automator.settings set remove_max_attempts = 1`;
    await stack.app.store!.remove(id);
    await drain(stack, 1);
    const failed = await stack.site(id);
    assert.equal(failed.status_hosting, "removing");
    assert.match(failed.error_message ?? "", /^Removal failed: /);
    const status = await stack.app.store!.status();
    assert.deepEqual(status.removals?.failed.map((f) => f.domain), ["stuck.example"], "/status lists it");

    const retried = await stack.app.store!.retry({ siteId: id });
    assert.deepEqual(retried.requeued.map((r) => r.reason), ["removal_failed"]);
    await drain(stack);
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.deepEqual(Object.keys((await stack.simState()).sites), []);
  });
});

Deno.test("a site adopted from an earlier run has no stored password, and the credentials call says so", async () => {
  await withStack({ label: "credentials_adopted" }, async (stack) => {
    await addExistingSite(stack.clpctlState, "old.example", siteUserFor("old.example" as Domain));
    const id = await provision(stack, "old.example");
    await assert.rejects(
      stack.app.store!.siteCredentials(id),
      (e) =>
        isHostingError(e) && e.code === "not_found" && /adopted from an earlier run/.test(e.publicMessage),
    );
    assert.equal(await vaultSecrets(stack), 0, "the password it generated is not kept: it is not the site's");
  });
});

Deno.test("without Vault the password is not stored, the function says so once, and the credentials call says why", async () => {
  await withStack({ label: "credentials_no_vault", vault: false }, async (stack) => {
    await stack.sql`drop schema vault cascade`;
    const first = await provision(stack, "novault-one.example");
    await provision(stack, "novault-two.example");
    await assert.rejects(
      stack.app.store!.siteCredentials(first),
      (e) => isHostingError(e) && e.code === "credentials_unavailable" && /no Vault/.test(e.publicMessage),
    );
    const said = stack.logs.filter((line) => line.includes("this database has no Vault"));
    assert.ok(said.length <= 1, `said at most once per process (${said.length})`);
    const [step] = await stack.sql`
      select result ->> 'credentials' as credentials from hosting_automator.steps
      where site_id = ${first} and step = 'cloudpanel_site'`;
    assert.equal(step.credentials, "not_stored", "the journal says the password was not kept");
  });
});

Deno.test("only service_role may read a site's credentials", async () => {
  await withStack({ label: "credentials_roles" }, async (stack) => {
    const id = await provision(stack, "roles.example");
    for (const role of ["anon", "authenticated"]) {
      const [{ allowed }] = await stack.sql<{ allowed: boolean }[]>`
        select has_function_privilege(${role}, 'public.hosting_site_credentials(uuid)', 'execute') as allowed`;
      assert.equal(allowed, false, `${role} may not execute hosting_site_credentials`);
    }
    const denied = await stack.sql.begin(async (tx) => {
      await tx`set local role anon`;
      await tx`select public.hosting_site_credentials(${id})`;
    }).then(() => "allowed", (e) => e.code);
    assert.equal(denied, "42501");
  });
});

Deno.test("a removed row set back to pending is provisioned again from nothing, with a new password", async () => {
  await withStack({ label: "reprovision_kept" }, async (stack) => {
    const id = await provision(stack, "phoenix.example");
    const first = await stack.app.store!.siteCredentials(id);
    registerSecret(first.password);
    await stack.app.store!.remove(id);
    await drain(stack);
    assert.equal((await stack.site(id)).status_hosting, "removed");

    await stack.sql`update public.sites set status_hosting = 'pending' where id = ${id}`;
    await drain(stack);
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "active");
    const state = await stack.simState();
    assert.deepEqual(state.calls.map((c) => c.verb), [
      "site:add:static",
      "lets-encrypt:install:certificate",
      "site:delete",
      "site:add:static",
      "lets-encrypt:install:certificate",
    ], "every step ran again: the removal cleared the journal");
    const second = await stack.app.store!.siteCredentials(id);
    registerSecret(second.password);
    assert.notEqual(second.password, first.password);
    assert.equal(second.password, state.sites["phoenix.example"].siteUserPassword);
    assert.equal(row.matomo_site_id, stack.matomo!.sites[0].idsite, "the kept Matomo site is found again");
    assert.equal(stack.matomo!.sites.length, 1);
  });
});
