/**
 * Rules and defaults that TypeScript and SQL both state are the same on both sides. TypeScript states each once
 * (server_rules.ts, defaults.ts); these tests read SQL's side from a migrated database (check constraints,
 * column defaults, function signatures) and compare, so neither side can drift alone.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { loadConfig } from "../supabase/functions/hosting-automator/config.ts";
import { DEFAULT_STEP_MS, LEASE_SECONDS } from "../supabase/functions/hosting-automator/defaults.ts";
import {
  DEFAULT_SSH_PORT,
  DEFAULT_SSH_USER,
  HOST_KEY_RE,
  SERVER_HOST_RE,
  SERVER_NAME_RE,
  SSH_USER_RE,
} from "../supabase/functions/hosting-automator/server_rules.ts";
import { PLANS } from "../supabase/functions/hosting-automator/steps.ts";
import { postgresStore } from "../supabase/functions/hosting-automator/store_pg.ts";
import { testDb } from "./support/db.ts";
import { type DbConnection, parseDbUrl } from "../supabase/functions/hosting-automator/db_url.ts";
import { generateClientKey } from "./support/sshd.ts";

function dbOf(url: string): DbConnection {
  const db = parseDbUrl(url);
  if ("problem" in db) throw new Error(db.problem);
  return db;
}

type Sql = postgres.Sql;

async function withDb(label: string, body: (db: { url: string; sql: Sql }) => Promise<void>) {
  const db = await testDb(label);
  try {
    await body(db);
  } finally {
    await db.close();
  }
}

const FINGERPRINT = `SHA256:${"Ab1+/".repeat(8)}Ab1`;

/** The servers table's columns with a pattern check, their TypeScript rule, and inputs with the expected answer. */
const COLUMNS: ReadonlyArray<
  { column: string; re: RegExp; cases: ReadonlyArray<readonly [string, boolean]> }
> = [
  {
    column: "name",
    re: SERVER_NAME_RE,
    cases: [
      ["cp-1", true],
      ["a", true],
      ["0", true],
      ["cp-", true],
      ["a".repeat(63), true],
      ["b".repeat(64), false],
      ["-cp", false],
      ["Cp-2", false],
      ["cp_3", false],
      ["cp.4", false],
      ["cp 5", false],
      ["cp-6\n", false],
      ["ä", false],
      ["", false],
    ],
  },
  {
    column: "ssh_user",
    re: SSH_USER_RE,
    cases: [
      ["root", true],
      ["_svc", true],
      ["deploy-user_1", true],
      ["a".repeat(32), true],
      ["a".repeat(33), false],
      ["1root", false],
      ["Root", false],
      ["-root", false],
      ["r.oot", false],
      ["root$", false],
      ["root\n", false],
      ["", false],
    ],
  },
  {
    column: "host_key",
    re: HOST_KEY_RE,
    cases: [
      [FINGERPRINT, true],
      [`SHA256:${"A".repeat(43)}`, true],
      [`${FINGERPRINT}=`, false],
      [FINGERPRINT.slice(0, -1), false],
      [`${FINGERPRINT}A`, false],
      [`sha256:${"A".repeat(43)}`, false],
      [`MD5:${"A".repeat(43)}`, false],
      [`SHA256:${"A".repeat(42)}-`, false],
      [`${FINGERPRINT}\n`, false],
      ["", false],
    ],
  },
  {
    column: "host",
    re: SERVER_HOST_RE,
    cases: [
      ["cp.example.com", true],
      ["203.0.113.10", true],
      ["2001:db8::10", true],
      ["::1", true],
      ["a", true],
      ["a".repeat(253), true],
      ["a".repeat(254), false],
      ["[::1]", false],
      [".example.com", false],
      ["example.com.", false],
      ["-example.com", false],
      ["ex_ample.com", false],
      ["cp example.com", false],
      ["cp.example.com\n", false],
      ["", false],
    ],
  },
];

/** A row every check accepts; each case changes one column of it. */
const VALID_ROW = { host: "cp.example.com", ssh_user: "root", host_key: FINGERPRINT };

