/**
 * The CloudPanel client: command building, classification of the reference's messages, and the client
 * driving the clpctl simulator through a local shell.
 */
import assert from "node:assert/strict";
import {
  addStaticSiteCommand,
  classifyAddSite,
  classifyCertificate,
  CloudPanel,
  installCertificateCommand,
} from "../supabase/functions/hosting-automator/cloudpanel.ts";
import {
  type Domain,
  parseDomain,
  type SiteUser,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import { type ErrorCode, HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import type { ExecResult, RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";
import { addExistingSite, addOrphanUser, readSimState, setFaults } from "../dev/clpctl_sim.ts";
import { localShell } from "./support/local_shell.ts";

const DOMAIN = parseDomain("example.com");
const USER = siteUserFor(DOMAIN);
const TIMEOUT = { timeoutMs: 20_000 };

function collectingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: new Logger(new Redactor(), { sink: (line) => lines.push(line), level: "debug" }), lines };
}

async function withState(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cloudpanel-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A local shell that also records each command line it was given (the test may read the password). */
function spyShell(dir: string): { shell: RemoteShell; commands: string[] } {
  const inner = localShell(dir);
  const commands: string[] = [];
  return {
    commands,
    shell: {
      exec(command, options) {
        commands.push(command);
        return inner.exec(command, options);
      },
      close: () => inner.close(),
    },
  };
}

function catchError(fn: () => unknown): HostingError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof HostingError, `expected a HostingError, got ${error}`);
    return error;
  }
  assert.fail("expected a HostingError");
}

async function rejection(promise: Promise<unknown>): Promise<HostingError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof HostingError, `expected a HostingError, got ${error}`);
    return error;
  }
  assert.fail("expected a HostingError");
}

Deno.test("commands quote every value", async () => {
  assert.equal(
    addStaticSiteCommand(DOMAIN, USER, "Abc123"),
    `clpctl site:add:static --domainName='example.com' --siteUser='${USER}' --siteUserPassword='Abc123'`,
  );
  assert.equal(
    installCertificateCommand(DOMAIN),
    "clpctl lets-encrypt:install:certificate --domainName='example.com'",
  );
  // Values that would be dangerous unquoted reach the program as one argument each, unchanged.
  const nasty = ["a'b; touch /tmp/pwned", "$(id)", "`id`", "x y\nz", "!event", "*"];
  for (const value of nasty) {
    const command = addStaticSiteCommand(value as Domain, value as SiteUser, value)
      .replace(/^clpctl /, "printf '%s\\0' ");
    const out = await new Deno.Command("bash", { args: ["-c", command], stdout: "piped" }).output();
    const args = new TextDecoder().decode(out.stdout).split("\0").slice(0, -1);
    assert.deepEqual(args, [
      "site:add:static",
      `--domainName=${value}`,
      `--siteUser=${value}`,
      `--siteUserPassword=${value}`,
    ]);
  }
});

const ok = (stdout: string, exitCode: number | null = 0): ExecResult => ({ stdout, stderr: "", exitCode });
const fail = (stdout: string, stderr = ""): ExecResult => ({ stdout, stderr, exitCode: 1 });

const MONOLOG_NAMESPACE =
  `{"message":"Error thrown while running command \\"'lets-encrypt:renew:certificate'\\". Message: \\"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.\\n\\nDid you mean one of these?\\n    lets-encrypt\\n    lets-encrypt:install\\"","context":{"exception":{"class":"Symfony\\\\Component\\\\Console\\\\Exception\\\\NamespaceNotFoundException","message":"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.","code":0,"file":"/home/clp/htdocs/app/files/vendor/symfony/console/Application.php:613"},"command":"'lets-encrypt:renew:certificate'"},"level":500,"level_name":"CRITICAL","channel":"console","datetime":"2025-12-19T09:07:28.985930+00:00","extra":{}}`;

