/**
 * The clpctl simulator: CloudPanel's messages verbatim, panel state, concurrency under the lock, faults (counted,
 * after the work, seeded random), and the executable wrapper.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  addExistingSite,
  addOrphanUser,
  type ClpctlResult,
  type CommonFaultKind,
  type Faults,
  readSimState,
  runClpctl,
  setFaults,
} from "../dev/clpctl_sim.ts";
import { certificateNames } from "../supabase/functions/hosting-automator/certificate_names.ts";

const CLPCTL = fileURLToPath(new URL("../dev/bin/clpctl", import.meta.url));
const PASSWORD = "Sup3rSecretPassw0rdValue";

async function withState(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "clpctl-sim-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function addSite(dir: string, domain: string, user: string, password = PASSWORD): Promise<ClpctlResult> {
  return runClpctl(
    ["site:add:static", `--domainName=${domain}`, `--siteUser=${user}`, `--siteUserPassword=${password}`],
    dir,
  );
}

function certificate(dir: string, domain: string): Promise<ClpctlResult> {
  return runClpctl(["lets-encrypt:install:certificate", `--domainName=${domain}`], dir);
}

/** site:delete as the client sends it: with --force, so no prompt. */
function deleteSite(dir: string, domain: string): Promise<ClpctlResult> {
  return runClpctl(["site:delete", `--domainName=${domain}`, "--force"], dir);
}

/** Runs dev/bin/clpctl as a process, the way a remote shell does. */
async function clpctlProcess(
  args: string[],
  env: Record<string, string>,
  cwd = "/",
): Promise<ClpctlResult> {
  const out = await new Deno.Command(CLPCTL, {
    args,
    env,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { stdout: text(out.stdout), stderr: text(out.stderr), exitCode: out.code };
}

Deno.test("a new static site is added with CloudPanel's message", async () => {
  await withState(async (dir) => {
    const result = await addSite(dir, "example.com", "example-com-a379a6");
    assert.deepEqual(result, { stdout: "Site example.com has been added.\n", stderr: "", exitCode: 0 });
    const state = await readSimState(dir);
    const site = state.sites["example.com"];
    assert.equal(site.siteUser, "example-com-a379a6");
    assert.equal(site.siteUserPassword, PASSWORD);
    assert.equal(site.docRoot, "/home/example-com-a379a6/htdocs/example.com");
    assert.equal(state.users["example-com-a379a6"].kind, "site");
    // The site keeps a self-signed certificate until Let's Encrypt succeeds.
    assert.equal(state.certificates["example.com"].type, "self-signed");
  });
});

Deno.test("the domain is lower-cased in the message, the doc root and the state", async () => {
  await withState(async (dir) => {
    const result = await addSite(dir, "Shop.Example.COM", "shop-user");
    assert.equal(result.stdout, "Site shop.example.com has been added.\n");
    const state = await readSimState(dir);
    assert.deepEqual(Object.keys(state.sites), ["shop.example.com"]);
    assert.equal(state.sites["shop.example.com"].docRoot, "/home/shop-user/htdocs/shop.example.com");
  });
});

Deno.test("adding the same domain again says domainName already exists", async () => {
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-com-a379a6");
    const again = await addSite(dir, "example.com", "example-com-a379a6", "AnotherPassword123");
    assert.equal(
      again.stdout,
      "domainName: This value already exists.\nsiteUser: This value already exists.\n",
    );
    assert.equal(again.exitCode, 1);
    // With a site user that does not exist, only the domain line.
    const other = await addSite(dir, "EXAMPLE.com", "someone-else");
    assert.equal(other.stdout, "domainName: This value already exists.\n");
    assert.equal(other.exitCode, 1);
    const state = await readSimState(dir);
    assert.equal(Object.keys(state.sites).length, 1);
    assert.equal(state.sites["example.com"].siteUserPassword, PASSWORD);
    assert.equal(state.users["someone-else"], undefined);
  });
});

Deno.test("a site made earlier with another site user is found by a later add", async () => {
  await withState(async (dir) => {
    await addExistingSite(dir, "Handmade.example.com", "handmade");
    const state = await readSimState(dir);
    assert.equal(state.sites["handmade.example.com"].docRoot, "/home/handmade/htdocs/handmade.example.com");
    assert.ok(state.sites["handmade.example.com"].siteUserPassword.length >= 8);
    const result = await addSite(dir, "handmade.example.com", "handmade-example-com-1a2b3c");
    assert.equal(result.stdout, "domainName: This value already exists.\n");
    assert.equal(
      (await addSite(dir, "other.example.com", "handmade")).stdout,
      "siteUser: This value already exists.\n",
    );
  });
});

