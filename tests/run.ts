// deno-lint-ignore-file no-console
/**
 * The test command (`deno task test`). Does everything itself, then prints `N passed, N failed` last:
 *
 *   1. finds the Supabase CLI (or installs the npm package `supabase` into .cache/tools), and squawk (npm
 *      package `squawk-cli`, pinned, into .cache/tools);
 *   2. lints the migrations with squawk (.squawk.toml);
 *   3. starts a throwaway PostgreSQL 15 cluster (pg_cron preloaded) with the Supabase base roles;
 *   4. applies the migrations with `supabase migration up --remote=<url>` to `postgres` (where pg_cron lives)
 *      and to a template database that every Deno test clones: `postgres` is the superuser there, as on a
 *      self-hosted database;
 *   5. runs `supabase db advisors --type security --fail-on warn`;
 *   6. runs the pgTAP files of supabase/tests/database with pg_prove;
 *   7. as on a Supabase project: a second PostgreSQL 15 cluster whose superuser is the platform's admin role,
 *      which creates the extensions and grants; the CLI applies the migrations as `postgres`, which is not a
 *      superuser; then the advisors and the pgTAP files, as `postgres`;
 *   8. PostgreSQL 17 (PGlite, served on a port): the CLI applies the migrations, pg_prove runs the pgTAP
 *      files (assertions that need pg_cron, which PGlite lacks, are skipped and listed);
 *   9. runs the Deno tests (tests/*.test.ts), then the final secret scan over everything they left;
 *  10. tears everything down.
 *
 * Arguments are passed to `deno test` (e.g. `deno task test --filter "lease"` or a test file).
 * Needs: Deno 2.1, PostgreSQL 15 server binaries with pg_cron and pgTAP (pg_prove), OpenSSH's sshd, npm.
 */
import {
  type Cluster,
  HOSTED_ADMIN,
  HOSTED_ROLES_SQL,
  hostedDatabaseSql,
  PG_BIN,
  PLATFORM_STANDINS_SQL,
  startCluster,
  SUPABASE_BASE_SQL,
  SUPABASE_DATABASE_SQL,
} from "./support/cluster.ts";
import { ROOT } from "./support/env.ts";
import { PGLITE_LABEL, skipStatements, startPgliteServer } from "./support/pglite.ts";
import { squawk, SQUAWK_VERSION } from "./support/squawk.ts";

const SUPABASE_CLI_VERSION = "3.1.0";
const TEMPLATE = "ha_template";

interface Tally {
  name: string;
  passed: number;
  failed: number;
  seconds: number;
  note?: string;
}
const tallies: Tally[] = [];
const t0 = performance.now();

function say(text: string) {
  console.log(`\n▶ ${text}`);
}

async function exec(
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; tee?: string; quiet?: boolean; cwd?: string } = {},
): Promise<{ code: number; output: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd ?? ROOT,
    env: options.env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const decoder = new TextDecoder();
  let output = "";
  const file = options.tee ? await Deno.open(options.tee, { create: true, append: true }) : null;
  const pump = async (stream: ReadableStream<Uint8Array>, sink: typeof Deno.stdout) => {
    for await (const chunk of stream) {
      output += decoder.decode(chunk, { stream: true });
      if (!options.quiet) await sink.write(chunk);
      await file?.write(chunk);
    }
  };
  await Promise.all([pump(child.stdout, Deno.stdout), pump(child.stderr, Deno.stderr)]);
  const { code } = await child.status;
  file?.close();
  return { code, output };
}

async function check(name: string, work: () => Promise<{ passed: number; failed: number; note?: string }>) {
  const started = performance.now();
  try {
    const result = await work();
    tallies.push({ name, ...result, seconds: (performance.now() - started) / 1000 });
  } catch (error) {
    console.error(`✗ ${name}: ${error instanceof Error ? error.message : error}`);
    tallies.push({
      name,
      passed: 0,
      failed: 1,
      seconds: (performance.now() - started) / 1000,
      note: "error",
    });
  }
}

/**
 * An npm tool: `envVar` when set, the project's node_modules, .cache/tools, then (with `onPath`) the PATH;
 * else the pinned version is installed into .cache/tools.
 */