/** The reference's lines (§2, §4) and what the site step makes of them. */
const SITE_CASES: Array<[string, ExecResult, ErrorCode | "created" | "exists", boolean?]> = [
  ["success (CE#351)", ok("Site example.com has been added.\n"), "created"],
  ["domain exists", fail("domainName: This value already exists.\n"), "exists"],
  [
    "domain and site user exist (our own site)",
    fail("domainName: This value already exists.\nsiteUser: This value already exists.\n"),
    "exists",
  ],
  ["domain exists, on stderr, exit 0", {
    stdout: "",
    stderr: "domainName: This value already exists.",
    exitCode: 0,
  }, "exists"],
  ["orphan site user", fail("siteUser: This value already exists.\n"), "cloudpanel_site_user_exists", false],
  [
    "password too short (CE#284)",
    fail("siteUserPassword: This value is too short. It should have 8 characters or more.\n"),
    "cloudpanel_rejected",
    false,
  ],
  [
    "site user too long (CE#277)",
    fail("siteUser: This value is too long. It should have 32 characters or less.\n"),
    "cloudpanel_rejected",
    false,
  ],
  [
    "site user not valid (CE#471)",
    fail("Site User: This value is not valid.\n"),
    "cloudpanel_rejected",
    false,
  ],
  ["domain not valid", fail("domainName: This value is not valid.\n"), "cloudpanel_rejected", false],
  [
    "timeout (CE#390)",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/bin/find -P '/home/shiroko-musicbott' -type d -exec chmod '770' {} \\;" failed, error message: The process "/usr/bin/sudo /usr/bin/find -P '/home/shiroko-musicbott' -type d" exceeded the timeout of 90 seconds.`,
    ),
    "cloudpanel_busy",
    true,
  ],
  [
    "no outbound access, cURL 28 (CE#449)",
    fail(
      "cURL error 28: Operation timed out after 10000 milliseconds with 68188 out of 308886 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://publicsuffix.org/list/public_suffix_list.dat",
    ),
    "cloudpanel_busy",
    true,
  ],
  [
    "no DNS for the public suffix list, cURL 6 (CE#580)",
    fail(
      "cURL error 6: Could not resolve host: publicsuffix.org (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://publicsuffix.org/list/public_suffix_list.dat",
    ),
    "cloudpanel_failed",
    false,
  ],
  [
    "useradd failure (CE#341)",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/sbin/useradd -m -d '/home/john' john" failed, error message: useradd: failed to reset the lastlog entry of UID 1001: No such file or directory`,
    ),
    "cloudpanel_failed",
    false,
  ],
  ["Monolog JSON record (CE#720)", fail("", MONOLOG_NAMESPACE), "cloudpanel_failed", false],
  ["exit 0 without the success text", ok("Site has been created.\n"), "cloudpanel_failed", true],
  ["success text for another domain", ok("Site other.com has been added.\n"), "cloudpanel_failed", true],
  [
    "success text with a failure status",
    fail("Site example.com has been added.\n"),
    "cloudpanel_failed",
    true,
  ],
  ["no exit status", ok("", null), "ssh_unreachable", true],
];

/** The reference's lines (§4) and what the certificate step makes of them. */
const CERTIFICATE_CASES: Array<[string, ExecResult, ErrorCode | "installed", boolean?]> = [
  ["exit 0, no text", ok(""), "installed"],
  [
    "exit 0, the simulator's text",
    ok("Certificate for example.com, www.example.com has been installed.\n"),
    "installed",
  ],
  [
    "unauthorized, both names (CE#810)",
    fail(
      "southmtka.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:unauthorized, error detail: 200.1.2.3: Invalid response from https://www.southmtka.com/.well-known/acme-challenge/2abc: 404\n" +
        "www.southmtka.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:unauthorized, error detail: 200.1.2.3: Invalid response from https://www.southmtka.com/.well-known/acme-challenge/2abc: 404\n",
    ),
    "certificate_not_validated",
    true,
  ],
  [
    "connection (CE#372)",
    fail(
      "Domain could not be validated, error message: error type: urn:ietf:params:acme:error:connection, error detail: 157.0.101.58: Fetching https://www.abc.com/.well-known/acme-challenge/Tm4v: Timeout during connect (likely firewall problem)",
    ),
    "certificate_not_validated",
    true,
  ],
  [
    "NXDOMAIN",
    fail(
      "example.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: DNS problem: NXDOMAIN looking up A for example.com - check that a DNS record exists for this domain",
    ),
    "certificate_not_validated",
    true,
  ],
  [
    "account registration (CE#182)",
    fail(
      "An error occurred while registering an account, error message: cURL error 28: Operation timed out after 15001 milliseconds with 0 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://acme-v02.api.letsencrypt.org/acme/new-acct",
    ),
    "certificate_not_validated",
    true,
  ],
  [
    "validation failure with exit 0",
    ok(
      "example.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: DNS problem",
    ),
    "certificate_not_validated",
    true,
  ],
  [
    "timeout",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/bin/nginx -t" failed, error message: The process "/usr/bin/sudo /usr/bin/nginx -t" exceeded the timeout of 90 seconds.`,
    ),
    "cloudpanel_busy",
    true,
  ],
  ["Monolog JSON record (CE#688)", fail("", MONOLOG_NAMESPACE), "certificate_failed", false],
  ["no site", fail('Site "example.com" does not exist.\n'), "certificate_failed", false],
  ["blank domain", fail("domainName: This value should not be blank.\n"), "certificate_failed", false],
  [
    "exit 0 with a validation line",
    ok("domainName: This value is not valid.\n"),
    "certificate_failed",
    false,
  ],
  [
    "exit 0 with an error",
    ok("An error has occurred, error message: something\n"),
    "certificate_failed",
    false,
  ],
  ["no exit status", ok("", null), "ssh_unreachable", true],
];