Deno.test("an orphan site user is refused with siteUser already exists", async () => {
  await withState(async (dir) => {
    await addOrphanUser(dir, "example-com-a379a6");
    const result = await addSite(dir, "example.com", "example-com-a379a6");
    assert.equal(result.stdout, "siteUser: This value already exists.\n");
    assert.equal(result.exitCode, 1);
    assert.deepEqual((await readSimState(dir)).sites, {});
  });
});

Deno.test("system accounts are refused with siteUser already exists", async () => {
  await withState(async (dir) => {
    for (const user of ["root", "clp", "mysql", "www-data", "nginx", "nobody"]) {
      const result = await addSite(dir, `${user.replace("-", "")}.example.com`, user);
      assert.equal(result.stdout, "siteUser: This value already exists.\n", user);
      assert.equal(result.exitCode, 1);
    }
  });
});

Deno.test("validation lines name the field with Symfony's message", async () => {
  const cases: Array<[string[], string[]]> = [
    [[], [
      "domainName: This value should not be blank.",
      "siteUser: This value should not be blank.",
      "siteUserPassword: This value should not be blank.",
    ]],
    [["--domainName=a.com", "--siteUser=usera", "--siteUserPassword=short"], [
      "siteUserPassword: This value is too short. It should have 8 characters or more.",
    ]],
    [["--domainName=a.com", "--siteUser=usera", "--siteUserPassword="], [
      "siteUserPassword: This value should not be blank.",
      "siteUserPassword: This value is too short. It should have 8 characters or more.",
    ]],
    [["--domainName=a.com", `--siteUser=${"u".repeat(33)}`, `--siteUserPassword=${PASSWORD}`], [
      "siteUser: This value is too long. It should have 32 characters or less.",
    ]],
    [["--domainName=a.com", "--siteUser=john.doe", `--siteUserPassword=${PASSWORD}`], [
      "siteUser: This value is not valid.",
    ]],
    [["--domainName=exa_mple.com", "--siteUser=usera", `--siteUserPassword=${PASSWORD}`], [
      "domainName: This value is not valid.",
    ]],
    [["--domainName=localhost", "--siteUser=usera", `--siteUserPassword=${PASSWORD}`], [
      "domainName: This value is not valid.",
    ]],
    [["--domainName=-a.com", "--siteUser=usera", `--siteUserPassword=${PASSWORD}`], [
      "domainName: This value is not valid.",
    ]],
  ];
  await withState(async (dir) => {
    for (const [flags, lines] of cases) {
      const result = await runClpctl(["site:add:static", ...flags], dir);
      assert.equal(result.stdout, lines.join("\n") + "\n", flags.join(" "));
      assert.equal(result.exitCode, 1);
    }
    assert.deepEqual((await readSimState(dir)).sites, {});
  });
});

Deno.test("an unknown command prints CloudPanel's Monolog JSON record on stderr and fails", async () => {
  // CE#688, verbatim but for the time.
  const observed =
    `{"message":"Error thrown while running command \\"'lets-encrypt:renew:certificates'\\". Message: \\"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.\\n\\nDid you mean one of these?\\n    lets-encrypt\\n    lets-encrypt:install\\"","context":{"exception":{"class":"Symfony\\\\Component\\\\Console\\\\Exception\\\\NamespaceNotFoundException","message":"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.\\n\\nDid you mean one of these?\\n    lets-encrypt\\n    lets-encrypt:install","code":0,"file":"/home/clp/htdocs/app/files/vendor/symfony/console/Application.php:613"},"command":"'lets-encrypt:renew:certificates'","message":"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.\\n\\nDid you mean one of these?\\n    lets-encrypt\\n    lets-encrypt:install"},"level":500,"level_name":"CRITICAL","channel":"console","datetime":"2025-09-05T12:55:12.141045+00:00","extra":{}}`;
  await withState(async (dir) => {
    const result = await runClpctl(["lets-encrypt:renew:certificates"], dir);
    assert.equal(result.stdout, "");
    assert.equal(result.exitCode, 1);
    assert.equal(result.stderr.split("\n").length, 2, "one line");
    const time = /"datetime":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00)"/.exec(result.stderr)?.[1];
    assert.ok(time, result.stderr);
    assert.equal(result.stderr, observed.replace("2025-09-05T12:55:12.141045+00:00", time) + "\n");

    const missing = JSON.parse(await runClpctl(["site:list"], dir).then((r) => r.stderr));
    assert.equal(
      missing.context.exception.class,
      "Symfony\\Component\\Console\\Exception\\CommandNotFoundException",
    );
    assert.match(missing.context.message, /^Command "site:list" is not defined\./);
  });
});

