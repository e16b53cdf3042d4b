/**
 * The CLI (`deno task provision`) and the local server (`deno task serve`), as operators run them: real
 * processes against the real stack (Postgres, the PostgREST stand-in, sshd, simulators): provisioning, status,
 * retries, removals and the site user's credentials.
 */
import assert from "node:assert/strict";
import { addExistingSite, addOrphanUser, readSimState, removeUser } from "../dev/clpctl_sim.ts";
import { type Domain, siteUserFor } from "../supabase/functions/hosting-automator/domain.ts";
import { REDACTED } from "../supabase/functions/hosting-automator/log.ts";
import { artifactPath, registerSecret, ROOT } from "./support/env.ts";
import { type Stack, withStack } from "./support/stack.ts";

type Run = { code: number; stdout: string; stderr: string };

async function provision(stack: Stack, ...args: string[]): Promise<Run> {
  const result = await run(stack, args);
  // Kept for the final secret scan.
  await Deno.writeTextFile(artifactPath("cli-output.txt"), result.stdout + result.stderr, { append: true });
  return result;
}

/**
 * `--credentials --reveal` prints a password on purpose: its output is not kept for the final scan (which would
 * rightly flag it), and only `revealed` reads it.
 */
async function revealed(stack: Stack, key: string): Promise<Run> {
  return await run(stack, ["--credentials", key, "--reveal"]);
}

async function run(stack: Stack, args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/provision.ts", ...args],
    cwd: ROOT,
    env: { ...stack.env, NO_COLOR: "1" } as Record<string, string>,
    clearEnv: false,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/** Every secret of a stack: none may appear in what the CLI prints. */
function assertNoSecret(stack: Stack, text: string) {
  const secrets = [
    stack.serviceKey,
    stack.matomo!.token,
    ...String(stack.env.CLOUDPANEL_SSH_PRIVATE_KEY).split("\n").filter((l) => l.length > 20),
  ];
  for (const secret of secrets) {
    assert.ok(!text.includes(secret), `printed a secret (${secret.slice(0, 4)}…)`);
  }
}

Deno.test("provision --help explains every flag; an unknown flag is a usage error", async () => {
  await withStack({ label: "cli_help" }, async (stack) => {
    const help = await provision(stack, "--help");
    assert.equal(help.code, 0);
    for (
      const flag of [
        "--site",
        "--remove",
        "--credentials",
        "--reveal",
        "--pending",
        "--retry-failed",
        "--status",
        "--dry-run",
        "--concurrency",
        "--env-file",
        "Exit status",
      ]
    ) {
      assert.ok(help.stdout.includes(flag), flag);
    }
    const wrong = await provision(stack, "--everything");
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /Unknown option '--everything'/);
    const none = await provision(stack);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /choose what to do/);
  });
});

Deno.test("provision --site <domain> provisions that site and shows each step", async () => {
  await withStack({ label: "cli_site" }, async (stack) => {
    const id = await stack.insertSite("cli-one.example", { status_dns: "active" });
    const run = await provision(stack, "--site", "cli-one.example");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /▶ cli-one\.example\s+attempt 1/);
    assert.match(run.stdout, /✓ cli-one\.example\s+CloudPanel site/);
    assert.match(run.stdout, /✓ cli-one\.example\s+Let's Encrypt certificate/);
    assert.match(run.stdout, /domain\s+status\s+doc root\s+Matomo id/);
    assert.equal((await stack.site(id)).status_hosting, "active");
    // By id, once active: nothing to do.
    const again = await provision(stack, "--site", id);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /nothing to do: status_dns active, status_hosting active/);
    assertNoSecret(stack, run.stdout + run.stderr);
  });
});

Deno.test("provision exits 1 when a site failed and 3 when it will be retried", async () => {
  await withStack({ label: "cli_exit" }, async (stack) => {
    await stack.insertSite("bad name.example", { status_dns: "active" });
    const failed = await provision(stack, "--pending");
    assert.equal(failed.code, 1);
    assert.match(failed.stdout, /The domain is invalid/);

    const { setFaults } = await import("../dev/clpctl_sim.ts");
    await setFaults(stack.clpctlState, { certificateFailures: 1 });
    await stack.insertSite("dns-later.example", { status_dns: "active" });
    const retrying = await provision(stack, "--pending");
    assert.equal(retrying.code, 3, retrying.stdout);
    assert.match(retrying.stdout, /retrying/);
  });
});