async function npmTool(
  tool: { pkg: string; version: string; bin: string; envVar?: string; onPath?: boolean },
): Promise<string> {
  const candidates = [
    tool.envVar ? Deno.env.get(tool.envVar) : undefined,
    `${ROOT}node_modules/.bin/${tool.bin}`,
    `${ROOT}.cache/tools/node_modules/.bin/${tool.bin}`,
  ].filter((c): c is string => Boolean(c));
  for (const candidate of candidates) {
    if (await Deno.stat(candidate).then(() => true, () => false)) return candidate;
  }
  if (tool.onPath) {
    const onPath = await exec("sh", ["-c", `command -v ${tool.bin}`], { quiet: true }).catch(() => null);
    if (onPath?.code === 0 && onPath.output.trim()) return onPath.output.trim();
  }
  console.log(`  installing the npm package ${tool.pkg}@${tool.version} into .cache/tools`);
  const install = await exec("npm", [
    "install",
    "--prefix",
    `${ROOT}.cache/tools`,
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
    "--save-exact",
    `${tool.pkg}@${tool.version}`,
  ]);
  if (install.code !== 0) throw new Error(`could not install ${tool.pkg} with npm`);
  return `${ROOT}.cache/tools/node_modules/.bin/${tool.bin}`;
}

async function prepareDatabase(cluster: Cluster, database: string) {
  if (database !== "postgres") await cluster.psql("postgres", `create database ${database}`);
  // As on Supabase: the Data API exposes public; the advisors read this setting.
  await cluster.psql(database, SUPABASE_DATABASE_SQL + PLATFORM_STANDINS_SQL);
  await cluster.psql(
    database,
    `alter database ${database} set "pgrst.db_schemas" = 'public, graphql_public'`,
  );
  await migrationUp(database, cluster.url(database));
}

/** `supabase migration up` against `url`; throws with the CLI's output when it fails. */
async function migrationUp(label: string, url: string) {
  const migrate = await exec(cli, ["migration", "up", `--remote=${url}`, "--yes"], { quiet: true });
  if (migrate.code !== 0) throw new Error(`supabase migration up failed on ${label}:\n${migrate.output}`);
  const applied = migrate.output.match(/Applying migration/g)?.length ?? 0;
  console.log(`  ${label}: ${applied} migrations applied by the Supabase CLI`);
}

async function advisors(url: string): Promise<{ passed: number; failed: number }> {
  const run = await exec(cli, [
    "db",
    "advisors",
    `--remote=${url}`,
    "--type",
    "security",
    "--fail-on",
    "warn",
  ], { quiet: true });
  const clean = run.code === 0 && /No issues found/.test(run.output);
  console.log(clean ? "  No issues found" : run.output);
  return { passed: clean ? 1 : 0, failed: clean ? 0 : 1 };
}

/** The pgTAP files, in order, relative to ROOT. */
async function pgtapFiles(): Promise<string[]> {
  const files = [];
  for await (const entry of Deno.readDir(`${ROOT}supabase/tests/database`)) {
    if (entry.name.endsWith(".sql")) files.push(`supabase/tests/database/${entry.name}`);
  }
  return files.sort();
}