/** Public messages: no command lines, paths, hosts, addresses or values. */
function assertPublicSafe(error: HostingError, label: string): void {
  for (
    const bad of [
      "clpctl",
      "/",
      "example.com",
      "southmtka",
      "publicsuffix",
      "acme-v02",
      "157.",
      "200.1",
      USER,
    ]
  ) {
    assert.ok(
      !error.publicMessage.includes(bad),
      `${label}: public message "${error.publicMessage}" has "${bad}"`,
    );
  }
}

Deno.test("classification of each reference message", () => {
  for (const [label, result, expected, transient] of SITE_CASES) {
    if (expected === "created" || expected === "exists") {
      assert.deepEqual(
        classifyAddSite(result, DOMAIN, USER),
        { siteUser: USER, docRoot: `/home/${USER}/htdocs/example.com`, created: expected === "created" },
        label,
      );
      continue;
    }
    const error = catchError(() => classifyAddSite(result, DOMAIN, USER));
    assert.equal(error.code, expected, label);
    assert.equal(error.transient, transient, `${label}: transient`);
    assertPublicSafe(error, label);
  }
  for (const [label, result, expected, transient] of CERTIFICATE_CASES) {
    if (expected === "installed") {
      assert.equal(classifyCertificate(result), undefined, label);
      continue;
    }
    const error = catchError(() => classifyCertificate(result));
    assert.equal(error.code, expected, label);
    assert.equal(error.transient, transient, `${label}: transient`);
    assertPublicSafe(error, label);
  }
});

Deno.test("public messages name the rejected field and the ACME error type, internal ones keep the output", () => {
  const rejected = catchError(() =>
    classifyAddSite(
      fail("siteUserPassword: This value is too short. It should have 8 characters or more.\n"),
      DOMAIN,
      USER,
    )
  );
  assert.equal(
    rejected.publicMessage,
    "CloudPanel rejected the site: siteUserPassword: This value is too short. It should have 8 characters or more.",
  );
  const orphan = catchError(() =>
    classifyAddSite(fail("siteUser: This value already exists.\n"), DOMAIN, USER)
  );
  assert.match(orphan.publicMessage, /orphan user/);
  const dns = catchError(() =>
    classifyCertificate(
      fail(
        "a.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: x",
      ),
    )
  );
  assert.match(dns.publicMessage, /\(ACME error: dns\)/);
  assert.match(dns.message, /exit 1: a\.com: Domain could not be validated/);
  // The internal message is trimmed and bounded.
  const long = catchError(() => classifyAddSite(fail(`  ${"x".repeat(10_000)}  \n\n`), DOMAIN, USER));
  assert.ok(long.message.length < 2_200, `${long.message.length}`);
  assert.match(long.message, /…\[truncated\]$/);
  // A password flag in the output is redacted even without a registered secret.
  const echoed = catchError(() =>
    classifyAddSite(fail("", `{"command":"site:add:static --siteUserPassword=Hunter2Hunter2"}`), DOMAIN, USER)
  );
  assert.ok(!echoed.message.includes("Hunter2Hunter2"), echoed.message);
});

Deno.test("a new site is created through the simulator, and found again on a retry", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const first = await panel.addStaticSite(DOMAIN, TIMEOUT);
    assert.deepEqual(first, { siteUser: USER, docRoot: `/home/${USER}/htdocs/example.com`, created: true });
    const again = await panel.addStaticSite(DOMAIN, TIMEOUT);
    assert.deepEqual(again, { ...first, created: false });
    const state = await readSimState(dir);
    assert.equal(state.sites["example.com"].siteUser, USER);
    assert.equal(state.sites["example.com"].docRoot, first.docRoot);
    await panel.installCertificate(DOMAIN, TIMEOUT);
    assert.equal((await readSimState(dir)).certificates["example.com"].type, "lets-encrypt");
  });
});

Deno.test("an orphan site user fails permanently with a clear message", async () => {
  await withState(async (dir) => {
    await addOrphanUser(dir, USER);
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const error = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.equal(error.code, "cloudpanel_site_user_exists");
    assert.equal(error.transient, false);
    assert.match(error.publicMessage, /an operator must remove that user/);
  });
});