Deno.test("provision --pending runs every due job and --status reports them", async () => {
  await withStack({ label: "cli_pending" }, async (stack) => {
    const ids = [];
    for (const d of ["p1.example", "p2.example", "p3.example"]) {
      ids.push(await stack.insertSite(d, { status_dns: "active" }));
    }
    await stack.insertSite("waiting.example");
    const run = await provision(stack, "--pending", "--concurrency", "2");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    for (const id of ids) assert.equal((await stack.site(id)).status_hosting, "active");
    const status = await provision(stack, "--status");
    assert.equal(status.code, 0);
    assert.match(status.stdout, /Sites by status_hosting: .*active 3/);
    assert.match(status.stdout, /pending 1/);
    assert.match(status.stdout, /Queue: 0 queued, 0 due/);
    assert.match(status.stdout, /Active without analytics \(0\)/);
    assertNoSecret(stack, run.stdout + status.stdout);
  });
});

Deno.test("provision --status shows every server (sites of capacity, jobs of concurrency, failures, circuit and last error) and the jobs waiting for capacity", async () => {
  await withStack({ label: "cli_fleet" }, async (stack) => {
    // A port nothing listens on: cp-b refuses every connection, as a server that is down does.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closedPort = (listener.addr as Deno.NetAddr).port;
    listener.close();
    // Two rows of hosting_automator.servers (so no `default` is registered): cp-a is the test's sshd.
    await stack.sql`
      insert into hosting_automator.servers (name, host, port, ssh_user, host_key, capacity, concurrency) values
        ('cp-a', ${stack.sshd.host}, ${stack.sshd.port}, ${stack.sshd.user}, ${stack.sshd.hostKeyFingerprint}, 3, 2),
        ('cp-b', '127.0.0.1', ${closedPort}, ${stack.sshd.user}, ${stack.sshd.hostKeyFingerprint}, null, 3)`;

    // The first site goes to cp-a (the emptier by share of capacity, ties by name), the second to cp-b (no
    // limit counts as empty), which refuses: that job waits for cp-b with its attempt kept, exit 3.
    const first = await stack.insertSite("fleet-1.example", { status_dns: "active" });
    const second = await stack.insertSite("fleet-2.example", { status_dns: "active" });
    const run = await provision(stack, "--pending", "--concurrency", "1");
    assert.equal(run.code, 3, run.stdout + run.stderr);
    assert.match(run.stdout, /▶ fleet-1\.example\s+attempt 1 of \d+, server cp-a/);
    assert.match(run.stdout, /■ fleet-1\.example\s+active/);
    assert.match(
      run.stdout,
      /■ fleet-2\.example\s+waiting\s+for server cp-b \(ssh_unreachable\), attempt kept: The CloudPanel server could not be reached/,
    );
    assert.equal((await stack.site(first)).status_hosting, "active");
    assert.deepEqual(
      [...await stack.sql`select id, hosting_server from public.sites order by domain`],
      [{ id: first, hosting_server: "cp-a" }, { id: second, hosting_server: "cp-b" }],
    );

    // While cp-b's circuit is open, new sites go to cp-a; an invalid domain fails there (a failure of the day).
    await stack.insertSite("fleet-3.example", { status_dns: "active" });
    const bad = await stack.insertSite("fleet bad.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--pending")).code, 1);
    assert.equal(
      (await stack.site(bad)).hosting_server,
      null,
      "a site refused before any step gives its place back",
    );
    // With both servers full (cp-a holds 2 of 2, cp-b its one site once the capacities are lowered), a new site
    // must wait.
    await stack.sql`update hosting_automator.servers set capacity = 2 where name = 'cp-a'`;
    await stack.sql`update hosting_automator.servers set capacity = 1 where name = 'cp-b'`;
    const fourth = await stack.insertSite("fleet-4.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--pending")).code, 0);
    assert.equal((await stack.site(fourth)).status_hosting, "pending");

    const status = await provision(stack, "--status");
    assert.equal(status.code, 0, status.stdout + status.stderr);
    const lines = status.stdout.split("\n");
    const header = lines.indexOf(lines.find((line) => line.startsWith("server "))!);
    assert.ok(header > 0, status.stdout);
    assert.match(lines[header - 1], /^Servers \(2\)$/);
    assert.deepEqual(lines[header].split(/\s{2,}/), [
      "server",
      "host",
      "state",
      "sites",
      "running",
      "failed 1 d",
      "circuit",
      "last error",
    ]);
    const row = (name: string) => {
      const line = lines.slice(header + 2, header + 4).find((l) => l.startsWith(`${name} `));
      assert.ok(line, `no row for ${name}:\n${status.stdout}`);
      return line.split(/\s{2,}/);
    };
    const host = (port: number) => `${stack.sshd.host}:${port}`;
    assert.deepEqual(row("cp-a"), [
      "cp-a",
      host(stack.sshd.port),
      "active",
      "2/2",
      "0/2",
      "1",
      "closed",
      "–",
    ]);
    const b = row("cp-b");
    assert.deepEqual(b.slice(0, 6), ["cp-b", `127.0.0.1:${closedPort}`, "active", "1/1", "0/3", "0"]);
    // Open with the default backoff (15 to 30 s after the first failure), until a time to the second.
    assert.match(b[6], /^open until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(1 failure\)$/);
    const until = Date.parse(b[6].slice("open until ".length, "open until ".length + 20));
    assert.ok(until > Date.now() + 5_000 && until < Date.now() + 31_000, b[6]);
    assert.match(
      b[7],
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ssh_unreachable: The CloudPanel server could not be reached/,
    );
    assert.match(status.stdout, /cp-b could not be reached: its jobs wait until its circuit closes/);
    assert.match(status.stdout, /^Waiting for capacity: 1 job\(s\): no active server has room/m);

    // Its host key fixed (or any address or state change): the circuit closes and its waiting job is due now.
    await stack.sql`update hosting_automator.servers set port = ${stack.sshd.port} where name = 'cp-b'`;
    const fixed = await provision(stack, "--status");
    const closed = fixed.stdout.split("\n").find((l) => l.startsWith("cp-b "))!.split(/\s{2,}/);
    assert.deepEqual(closed.slice(6, 7), ["closed"], fixed.stdout);
    assert.match(closed[7], /ssh_unreachable/, "the last error is kept after the circuit closed");
    assert.match(fixed.stdout, /^Queue: 2 queued, 1 due/m);
    assertNoSecret(stack, run.stdout + run.stderr + status.stdout + fixed.stdout);
  });
});

