/**
 * The first hour of an operator, as real processes on the real stack: settings checked all at once and only
 * those a command uses (a password in SUPABASE_DB_URL never shown, whatever its characters), `--status` as
 * the whole report fitted to the terminal, `--dry-run` testing the settings it prints, and usage errors in one
 * line.
 */
import assert from "node:assert/strict";
import { loadStoreConfig } from "../supabase/functions/hosting-automator/config.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { postgresStore } from "../supabase/functions/hosting-automator/store_pg.ts";
import { fitParagraph, table } from "../cli/format.ts";
import { freePort } from "./support/cluster.ts";
import { artifactPath, registerSecret, ROOT } from "./support/env.ts";
import { generateClientKey } from "./support/sshd.ts";
import { type Stack, withStack } from "./support/stack.ts";

type Run = { code: number; stdout: string; stderr: string };

/** Only what Deno needs from this process: a command sees the settings the test gives it, nothing else. */
function baseEnv(): Record<string, string> {
  const keep = ["PATH", "HOME", "DENO_DIR", "DENO_TLS_CA_STORE", "TMPDIR"];
  return Object.fromEntries(keep.flatMap((name) => Deno.env.get(name) ? [[name, Deno.env.get(name)!]] : []));
}

async function cli(env: Record<string, string | undefined>, ...args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/provision.ts", ...args],
    cwd: ROOT,
    env: { ...baseEnv(), ...defined(env), NO_COLOR: "1" },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  const run = { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
  // Kept for the final secret scan.
  await Deno.writeTextFile(artifactPath("cli-output.txt"), run.stdout + run.stderr, { append: true });
  return run;
}

function defined(env: Record<string, string | undefined>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<string, string>;
}

/** Paragraphs wrapped to the width read as one line again (tables are not affected). */
const flat = (text: string) => text.replace(/\s+/g, " ");

/** Neither the password nor a piece of it (split at the characters a URL reserves) in `text`. */
function assertNoPassword(password: string, text: string) {
  for (const piece of [password, ...password.split(/[#@/?]/).filter((p) => p.length >= 4)]) {
    assert.ok(!text.includes(piece), `printed ${JSON.stringify(piece)}:\n${text}`);
  }
  assert.doesNotMatch(text, /TypeError|Invalid URL|ENOTFOUND|^\s+at /m, "no crash, no stack trace");
}

const PASSWORD = registerSecret("Sup3r#Secret@Vault/Key?9");

Deno.test("a password with # @ / ? in SUPABASE_DB_URL: --status, a run and deno task serve say how to write it, never show it", async () => {
  const raw = `postgresql://postgres:${PASSWORD}@127.0.0.1:5432/postgres`;
  const status = await cli({ HOSTING_STORE: "postgres", SUPABASE_DB_URL: raw }, "--status");
  assert.equal(status.code, 2, status.stdout + status.stderr);
  assert.equal(status.stdout, "");
  assert.match(
    status.stderr,
    /^provision: configuration: SUPABASE_DB_URL: the password holds characters a URL reserves \(@ \/ \? #\), so the URL cannot be read; in a URL they must be percent-encoded: @ as %40, \/ as %2F, \? as %3F, # as %23, % as %25/,
  );
  assertNoPassword(PASSWORD, status.stdout + status.stderr);

  // A run reads every setting: each problem is listed, in one run.
  const ed25519 = (await generateClientKey("ed25519", "openssh")).privateKey;
  registerSecret(ed25519);
  const pending = await cli({
    HOSTING_STORE: "postgres",
    SUPABASE_DB_URL: raw,
    CLOUDPANEL_SSH_HOST: "cp.example.com",
    CLOUDPANEL_SSH_PORT: "99999",
    CLOUDPANEL_SSH_PRIVATE_KEY: ed25519,
    MATOMO_API_URL: "https://matomo.example.com",
  }, "--pending");
  assert.equal(pending.code, 2, pending.stdout + pending.stderr);
  const lines = pending.stderr.trim().split("\n");
  assert.deepEqual(lines.map((l) => /^provision: configuration: ([A-Z_]+):/.exec(l)?.[1]), [
    "SUPABASE_DB_URL",
    "CLOUDPANEL_SSH_PORT",
    "CLOUDPANEL_SSH_PRIVATE_KEY",
    "CLOUDPANEL_SSH_HOST_KEY",
    "MATOMO_API_TOKEN",
  ], pending.stderr);
  assert.match(
    pending.stderr,
    /CLOUDPANEL_SSH_PRIVATE_KEY: is an Ed25519 key, which is not supported; use an ECDSA \(P-256 or P-384\) or RSA key/,
  );
  assert.ok(!pending.stderr.includes("SUPABASE_SECRET_KEYS"), "a run from the terminal needs no caller key");
  assertNoPassword(PASSWORD, pending.stdout + pending.stderr);
  for (const line of ed25519.split("\n").filter((l) => l.length >= 16 && !l.startsWith("-----"))) {
    assert.ok(!pending.stderr.includes(line), "the key is not echoed");
  }

  // The local server: the problem on its stderr and in every answer, the password nowhere.
  const port = freePort();
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "dev/serve.ts"],
    cwd: ROOT,
    env: {
      ...baseEnv(),
      HOSTING_STORE: "postgres",
      SUPABASE_DB_URL: raw,
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: "sb_secret_operator_report_serve" }),
      CLOUDPANEL_SSH_PRIVATE_KEY: (await generateClientKey("ecdsa", "pem")).privateKey,
      PORT: String(port),
    },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = server.stderr.getReader();
  let banner = "";
  try {
    while (!banner.includes("listening")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`serve exited: ${banner}`);
      banner += new TextDecoder().decode(value);
    }
    assert.match(
      banner,
      /^serve: configuration: SUPABASE_DB_URL: the password holds characters a URL reserves/m,
    );
    assert.match(banner, /"configuration invalid/, "and the log line says so");
    const answer = await fetch(`http://127.0.0.1:${port}/status`);
    assert.equal(answer.status, 500);
    const body = await answer.text();
    assert.match(body, /SUPABASE_DB_URL: the password holds characters a URL reserves/);
    assertNoPassword(PASSWORD, banner + body);
  } finally {
    server.kill("SIGTERM");
    const stdout = await new Response(server.stdout).text();
    await reader.cancel().catch(() => {});
    await server.status;
    assertNoPassword(PASSWORD, stdout);
  }

  // A port out of range: said, with no stack trace.
  const badPort = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "dev/serve.ts"],
    cwd: ROOT,
    env: { ...baseEnv(), PORT: "99999" },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(badPort.code, 2);
  assert.equal(
    new TextDecoder().decode(badPort.stderr),
    "serve: PORT: must be a port number from 1 to 65535\n",
  );
});

Deno.test("the driver is given the parts, not the URL: a percent-encoded # @ / ? password reaches the server whole, and a refusal does not show it", async () => {
  // A server that asks for the password in clear, as `password` authentication does, and keeps what it gets.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const received = (async () => {
    const conn = await listener.accept();
    const read = async (n: number) => {
      const buffer = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const got = await conn.read(buffer.subarray(at));
        if (got === null) throw new Error("closed");
        at += got;
      }
      return buffer;
    };
    const length = new DataView((await read(4)).buffer).getUint32(0);
    const startup = new TextDecoder().decode((await read(length - 4)).subarray(4)).split("\0");
    await conn.write(new Uint8Array([0x52, 0, 0, 0, 8, 0, 0, 0, 3])); // AuthenticationCleartextPassword
    const type = (await read(1))[0];
    const size = new DataView((await read(4)).buffer).getUint32(0);
    const password = new TextDecoder().decode((await read(size - 4)).subarray(0, size - 5));
    const fields = 'SFATAL\0C28P01\0Mpassword authentication failed for user "postgres"\0\0';
    const message = new TextEncoder().encode(fields);
    const header = new Uint8Array(5);
    header[0] = 0x45; // ErrorResponse
    new DataView(header.buffer).setUint32(1, message.length + 4);
    await conn.write(header);
    await conn.write(message);
    conn.close();
    return {
      type,
      password,
      user: startup[startup.indexOf("user") + 1],
      db: startup[startup.indexOf("database") + 1],
    };
  })();
  try {
    const store = loadStoreConfig({
      HOSTING_STORE: "postgres",
      SUPABASE_DB_URL: `postgresql://postgres:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/app_db`,
    });
    assert.equal(store.kind, "postgres");
    const db = postgresStore(store.kind === "postgres" ? store.db : assert.fail());
    try {
      const error = await db.status().then(() => assert.fail("the server refused"), (e) => e);
      assert.ok(isHostingError(error), String(error));
      assert.match(error.message, /password authentication failed/);
      assertNoPassword(PASSWORD, `${error.message} ${error.publicMessage}`);
    } finally {
      await db.close();
    }
    assert.deepEqual(await received, { type: 0x70, password: PASSWORD, user: "postgres", db: "app_db" });
  } finally {
    listener.close();
  }
});