Deno.test("an undocumented option is refused with the Monolog record naming it", async () => {
  await withState(async (dir) => {
    const result = await runClpctl(
      [
        "site:add:static",
        "--domainName=a.com",
        "--siteUser=usera",
        `--siteUserPassword=${PASSWORD}`,
        "--phpVersion=8.2",
      ],
      dir,
    );
    assert.equal(result.exitCode, 1);
    const record = JSON.parse(result.stderr);
    assert.equal(record.level_name, "CRITICAL");
    assert.equal(record.context.message, 'The "--phpVersion" option does not exist.');
    // Symfony's input string, as Monolog logs it: the found command's name unquoted, dotted values quoted.
    assert.equal(
      record.context.command,
      `site:add:static --domainName='a.com' --siteUser=usera --siteUserPassword=${PASSWORD} --phpVersion='8.2'`,
    );
    assert.deepEqual((await readSimState(dir)).sites, {});
  });
});

Deno.test("no arguments lists the commands; --version prints the CLI version", async () => {
  await withState(async (dir) => {
    const list = await runClpctl([], dir);
    assert.equal(list.exitCode, 0);
    for (const name of ["site:add:static", "lets-encrypt:install:certificate", "site:delete"]) {
      assert.match(list.stdout, new RegExp(`^  ${name} `, "m"));
    }
    const version = await runClpctl(["--version"], dir);
    assert.equal(
      version.stdout,
      "CloudPanel CLI 6.0.8 (env: prod, debug: false) #StandWithUkraine https://sf.to/ukraine\n",
    );
  });
});

Deno.test("ten concurrent adds of one domain create one site", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { workMs: 20 });
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => addSite(dir, "race.example.com", `race-user-${i}`)),
    );
    const added = results.filter((r) => r.stdout === "Site race.example.com has been added.\n");
    const refused = results.filter((r) => r.stdout === "domainName: This value already exists.\n");
    assert.equal(added.length, 1);
    assert.equal(refused.length, 9);
    const state = await readSimState(dir);
    assert.equal(Object.keys(state.sites).length, 1);
    assert.equal(Object.keys(state.users).length, 1);
    assert.equal(state.calls.length, 10);
  });
});

Deno.test("ten concurrent clpctl processes for one domain create one site", async () => {
  await withState(async (dir) => {
    const env = { CLPCTL_SIM_STATE: dir, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
    // The work takes a while, as on a real server: without the lock every process would pass validation.
    await setFaults(dir, { workMs: 100 });
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        clpctlProcess([
          "site:add:static",
          "--domainName=race.example.com",
          "--siteUser=race-user",
          `--siteUserPassword=${PASSWORD}`,
        ], env)),
    );
    assert.equal(results.filter((r) => r.exitCode === 0).length, 1);
    assert.equal(
      results.filter((r) => r.stdout.startsWith("domainName: This value already exists.\n")).length,
      9,
    );
    assert.equal(Object.keys((await readSimState(dir)).sites).length, 1);
  });
});

Deno.test("an apex or www certificate covers both names; a sub-domain is issued alone", async () => {
  assert.deepEqual(certificateNames("example.com"), ["example.com", "www.example.com"]);
  assert.deepEqual(certificateNames("www.example.com"), ["example.com", "www.example.com"]);
  assert.deepEqual(certificateNames("app.example.com"), ["app.example.com"]);
  assert.deepEqual(certificateNames("shop.co.uk"), ["shop.co.uk", "www.shop.co.uk"]);
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-user");
    const result = await certificate(dir, "example.com");
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, "Certificate for example.com, www.example.com has been installed.\n");
    const cert = (await readSimState(dir)).certificates["example.com"];
    assert.equal(cert.type, "lets-encrypt");
    assert.deepEqual(cert.names, ["example.com", "www.example.com"]);
  });
});