Deno.test("provision --retry-failed re-queues and runs failed sites", async () => {
  await withStack({ label: "cli_retry" }, async (stack) => {
    const user = siteUserFor("again.example" as Domain);
    await addOrphanUser(stack.clpctlState, user);
    const id = await stack.insertSite("again.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--pending")).code, 1);
    assert.equal((await stack.site(id)).status_hosting, "failed");
    // The operator removes the orphan user, then retries.
    await removeUser(stack.clpctlState, user);
    const run = await provision(stack, "--retry-failed");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /Re-queued 1 site\(s\): again\.example \(failed\)/);
    assert.equal((await stack.site(id)).status_hosting, "active");
  });
});

Deno.test("provision --dry-run checks everything, prints the commands with secrets masked, and changes nothing", async () => {
  await withStack({ label: "cli_dry" }, async (stack) => {
    const id = await stack.insertSite("dry.example", { status_dns: "active" });
    await stack.insertSite("also bad.example", { status_dns: "active" });
    const snapshot = async () => ({
      rows: await stack
        .sql`select id, status_hosting, hosting_doc_root, matomo_site_id, error_message from public.sites order by id`,
      jobs: await stack
        .sql`select id, state, attempts, run_at, lease_owner from hosting_automator.jobs order by id`,
      steps: await stack.sql`select * from hosting_automator.steps`,
      events: await stack.sql`select count(*)::int as n from hosting_automator.events`,
      clpctl: (await readSimState(stack.clpctlState)).calls.length,
      matomo: stack.matomo!.sites.length,
    });
    const before = await snapshot();
    const run = await provision(stack, "--dry-run");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.deepEqual(await snapshot(), before, "nothing changed");
    assert.match(run.stdout, /✓ database\s+reachable; 2 job\(s\) due/);
    assert.match(run.stdout, /✓ ssh\s+logged in; host key matches SHA256:/);
    assert.match(run.stdout, /✓ matomo\s+version 5\.2\.0; the token is a super user's/);
    assert.ok(run.stdout.includes(
      `ssh  clpctl site:add:static --domainName='dry.example' --siteUser='${
        siteUserFor("dry.example" as Domain)
      }' --siteUserPassword='[REDACTED]'`,
    ));
    assert.ok(run.stdout.includes("ssh  clpctl lets-encrypt:install:certificate --domainName='dry.example'"));
    assert.match(
      run.stdout,
      /POST http:\/\/127\.0\.0\.1:\d+\/index\.php\?module=API&method=SitesManager\.getSitesIdFromSiteUrl&format=json {2}token_auth=\[REDACTED\]&url=https%3A%2F%2Fdry\.example/,
    );
    assert.match(run.stdout, /also bad\.example: would fail: The domain is invalid/);
    assertNoSecret(stack, run.stdout + run.stderr);
    assert.equal((await stack.site(id)).status_hosting, "pending");

    // A failing check is reported, and exits 1, still changing nothing.
    const wrongKey = await provision(stack, "--dry-run", "--site", "dry.example");
    assert.equal(wrongKey.code, 0, wrongKey.stdout + wrongKey.stderr);
    const broken = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "cli/provision.ts", "--dry-run"],
      cwd: ROOT,
      env: { ...stack.env, CLOUDPANEL_SSH_HOST_KEY: "SHA256:" + "B".repeat(43), NO_COLOR: "1" } as Record<
        string,
        string
      >,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(broken.stdout);
    assert.equal(broken.code, 1);
    assert.match(text, /✗ ssh\s+ssh_host_key_mismatch/);
    assert.deepEqual(await snapshot(), before);
  });
});