Deno.test("a usage error is one line and a pointer to --help", async () => {
  for (const args of [["--everything"], [], ["--concurrency", "99", "--pending"]]) {
    const run = await cli({}, ...args);
    assert.equal(run.code, 2);
    assert.equal(run.stdout, "");
    assert.match(run.stderr, /^provision: .+ \(see --help\)\n$/, run.stderr);
  }
});

/** The env of a report: the store's settings only, everything else broken or absent. */
function reportEnv(stack: Stack, extra: Record<string, string | undefined> = {}) {
  return {
    HOSTING_STORE: "postgres",
    SUPABASE_DB_URL: stack.env.SUPABASE_DB_URL,
    CLOUDPANEL_SSH_PRIVATE_KEY: "not a key at all",
    MATOMO_API_TOKEN: "short",
    ...extra,
  };
}

Deno.test("--status needs only SUPABASE_DB_URL and shows everything: setup warnings, DNS waits, certificates, the real cause of a server's trouble, jobs waiting for a server apart, at the terminal's width", async () => {
  const IPV4 = "203.0.113.10";
  await withStack({ label: "report", store: "postgres", vault: false, publicIps: [IPV4] }, async (stack) => {
    // Before any claim: where the servers come from.
    const none = await cli(reportEnv(stack), "--status");
    assert.equal(none.code, 0, none.stderr);
    assert.match(flat(none.stdout), /none registered yet, and CLOUDPANEL_SSH_HOST is not set here/);
    const configured = await cli(reportEnv(stack, { CLOUDPANEL_SSH_HOST: "cp.example.com" }), "--status");
    assert.match(
      flat(configured.stdout),
      /none registered yet: the configured server \(CLOUDPANEL_SSH_HOST\) is registered as `default` at the first claim/,
    );

    // One site active with its certificate, one waiting for its DNS (both on `default`, now full).
    stack.doh.setRecords("site.cert.example", { A: [IPV4] });
    await stack.insertSite("site.cert.example", { status_dns: "active" });
    assert.equal((await cli(stack.env, "--site", "site.cert.example")).code, 0);
    await stack.insertSite("site.dns-wait.example", { status_dns: "active" });
    assert.equal((await cli(stack.env, "--site", "site.dns-wait.example")).code, 3);
    // A second server whose SSH key is refused, and, once both are full, a site with no server with room.
    const stranger = (await generateClientKey("ecdsa", "pem")).privateKey;
    registerSecret(stranger);
    await stack.sql`update hosting_automator.servers set capacity = 2 where name = 'default'`;
    await stack.sql`
      insert into hosting_automator.servers (name, host, port, ssh_user, host_key, capacity)
      values ('cp-x', ${stack.sshd.host}, ${stack.sshd.port}, ${stack.sshd.user}, ${stack.sshd.hostKeyFingerprint}, 1)`;
    await stack.insertSite("site.refused.example", { status_dns: "active" });
    const refused = await cli(
      { ...stack.env, CLOUDPANEL_SSH_PRIVATE_KEYS: JSON.stringify({ "cp-x": stranger }) },
      "--site",
      "site.refused.example",
    );
    assert.equal(refused.code, 3, refused.stdout + refused.stderr);
    assert.match(refused.stdout, /waiting\s+for server cp-x \(ssh_auth_failed\)/);
    await stack.insertSite("site.no-room.example", { status_dns: "active" });
    assert.equal((await cli(stack.env, "--pending")).code, 0);

    const run = await cli(reportEnv(stack, { COLUMNS: "100" }), "--status");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    const text = flat(run.stdout);
    for (const line of run.stdout.split("\n")) assert.ok(line.length <= 100, `wider than 100: ${line}`);
    // What the database cannot do by itself.
    assert.match(
      text,
      /Kicks: NONE CAN BE SENT: this database lacks the Vault secret hosting_automator_url and the Vault secret hosting_automator_key, so neither the trigger nor the sweep can wake the function/,
    );
    assert.match(text, /Sweep: NOT SCHEDULED: pg_cron is not installed in this database/);
    // Sites waiting for a server are told apart from those at work.
    assert.match(text, /Sites by status_hosting: .*provisioning 2 \(1 of them waiting for a server\)/);
    assert.match(text, /pending 1 \(1 of them waiting for a server\)/);
    assert.match(text, /Waiting for a server: 2 job\(s\): /);
    assert.match(text, /1 whose server refused the SSH key \(ssh_auth_failed\)/);
    assert.match(text, /1 for a server with room \(no_server_capacity\)/);
    assert.match(
      text,
      /cp-x refused the SSH key: its jobs wait until its circuit closes; the other servers go on \(ssh_auth_failed; to fix: check CLOUDPANEL_SSH_PRIVATE_KEY/,
    );
    assert.ok(!/cp-x could not be reached/.test(text), "not called unreachable");
    // DNS waits and certificates, as /status has them.
    assert.match(text, /Waiting for DNS \(1\)/);
    assert.match(run.stdout, /^site\.dns-wait\.example\s+1\s+\d{4}-\d\d-\d\dT/m);
    assert.match(text, /Certificates: 0 of active sites expire within 30 days/);
    assert.match(text, /Soonest to expire \(1\)/);
    assert.match(run.stdout, /^site\.cert\.example\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m);

    // The same report from /status: every section the CLI printed is there, with the new ones.
    const report = await (await stack.request("/status")).json();
    assert.deepEqual(report.waiting_for_server.by_reason, { ssh_auth_failed: 1, no_server_capacity: 1 });
    assert.deepEqual(report.setup, {
      vault: true,
      vault_url: false,
      vault_key: false,
      pg_net: true,
      pg_cron: false,
      sweep_scheduled: false,
      sweep_schedule: null,
    });
    assert.equal(report.waiting_for_dns.length, 1);

    // Once the secrets are in Vault, the warning goes.
    await stack
      .sql`select vault.create_secret('http://functions.test/functions/v1/hosting-automator', 'hosting_automator_url')`;
    await stack.sql`select vault.create_secret(${stack.serviceKey}, 'hosting_automator_key')`;
    const fixed = await cli(reportEnv(stack), "--status");
    assert.match(flat(fixed.stdout), /Kicks: the database wakes the function/);
    assert.ok(!fixed.stdout.includes(stack.serviceKey), "no secret value");
  });
});

Deno.test("--dry-run tests the settings it prints: a corrected port or host key passes, and a stored row that differs is said with how to apply it", async () => {
  await withStack({ label: "dry_config" }, async (stack) => {
    const closed = freePort();
    await stack.insertSite("dry-fix.example", { status_dns: "active" });
    // The first run had the wrong port: `default` is registered with it, and the job waits.
    const wrong = await cli({ ...stack.env, CLOUDPANEL_SSH_PORT: String(closed) }, "--pending");
    assert.equal(wrong.code, 3, wrong.stdout + wrong.stderr);
    const [row] = await stack.sql`select port from hosting_automator.servers where name = 'default'`;
    assert.equal(row.port, closed);

    // The port corrected: the dry run logs in with it, and says the row still has the old one.
    const fixed = await cli(stack.env, "--dry-run");
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    const where = `${stack.sshd.user}@${stack.sshd.host}:${stack.sshd.port}`;
    assert.match(fixed.stdout, /✓ config\s+store rpc, CloudPanel \S+:\d+/);
    assert.ok(fixed.stdout.includes(`${where}, as configured)`), fixed.stdout);
    assert.match(fixed.stdout, /✓ ssh\s+logged in; host key matches SHA256:/);
    const sql = `update hosting_automator.servers set port = ${stack.sshd.port} where name = 'default';`;
    assert.ok(
      fixed.stdout.includes(
        `! default: the stored row differs from the configuration (port ${closed} stored, ${stack.sshd.port} configured).`,
      ),
      fixed.stdout,
    );
    assert.ok(fixed.stdout.includes(`to apply it now: ${sql}`), fixed.stdout);
    assert.match(fixed.stdout, /Dry run: every check passed; nothing was changed\./);
    // At a terminal's width the checks and notes wrap; the commands stay whole, to be copied.
    const narrow = await cli({ ...stack.env, COLUMNS: "80" }, "--dry-run");
    assert.equal(narrow.code, 0);
    for (const line of narrow.stdout.split("\n").filter((l) => !/^ {2}(ssh|POST|GET|TLS) /.test(l))) {
      assert.ok(line.length <= 80, `wider than 80: ${line}`);
    }
    assert.ok(flat(narrow.stdout).includes(`to apply it now: ${sql}`), "the SQL reads the same, wrapped");
    assert.equal(
      (await stack.sql`select port from hosting_automator.servers where name = 'default'`)[0].port,
      closed,
    );

    // A stale host key stored, the right one configured: the same.
    await stack.sql.unsafe(sql);
    await stack.sql`update hosting_automator.servers set host_key = ${
      "SHA256:" + "B".repeat(43)
    } where name = 'default'`;
    const key = await cli(stack.env, "--dry-run");
    assert.equal(key.code, 0, key.stdout + key.stderr);
    assert.match(key.stdout, /✓ ssh\s+logged in/);
    const keySql =
      `update hosting_automator.servers set host_key = '${stack.sshd.hostKeyFingerprint}' where name = 'default';`;
    assert.ok(
      key.stdout.includes(
        `host key SHA256:${"B".repeat(43)} stored, ${stack.sshd.hostKeyFingerprint} configured`,
      ),
    );
    assert.ok(key.stdout.includes(keySql), key.stdout);
    await stack.sql.unsafe(keySql);
    const applied = await cli(stack.env, "--dry-run");
    assert.equal(applied.code, 0, applied.stdout);
    assert.ok(!applied.stdout.includes("differs"), "applied: nothing differs");

    // The configured key wrong: the check fails, naming the cause and the fix.
    const mismatch = await cli(
      { ...stack.env, CLOUDPANEL_SSH_HOST_KEY: "SHA256:" + "C".repeat(43) },
      "--dry-run",
    );
    assert.equal(mismatch.code, 1);
    assert.match(
      flat(mismatch.stdout),
      /✗ ssh ssh_host_key_mismatch: .* The server presented a host key other than the pinned one; to fix: pin the server's key/,
    );

    // Another registered server is tested as stored, and labelled so.
    await stack.sql`
      insert into hosting_automator.servers (name, host, port, ssh_user, host_key)
      values ('cp-2', ${stack.sshd.host}, ${stack.sshd.port}, ${stack.sshd.user}, ${stack.sshd.hostKeyFingerprint})`;
    const fleet = await cli(stack.env, "--dry-run");
    assert.equal(fleet.code, 0, fleet.stdout);
    assert.match(fleet.stdout, /✓ ssh default \(configured\)\s+logged in; .*, as configured\)/);
    assert.match(
      fleet.stdout,
      /✓ ssh cp-2 \(stored\)\s+logged in; .*, as stored in hosting_automator\.servers\)/,
    );
  });
});