/** Whether the servers table takes a row with `column` set to `value` (its checks decide; nothing else can fail). */
async function tableAccepts(sql: Sql, n: number, column: string, value: string): Promise<boolean> {
  const row: Record<string, string> = { name: `row-${n}`, ...VALID_ROW, [column]: value };
  try {
    await sql`insert into hosting_automator.servers ${sql(row)}`;
    return true;
  } catch (error) {
    if ((error as { code?: string }).code === "23514") return false;
    throw error;
  }
}

Deno.test("the servers table checks the same patterns as server_rules.ts, and both answer alike", async () => {
  await withDb("boundary_rules", async ({ sql }) => {
    const checks = await sql<{ column: string; def: string }[]>`
      select a.attname as column, pg_get_constraintdef(c.oid) as def
      from pg_constraint c
      join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]
      where c.conrelid = 'hosting_automator.servers'::regclass and c.contype = 'c'
        and cardinality(c.conkey) = 1 and pg_get_constraintdef(c.oid) like '%~%'`;
    const patterns = new Map(checks.map(({ column, def }) => {
      const match = def.match(/~ '((?:[^']|'')*)'::text/);
      assert.ok(match, `${column}: a check that is not one pattern: ${def}`);
      return [column, match[1].replaceAll("''", "'")];
    }));
    assert.deepEqual([...patterns.keys()].sort(), COLUMNS.map((c) => c.column).sort());

    let n = 0;
    for (const { column, re, cases } of COLUMNS) {
      assert.equal(patterns.get(column), re.source, `${column}: the check's pattern is not server_rules.ts'`);
      for (const [value, expected] of cases) {
        const label = `${column} ${JSON.stringify(value)}`;
        assert.equal(re.test(value), expected, `TypeScript, ${label}`);
        assert.equal(await tableAccepts(sql, n++, column, value), expected, `SQL, ${label}`);
      }
    }
  });
});

// A real key: configuration checks a key's type and shape.
const KEY = (await generateClientKey("ecdsa", "pem")).privateKey;
const ENV = {
  SUPABASE_URL: "https://project.supabase.co",
  SUPABASE_SECRET_KEYS: JSON.stringify({ default: "sb_secret_boundary_test_value" }),
  CLOUDPANEL_SSH_HOST: "cp.example.com",
  CLOUDPANEL_SSH_PRIVATE_KEY: KEY,
  CLOUDPANEL_SSH_HOST_KEY: FINGERPRINT,
};

function accepted(env: Record<string, string>) {
  try {
    return loadConfig({ ...ENV, ...env });
  } catch {
    return null;
  }
}

Deno.test("what configuration accepts for the configured server, the servers table stores", async () => {
  await withDb("boundary_config", async ({ url, sql }) => {
    const store = postgresStore(dbOf(url), { max: 1 });
    try {
      const inputs: Array<[Record<string, string>, boolean]> = [
        [{}, true],
        [{ CLOUDPANEL_SSH_HOST: "[2001:db8::10]" }, true],
        [{ CLOUDPANEL_SSH_HOST: "203.0.113.10" }, true],
        [{ CLOUDPANEL_SSH_HOST: "::1" }, true],
        // Configuration's own syntax took these once; the table would refuse what it stores.
        [{ CLOUDPANEL_SSH_HOST: "..." }, false],
        [{ CLOUDPANEL_SSH_HOST: "ab." }, false],
        [{ CLOUDPANEL_SSH_HOST: "1".repeat(300) }, false],
        [{ CLOUDPANEL_SSH_HOST_KEY: `${FINGERPRINT}=` }, true],
        [{ CLOUDPANEL_SSH_HOST_KEY: `  ${FINGERPRINT}\n` }, true],
        [{ CLOUDPANEL_SSH_HOST_KEY: `${FINGERPRINT}==` }, false],
        [{ CLOUDPANEL_SSH_USER: "deploy_1" }, true],
        [{ CLOUDPANEL_SSH_USER: "Deploy" }, false],
        [{ CLOUDPANEL_SSH_PORT: "2222" }, true],
      ];
      for (const [env, expected] of inputs) {
        const config = accepted(env);
        assert.equal(config !== null, expected, `configuration, ${JSON.stringify(env)}`);
        if (!config) continue;
        // The claim registers the configured server as `default` (or updates it): the table's checks apply.
        const server = config.fleet.defaultServer!;
        await store.claim({
          worker: "boundary",
          server: "fleet",
          defaultServer: server,
          leaseSeconds: 30,
          limit: 1,
        });
        const [row] = await sql`select host, port, ssh_user, host_key from hosting_automator.servers
          where name = 'default'`;
        assert.deepEqual(
          { ...row },
          { host: server.host, port: server.port, ssh_user: server.user, host_key: server.hostKey },
          `stored, ${JSON.stringify(env)}`,
        );
      }

      // A server's own key is named as the table names servers.
      for (const [name, expected] of [["cp-2", true], ["CP-2", false], ["cp_2", false]] as const) {
        const config = accepted({ CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ [name]: KEY }) });
        assert.equal(config !== null, expected, `configuration, key for ${name}`);
        assert.equal(await tableAccepts(sql, 0, "name", name), expected, `SQL, server ${name}`);
      }
    } finally {
      await store.close();
    }
  });
});