Deno.test("the next two certificate requests fail validation, the third succeeds", async () => {
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-user");
    await setFaults(dir, { certificateFailures: 2 });
    for (let i = 0; i < 2; i++) {
      const failed = await certificate(dir, "example.com");
      assert.equal(failed.exitCode, 1);
      const lines = failed.stdout.trimEnd().split("\n");
      assert.equal(lines.length, 2, "one line per name");
      assert.match(
        lines[0],
        /^example\.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: DNS problem: NXDOMAIN looking up A for example\.com/,
      );
      assert.match(
        lines[1],
        /^www\.example\.com: Domain could not be validated, error message: error type: /,
      );
      assert.equal((await readSimState(dir)).certificates["example.com"].type, "self-signed");
    }
    assert.equal((await readSimState(dir)).faults.certificateFailures, 0);
    const third = await certificate(dir, "example.com");
    assert.equal(third.exitCode, 0);
    assert.equal((await readSimState(dir)).certificates["example.com"].type, "lets-encrypt");
  });
});

Deno.test("certificate faults report the ACME error type or the account registration error", async () => {
  await withState(async (dir) => {
    await addSite(dir, "app.example.com", "app-user");
    await setFaults(dir, { certificateFailures: 1, certificateFailureKind: "unauthorized" });
    const unauthorized = await certificate(dir, "app.example.com");
    assert.match(
      unauthorized.stdout,
      /^app\.example\.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:unauthorized, error detail: .*: 404\n$/,
    );
    await setFaults(dir, { certificateFailures: 1, certificateFailureKind: "account" });
    const account = await certificate(dir, "app.example.com");
    assert.match(
      account.stdout,
      /^An error occurred while registering an account, error message: cURL error 28: Operation timed out after 15001 milliseconds/,
    );
    assert.equal(account.exitCode, 1);
  });
});

Deno.test("a certificate for a domain without a site is an error", async () => {
  await withState(async (dir) => {
    const result = await certificate(dir, "nosite.example.com");
    assert.equal(result.stdout, 'Site "nosite.example.com" does not exist.\n');
    assert.equal(result.exitCode, 1);
    assert.deepEqual((await readSimState(dir)).certificates, {});
  });
});

Deno.test("site failure faults print CloudPanel's error shapes and can leave an orphan user", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "timeout", siteFailureLeavesUser: true });
    const timeout = await addSite(dir, "slow.example.com", "slow-user");
    assert.match(
      timeout.stdout,
      /^An error has occurred, error message: Command " : .*" failed, error message: The process ".*" exceeded the timeout of 90 seconds\.\n$/,
    );
    assert.equal(timeout.exitCode, 1);
    let state = await readSimState(dir);
    assert.deepEqual(state.sites, {});
    assert.equal(state.users["slow-user"].kind, "orphan"); // as in CE#390
    // The retry meets the orphan.
    assert.equal(
      (await addSite(dir, "slow.example.com", "slow-user")).stdout,
      "siteUser: This value already exists.\n",
    );

    await setFaults(dir, { siteFailures: 2, siteFailureKind: "system" });
    const system = await addSite(dir, "sys.example.com", "sys-user");
    assert.match(
      system.stdout,
      /^An error has occurred, error message: Command " : .*useradd.*" failed, error message: /,
    );
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "network" });
    const network = await addSite(dir, "net.example.com", "net-user");
    assert.match(network.stdout, /^cURL error 28: Operation timed out after 10000 milliseconds/);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "exception" });
    const exception = await addSite(dir, "exc.example.com", "exc-user");
    assert.equal(exception.stdout, "");
    assert.equal(JSON.parse(exception.stderr).level_name, "CRITICAL");
    state = await readSimState(dir);
    assert.deepEqual(Object.keys(state.sites), []);
    assert.equal(state.users["sys-user"], undefined);

    assert.equal((await addSite(dir, "ok.example.com", "ok-user")).exitCode, 0, "faults are used up");
  });
});

Deno.test("delayMs makes every command wait first", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { delayMs: 300 });
    const started = performance.now();
    await runClpctl([], dir);
    await addSite(dir, "example.com", "example-user");
    assert.ok(performance.now() - started >= 600, "two commands, 300 ms each");
  });
});

Deno.test("a hang lasts until the caller gives up, then the next command answers", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { hang: 1, hangMs: 60_000 });
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error("client timeout")), 200);
    const started = performance.now();
    await assert.rejects(
      runClpctl(["site:add:static"], dir, { signal: controller.signal }),
      /client timeout/,
    );
    clearTimeout(timer);
    assert.ok(performance.now() - started < 5_000);
    assert.deepEqual((await readSimState(dir)).sites, {});
    assert.equal((await addSite(dir, "example.com", "example-user")).exitCode, 0);
  });
});