Deno.test("provision --dry-run shows a due removal's own commands, not a provisioning's", async () => {
  await withStack({ label: "cli_dry_remove" }, async (stack) => {
    const id = await stack.insertSite("dry-remove.example", { status_dns: "active" });
    const run0 = await provision(stack, "--site", "dry-remove.example");
    assert.equal(run0.code, 0, run0.stdout + run0.stderr);
    await stack.sql`delete from public.sites where id = ${id}`;
    const calls = (await readSimState(stack.clpctlState)).calls.length;
    const run = await provision(stack, "--dry-run");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.ok(run.stdout.includes("dry-remove.example (remove):"), run.stdout);
    assert.ok(
      run.stdout.includes("ssh  clpctl site:delete --domainName='dry-remove.example' --force"),
      run.stdout,
    );
    assert.ok(run.stdout.includes("skip Matomo site removal (MATOMO_ON_REMOVE=keep"), run.stdout);
    assert.ok(!run.stdout.includes("site:add:static"), "no provisioning command for a removal");
    assert.equal((await readSimState(stack.clpctlState)).calls.length, calls, "nothing was sent");
  });
});

Deno.test("provision refuses a bad configuration naming the variable, without printing its value", async () => {
  await withStack({ label: "cli_config" }, async (stack) => {
    // A run reads Matomo's settings (a report does not: tests/operator_report.test.ts).
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "cli/provision.ts", "--pending"],
      cwd: ROOT,
      env: { ...stack.env, MATOMO_API_TOKEN: "not a token!" } as Record<string, string>,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 2);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.match(stderr, /provision: configuration: MATOMO_API_TOKEN: must be a Matomo token_auth/);
    assert.ok(!stderr.includes("not a token!"));
  });
});