Deno.test("tables fit the width given, wrapping cells; paragraphs wrap with an indent", () => {
  const long = "The CloudPanel server refused the SSH key; nothing was executed on the server.";
  const rows = [["cp-1", "203.0.113.10:22", long], ["cp-2", "198.51.100.7", "–"]];
  const wide = table(["server", "host", "last error"], rows, 120);
  assert.ok(wide.split("\n").some((l) => l.length > 60), "without a width, cells stay whole");
  const narrow = table(["server", "host", "last error"], rows, 120, 50);
  const lines = narrow.split("\n");
  assert.ok(lines.every((l) => l.length <= 50), narrow);
  assert.ok(lines.length > 4, "the long cell wraps onto more lines");
  for (const word of long.split(" ")) assert.ok(narrow.includes(word), `${word} is kept`);
  // A cell's words stay whole; a table that cannot fit so is a block per row.
  const times = table(["circuit"], [["open until 2026-12-04T20:09:16Z (1 failure)"]], 120, 24);
  assert.ok(times.includes("2026-12-04T20:09:16Z"), times);
  const blocks = table(["server", "host", "last error"], rows, 120, 30);
  assert.ok(blocks.split("\n").every((l) => l.length <= 30), blocks);
  assert.deepEqual(blocks.split("\n").slice(0, 3), [
    "cp-1",
    "  host        203.0.113.10:22",
    "  last error  The CloudPanel",
  ]);
  for (const word of long.split(" ")) assert.ok(blocks.includes(word), `${word} is kept`);
  const paragraph = fitParagraph(`  ${long} ${long}`, 40);
  assert.ok(paragraph.split("\n").every((l) => l.length <= 40), paragraph);
  assert.ok(paragraph.split("\n").slice(1).every((l) => l.startsWith("    ")), "continuation lines hang");
  assert.equal(flat(paragraph).trim(), `${long} ${long}`);
});