Deno.test("site:delete asks for confirmation without --force and deletes with it", async () => {
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-user");
    const asked = await runClpctl(["site:delete", "--domainName=example.com"], dir);
    assert.equal(asked.stdout, "Confirm your action by entering yes: \n");
    assert.equal(asked.exitCode, 1);
    assert.ok((await readSimState(dir)).sites["example.com"], "not deleted without confirmation");

    const confirmed = await runClpctl(["site:delete", "--domainName=example.com"], dir, { stdin: "yes\n" });
    assert.equal(confirmed.exitCode, 0);
    await addSite(dir, "example.com", "example-user");
    const forced = await runClpctl(["site:delete", "--domainName=example.com", "--force"], dir);
    assert.equal(forced.stdout, "Site example.com has been deleted.\n");
    const state = await readSimState(dir);
    assert.deepEqual([state.sites, state.users, state.certificates], [{}, {}, {}]);
  });
});

Deno.test("site:delete of a domain without a site says it does not exist and changes nothing", async () => {
  await withState(async (dir) => {
    await addSite(dir, "kept.example.com", "kept-user");
    const result = await deleteSite(dir, "gone.example.com");
    assert.deepEqual(result, {
      stdout: 'Site "gone.example.com" does not exist.\n',
      stderr: "",
      exitCode: 1,
    });
    const state = await readSimState(dir);
    assert.deepEqual(Object.keys(state.sites), ["kept.example.com"]);
    assert.deepEqual(state.calls.map((c) => c.outcome), ["added", "no_site"]);
  });
});

Deno.test("site:delete meets killed and exit137 faults, before its work or after it, and a retry then finds no site", async () => {
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-user");
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "killed" });
    assert.deepEqual(await deleteSite(dir, "example.com"), {
      stdout: "",
      stderr: "",
      exitCode: null,
      signal: "KILL",
    });
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "exit137" });
    assert.deepEqual(await deleteSite(dir, "example.com"), { stdout: "", stderr: "", exitCode: 137 });
    assert.ok((await readSimState(dir)).sites["example.com"], "a fault before the work deletes nothing");

    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "database", deleteFailureAfterWork: true });
    const after = await deleteSite(dir, "example.com");
    assert.match(after.stdout, /Connection to the internal database timed out/);
    assert.equal(after.exitCode, 1);
    const state = await readSimState(dir);
    assert.deepEqual([state.sites, state.users, state.certificates], [{}, {}, {}], "the work was done");

    // The retry meets no site; a fault still meets a delete of a site that is not there.
    assert.equal((await deleteSite(dir, "example.com")).stdout, 'Site "example.com" does not exist.\n');
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "locked" });
    assert.match((await deleteSite(dir, "example.com")).stdout, /database is locked/);
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "killed", deleteFailureAfterWork: true });
    assert.equal((await deleteSite(dir, "example.com")).signal, "KILL");
    assert.deepEqual(
      (await readSimState(dir)).calls.slice(1).map((c) => [c.verb, c.outcome, c.exitCode]),
      [
        ["site:delete", "failed_killed", null],
        ["site:delete", "failed_exit137", 137],
        ["site:delete", "deleted_then_database", 1],
        ["site:delete", "no_site", 1],
        ["site:delete", "failed_locked", 1],
        ["site:delete", "no_site_then_killed", null],
      ],
    );

    // As a process, through the wrapper: the parent sees the signal.
    await addSite(dir, "proc.example.com", "proc-user");
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "killed" });
    const env = { CLPCTL_SIM_STATE: dir, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
    const killed = await new Deno.Command(CLPCTL, {
      args: ["site:delete", "--domainName=proc.example.com", "--force"],
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.deepEqual([killed.signal, killed.stdout.length, killed.stderr.length], ["SIGKILL", 0, 0]);
    assert.ok((await readSimState(dir)).sites["proc.example.com"]);
  });
});

Deno.test("site:delete: a hang does the work and answers late; the timeout text names the site user", async () => {
  await withState(async (dir) => {
    await addSite(dir, "example.com", "example-user");
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "timeout" });
    const timeout = await deleteSite(dir, "example.com");
    assert.match(
      timeout.stdout,
      /^An error has occurred, error message: Command " : \/usr\/bin\/sudo \/usr\/sbin\/userdel -r 'example-user'" failed, error message: .* exceeded the timeout of 90 seconds\.\n$/,
    );
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "hang", hangMs: 300 });
    const started = performance.now();
    const late = await deleteSite(dir, "example.com");
    assert.ok(performance.now() - started >= 300);
    assert.deepEqual([late.exitCode, late.stdout], [0, "Site example.com has been deleted.\n"]);
    assert.deepEqual((await readSimState(dir)).sites, {});
  });
});

