/**
 * The database as a current state: supabase/schemas (with supabase/residue.sql) declares the database that
 * supabase/migrations build, supabase/catalog.txt is that database's catalog, and a database installed from the
 * migrations of before upgrades to it with its rows and in-flight work intact.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { startCluster, SUPABASE_BASE_SQL } from "./support/cluster.ts";
import {
  buildFromSchemas,
  catalog,
  CATALOG_FILE,
  catalogFile,
  PREPARE_SQL,
  REGENERATE,
  textDiff,
} from "./support/catalog.ts";
import { testDb } from "./support/db.ts";
import { harness, ROOT } from "./support/env.ts";

/** The suite's `postgres` database: the migrations applied by the Supabase CLI, pg_cron in it (tests/run.ts). */
const migrated = () => `${harness.pgBase}/postgres`;

async function assertSameCatalog(actual: string, expected: string, labels: [string, string], hint: string) {
  if (actual === expected) return;
  assert.fail(`${hint}\n${await textDiff(expected, actual, labels)}`);
}

Deno.test("supabase/catalog.txt is the catalog of the database the migrations build", async () => {
  const committed = await Deno.readTextFile(CATALOG_FILE);
  await assertSameCatalog(
    catalogFile(await catalog(migrated())),
    committed,
    ["supabase/catalog.txt", "the migrations"],
    `supabase/catalog.txt is out of date: run \`${REGENERATE}\` and commit it with the change.`,
  );
});

Deno.test("the schema files and supabase/residue.sql build the database the migrations build", async () => {
  // A cluster of its own: pg_cron serves one database per cluster, and the sweep's schedule is compared too.
  const cluster = await startCluster();
  try {
    await cluster.psql("postgres", SUPABASE_BASE_SQL);
    await cluster.psql("postgres", PREPARE_SQL);
    await buildFromSchemas(cluster.url("postgres"));
    const fromSchemas = await catalog(cluster.url("postgres"));
    assert.match(fromSchemas, /cron job 'hosting-automator-sweep'/, "the residue scheduled the sweep");
    await assertSameCatalog(
      fromSchemas,
      await catalog(migrated()),
      ["supabase/migrations", "supabase/schemas"],
      "supabase/schemas (with supabase/residue.sql) and supabase/migrations build different databases:",
    );
  } finally {
    await cluster.stop();
  }
});

async function assertSameJson(actual: unknown, expected: unknown, message: string) {
  const [a, e] = [actual, expected].map((v) => JSON.stringify(v, null, 2) + "\n");
  if (a !== e) assert.fail(`${message}:\n${await textDiff(e, a, ["before", "after"])}`);
}

/** The last migration of a database installed before supabase/schemas existed. */
const INSTALLED = "20261129000007";

