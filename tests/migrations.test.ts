/**
 * The migrations, applied by the Supabase CLI as `supabase db push` / `migration up` would: to a plain
 * Postgres without the platform pieces, and to a database where the Hub's public.sites already exists.
 */
import assert from "node:assert/strict";
import { harness, ROOT } from "./support/env.ts";
import { type TestDb, testDb } from "./support/db.ts";

async function supabase(...args: string[]): Promise<{ code: number; output: string }> {
  const out = await new Deno.Command(harness.supabaseCli, {
    args,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, output: text };
}

async function migrationCount(): Promise<number> {
  let n = 0;
  for await (const entry of Deno.readDir(`${ROOT}supabase/migrations`)) if (entry.name.endsWith(".sql")) n++;
  return n;
}

/** An empty database (not the template), with the Hub's `setup` SQL when given. */
async function emptyDb(label: string, setup: string): Promise<TestDb> {
  const db = await testDb(label, { empty: true });
  if (setup) await db.sql.unsafe(setup);
  return db;
}

Deno.test("the migrations apply to a plain Postgres without pg_net, Vault or pg_cron, and jobs still queue", async () => {
  const db = await emptyDb("plain", "");
  try {
    const up = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.equal(up.code, 0, up.output);
    assert.equal(up.output.match(/Applying migration/g)?.length, await migrationCount());
    const [site] = await db
      .sql`insert into public.sites (domain, status_dns) values ('plain.example', 'active') returning id`;
    const jobs = await db.sql`select state from hosting_automator.jobs where site_id = ${site.id}`;
    assert.deepEqual(jobs.map((j) => j.state), ["queued"], "the job waits to be polled");
    const [{ net }] = await db.sql`select to_regnamespace('net') is not null as net`;
    assert.equal(net, false, "no pg_net here: nothing was kicked and nothing failed");

    const again = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.equal(again.code, 0);
    assert.match(again.output, /up to date/i, "a second run applies nothing");
  } finally {
    await db.close();
  }
});

Deno.test("the migrations complete a Hub-style public.sites with extra columns and rows, keeping every row and value", async () => {
  const db = await emptyDb(
    "hub",
    `
    create table public.sites (
      id uuid primary key default gen_random_uuid(),
      domain text not null,
      status_dns text,
      customer text not null,
      plan text default 'basic',
      notes jsonb,
      created_at timestamptz not null default '2026-01-01T00:00:00Z'
    );
    insert into public.sites (id, domain, status_dns, customer, plan, notes) values
      ('10000000-0000-4000-8000-000000000001', 'one.example', 'active', 'ACME', 'pro', '{"a": 1}'),
      ('10000000-0000-4000-8000-000000000002', 'two.example', 'pending', 'Globex', null, null),
      ('10000000-0000-4000-8000-000000000003', 'three.example', 'active', 'Initech', 'basic', '[]');
  `,
  );
  try {
    const before = await db.sql`select * from public.sites order by id`;
    const up = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.equal(up.code, 0, up.output);

    const after = await db.sql`select * from public.sites order by id`;
    assert.equal(after.length, 3, "every row is kept");
    for (const [i, row] of before.entries()) {
      for (const [column, value] of Object.entries(row)) {
        assert.deepEqual(after[i][column], value, `${column} of row ${i} is unchanged`);
      }
      // Added columns are empty on old rows: no old row suddenly looks pending.
      assert.equal(after[i].status_hosting, null);
      assert.equal(after[i].hosting_doc_root, null);
      assert.equal(after[i].matomo_site_id, null);
      assert.equal(after[i].error_message, null);
    }
    const [rls] = await db.sql`select relrowsecurity from pg_class where oid = 'public.sites'::regclass`;
    assert.equal(rls.relrowsecurity, false, "the Hub's own table settings are not changed");

    // New rows get the default, and the trigger works on the completed table.
    const [fresh] = await db.sql`insert into public.sites (domain, status_dns, customer)
      values ('four.example', 'active', 'Umbrella') returning id, status_hosting`;
    assert.equal(fresh.status_hosting, "pending");
    const jobs = await db.sql`select site_id from hosting_automator.jobs`;
    assert.deepEqual(jobs.map((j) => j.site_id), [fresh.id]);

    // An old row the Hub marks pending is picked up like any other.
    await db.sql`update public.sites set status_hosting = 'pending' where domain = 'one.example'`;
    const [{ n }] = await db.sql`select count(*)::int as n from hosting_automator.jobs`;
    assert.equal(n, 2);
  } finally {
    await db.close();
  }
});

Deno.test("rows already active and pending when the module is installed are queued by the migration", async () => {
  const db = await emptyDb(
    "hub_pending",
    `
    create table public.sites (id uuid primary key, domain text not null, status_dns text, status_hosting text);
    insert into public.sites values
      ('20000000-0000-4000-8000-000000000001', 'due.example', 'active', 'pending'),
      ('20000000-0000-4000-8000-000000000002', 'done.example', 'active', 'active'),
      ('20000000-0000-4000-8000-000000000003', 'wait.example', 'pending', 'pending');
  `,
  );
  try {
    const up = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.equal(up.code, 0, up.output);
    const jobs = await db
      .sql`select s.domain from hosting_automator.jobs j join public.sites s on s.id = j.site_id`;
    assert.deepEqual(jobs.map((j) => j.domain), ["due.example"]);
  } finally {
    await db.close();
  }
});

Deno.test("a Hub function whose name starts with hosting_ keeps its grants: the module revokes only its own functions", async () => {
  const db = await emptyDb(
    "hub_function",
    `
    create function public.hosting_hub_thing() returns int language sql as 'select 1';
    revoke all on function public.hosting_hub_thing() from public;
    grant execute on function public.hosting_hub_thing() to authenticated;
  `,
  );
  try {
    const up = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.equal(up.code, 0, up.output);
    const [hub] = await db.sql`select
      has_function_privilege('authenticated', 'public.hosting_hub_thing()', 'execute') as authenticated,
      has_function_privilege('anon', 'public.hosting_hub_thing()', 'execute') as anon,
      has_function_privilege('service_role', 'public.hosting_hub_thing()', 'execute') as service_role`;
    assert.deepEqual(
      hub,
      { authenticated: true, anon: false, service_role: false },
      "the Hub's grants as it set them",
    );
    const [ours] = await db.sql`select count(*)::int as n from pg_proc p
      where p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\\_%'
        and p.proname <> 'hosting_hub_thing'
        and (has_function_privilege('authenticated', p.oid, 'execute')
          or not has_function_privilege('service_role', p.oid, 'execute'))`;
    assert.equal(ours.n, 0, "the module's own functions are still service_role only");
  } finally {
    await db.close();
  }
});

Deno.test("a Hub table whose id is not a uuid stops the migration with a clear message", async () => {
  const db = await emptyDb("hub_bigint", `create table public.sites (id bigint primary key, domain text)`);
  try {
    const up = await supabase("migration", "up", `--remote=${db.url}`, "--yes");
    assert.notEqual(up.code, 0);
    assert.match(up.output, /public\.sites\.id must be of type uuid \(found bigint\)/);
  } finally {
    await db.close();
  }
});

Deno.test("the security advisor run can fail: a security definer function anon may execute is reported", async () => {
  const db = await testDb("advisor");
  try {
    await db.sql.unsafe(`
      create function public.leaky() returns int language sql security definer as 'select 1';
      grant execute on function public.leaky() to anon;
      alter database "${db.name}" set "pgrst.db_schemas" = 'public, graphql_public';
    `);
    const advisors = await supabase(
      "db",
      "advisors",
      `--remote=${db.url}`,
      "--type",
      "security",
      "--fail-on",
      "warn",
    );
    assert.notEqual(advisors.code, 0, "the advisors fail");
    assert.match(advisors.output, /leaky/);
    await db.sql`drop function public.leaky()`;
    const clean = await supabase(
      "db",
      "advisors",
      `--remote=${db.url}`,
      "--type",
      "security",
      "--fail-on",
      "warn",
    );
    assert.equal(clean.code, 0, clean.output);
  } finally {
    await db.close();
  }
});