Deno.test("deno task serve answers over HTTP with the deployed handler", async () => {
  await withStack({ label: "serve" }, async (stack) => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const server = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "dev/serve.ts"],
      cwd: ROOT,
      env: { ...stack.env, PORT: String(port) } as Record<string, string>,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let stderr: ReadableStreamDefaultReader<Uint8Array> | undefined;
    try {
      const reader = server.stderr.getReader();
      let banner = "";
      while (!banner.includes("listening")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`serve exited: ${banner}`);
        banner += new TextDecoder().decode(value);
      }
      stderr = reader;
      const unauthorized = await fetch(`http://127.0.0.1:${port}/status`);
      assert.equal(unauthorized.status, 401);
      await unauthorized.body?.cancel();
      const id = await stack.insertSite("served.example", { status_dns: "active" });
      const response = await fetch(`http://127.0.0.1:${port}/functions/v1/hosting-automator?wait=true`, {
        method: "POST",
        headers: { apikey: stack.serviceKey, "content-type": "application/json" },
        body: JSON.stringify({ site_id: id }),
      });
      assert.equal(response.status, 200);
      const body = await response.json();
      assert.equal(body.outcomes[0].status, "active");
    } finally {
      server.kill("SIGTERM");
      await server.status;
      await (stderr ?? server.stderr).cancel().catch(() => {});
    }
  });
});

Deno.test("provision --remove <domain> takes the site down with live progress, --status counts it, and a second --remove has nothing to do", async () => {
  await withStack({
    label: "cli_remove",
    env: { MATOMO_ON_REMOVE: "delete" },
    matomo: { sites: [{ name: "Hub", urls: "https://hub.example" }] },
  }, async (stack) => {
    const id = await stack.insertSite("cli-gone.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--site", "cli-gone.example")).code, 0);
    const run = await provision(stack, "--remove", "cli-gone.example");
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /cli-gone\.example: removal queued\./);
    assert.match(run.stdout, /✓ cli-gone\.example\s+CloudPanel site removal/);
    assert.match(run.stdout, /✓ cli-gone\.example\s+Matomo site removal/);
    assert.match(run.stdout, /■ cli-gone\.example\s+removed/);
    assert.equal((await stack.site(id)).status_hosting, "removed");
    assert.equal((await stack.simState()).sites["cli-gone.example"], undefined);
    assert.deepEqual(stack.matomo!.sites.map((s) => s.main_url), ["https://hub.example"]);

    const status = await provision(stack, "--status");
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /Sites by status_hosting: removed 1/);
    assert.match(status.stdout, /Removals: 0 queued, 0 running, 1 removed in the last day/);
    assert.match(status.stdout, /Failed removals \(--retry-failed queues them again\) \(0\)/);

    const calls = (await stack.simState()).calls.length;
    const again = await provision(stack, "--remove", id);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.match(again.stdout, /cli-gone\.example: nothing was made for it on the servers; it is removed\./);
    assert.equal((await stack.simState()).calls.length, calls, "no command was sent");

    const unknown = await provision(stack, "--remove", "nowhere.example");
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /no site has the id or domain "nowhere\.example"/);
    assertNoSecret(stack, run.stdout + run.stderr + status.stdout + again.stdout);
  });
});

Deno.test("provision --remove exits 1 when the removal fails for good and when none is queued; --status lists it and --retry-failed finishes it", async () => {
  // Matomo refuses to delete its only site: the removal fails for good at its Matomo step.
  await withStack({ label: "cli_remove_failed", env: { MATOMO_ON_REMOVE: "delete" } }, async (stack) => {
    const id = await stack.insertSite("cli-stuck.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--site", id)).code, 0);
    const failed = await provision(stack, "--remove", "cli-stuck.example");
    assert.equal(failed.code, 1, failed.stdout + failed.stderr);
    assert.match(failed.stdout, /✗ cli-stuck\.example\s+Matomo site removal\s+matomo_only_site/);
    assert.equal((await stack.site(id)).status_hosting, "removing");

    const status = await provision(stack, "--status");
    assert.match(status.stdout, /Failed removals \(--retry-failed queues them again\) \(1\)/);
    assert.match(status.stdout, /cli-stuck\.example\s+\S+\s+kept\s+\S+\s+matomo_only_site/);

    const refused = await provision(stack, "--remove", "cli-stuck.example");
    assert.equal(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(
      refused.stderr,
      /cli-stuck\.example: its removal is not queued \(status_hosting removing\)\. .*only site registered in Matomo[^.]*\. Fix the cause, then --retry-failed/,
    );

    // The operator adds another site in Matomo, then retries.
    stack.matomo!.addExistingSite({ name: "Hub", urls: "https://hub.example" });
    const retried = await provision(stack, "--retry-failed");
    assert.equal(retried.code, 0, retried.stdout + retried.stderr);
    assert.match(retried.stdout, /Re-queued 1 site\(s\): cli-stuck\.example \(removal_failed\)/);
    assert.equal((await stack.site(id)).status_hosting, "removed");
  });
});