Deno.test("random faults meet site:delete unless `commands` leaves it out", async () => {
  const outcomes = async (faults: Faults) => {
    let result: string[] = [];
    await withState(async (dir) => {
      for (let i = 0; i < 3; i++) await addSite(dir, `d${i}.example.com`, `d-user-${i}`);
      await setFaults(dir, faults);
      for (let i = 0; i < 3; i++) await deleteSite(dir, `d${i}.example.com`);
      result = (await readSimState(dir)).calls.slice(3).map((c) => c.outcome);
    });
    return result;
  };
  const random = { seed: 9, rate: 1, kinds: ["database"] as CommonFaultKind[] };
  assert.deepEqual(await outcomes({ randomFaults: random }), Array(3).fill("failed_database"));
  assert.deepEqual(
    await outcomes({ randomFaults: { ...random, commands: ["site", "certificate"] } }),
    Array(3).fill("deleted"),
  );
});

Deno.test("the call log records verb, domain and outcome, never the password", async () => {
  await withState(async (dir) => {
    await addSite(dir, "Example.com", "example-user");
    await addSite(dir, "example.com", "example-user");
    await runClpctl(
      ["site:add:static", "--domainName=x.com", `--siteUserPassword=${PASSWORD}`, "--bogus"],
      dir,
    );
    await certificate(dir, "example.com");
    const { calls } = await readSimState(dir);
    assert.deepEqual(
      calls.map((c) => [c.verb, c.domainName, c.outcome, c.exitCode]),
      [
        ["site:add:static", "example.com", "added", 0],
        ["site:add:static", "example.com", "domain_exists", 1],
        ["site:add:static", "x.com", "error", 1],
        ["lets-encrypt:install:certificate", "example.com", "installed", 0],
      ],
    );
    for (const call of calls) assert.ok(!Number.isNaN(Date.parse(call.time)));
    const raw = await Deno.readTextFile(`${dir}/calls.jsonl`);
    assert.ok(!raw.includes(PASSWORD));
    assert.ok(!raw.includes("Password"));
  });
});