async function supabase(args: string[], workdir = ROOT): Promise<string> {
  const out = await new Deno.Command(harness.supabaseCli, {
    args: [...args, "--workdir", workdir],
    cwd: workdir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`supabase ${args.join(" ")} failed:\n${text}`);
  return text;
}

/** Every row the module keeps, table by table, as JSON. */
async function rows(sql: postgres.Sql): Promise<Record<string, unknown>> {
  const tables = [
    "public.sites",
    "hosting_automator.settings",
    "hosting_automator.jobs",
    "hosting_automator.steps",
    "hosting_automator.events",
    "hosting_automator.domain_owners",
    "hosting_automator.credentials",
    "hosting_automator.servers",
    "hosting_automator.placements",
    "hosting_automator.rings",
    "hosting_automator.kick_log",
    "vault.secrets",
  ];
  const out: Record<string, unknown> = {};
  for (const table of tables) {
    const [{ all }] = await sql.unsafe(
      `select coalesce(jsonb_agg(to_jsonb(t) order by to_jsonb(t)::text), '[]') as all from ${table} t`,
    );
    out[table] = all;
  }
  return out;
}

/** What operators read, without what moves with the clock. */
async function reports(sql: postgres.Sql, siteIds: string[]) {
  const [{ status }] = await sql`select public.hosting_status() as status`;
  delete status.generated_at;
  delete status.queue.oldest_age_seconds;
  const sites = [];
  for (const id of siteIds) {
    const [{ site }] = await sql`select public.hosting_site(${id}) as site`;
    sites.push(site);
  }
  const due = await sql`select * from public.hosting_due()`;
  return { status, sites, due };
}

Deno.test("a database installed from the earlier migrations upgrades to the current state, keeping its rows and running jobs", async () => {
  const db = await testDb("upgrade", { empty: true });
  const installed = await Deno.makeTempDir({ prefix: "ha-installed-" });
  try {
    const { sql } = db;
    await sql.unsafe(PREPARE_SQL);

    // The project as it was: the same config, the migrations up to INSTALLED.
    await Deno.mkdir(`${installed}/supabase/migrations`, { recursive: true });
    await Deno.copyFile(`${ROOT}supabase/config.toml`, `${installed}/supabase/config.toml`);
    const later: string[] = [];
    for await (const entry of Deno.readDir(`${ROOT}supabase/migrations`)) {
      if (!entry.name.endsWith(".sql")) continue;
      if (entry.name.slice(0, INSTALLED.length) <= INSTALLED) {
        await Deno.copyFile(
          `${ROOT}supabase/migrations/${entry.name}`,
          `${installed}/supabase/migrations/${entry.name}`,
        );
      } else later.push(entry.name);
    }
    assert.ok(later.length >= 1, "a migration after the installed ones");
    const first = await supabase(["migration", "up", `--remote=${db.url}`, "--yes"], installed);
    assert.equal(first.match(/Applying migration/g)?.length, 13, first);

    // Sites in every state, made by the functions the worker and operators call. Every wait lasts at least half an
    // hour, so nothing falls due while the database is upgraded.
    await sql`update hosting_automator.settings set backoff_base_seconds = 3600, backoff_max_seconds = 7200,
      dns_backoff_seconds = 3600, dns_backoff_max_seconds = 7200`;
    await sql`insert into hosting_automator.servers (name, host, host_key, public_ips)
      values ('cp', 'cp.example', ${`SHA256:${"A".repeat(43)}`}, '{203.0.113.7}')`;
    const ids: Record<string, string> = {};
    const site = async (name: string, dns = "active") => {
      const [row] = await sql`insert into public.sites (domain, status_dns)
        values (${`${name}.example`}, ${dns}) returning id`;
      ids[name] = row.id;
      return row.id as string;
    };
    const claim = async (id: string) => {
      const [job] = await sql`select * from public.hosting_claim_jobs('w', 'cp', 600, 1, ${id})`;
      assert.ok(job, `a job of ${id} is claimed`);
      return job;
    };
    const docRoot = (name: string) => `/home/${name}-abc/htdocs/${name}.example`;
    const siteDone = (name: string) => ({
      step: "cloudpanel_site",
      state: "done",
      result: { site_user: `${name}-abc`, doc_root: docRoot(name), credentials: "known" },
    });
    /** A provisioning job through its site step, with its domain owned and its password stored. */
    const build = async (name: string) => {
      const job = await claim(await site(name));
      const [{ started }] = await sql`select public.hosting_advance(${job.job_id}, ${job.lease_token}, 600,
        null, 'cloudpanel_site', ${`${name}.example`}, ${"p".repeat(24)}) as started`;
      assert.equal(started.ok, true);
      return job;
    };
    const complete = async (name: string, matomo: number | null) => {
      const job = await build(name);
      const [{ ok }] = await sql`select public.hosting_complete_job(${job.job_id}, ${job.lease_token},
        ${docRoot(name)}, ${matomo}, null, ${sql.json(siteDone(name))}, ${matomo === null},
        '2027-03-01T00:00:00Z') as ok`;
      assert.equal(ok, true);
    };

    await site("pending", "pending");
    await site("queued");
    const running = await build("running");
    await complete("active", 7);
    await complete("noanalytics", null);
    const failing = await claim(await site("failed"));
    await sql`select public.hosting_fail_job(${failing.job_id}, ${failing.lease_token}, 'invalid_domain',
      'The domain is invalid.', null, true)`;
    const waiting = await claim(await site("dns"));
    await sql`select public.hosting_advance(${waiting.job_id}, ${waiting.lease_token}, 600, null, 'dns_check')`;
    await sql`select public.hosting_wait_for_dns(${waiting.job_id}, ${waiting.lease_token}, 'Not yet.')`;
    const troubled = await claim(await site("trouble"));
    await sql`select public.hosting_server_trouble(${troubled.job_id}, ${troubled.lease_token}, 'ssh_unreachable',
      'The server could not be reached.')`;
    await sql`select public.hosting_server_ok('cp')`;
    await complete("removing", 8);
    await sql`select public.hosting_remove(${ids.removing})`;
    await site("removed", "pending");
    await sql`select public.hosting_remove(${ids.removed})`;
    await complete("deleted", 9);
    await sql`delete from public.sites where id = ${ids.deleted}`;

    const states = await sql`select domain, status_hosting from public.sites order by domain`;
    assert.deepEqual(
      states.map((s) => `${s.domain} ${s.status_hosting}`),
      [
        "active.example active",
        "dns.example provisioning",
        "failed.example failed",
        "noanalytics.example active",
        "pending.example pending",
        "queued.example pending",
        "removed.example removed",
        "removing.example removing",
        "running.example provisioning",
        "trouble.example provisioning",
      ],
    );
    const jobs = await sql`select kind, state::text from hosting_automator.jobs order by id`;
    assert.ok(jobs.some((j) => j.kind === "remove" && j.state === "queued"), "removals queued");
    assert.ok(
      jobs.some((j) => j.kind === "analytics" && j.state === "queued"),
      "an analytics backfill queued",
    );
    const before = await rows(sql);
    const reportsBefore = await reports(sql, Object.values(ids));

    const upgrade = await supabase(["migration", "up", `--remote=${db.url}`, "--yes"]);
    assert.equal(upgrade.match(/Applying migration/g)?.length, later.length, upgrade);

    // The upgrade adds jobs.waiting_for, read from the codes that said why a queued job waited: the job waiting
    // for DNS and the one waiting for its server say so; every other column of every row is as it was.
    const after = await rows(sql);
    const jobsAfter = after["hosting_automator.jobs"] as Record<string, unknown>[];
    assert.deepEqual(
      jobsAfter.filter((j) => j.waiting_for !== null).map((j) => `${j.site_id} ${j.waiting_for}`).sort(),
      [`${ids.dns} dns`, `${ids.trouble} server`].sort(),
      "the waiting jobs say what they wait for",
    );
    after["hosting_automator.jobs"] = jobsAfter.map(({ waiting_for: _, ...rest }) => rest);
    await assertSameJson(after, before, "every row is kept as it was");
    // And the journal's facts later calls read (a removal's target, the credentials' site user) are kept per site.
    const [{ facts }] =
      await sql`select facts from hosting_automator.site_facts where site_id = ${ids.active}`;
    assert.deepEqual(facts, { site_user: "active-abc", doc_root: docRoot("active") });
    // The report's sections the upgrade adds (whether the database starts jobs by itself, and the jobs that wait
    // for a server: here the one whose server could not be reached); every other section reads the same.
    const reportsAfter = await reports(sql, Object.values(ids));
    const { setup, waiting_for_server: waitingForServer, ...statusAfter } = reportsAfter.status;
    assert.ok(
      setup && !("setup" in reportsBefore.status),
      "the report says whether jobs start by themselves",
    );
    assert.deepEqual(waitingForServer, {
      jobs: 1,
      by_reason: { ssh_unreachable: 1 },
      sites: { provisioning: 1 },
    });
    await assertSameJson(
      { ...reportsAfter, status: statusAfter },
      reportsBefore,
      "the reports read the same",
    );
    // The policy this test set aside, the catalogs compare whole. pg_cron serves the suite's `postgres` database
    // only: here, as on a database without it, there is no schedule.
    await sql`update hosting_automator.settings set backoff_base_seconds = default, backoff_max_seconds = default,
      dns_backoff_seconds = default, dns_backoff_max_seconds = default`;
    const withoutCron = (text: string) =>
      text.replace(/\n## extensions\n[\s\S]*?(?=\n## )/, "").replace(/\n## cron jobs\n[\s\S]*$/, "");
    await assertSameCatalog(
      withoutCron(await catalog(db.url)),
      withoutCron(await catalog(migrated())),
      ["all migrations on an empty database", "upgraded"],
      "the upgraded database differs from one built by all the migrations:",
    );

    // The job that was running when the database was upgraded goes on under its lease.
    const [{ advanced }] =
      await sql`select public.hosting_advance(${running.job_id}, ${running.lease_token}, 600,
      ${sql.json(siteDone("running"))}, 'matomo_site') as advanced`;
    assert.equal(advanced.ok, true);
    const [{ done }] = await sql`select public.hosting_exit(${running.job_id}, ${running.lease_token}, ${
      sql.json({
        type: "active",
        doc_root: docRoot("running"),
        matomo_site_id: 10,
        certificate_expires_at: "2027-04-01T00:00:00Z",
        done: { step: "matomo_site", state: "done" },
      })
    }) ->> 'state' as done`;
    assert.equal(done, "succeeded");
    const [row] = await sql`select status_hosting, matomo_site_id, certificate_expires_at from public.sites
      where id = ${ids.running}`;
    assert.deepEqual(
      [row.status_hosting, row.matomo_site_id, row.certificate_expires_at.toISOString()],
      ["active", 10, "2027-04-01T00:00:00.000Z"],
    );
    const [next] = await sql`select * from public.hosting_claim_jobs('w', 'cp', 600, 1, ${ids.queued})`;
    assert.deepEqual(next.server.public_ips, ["203.0.113.7"], "a claim says where the site's DNS must point");
  } finally {
    await db.close();
    await Deno.remove(installed, { recursive: true }).catch(() => {});
  }
});