Deno.test("provision --credentials prints the site user's login with the password masked, --reveal prints it, and a refusal exits 1 saying why", async () => {
  await withStack({ label: "cli_credentials" }, async (stack) => {
    const id = await stack.insertSite("cli-login.example");
    const early = await provision(stack, "--credentials", "cli-login.example");
    assert.equal(early.code, 1, early.stdout + early.stderr);
    assert.match(early.stderr, /no credentials for cli-login\.example: .*has no CloudPanel site yet/);

    await stack.sql`update public.sites set status_dns = 'active' where id = ${id}`;
    assert.equal((await provision(stack, "--site", id)).code, 0);
    const user = siteUserFor("cli-login.example" as Domain);
    // The password CloudPanel received: the one the database must give back.
    const password = registerSecret((await stack.simState()).sites["cli-login.example"].siteUserPassword!);
    assert.ok(password.length >= 16);

    const masked = await provision(stack, "--credentials", "cli-login.example");
    assert.equal(masked.code, 0, masked.stderr);
    assert.match(masked.stdout, new RegExp(`^site user: ${user}$`, "m"));
    assert.match(masked.stdout, new RegExp(`^host: +${stack.sshd.host.replaceAll(".", "\\.")}$`, "m"));
    assert.match(masked.stdout, new RegExp(`^port: +${stack.sshd.port}$`, "m"));
    assert.match(masked.stdout, new RegExp(`^doc root: +/home/${user}/htdocs/cli-login\\.example$`, "m"));
    assert.ok(masked.stdout.includes(`password:  ${REDACTED}  (--reveal prints it)`), masked.stdout);
    assert.ok(!(masked.stdout + masked.stderr).includes(password), "the masked output holds no password");

    const shown = await revealed(stack, id);
    assert.equal(shown.code, 0, shown.stderr);
    assert.ok(
      shown.stdout.includes(`password:  ${password}\n`),
      "--reveal prints the password CloudPanel has",
    );
    assert.ok(!shown.stdout.includes(REDACTED), "nothing else is masked");

    const alone = await provision(stack, "--reveal");
    assert.equal(alone.code, 2);
    assert.match(alone.stderr, /--reveal goes with --credentials/);

    assert.equal((await provision(stack, "--remove", id)).code, 0);
    const gone = await provision(stack, "--credentials", id);
    assert.equal(gone.code, 1, gone.stdout + gone.stderr);
    assert.match(gone.stderr, /no credentials for cli-login\.example: .*removed or being removed/);
    const unknown = await provision(stack, "--credentials", crypto.randomUUID());
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /no site has the id or domain/);
  });
});

Deno.test("provision --credentials refuses, exit 1, a site adopted from an earlier run and a database without Vault", async () => {
  await withStack({ label: "cli_credentials_refused" }, async (stack) => {
    // The site already existed on CloudPanel: its password was never known here.
    await addExistingSite(
      stack.clpctlState,
      "cli-adopted.example",
      siteUserFor("cli-adopted.example" as Domain),
    );
    await stack.insertSite("cli-adopted.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--site", "cli-adopted.example")).code, 0);
    const adopted = await provision(stack, "--credentials", "cli-adopted.example");
    assert.equal(adopted.code, 1, adopted.stdout + adopted.stderr);
    assert.match(adopted.stderr, /was adopted from an earlier run: .*set a new one in CloudPanel/);

    // Plain Postgres has no Vault, so the password is not kept: the stand-in's schema is hidden, as if absent.
    await stack.sql`alter schema vault rename to vault_absent`;
    await stack.insertSite("cli-no-vault.example", { status_dns: "active" });
    assert.equal((await provision(stack, "--site", "cli-no-vault.example")).code, 0);
    const noVault = await provision(stack, "--credentials", "cli-no-vault.example");
    assert.equal(noVault.code, 1, noVault.stdout + noVault.stderr);
    assert.match(noVault.stderr, /the password was not stored because this database has no Vault/);
  });
});