Deno.test("the script refuses to run without CLPCTL_SIM_STATE", async () => {
  const result = await clpctlProcess(["site:add:static"], { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" });
  assert.equal(result.exitCode, 2);
  assert.match(result.stderr, /CLPCTL_SIM_STATE is not set/);
  assert.equal(result.stdout, "");
});

Deno.test("the wrapper works from any working directory and passes output and exit status", async () => {
  await withState(async (dir) => {
    const env = { CLPCTL_SIM_STATE: dir, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
    const args = [
      "site:add:static",
      "--domainName=example.com",
      "--siteUser=example-user",
      `--siteUserPassword=${PASSWORD}`,
    ];
    const first = await clpctlProcess(args, env, "/tmp");
    assert.deepEqual(first, { stdout: "Site example.com has been added.\n", stderr: "", exitCode: 0 });
    const second = await clpctlProcess(args, env, dir);
    assert.equal(second.exitCode, 1);
    assert.match(second.stdout, /^domainName: This value already exists\.$/m);
    // Found on PATH through a symlink, as an operator might install it.
    await Deno.mkdir(`${dir}/bin`);
    await Deno.symlink(CLPCTL, `${dir}/bin/clpctl`);
    const linked = await new Deno.Command("bash", {
      args: ["-c", "clpctl --version"],
      env: { ...env, PATH: `${dir}/bin:${env.PATH}` },
      cwd: "/",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.match(new TextDecoder().decode(linked.stdout), /^CloudPanel CLI /);
  });
});

Deno.test("common faults print their text with exit 1 and change nothing, for every command", async () => {
  const texts: Array<[CommonFaultKind, RegExp]> = [
    ["database", /^An error has occurred, error message: Connection to the internal database timed out\.\n$/],
    [
      "locked",
      /^An error has occurred, error message: SQLSTATE\[HY000\]: General error: 5 database is locked\n$/,
    ],
    ["unrecognised", /^The panel could not finish the request \(state 7\)\.\n$/],
    [
      "timeout",
      /^An error has occurred, error message: Command " : .*" failed, error message: .* exceeded the timeout of 90 seconds\.\n$/,
    ],
  ];
  await withState(async (dir) => {
    await addSite(dir, "cert.example.com", "cert-user");
    for (const [kind, text] of texts) {
      await setFaults(dir, { siteFailures: 1, siteFailureKind: kind });
      const site = await addSite(dir, "new.example.com", "new-user");
      assert.match(site.stdout, text, `site ${kind}`);
      assert.deepEqual([site.stderr, site.exitCode], ["", 1]);
      await setFaults(dir, { certificateFailures: 1, certificateFailureKind: kind });
      const cert = await certificate(dir, "cert.example.com");
      assert.match(cert.stdout, text, `certificate ${kind}`);
      assert.deepEqual([cert.stderr, cert.exitCode], ["", 1]);
      await setFaults(dir, { deleteFailures: 1, deleteFailureKind: kind });
      const deleted = await deleteSite(dir, "cert.example.com");
      assert.match(deleted.stdout, text, `delete ${kind}`);
      assert.deepEqual([deleted.stderr, deleted.exitCode], ["", 1]);
    }
    const state = await readSimState(dir);
    assert.deepEqual(Object.keys(state.sites), ["cert.example.com"]);
    assert.equal(state.users["cert-user"].kind, "site");
    assert.equal(state.certificates["cert.example.com"].type, "self-signed");
    assert.deepEqual(
      state.calls.slice(1).map((c) => c.outcome),
      texts.flatMap(([kind]) => [`failed_${kind}`, `failed_${kind}`, `failed_${kind}`]),
    );
  });
});

Deno.test("a killed command ends by SIGKILL without output, exit137 with status 137, in-process and as a process", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "killed" });
    assert.deepEqual(await addSite(dir, "a.example.com", "a-user"), {
      stdout: "",
      stderr: "",
      exitCode: null,
      signal: "KILL",
    });
    await setFaults(dir, { certificateFailures: 1, certificateFailureKind: "exit137" });
    await addSite(dir, "b.example.com", "b-user");
    assert.deepEqual(await certificate(dir, "b.example.com"), { stdout: "", stderr: "", exitCode: 137 });
    const calls = (await readSimState(dir)).calls;
    assert.deepEqual(calls[0], { ...calls[0], outcome: "failed_killed", exitCode: null, signal: "KILL" });
    assert.deepEqual(calls.at(-1), { ...calls.at(-1)!, outcome: "failed_exit137", exitCode: 137 });
    assert.equal((await readSimState(dir)).sites["a.example.com"], undefined);

    // As a process (the wrapper runs the deno binary itself): the parent sees the signal, or status 137.
    const env = { CLPCTL_SIM_STATE: dir, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
    const run = (args: string[]) =>
      new Deno.Command(CLPCTL, { args, env, stdin: "null", stdout: "piped", stderr: "piped" }).output();
    const siteArgs = ["site:add:static", "--domainName=c.example.com", "--siteUser=c-user"];
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "killed" });
    const killed = await run([...siteArgs, `--siteUserPassword=${PASSWORD}`]);
    assert.deepEqual([killed.signal, killed.stdout.length, killed.stderr.length], ["SIGKILL", 0, 0]);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "exit137" });
    const exited = await run([...siteArgs, `--siteUserPassword=${PASSWORD}`]);
    assert.deepEqual([exited.signal, exited.code, exited.stdout.length, exited.stderr.length], [
      null,
      137,
      0,
      0,
    ]);
    assert.equal((await readSimState(dir)).sites["c.example.com"], undefined);
  });
});

Deno.test("a fault after the work: the command fails although the site or certificate is there", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "database", siteFailureAfterWork: true });
    const first = await addSite(dir, "example.com", "example-user");
    assert.match(first.stdout, /Connection to the internal database timed out/);
    assert.equal(first.exitCode, 1);
    assert.equal((await readSimState(dir)).sites["example.com"].siteUser, "example-user");
    // The retry meets the site it made.
    assert.equal(
      (await addSite(dir, "example.com", "example-user")).stdout.split("\n")[0],
      "domainName: This value already exists.",
    );

    await setFaults(dir, {
      certificateFailures: 1,
      certificateFailureKind: "killed",
      certificateFailureAfterWork: true,
    });
    assert.deepEqual(await certificate(dir, "example.com"), {
      stdout: "",
      stderr: "",
      exitCode: null,
      signal: "KILL",
    });
    assert.equal((await readSimState(dir)).certificates["example.com"].type, "lets-encrypt");
    assert.deepEqual(
      (await readSimState(dir)).calls.map((c) => c.outcome),
      ["added_then_database", "domain_exists", "installed_then_killed"],
    );
  });
});