Deno.test("the servers table's defaults are server_rules.ts', and so are the claim's for the configured server", async () => {
  await withDb("boundary_server_defaults", async ({ sql }) => {
    const columns = await sql<{ column_name: string; column_default: string }[]>`
      select column_name, column_default from information_schema.columns
      where table_schema = 'hosting_automator' and table_name = 'servers' and column_name in ('port', 'ssh_user')
      order by column_name`;
    assert.deepEqual(columns.map((c) => [c.column_name, c.column_default]), [
      ["port", String(DEFAULT_SSH_PORT)],
      ["ssh_user", `'${DEFAULT_SSH_USER}'::text`],
    ]);

    // Given without port and user, the configured server gets the same defaults from the claim.
    await sql`select * from public.hosting_claim_jobs('boundary', 'fleet', 30,
      p_default_server => ${sql.json({ host: "cp.example.com", host_key: FINGERPRINT })})`;
    const [row] = await sql`select port, ssh_user from hosting_automator.servers where name = 'default'`;
    assert.deepEqual({ ...row }, { port: DEFAULT_SSH_PORT, ssh_user: DEFAULT_SSH_USER });
  });
});

Deno.test("the SQL functions' default step estimate is defaults.ts' DEFAULT_STEP_MS (or they have none)", async () => {
  await withDb("boundary_step_ms", async ({ sql }) => {
    const functions = await sql<{ name: string; args: string }[]>`
      select p.oid::regprocedure::text as name, pg_get_function_arguments(p.oid) as args
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
      where n.nspname in ('public', 'hosting_automator')
        and pg_get_function_arguments(p.oid) like '%p_default_step_ms%'`;
    assert.ok(functions.some((f) => f.name.startsWith("hosting_claim_jobs(")), "no hosting_claim_jobs found");
    for (const { name, args } of functions) {
      const declared = args.match(/p_default_step_ms integer(?: DEFAULT (\d+))?/);
      assert.ok(declared, `${name}: p_default_step_ms is not an integer: ${args}`);
      if (declared[1] !== undefined) {
        assert.equal(
          Number(declared[1]),
          DEFAULT_STEP_MS,
          `${name}: SQL's default p_default_step_ms is ${
            declared[1]
          }, TypeScript's DEFAULT_STEP_MS ${DEFAULT_STEP_MS}`,
        );
      }
    }
  });
});

Deno.test("every lease and step estimate the worker may send, the SQL functions accept", async () => {
  await withDb("boundary_lease", async ({ url }) => {
    const store = postgresStore(dbOf(url), { max: 1 });
    try {
      for (const leaseSeconds of [LEASE_SECONDS.min, LEASE_SECONDS.default, LEASE_SECONDS.max]) {
        await store.claim({
          worker: "boundary",
          server: "fleet",
          leaseSeconds,
          limit: 1,
          plan: PLANS,
          defaultStepMs: DEFAULT_STEP_MS,
          timeLeftMs: 60_000,
        });
        const lease = { jobId: 0, leaseToken: crypto.randomUUID() };
        assert.equal(await store.heartbeat(lease, leaseSeconds), false, "no such lease, and no error");
      }
    } finally {
      await store.close();
    }
  });
});