/** pg_prove over `files` (relative to `cwd`); a test skipped by pgTAP counts as neither passed nor failed. */
async function pgProve(
  target: { port: number; user: string; cwd?: string; env?: Record<string, string> },
  files: string[],
): Promise<{ passed: number; failed: number; note?: string }> {
  const prove = await exec("pg_prove", [
    "--verbose",
    "--ext",
    ".sql",
    "-h",
    "127.0.0.1",
    "-p",
    String(target.port),
    "-U",
    target.user,
    "-d",
    "postgres",
    ...files,
  ], { quiet: true, cwd: target.cwd, env: { PGOPTIONS: "--search_path=public,extensions", ...target.env } });
  const skipped = prove.output.match(/^\s*ok \d+.*# skip/gim)?.length ?? 0;
  const passed = (prove.output.match(/^\s*ok \d+/gm)?.length ?? 0) - skipped;
  let failed = prove.output.match(/^\s*not ok \d+/gm)?.length ?? 0;
  for (const line of prove.output.split("\n")) {
    if (/not ok|^#|ERROR|^Result|^Files=|Dubious|Failed/.test(line.trim())) console.log(`  ${line.trim()}`);
  }
  if (prove.code !== 0 && failed === 0) failed = 1;
  return { passed, failed, note: skipped ? `${skipped} skipped` : undefined };
}

/** Deno's JUnit report: one testcase per test (and per step); failed ones hold a <failure>. */
function countJunit(xml: string): { passed: number; failed: number } {
  let passed = 0, failed = 0;
  for (const chunk of xml.split("<testcase").slice(1)) {
    const tagEnd = chunk.indexOf(">");
    const body = chunk[tagEnd - 1] === "/" ? "" : chunk.slice(tagEnd, chunk.indexOf("</testcase>"));
    if (/<failure|<error/.test(body)) failed++;
    else passed++;
  }
  return { passed, failed };
}

async function denoTests(name: string, paths: string[], env: Record<string, string>, extra: string[]) {
  await check(name, async () => {
    const junit = `${env.HA_ARTIFACTS}/${name.replace(/\W+/g, "-")}.xml`;
    const run = await exec(Deno.execPath(), [
      "test",
      "-A",
      "--parallel",
      `--junit-path=${junit}`,
      ...extra,
      ...paths,
    ], { env, tee: `${env.HA_ARTIFACTS}/test-output.txt` });
    const counted = await Deno.readTextFile(junit).then(countJunit, () => ({ passed: 0, failed: 0 }));
    if (run.code !== 0 && counted.failed === 0) counted.failed = 1; // crashed before reporting
    return counted;
  });
}

/**
 * As on a Supabase project: the cluster's superuser is the platform's admin role, which creates the roles,
 * the extensions and their grants; `postgres`, which applies the migrations (`supabase db push`), is not a
 * superuser. The advisors and the pgTAP files then run against it too, the pgTAP files as `postgres`.
 */
async function hostedChecks() {
  say(
    `As on Supabase: migrations applied by postgres, not a superuser (${HOSTED_ADMIN} made the extensions)`,
  );
  let hosted: Cluster | undefined;
  try {
    await check("migrations apply as hosted's postgres (not a superuser)", async () => {
      hosted = await startCluster({ superuser: HOSTED_ADMIN });
      await hosted.psql("postgres", HOSTED_ROLES_SQL);
      await hosted.psql(
        "postgres",
        hostedDatabaseSql("postgres", { pgCron: true }) +
          `create extension if not exists pgtap with schema extensions;
           alter database postgres set "pgrst.db_schemas" = 'public, graphql_public';`,
      );
      const [superuser] = (await hosted.psql(
        "postgres",
        "select rolsuper from pg_roles where rolname = 'postgres'",
      )).match(/\b[tf]\b/) ?? [];
      if (superuser !== "f") throw new Error("postgres is a superuser in the hosted-like cluster");
      await migrationUp("postgres (as postgres, not a superuser)", hosted.url("postgres", "postgres"));
      return { passed: 1, failed: 0 };
    });
    if (!hosted) return;
    const target = hosted;
    await check(
      "supabase db advisors, hosted roles: nothing at WARN",
      () => advisors(target.url("postgres", "postgres")),
    );
    await check(
      "pgTAP as hosted's postgres",
      async () => await pgProve({ port: target.port, user: "postgres" }, await pgtapFiles()),
    );
  } finally {
    await hosted?.stop();
  }
}

/**
 * PostgreSQL 17 (new Supabase projects) as PGlite: the CLI applies the migrations and pg_prove runs the pgTAP
 * files, with the assertions that need pg_cron replaced by pgTAP skips that name them.
 */
async function pgliteChecks() {
  say(`PostgreSQL 17 (${PGLITE_LABEL}): migrations by the Supabase CLI, pgTAP by pg_prove`);
  const shareDir = (await exec(`${PG_BIN}/pg_config`, ["--sharedir"], { quiet: true })).output.trim();
  let server: Awaited<ReturnType<typeof startPgliteServer>> | undefined;
  const work = await Deno.makeTempDir({ prefix: "ha-pglite-" });
  // PGlite does not answer a TLS or GSSAPI request: libpq (psql, pg_prove) must not send one.
  const noTls = { PGSSLMODE: "disable", PGGSSENCMODE: "disable" };
  try {
    await check(`migrations apply on PostgreSQL 17 (${PGLITE_LABEL})`, async () => {
      server = await startPgliteServer({ pgtapShareDir: shareDir });
      console.log(`  ${server.version}; pg_net and Vault: the test stand-ins; pg_cron: not in PGlite`);
      await migrationUp(server.version, server.url());
      return { passed: 1, failed: 0 };
    });
    if (!server) return;
    const target = server;
    await check(`pgTAP on PostgreSQL 17 (${PGLITE_LABEL})`, async () => {
      // One backend session serves every connection and ignores PGOPTIONS: this SET is pg_prove's search_path.
      await exec(`${PG_BIN}/psql`, [
        "-X",
        "-q",
        "-d",
        target.url(),
        "-c",
        "set search_path = public, extensions",
      ], {
        quiet: true,
        env: noTls,
      });
      const files = await pgtapFiles();
      for (const file of files) {
        const { script, skipped } = skipStatements(
          await Deno.readTextFile(`${ROOT}${file}`),
          /\bcron\./i,
          "pg_cron is not available in PGlite",
        );
        await Deno.mkdir(`${work}/${file.slice(0, file.lastIndexOf("/"))}`, { recursive: true });
        await Deno.writeTextFile(`${work}/${file}`, script);
        for (const s of skipped) {
          console.log(`  skipped in ${file} (needs pg_cron): ${s.statement.slice(0, 100)}`);
        }
      }
      return await pgProve({ port: target.port, user: "postgres", cwd: work, env: noTls }, files);
    });
  } finally {
    await server?.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

const cli = await (async () => {
  say("Supabase CLI");
  const path = await npmTool({
    pkg: "supabase",
    version: SUPABASE_CLI_VERSION,
    bin: "supabase",
    envVar: "SUPABASE_CLI",
    onPath: true,
  });
  console.log(`  ${path}`);
  return path;
})();

say(`Migration lint (squawk ${SQUAWK_VERSION}, .squawk.toml)`);
await check("squawk finds nothing in the migrations", async () => {
  const bin = await npmTool({ pkg: "squawk-cli", version: SQUAWK_VERSION, bin: "squawk" });
  const migrations = [];
  for await (const entry of Deno.readDir(`${ROOT}supabase/migrations`)) {
    if (entry.name.endsWith(".sql")) migrations.push(`supabase/migrations/${entry.name}`);
  }
  const lint = await squawk(migrations.sort(), bin);
  if (lint.code === 0) console.log(`  ${migrations.length} files, no findings`);
  else console.log(lint.output.split("\n").map((line) => `  ${line}`).join("\n"));
  return { passed: lint.code === 0 ? 1 : 0, failed: lint.code === 0 ? 0 : 1 };
});

say("PostgreSQL 15 (throwaway cluster, pg_cron preloaded)");
const cluster = await startCluster();
console.log(`  port ${cluster.port}, data in ${cluster.dir}`);
const artifacts = await Deno.makeTempDir({ prefix: "ha-artifacts-" });
const forward = Deno.args;

try {
  await cluster.psql("postgres", SUPABASE_BASE_SQL);

  say("Migrations (supabase migration up)");
  await check("migrations apply with the Supabase CLI", async () => {
    await prepareDatabase(cluster, "postgres");
    await prepareDatabase(cluster, TEMPLATE);
    return { passed: 1, failed: 0 };
  });

  say("Security advisors (supabase db advisors --type security --fail-on warn)");
  await check(
    "supabase db advisors reports nothing at WARN or above",
    () => advisors(cluster.url("postgres")),
  );

  say("pgTAP (pg_prove supabase/tests/database)");
  await check("pgTAP", async () => {
    await cluster.psql("postgres", "create extension if not exists pgtap with schema extensions");
    return await pgProve({ port: cluster.port, user: "postgres" }, await pgtapFiles());
  });

  await hostedChecks();
  await pgliteChecks();

  const env = {
    ...Deno.env.toObject(),
    HA_PG_BASE: `postgresql://postgres:postgres@127.0.0.1:${cluster.port}`,
    HA_PG_TEMPLATE: TEMPLATE,
    HA_SUPABASE_CLI: cli,
    HA_ARTIFACTS: artifacts,
  };

  say("Deno tests (unit, integration on real Postgres and real sshd)");
  const files = [];
  for await (const entry of Deno.readDir(`${ROOT}tests`)) {
    if (entry.isFile && entry.name.endsWith(".test.ts")) files.push(`tests/${entry.name}`);
  }
  const chosen = forward.some((a) => a.endsWith(".ts")) ? [] : files.sort();
  await denoTests("Deno tests", chosen, env, forward);

  say("Secret scan over every log line, event, error and journal the suite produced");
  if (forward.length === 0) await denoTests("secret scan", ["tests/final/secret_scan.test.ts"], env, []);
  else console.log("  skipped: the scan is only meaningful after the whole suite");
} finally {
  say("Teardown");
  await cluster.stop();
  if (!Deno.env.get("HA_KEEP_ARTIFACTS")) await Deno.remove(artifacts, { recursive: true }).catch(() => {});
  else console.log(`  artifacts kept in ${artifacts}`);
}

const passed = tallies.reduce((n, t) => n + t.passed, 0);
const failed = tallies.reduce((n, t) => n + t.failed, 0);
console.log("\nSummary");
for (const t of tallies) {
  console.log(
    `  ${t.failed ? "✗" : "✓"} ${t.name.padEnd(58)} ${String(t.passed).padStart(4)} passed ${
      String(t.failed).padStart(3)
    } failed  ${t.seconds.toFixed(1).padStart(6)} s${t.note ? `  (${t.note})` : ""}`,
  );
}
console.log(`  total time ${((performance.now() - t0) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed === 0 && passed > 0 ? 0 : 1);