Deno.test("a hang fault does the work, then answers late or not at all", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "hang", hangMs: 60_000 });
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error("client timeout")), 200);
    const started = performance.now();
    await assert.rejects(
      runClpctl(
        [
          "site:add:static",
          "--domainName=example.com",
          "--siteUser=example-user",
          `--siteUserPassword=${PASSWORD}`,
        ],
        dir,
        { signal: controller.signal },
      ),
      /client timeout/,
    );
    clearTimeout(timer);
    assert.ok(performance.now() - started < 5_000);
    // The client gave up; the server finished anyway.
    assert.ok((await readSimState(dir)).sites["example.com"]);

    await setFaults(dir, { certificateFailures: 1, certificateFailureKind: "hang", hangMs: 300 });
    const late = performance.now();
    const answer = await certificate(dir, "example.com");
    assert.ok(performance.now() - late >= 300);
    assert.deepEqual([answer.exitCode, answer.stdout], [
      0,
      "Certificate for example.com, www.example.com has been installed.\n",
    ]);
    assert.deepEqual(
      (await readSimState(dir)).calls.map((c) => c.outcome),
      ["added_then_hang", "installed_then_hang"],
    );
  });
});

Deno.test("random faults are seeded: one seed gives one sequence, at the rate and of the kinds asked", async () => {
  const kinds: CommonFaultKind[] = ["database", "exit137", "unrecognised", "killed"];
  /** The outcomes of n site adds under `faults`, and the generator's state after them. */
  const sequence = async (faults: Faults, n = 30) => {
    let outcomes: string[] = [];
    let seed: number | undefined;
    await withState(async (dir) => {
      await setFaults(dir, faults);
      for (let i = 0; i < n; i++) await addSite(dir, `s${i}.example.com`, `user-${i}`);
      const state = await readSimState(dir);
      outcomes = state.calls.map((c) => c.outcome);
      seed = state.faults.randomFaults?.seed;
    });
    return { outcomes, seed };
  };
  const mixed = { randomFaults: { seed: 42, rate: 0.5, kinds } };
  const { outcomes: first, seed } = await sequence(mixed);
  assert.notEqual(seed, 42, "the generator's state is kept in faults.json");
  assert.deepEqual((await sequence(mixed)).outcomes, first, "the same seed, the same faults");
  assert.notDeepEqual((await sequence({ randomFaults: { ...mixed.randomFaults, seed: 7 } })).outcomes, first);
  const failed = first.filter((o) => o !== "added");
  assert.ok(failed.length >= 5 && failed.length <= 25, `${failed.length} of 30 at rate 0.5`);
  for (const outcome of failed) assert.ok(kinds.some((k) => outcome === `failed_${k}`), outcome);

  assert.ok(
    (await sequence({ randomFaults: { seed: 1, rate: 0, kinds } })).outcomes.every((o) => o === "added"),
  );
  const all = await sequence({ randomFaults: { seed: 1, rate: 1, kinds } });
  assert.ok(all.outcomes.every((o) => o.startsWith("failed_")));
  const afterWork = await sequence({
    randomFaults: { seed: 3, rate: 1, kinds: ["killed"], afterWorkRate: 1 },
  }, 3);
  assert.deepEqual(afterWork.outcomes, ["added_then_killed", "added_then_killed", "added_then_killed"]);
  // Limited to certificates: site commands are untouched and draw nothing.
  const certOnly = await sequence(
    { randomFaults: { seed: 1, rate: 1, kinds, commands: ["certificate"] } },
    5,
  );
  assert.deepEqual([certOnly.outcomes.every((o) => o === "added"), certOnly.seed], [true, 1]);
});

Deno.test("counted faults come before random ones, and the old fault fields keep their meaning", async () => {
  await withState(async (dir) => {
    await setFaults(dir, {
      siteFailures: 1,
      siteFailureKind: "system",
      randomFaults: { seed: 5, rate: 1, kinds: ["database"], commands: ["site"] },
    });
    assert.match((await addSite(dir, "a.example.com", "a-user")).stdout, /useradd/);
    assert.match((await addSite(dir, "b.example.com", "b-user")).stdout, /internal database timed out/);
    assert.equal((await readSimState(dir)).faults.siteFailures, 0);
  });
});
