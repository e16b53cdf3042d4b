// deno-lint-ignore-file no-console
/**
 * The test command (`deno task test`). Does everything itself, then prints `N passed, N failed` last:
 *
 *   1. finds the Supabase CLI (or installs the npm package `supabase` into .cache/tools);
 *   2. starts a throwaway PostgreSQL 15 cluster (pg_cron preloaded) with the Supabase base roles;
 *   3. applies the migrations with `supabase migration up --remote=<url>` to `postgres` (where pg_cron lives)
 *      and to a template database that every Deno test clones;
 *   4. runs `supabase db advisors --type security --fail-on warn`;
 *   5. runs the pgTAP files of supabase/tests/database with pg_prove;
 *   6. runs the Deno tests (tests/*.test.ts), then the final secret scan over everything they left;
 *   7. tears everything down.
 *
 * Arguments are passed to `deno test` (e.g. `deno task test --filter "lease"` or a test file).
 * Needs: Deno 2.1, PostgreSQL 15 server binaries with pg_cron and pgTAP (pg_prove), OpenSSH's sshd, npm.
 */
import {
  type Cluster,
  PLATFORM_STANDINS_SQL,
  startCluster,
  SUPABASE_BASE_SQL,
  SUPABASE_DATABASE_SQL,
} from "./support/cluster.ts";
import { ROOT } from "./support/env.ts";

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
  options: { env?: Record<string, string>; tee?: string; quiet?: boolean } = {},
): Promise<{ code: number; output: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
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

async function findSupabaseCli(): Promise<string> {
  const candidates = [
    Deno.env.get("SUPABASE_CLI"),
    `${ROOT}node_modules/.bin/supabase`,
    `${ROOT}.cache/tools/node_modules/.bin/supabase`,
  ].filter((c): c is string => Boolean(c));
  for (const candidate of candidates) {
    if (await Deno.stat(candidate).then(() => true, () => false)) return candidate;
  }
  const onPath = await exec("sh", ["-c", "command -v supabase"], { quiet: true }).catch(() => null);
  if (onPath?.code === 0 && onPath.output.trim()) return onPath.output.trim();
  console.log(
    `  installing the Supabase CLI (npm package supabase@${SUPABASE_CLI_VERSION}) into .cache/tools`,
  );
  const install = await exec("npm", [
    "install",
    "--prefix",
    `${ROOT}.cache/tools`,
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
    `supabase@${SUPABASE_CLI_VERSION}`,
  ]);
  if (install.code !== 0) throw new Error("could not install the Supabase CLI with npm");
  return `${ROOT}.cache/tools/node_modules/.bin/supabase`;
}

async function prepareDatabase(cluster: Cluster, cli: string, database: string) {
  if (database !== "postgres") await cluster.psql("postgres", `create database ${database}`);
  // As on Supabase: the Data API exposes public; the advisors read this setting.
  await cluster.psql(database, SUPABASE_DATABASE_SQL + PLATFORM_STANDINS_SQL);
  await cluster.psql(
    database,
    `alter database ${database} set "pgrst.db_schemas" = 'public, graphql_public'`,
  );
  const migrate = await exec(cli, ["migration", "up", `--remote=${cluster.url(database)}`, "--yes"], {
    quiet: true,
  });
  if (migrate.code !== 0) throw new Error(`supabase migration up failed on ${database}:\n${migrate.output}`);
  const applied = migrate.output.match(/Applying migration/g)?.length ?? 0;
  console.log(`  ${database}: ${applied} migrations applied by the Supabase CLI`);
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

const cli = await (async () => {
  say("Supabase CLI");
  const path = await findSupabaseCli();
  console.log(`  ${path}`);
  return path;
})();

say("PostgreSQL 15 (throwaway cluster, pg_cron preloaded)");
const cluster = await startCluster();
console.log(`  port ${cluster.port}, data in ${cluster.dir}`);
const artifacts = await Deno.makeTempDir({ prefix: "ha-artifacts-" });
const forward = Deno.args;

try {
  await cluster.psql("postgres", SUPABASE_BASE_SQL);

  say("Migrations (supabase migration up)");
  await check("migrations apply with the Supabase CLI", async () => {
    await prepareDatabase(cluster, cli, "postgres");
    await prepareDatabase(cluster, cli, TEMPLATE);
    return { passed: 1, failed: 0 };
  });

  say("Security advisors (supabase db advisors --type security --fail-on warn)");
  await check("supabase db advisors reports nothing at WARN or above", async () => {
    const advisors = await exec(cli, [
      "db",
      "advisors",
      `--remote=${cluster.url("postgres")}`,
      "--type",
      "security",
      "--fail-on",
      "warn",
    ], { quiet: true });
    const clean = advisors.code === 0 && /No issues found/.test(advisors.output);
    console.log(clean ? "  No issues found" : advisors.output);
    return { passed: clean ? 1 : 0, failed: clean ? 0 : 1 };
  });

  say("pgTAP (pg_prove supabase/tests/database)");
  await check("pgTAP", async () => {
    await cluster.psql("postgres", "create extension if not exists pgtap with schema extensions");
    const files = [];
    for await (const entry of Deno.readDir(`${ROOT}supabase/tests/database`)) {
      if (entry.name.endsWith(".sql")) files.push(`supabase/tests/database/${entry.name}`);
    }
    files.sort();
    const prove = await exec("pg_prove", [
      "--verbose",
      "--ext",
      ".sql",
      "-h",
      "127.0.0.1",
      "-p",
      String(cluster.port),
      "-U",
      "postgres",
      "-d",
      "postgres",
      ...files,
    ], { quiet: true, env: { PGOPTIONS: "--search_path=public,extensions" } });
    const passed = prove.output.match(/^\s*ok \d+/gm)?.length ?? 0;
    let failed = prove.output.match(/^\s*not ok \d+/gm)?.length ?? 0;
    for (const line of prove.output.split("\n")) {
      if (/not ok|^#|ERROR|^Result|^Files=|Dubious|Failed/.test(line.trim())) console.log(`  ${line.trim()}`);
    }
    if (prove.code !== 0 && failed === 0) failed = 1;
    return { passed, failed };
  });

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
    } failed  ${t.seconds.toFixed(1).padStart(6)} s`,
  );
}
console.log(`  total time ${((performance.now() - t0) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed === 0 && passed > 0 ? 0 : 1);