Deno.test("a site made by hand with another site user is accepted with a warning", async () => {
  await withState(async (dir) => {
    await addExistingSite(dir, "example.com", "handmade");
    const { logger, lines } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const site = await panel.addStaticSite(DOMAIN, TIMEOUT);
    assert.equal(site.created, false);
    assert.ok(
      lines.some((l) => l.includes('"level":"warn"') && l.includes("another site user")),
      lines.join("\n"),
    );
  });
});

Deno.test("certificate validation failures are transient until DNS is ready", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await setFaults(dir, { certificateFailures: 2 });
    for (let i = 0; i < 2; i++) {
      const error = await rejection(panel.installCertificate(DOMAIN, TIMEOUT));
      assert.equal(error.code, "certificate_not_validated");
      assert.equal(error.transient, true);
    }
    await panel.installCertificate(DOMAIN, TIMEOUT);
    assert.equal((await readSimState(dir)).certificates["example.com"].type, "lets-encrypt");
  });
});

Deno.test("a timeout inside CloudPanel is transient, a system failure permanent", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "timeout" });
    const busy = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.deepEqual([busy.code, busy.transient], ["cloudpanel_busy", true]);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "system" });
    const failed = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.deepEqual([failed.code, failed.transient], ["cloudpanel_failed", false]);
    assertPublicSafe(failed, "system failure");
    assert.equal((await panel.addStaticSite(DOMAIN, TIMEOUT)).created, true);
  });
});

Deno.test("a command that does not answer in time is ssh_timeout", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { hang: 1, hangMs: 60_000 });
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const started = performance.now();
    const error = await rejection(panel.addStaticSite(DOMAIN, { timeoutMs: 1_000 }));
    assert.equal(error.code, "ssh_timeout");
    assert.equal(error.transient, true);
    assert.ok(performance.now() - started < 10_000, "the hung process was killed");
    assert.deepEqual((await readSimState(dir)).sites, {});
  });
});

Deno.test("an abort interrupts the command", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { hang: 1, hangMs: 60_000 });
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 300);
    const error = await rejection(
      panel.addStaticSite(DOMAIN, { timeoutMs: 30_000, signal: controller.signal }),
    );
    clearTimeout(timer);
    assert.equal(error.code, "interrupted");
  });
});

Deno.test("the password is registered with the redactor before the command is sent", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    let checked = false;
    const inner = localShell(dir);
    const shell: RemoteShell = {
      exec(command, options) {
        const password = /--siteUserPassword='([A-Za-z0-9]+)'/.exec(command)![1];
        assert.ok(password.length >= 24);
        // Even the bare value, outside any flag, is already redacted.
        assert.equal(logger.redact(`x ${password} y`), "x [REDACTED] y");
        checked = true;
        return inner.exec(command, options);
      },
      close: () => inner.close(),
    };
    await new CloudPanel(() => Promise.resolve(shell), logger).addStaticSite(DOMAIN, TIMEOUT);
    assert.ok(checked);
  });
});

Deno.test("the password is never in the call log nor in the client's errors", async () => {
  await withState(async (dir) => {
    const { logger, lines } = collectingLogger();
    const { shell, commands } = spyShell(dir);
    const panel = new CloudPanel(() => Promise.resolve(shell), logger);
    const passwordOf = (command: string) => /--siteUserPassword='([A-Za-z0-9]+)'/.exec(command)![1];

    // An uncaught exception: CloudPanel's Monolog record carries the whole command, password included.
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "exception" });
    const error = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    const failedPassword = passwordOf(commands[0]);
    assert.equal(error.code, "cloudpanel_failed");
    assert.match(error.message, /\[REDACTED\]/, "the output reached the error, redacted");

    // A success: the site record holds the password, as CloudPanel does.
    const site = await panel.addStaticSite(parseDomain("second.example.com"), TIMEOUT);
    const state = await readSimState(dir);
    const storedPassword = state.sites["second.example.com"].siteUserPassword;
    assert.equal(storedPassword, passwordOf(commands[1]));
    assert.equal(site.created, true);

    const calls = await Deno.readTextFile(`${dir}/calls.jsonl`);
    for (const password of [failedPassword, storedPassword]) {
      assert.ok(!calls.includes(password), "call log");
      assert.ok(!error.message.includes(password), "internal message");
      assert.ok(!error.publicMessage.includes(password), "public message");
      assert.ok(!String(error.stack).includes(password), "stack");
      assert.ok(!lines.join("\n").includes(password), "log lines");
    }
    assert.ok(lines.length > 0);
  });
});
