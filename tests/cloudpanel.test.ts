/**
 * The CloudPanel client: command building, the outcome table row by row, and the client driving the clpctl
 * simulator through a local shell and through a real sshd.
 */
import assert from "node:assert/strict";
import {
  addStaticSiteCommand,
  classifyAddSite,
  classifyCertificate,
  classifyDeleteSite,
  CloudPanel,
  deleteSiteCommand,
  installCertificateCommand,
} from "../supabase/functions/hosting-automator/cloudpanel.ts";
import {
  type Domain,
  parseDomain,
  type SiteUser,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import {
  CLOUDPANEL_OUTCOMES,
  type Finished,
  isFinished,
  outcomeOf,
  UNRECOGNISED_ATTEMPT_LIMIT,
  type Verb,
  VERBS,
} from "../supabase/functions/hosting-automator/cloudpanel_outcomes.ts";
import { ERROR_CODES, type ErrorCode, HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import type { ExecResult, RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";
import {
  addExistingSite,
  addOrphanUser,
  type CommonFaultKind,
  readSimState,
  setFaults,
  type SiteFailureKind,
} from "../dev/clpctl_sim.ts";
import { connectSsh } from "../supabase/functions/hosting-automator/ssh.ts";
import { DEV_BIN, localShell } from "./support/local_shell.ts";
import { generateClientKey, type Sshd, startSshd } from "./support/sshd.ts";

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
  assert.equal(deleteSiteCommand(DOMAIN), "clpctl site:delete --domainName='example.com' --force");
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
const fail = (stdout: string, stderr = "", exitCode = 1): ExecResult => ({ stdout, stderr, exitCode });
const killedBy = (signal: string, stdout = ""): ExecResult => ({
  stdout,
  stderr: "",
  exitCode: null,
  signal,
});
const silentExit = (exitCode: number): ExecResult => ({ stdout: "", stderr: "", exitCode });

const MONOLOG_NAMESPACE =
  `{"message":"Error thrown while running command \\"'lets-encrypt:renew:certificate'\\". Message: \\"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.\\n\\nDid you mean one of these?\\n    lets-encrypt\\n    lets-encrypt:install\\"","context":{"exception":{"class":"Symfony\\\\Component\\\\Console\\\\Exception\\\\NamespaceNotFoundException","message":"There are no commands defined in the \\"lets-encrypt:renew\\" namespace.","code":0,"file":"/home/clp/htdocs/app/files/vendor/symfony/console/Application.php:613"},"command":"'lets-encrypt:renew:certificate'"},"level":500,"level_name":"CRITICAL","channel":"console","datetime":"2025-12-19T09:07:28.985930+00:00","extra":{}}`;
/** An uncaught exception inside the command itself (not Symfony Console's): nobody knows what it means. */
const MONOLOG_RUNTIME =
  `{"message":"Error thrown while running command \\"site:add:static --domainName='example.com'\\". Message: \\"Unable to write the vhost configuration.\\"","context":{"exception":{"class":"RuntimeException","message":"Unable to write the vhost configuration.","code":0,"file":"/home/clp/htdocs/app/files/src/Command/Site/AddStaticCommand.php:112"}},"level":500,"level_name":"CRITICAL","channel":"console","datetime":"2025-12-19T09:07:28.985930+00:00","extra":{}}`;
const DATABASE_TIMEOUT =
  "An error has occurred, error message: Connection to the internal database timed out.";
const GATE_REFUSED = "clpctl-gate: refused: flag not allowed for site:add:static: --phpVersion\n";

/**
 * One answer of clpctl and what the table makes of it: the row that matches, then the step's result or the
 * error's code, whether it is retried, and its attempt limit.
 */
type Case = [
  label: string,
  result: ExecResult,
  row: string,
  expected: ErrorCode | Finished,
  transient?: boolean,
  attemptLimit?: number,
];

/**
 * Observed clpctl lines (docs/architecture.md §15.1), the faults of a busy or dying server, and what the site
 * step makes of them.
 */
const SITE_CASES: Case[] = [
  ["success (CE#351)", ok("Site example.com has been added.\n"), "site_added", "created"],
  ["domain exists", fail("domainName: This value already exists.\n"), "domain_exists", "exists"],
  [
    "domain and site user exist (our own site)",
    fail("domainName: This value already exists.\nsiteUser: This value already exists.\n"),
    "domain_exists",
    "exists",
  ],
  [
    "domain exists, on stderr, exit 0",
    {
      stdout: "",
      stderr: "domainName: This value already exists.",
      exitCode: 0,
    },
    "domain_exists",
    "exists",
  ],
  [
    "orphan site user",
    fail("siteUser: This value already exists.\n"),
    "site_user_orphan",
    "cloudpanel_site_user_exists",
    false,
  ],
  [
    "password too short (CE#284)",
    fail("siteUserPassword: This value is too short. It should have 8 characters or more.\n"),
    "site_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "site user too long (CE#277)",
    fail("siteUser: This value is too long. It should have 32 characters or less.\n"),
    "site_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "site user not valid (CE#471)",
    fail("Site User: This value is not valid.\n"),
    "site_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "domain not valid",
    fail("domainName: This value is not valid.\n"),
    "site_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "timeout (CE#390)",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/bin/find -P '/home/shiroko-musicbott' -type d -exec chmod '770' {} \\;" failed, error message: The process "/usr/bin/sudo /usr/bin/find -P '/home/shiroko-musicbott' -type d" exceeded the timeout of 90 seconds.`,
    ),
    "process_timeout",
    "cloudpanel_busy",
    true,
  ],
  [
    "no outbound access, cURL 28 (CE#449)",
    fail(
      "cURL error 28: Operation timed out after 10000 milliseconds with 68188 out of 308886 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://publicsuffix.org/list/public_suffix_list.dat",
    ),
    "process_timeout",
    "cloudpanel_busy",
    true,
  ],
  [
    "internal database timed out",
    fail(`${DATABASE_TIMEOUT}\n`),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "internal database timed out, on stderr with another status",
    fail("", `${DATABASE_TIMEOUT}\n`, 255),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "SQLite busy (plausible)",
    fail("An error has occurred, error message: SQLSTATE[HY000]: General error: 5 database is locked\n"),
    "database_locked",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "fork failed (plausible)",
    fail("", "/usr/bin/clpctl: fork: retry: Resource temporarily unavailable\n", 254),
    "database_locked",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "MySQL lock wait (plausible)",
    fail(
      "An error has occurred, error message: SQLSTATE[HY000]: General error: 1205 Lock wait timeout exceeded; try restarting transaction\n",
    ),
    "database_locked",
    "cloudpanel_unavailable",
    true,
  ],
  ["killed by SIGKILL, no output", killedBy("KILL"), "killed", "cloudpanel_unavailable", true],
  [
    "killed by SIGTERM after some output",
    killedBy("TERM", "Creating site\n"),
    "killed",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "exit 137 without output (the shell's report of SIGKILL)",
    silentExit(137),
    "killed",
    "cloudpanel_unavailable",
    true,
  ],
  ["exit 143 without output (SIGTERM)", silentExit(143), "killed", "cloudpanel_unavailable", true],
  [
    "exit 137 with bash's report of its killed child (a wrapper that does not exec)",
    fail(
      "",
      '/usr/bin/clpctl: line 12:  4877 Killed                  sudo /usr/bin/clpctlWrapper "$@"\n',
      137,
    ),
    "killed",
    "cloudpanel_unavailable",
    true,
  ],
  ["exit 137 with a bare Killed line", fail("", "Killed\n", 137), "killed", "cloudpanel_unavailable", true],
  [
    "a Killed line with exit 1 is not a kill",
    fail("Killed\n"),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  ["exit 130 without output (SIGINT)", silentExit(130), "killed", "cloudpanel_unavailable", true],
  ["exit 129 without output (SIGHUP)", silentExit(129), "killed", "cloudpanel_unavailable", true],
  [
    "exit 137 with output is the program's own status",
    fail("PHP Fatal error: Allowed memory size of 134217728 bytes exhausted\n", "", 137),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  ["a crash (SIGSEGV) is not a kill", killedBy("SEGV"), "site_unrecognised", "cloudpanel_failed", true, 3],
  ["the gate refused the command", fail("", GATE_REFUSED, 64), "gate_refused", "cloudpanel_rejected", false],
  [
    "clpctl not found",
    fail("", "bash: line 1: clpctl: command not found\n", 127),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "clpctl not executable",
    fail("", "bash: line 1: /usr/bin/clpctl: Permission denied\n", 126),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "the gate's clpctl is missing",
    fail("", "clpctl-gate: error: clpctl not found or not executable: /opt/clpctl\n", 78),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "sudo wants a password",
    fail("", "sudo: a password is required\n"),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "unknown command, Monolog JSON record (CE#720)",
    fail("", MONOLOG_NAMESPACE),
    "unknown_command_or_option",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "no DNS for the public suffix list, cURL 6 (CE#580)",
    fail(
      "cURL error 6: Could not resolve host: publicsuffix.org (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://publicsuffix.org/list/public_suffix_list.dat",
    ),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  [
    "useradd failure (CE#341)",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/sbin/useradd -m -d '/home/john' john" failed, error message: useradd: failed to reset the lastlog entry of UID 1001: No such file or directory`,
    ),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  [
    "an uncaught exception inside the command",
    fail("", MONOLOG_RUNTIME),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  [
    "unknown text, exit 2",
    fail("Something else went wrong.\n", "", 2),
    "site_unrecognised",
    "cloudpanel_failed",
    true,
    3,
  ],
  ["exit 1 without output", silentExit(1), "site_unrecognised", "cloudpanel_failed", true, 3],
  [
    "exit 0 without the success text",
    ok("Site has been created.\n"),
    "site_unconfirmed",
    "cloudpanel_failed",
    true,
    3,
  ],
  [
    "success text for another domain",
    ok("Site other.com has been added.\n"),
    "site_unconfirmed",
    "cloudpanel_failed",
    true,
    3,
  ],
  [
    "success text with a failure status",
    fail("Site example.com has been added.\n"),
    "site_unconfirmed",
    "cloudpanel_failed",
    true,
    3,
  ],
  ["no exit status, no signal (connection dropped)", ok("", null), "no_exit_status", "ssh_unreachable", true],
  [
    "no exit status after some output",
    ok("Creating site\n", null),
    "no_exit_status",
    "ssh_unreachable",
    true,
  ],
];

/**
 * Observed clpctl lines (docs/architecture.md §15.2), the faults of a busy or dying server, and what the
 * certificate step makes of them.
 */
const CERTIFICATE_CASES: Case[] = [
  ["exit 0, no text", ok(""), "certificate_installed", "installed"],
  [
    "exit 0, the simulator's text",
    ok("Certificate for example.com, www.example.com has been installed.\n"),
    "certificate_installed",
    "installed",
  ],
  [
    "unauthorized, both names (CE#810)",
    fail(
      "southmtka.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:unauthorized, error detail: 200.1.2.3: Invalid response from https://www.southmtka.com/.well-known/acme-challenge/2abc: 404\n" +
        "www.southmtka.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:unauthorized, error detail: 200.1.2.3: Invalid response from https://www.southmtka.com/.well-known/acme-challenge/2abc: 404\n",
    ),
    "acme_not_validated",
    "certificate_not_validated",
    true,
  ],
  [
    "connection (CE#372)",
    fail(
      "Domain could not be validated, error message: error type: urn:ietf:params:acme:error:connection, error detail: 157.0.101.58: Fetching https://www.abc.com/.well-known/acme-challenge/Tm4v: Timeout during connect (likely firewall problem)",
    ),
    "acme_not_validated",
    "certificate_not_validated",
    true,
  ],
  [
    "NXDOMAIN",
    fail(
      "example.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: DNS problem: NXDOMAIN looking up A for example.com - check that a DNS record exists for this domain",
    ),
    "acme_not_validated",
    "certificate_not_validated",
    true,
  ],
  [
    "account registration (CE#182)",
    fail(
      "An error occurred while registering an account, error message: cURL error 28: Operation timed out after 15001 milliseconds with 0 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://acme-v02.api.letsencrypt.org/acme/new-acct",
    ),
    "acme_account",
    "certificate_not_validated",
    true,
  ],
  [
    "validation failure with exit 0",
    ok(
      "example.com: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:dns, error detail: DNS problem",
    ),
    "acme_not_validated",
    "certificate_not_validated",
    true,
  ],
  [
    "timeout",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/bin/nginx -t" failed, error message: The process "/usr/bin/sudo /usr/bin/nginx -t" exceeded the timeout of 90 seconds.`,
    ),
    "process_timeout",
    "cloudpanel_busy",
    true,
  ],
  [
    "internal database timed out",
    fail(`${DATABASE_TIMEOUT}\n`),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "internal database timed out, exit 0",
    ok(`${DATABASE_TIMEOUT}\n`),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "SQLite busy (plausible)",
    fail("An error has occurred, error message: SQLSTATE[HY000]: General error: 5 database is locked\n"),
    "database_locked",
    "cloudpanel_unavailable",
    true,
  ],
  ["killed by SIGKILL, no output", killedBy("KILL"), "killed", "cloudpanel_unavailable", true],
  ["exit 137 without output", silentExit(137), "killed", "cloudpanel_unavailable", true],
  ["the gate refused the command", fail("", GATE_REFUSED, 64), "gate_refused", "cloudpanel_rejected", false],
  [
    "clpctl not found",
    fail("", "bash: line 1: clpctl: command not found\n", 127),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "unknown command, Monolog JSON record (CE#688)",
    fail("", MONOLOG_NAMESPACE),
    "unknown_command_or_option",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "no site",
    fail('Site "example.com" does not exist.\n'),
    "certificate_site_missing",
    "cloudpanel_rejected",
    false,
  ],
  [
    "blank domain",
    fail("domainName: This value should not be blank.\n"),
    "certificate_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "exit 0 with a validation line",
    ok("domainName: This value is not valid.\n"),
    "certificate_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "exit 0 with an error",
    ok("An error has occurred, error message: something\n"),
    "certificate_unrecognised",
    "certificate_failed",
    true,
    3,
  ],
  [
    "an uncaught exception inside the command",
    fail("", MONOLOG_RUNTIME),
    "certificate_unrecognised",
    "certificate_failed",
    true,
    3,
  ],
  [
    "unknown text, exit 1",
    fail("Something else went wrong.\n"),
    "certificate_unrecognised",
    "certificate_failed",
    true,
    3,
  ],
  [
    "exit 137 with output",
    fail("PHP Fatal error: Allowed memory size of 134217728 bytes exhausted\n", "", 137),
    "certificate_unrecognised",
    "certificate_failed",
    true,
    3,
  ],
  ["no exit status, no signal", ok("", null), "no_exit_status", "ssh_unreachable", true],
];

/**
 * What the removal step makes of clpctl's answers. No source shows site:delete's success text nor its text for
 * a domain without a site: the success is exit 0 without a failure marker, the missing site is assumed to read
 * as the certificate command's does.
 */
const DELETE_CASES: Case[] = [
  ["exit 0, no text", ok(""), "site_deleted", "deleted"],
  ["exit 0, the simulator's text", ok("Site example.com has been deleted.\n"), "site_deleted", "deleted"],
  [
    "exit 0 after the confirmation prompt's text",
    ok("Confirm your action by entering yes: \nSite example.com has been deleted.\n"),
    "site_deleted",
    "deleted",
  ],
  [
    "exit 0 with the missing-site line: the site is not there either way",
    ok('Site "example.com" does not exist.\n'),
    "site_deleted",
    "deleted",
  ],
  ["no site (assumed text)", fail('Site "example.com" does not exist.\n'), "delete_site_absent", "absent"],
  ["no site, bare domain", fail("Site example.com does not exist.\n"), "delete_site_absent", "absent"],
  [
    "no site, on stderr, exit 2",
    fail("", "Site example.com does not exist\n", 2),
    "delete_site_absent",
    "absent",
  ],
  [
    "domain not valid",
    fail("domainName: This value is not valid.\n"),
    "delete_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "exit 0 with a validation line",
    ok("domainName: This value should not be blank.\n"),
    "delete_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "internal database timed out",
    fail(`${DATABASE_TIMEOUT}\n`),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "internal database timed out, exit 0",
    ok(`${DATABASE_TIMEOUT}\n`),
    "internal_database_timeout",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "SQLite busy (plausible)",
    fail("An error has occurred, error message: SQLSTATE[HY000]: General error: 5 database is locked\n"),
    "database_locked",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "timeout removing the site user",
    fail(
      `An error has occurred, error message: Command " : /usr/bin/sudo /usr/sbin/userdel -r 'example-user'" failed, error message: The process "/usr/bin/sudo /usr/sbin/userdel -r 'example-user'" exceeded the timeout of 90 seconds.`,
    ),
    "process_timeout",
    "cloudpanel_busy",
    true,
  ],
  ["killed by SIGKILL, no output", killedBy("KILL"), "killed", "cloudpanel_unavailable", true],
  ["exit 137 without output", silentExit(137), "killed", "cloudpanel_unavailable", true],
  [
    "exit 143 with a bare Terminated line",
    fail("", "Terminated\n", 143),
    "killed",
    "cloudpanel_unavailable",
    true,
  ],
  [
    "the gate refused the command",
    fail("", "clpctl-gate: refused: --force is required for site:delete\n", 64),
    "gate_refused",
    "cloudpanel_rejected",
    false,
  ],
  [
    "clpctl not found",
    fail("", "bash: line 1: clpctl: command not found\n", 127),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "sudo refuses",
    fail("", "sudo: sorry, you are not allowed to run /usr/bin/clpctl\n"),
    "not_runnable",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "unknown command or option, Monolog JSON record",
    fail("", MONOLOG_NAMESPACE),
    "unknown_command_or_option",
    "cloudpanel_misconfigured",
    false,
  ],
  [
    "the confirmation prompt was not answered",
    fail("Confirm your action by entering yes: \n", "Aborted.\n"),
    "delete_unrecognised",
    "cloudpanel_delete_failed",
    true,
    3,
  ],
  [
    "exit 0 with an error",
    ok("An error has occurred, error message: something\n"),
    "delete_unrecognised",
    "cloudpanel_delete_failed",
    true,
    3,
  ],
  [
    "an uncaught exception inside the command",
    fail("", MONOLOG_RUNTIME),
    "delete_unrecognised",
    "cloudpanel_delete_failed",
    true,
    3,
  ],
  [
    "unknown text, exit 1",
    fail("Something else went wrong.\n"),
    "delete_unrecognised",
    "cloudpanel_delete_failed",
    true,
    3,
  ],
  ["exit 1 without output", silentExit(1), "delete_unrecognised", "cloudpanel_delete_failed", true, 3],
  [
    "a crash (SIGSEGV) is not a kill",
    killedBy("SEGV"),
    "delete_unrecognised",
    "cloudpanel_delete_failed",
    true,
    3,
  ],
  ["no exit status, no signal", ok("", null), "no_exit_status", "ssh_unreachable", true],
];

/** Public messages: no command lines, paths, hosts, addresses or values. */
function assertPublicSafe(message: string, label: string): void {
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
      "phpVersion",
      USER,
    ]
  ) {
    assert.ok(!message.includes(bad), `${label}: public message "${message}" has "${bad}"`);
  }
}

function checkCase(verb: Verb, [label, result, row, expected, transient, attemptLimit]: Case): void {
  assert.equal(outcomeOf(verb, result, DOMAIN).id, row, `${label}: row`);
  if (expected === "created" || expected === "exists") {
    assert.deepEqual(
      classifyAddSite(result, DOMAIN, USER),
      { siteUser: USER, docRoot: `/home/${USER}/htdocs/example.com`, created: expected === "created" },
      label,
    );
    return;
  }
  if (expected === "installed") {
    assert.equal(classifyCertificate(result, DOMAIN), undefined, label);
    return;
  }
  if (expected === "deleted" || expected === "absent") {
    assert.deepEqual(classifyDeleteSite(result, DOMAIN), { deleted: expected === "deleted" }, label);
    return;
  }
  const error = catchError(() =>
    verb === "site:add:static"
      ? classifyAddSite(result, DOMAIN, USER)
      : verb === "site:delete"
      ? classifyDeleteSite(result, DOMAIN)
      : classifyCertificate(result, DOMAIN)
  );
  assert.equal(error.code, expected, label);
  assert.equal(error.transient, transient, `${label}: transient`);
  assert.equal(error.attemptLimit, attemptLimit, `${label}: attempt limit`);
  assert.ok(error.message.includes(`(${row})`), `${label}: the internal message names the row`);
  assertPublicSafe(error.publicMessage, label);
}

Deno.test("classification of each reference message and fault, row by row", () => {
  for (const c of SITE_CASES) checkCase("site:add:static", c);
  for (const c of CERTIFICATE_CASES) checkCase("lets-encrypt:install:certificate", c);
  for (const c of DELETE_CASES) checkCase("site:delete", c);
});

Deno.test("every row of the outcome table is exercised by a case above, for each of its commands", () => {
  const seen = new Set([
    ...SITE_CASES.map(([, , row]) => `site:add:static ${row}`),
    ...CERTIFICATE_CASES.map(([, , row]) => `lets-encrypt:install:certificate ${row}`),
    ...DELETE_CASES.map(([, , row]) => `site:delete ${row}`),
  ]);
  for (const row of CLOUDPANEL_OUTCOMES) {
    for (const verb of row.verbs) assert.ok(seen.has(`${verb} ${row.id}`), `no case for ${verb} ${row.id}`);
  }
});

Deno.test("the outcome table is consistent with the error codes", () => {
  const ids = CLOUDPANEL_OUTCOMES.map((row) => row.id);
  assert.equal(new Set(ids).size, ids.length, "row ids are unique");
  for (const row of CLOUDPANEL_OUTCOMES) {
    assert.ok(row.meaning.length > 0 && row.basis.length > 0, `${row.id}: meaning and basis`);
    if (isFinished(row.result)) {
      assert.equal(row.transient, undefined, `${row.id}: a finished step is not retried`);
      assert.equal(row.attemptLimit, undefined, row.id);
      continue;
    }
    // Every code in the table is a known code, with the same retry policy as its entry.
    assert.ok(row.result in ERROR_CODES, `${row.id}: ${row.result} is not in ERROR_CODES`);
    assert.equal(row.transient, ERROR_CODES[row.result].transient, `${row.id}: transient as its code`);
    if (row.attemptLimit !== undefined) {
      assert.ok(row.transient, `${row.id}: an attempt limit only on a retried row`);
      assert.ok(Number.isInteger(row.attemptLimit) && row.attemptLimit >= 2, row.id);
    }
    if (typeof row.publicMessage === "string") assertPublicSafe(row.publicMessage, row.id);
    assertPublicSafe(ERROR_CODES[row.result].text, `${row.result}'s text`);
  }
  // Each command's last row matches anything, so every answer has a row.
  for (const verb of VERBS) {
    const last = CLOUDPANEL_OUTCOMES.filter((row) => row.verbs.includes(verb)).at(-1)!;
    assert.deepEqual(last.when, {}, verb);
    assert.equal(last.attemptLimit, UNRECOGNISED_ATTEMPT_LIMIT, `${verb}: unrecognised answers are limited`);
  }
});

Deno.test("the attempt limit travels on the error and survives the client's redaction", async () => {
  const limited = new HostingError("cloudpanel_failed", "x", { attemptLimit: 3 });
  assert.equal(limited.attemptLimit, 3);
  // Meaningless on a permanent failure: not kept.
  assert.equal(new HostingError("cloudpanel_rejected", "x", { attemptLimit: 3 }).attemptLimit, undefined);
  assert.throws(() => new HostingError("cloudpanel_failed", "x", { attemptLimit: 0 }), RangeError);
  // Through the client: the error it rethrows (redacted) keeps the limit.
  const { logger, lines } = collectingLogger();
  const shell: RemoteShell = {
    exec: () => Promise.resolve(fail("useradd: failed to reset the lastlog entry\n")),
    close: () => Promise.resolve(),
  };
  const error = await rejection(
    new CloudPanel(() => Promise.resolve(shell), logger).addStaticSite(DOMAIN, TIMEOUT),
  );
  assert.deepEqual([error.code, error.transient, error.attemptLimit], ["cloudpanel_failed", true, 3]);
  assert.ok(lines.some((line) => line.includes('"attempt_limit":3')), lines.join("\n"));
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
      DOMAIN,
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
  // How the command ended is in the internal message: a signal, or neither status nor signal.
  assert.match(
    catchError(() => classifyAddSite(killedBy("KILL"), DOMAIN, USER)).message,
    /signal KILL: \(no output\)$/,
  );
  assert.match(
    catchError(() => classifyAddSite(ok("", null), DOMAIN, USER)).message,
    /no exit status: \(no output\)$/,
  );
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

Deno.test("a site is deleted through the simulator, and a second removal finds it absent, which is done too", async () => {
  await withState(async (dir) => {
    const { logger, lines } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await panel.installCertificate(DOMAIN, TIMEOUT);
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: true });
    const state = await readSimState(dir);
    assert.deepEqual([state.sites, state.users, state.certificates], [{}, {}, {}]);
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: false });
    assert.deepEqual(
      (await readSimState(dir)).calls.filter((c) => c.verb === "site:delete").map((c) => c.outcome),
      ["deleted", "no_site"],
    );
    const infos = lines.map((l) => JSON.parse(l)).filter((l) => l.level === "info").map((l) =>
      l.msg ?? l.message
    );
    assert.ok(infos.includes("cloudpanel site deleted"), lines.join("\n"));
    assert.ok(infos.includes("cloudpanel site already absent"), lines.join("\n"));
  });
});

Deno.test("a removal CloudPanel refuses fails permanently and names the field; an unrecognised one is retried a few times", async () => {
  await withState(async (dir) => {
    const { logger, lines } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    // The client never sends an invalid domain: this one comes as a Domain only to show the validator's answer.
    const refused = await rejection(panel.deleteSite("exa_mple.com" as Domain, TIMEOUT));
    assert.deepEqual([refused.code, refused.transient, refused.attemptLimit], [
      "cloudpanel_rejected",
      false,
      undefined,
    ]);
    assert.equal(
      refused.publicMessage,
      "CloudPanel rejected the site removal: domainName: This value is not valid.",
    );
    assert.match(refused.message, /^clpctl site:delete \(delete_refused\): exit 1: /);

    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "unrecognised" });
    const failed = await rejection(panel.deleteSite(DOMAIN, TIMEOUT));
    assert.deepEqual([failed.code, failed.transient, failed.attemptLimit], [
      "cloudpanel_delete_failed",
      true,
      UNRECOGNISED_ATTEMPT_LIMIT,
    ]);
    assertPublicSafe(failed.publicMessage, "unrecognised removal");
    assert.ok(lines.some((l) => l.includes("cloudpanel site removal step failed")), lines.join("\n"));
    assert.ok((await readSimState(dir)).sites["example.com"], "nothing was deleted");
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: true });
  });
});

Deno.test("a removal that times out for the client but finishes on the server: the retry finds the site absent", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "hang", hangMs: 60_000 });
    const error = await rejection(panel.deleteSite(DOMAIN, { timeoutMs: 2_000 }));
    assert.deepEqual([error.code, error.transient], ["ssh_timeout", true]);
    assert.deepEqual((await readSimState(dir)).sites, {}, "the server did the work");
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: false });
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

Deno.test("a timeout inside CloudPanel is retried, an unrecognised system failure only a few times", async () => {
  await withState(async (dir) => {
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "timeout" });
    const busy = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.deepEqual([busy.code, busy.transient], ["cloudpanel_busy", true]);
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "system" });
    const failed = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.deepEqual([failed.code, failed.transient, failed.attemptLimit], ["cloudpanel_failed", true, 3]);
    assertPublicSafe(failed.publicMessage, "system failure");
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

Deno.test("a server that times out for the client and finishes anyway: the retry finds the site done", async () => {
  await withState(async (dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "hang", hangMs: 60_000 });
    const { logger } = collectingLogger();
    const panel = new CloudPanel(() => Promise.resolve(localShell(dir)), logger);
    const error = await rejection(panel.addStaticSite(DOMAIN, { timeoutMs: 2_000 }));
    assert.deepEqual([error.code, error.transient], ["ssh_timeout", true]);
    assert.ok((await readSimState(dir)).sites["example.com"], "the server did the work");
    assert.deepEqual(await panel.addStaticSite(DOMAIN, TIMEOUT), {
      siteUser: USER,
      docRoot: `/home/${USER}/htdocs/example.com`,
      created: false,
    });
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

// ---------------------------------------------------------------------------------------------------------
// Through a real sshd: the clpctl simulator's faults as the SSH transport reports them, classified by the table.

/** CloudPanel over a real SSH connection to an sshd on loopback that runs the clpctl simulator on `dir`. */
async function withSshPanel(
  fn: (panel: CloudPanel, dir: string, shell: RemoteShell, sshd: Sshd) => Promise<void>,
): Promise<void> {
  await withState(async (dir) => {
    const key = await generateClientKey("ecdsa", "pem");
    const sshd = await startSshd({
      authorizedKey: key.publicKeyLine,
      env: { PATH: `${DEV_BIN}:/usr/local/bin:/usr/bin:/bin`, CLPCTL_SIM_STATE: dir },
    });
    try {
      const shell = await connectSsh({
        host: sshd.host,
        port: sshd.port,
        user: sshd.user,
        privateKey: key.privateKey,
        hostKey: sshd.hostKeyFingerprint,
        connectTimeoutMs: 10_000,
      });
      try {
        const { logger } = collectingLogger();
        await fn(new CloudPanel(() => Promise.resolve(shell), logger), dir, shell, sshd);
      } finally {
        await shell.close();
      }
    } finally {
      await sshd.stop();
    }
  });
}

Deno.test("over SSH: a killed clpctl, exit 137 and the internal database timeout are retried; nothing was created", async () => {
  await withSshPanel(async (panel, dir, shell) => {
    // The simulator kills itself with SIGKILL: sshd reports exit-signal KILL, no output.
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "killed" });
    const raw = await shell.exec(addStaticSiteCommand(DOMAIN, USER, "Sup3rSecretPassw0rdValue1"), TIMEOUT);
    assert.deepEqual(raw, { stdout: "", stderr: "", exitCode: null, signal: "KILL" });

    const cases: Array<[SiteFailureKind, ErrorCode, string]> = [
      ["killed", "cloudpanel_unavailable", "signal KILL"],
      ["exit137", "cloudpanel_unavailable", "exit 137"],
      ["database", "cloudpanel_unavailable", "Connection to the internal database timed out"],
      ["locked", "cloudpanel_unavailable", "database is locked"],
    ];
    for (const [kind, code, detail] of cases) {
      await setFaults(dir, { siteFailures: 1, siteFailureKind: kind });
      const error = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
      assert.deepEqual([error.code, error.transient, error.attemptLimit], [code, true, undefined], kind);
      assert.ok(error.message.includes(detail), `${kind}: ${error.message}`);
    }
    assert.deepEqual((await readSimState(dir)).sites, {});
    // The retry, once the server is well again, creates the site.
    assert.equal((await panel.addStaticSite(DOMAIN, TIMEOUT)).created, true);

    // The certificate command meets the same faults the same way.
    for (const kind of ["killed", "exit137", "database"] as const) {
      await setFaults(dir, { certificateFailures: 1, certificateFailureKind: kind });
      const error = await rejection(panel.installCertificate(DOMAIN, TIMEOUT));
      assert.deepEqual([error.code, error.transient, error.attemptLimit], [
        "cloudpanel_unavailable",
        true,
        undefined,
      ]);
    }
    await panel.installCertificate(DOMAIN, TIMEOUT);
    assert.equal((await readSimState(dir)).certificates["example.com"].type, "lets-encrypt");
  });
});

Deno.test("over SSH: a command killed after it did its work is retried, and the retry finds the site done", async () => {
  await withSshPanel(async (panel, dir) => {
    await setFaults(dir, { siteFailures: 1, siteFailureKind: "killed", siteFailureAfterWork: true });
    const error = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    assert.deepEqual([error.code, error.transient], ["cloudpanel_unavailable", true]);
    assert.ok((await readSimState(dir)).sites["example.com"], "the work was done before the process died");
    const again = await panel.addStaticSite(DOMAIN, TIMEOUT);
    assert.deepEqual(again, { siteUser: USER, docRoot: `/home/${USER}/htdocs/example.com`, created: false });
  });
});

Deno.test("over SSH: an unrecognised failure is retried with an attempt limit, a refused value not at all", async () => {
  await withSshPanel(async (panel, dir, shell) => {
    for (const kind of ["unrecognised", "system"] as const) {
      await setFaults(dir, { siteFailures: 1, siteFailureKind: kind });
      const error = await rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
      assert.deepEqual(
        [error.code, error.transient, error.attemptLimit],
        ["cloudpanel_failed", true, UNRECOGNISED_ATTEMPT_LIMIT],
        kind,
      );
      assert.match(error.message, /\(site_unrecognised\): exit 1: /);
    }
    await setFaults(dir, {});
    // A password CloudPanel refuses (the client never makes one this short): its validation line.
    const refused = await shell.exec(addStaticSiteCommand(DOMAIN, USER, "short"), TIMEOUT);
    const error = catchError(() => classifyAddSite(refused, DOMAIN, USER));
    assert.deepEqual([error.code, error.transient, error.attemptLimit], [
      "cloudpanel_rejected",
      false,
      undefined,
    ]);
    assert.equal(
      error.publicMessage,
      "CloudPanel rejected the site: siteUserPassword: This value is too short. It should have 8 characters or more.",
    );
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await setFaults(dir, { certificateFailures: 1, certificateFailureKind: "unrecognised" });
    const certificate = await rejection(panel.installCertificate(DOMAIN, TIMEOUT));
    assert.deepEqual(
      [certificate.code, certificate.transient, certificate.attemptLimit],
      ["certificate_failed", true, UNRECOGNISED_ATTEMPT_LIMIT],
    );
  });
});

Deno.test("over SSH: a site is deleted, then a second removal finds it absent (done); faults are retried", async () => {
  await withSshPanel(async (panel, dir, shell) => {
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    // What the server answers to the command line the client sends.
    const raw = await shell.exec(deleteSiteCommand(DOMAIN), TIMEOUT);
    assert.deepEqual(raw, { stdout: "Site example.com has been deleted.\n", stderr: "", exitCode: 0 });
    assert.deepEqual((await readSimState(dir)).sites, {});
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: false });

    await panel.addStaticSite(DOMAIN, TIMEOUT);
    const cases: Array<[CommonFaultKind, ErrorCode, string]> = [
      ["killed", "cloudpanel_unavailable", "signal KILL"],
      ["exit137", "cloudpanel_unavailable", "exit 137"],
      ["database", "cloudpanel_unavailable", "Connection to the internal database timed out"],
      ["locked", "cloudpanel_unavailable", "database is locked"],
      ["timeout", "cloudpanel_busy", "exceeded the timeout of 90 seconds"],
    ];
    for (const [kind, code, detail] of cases) {
      await setFaults(dir, { deleteFailures: 1, deleteFailureKind: kind });
      const error = await rejection(panel.deleteSite(DOMAIN, TIMEOUT));
      assert.deepEqual([error.code, error.transient, error.attemptLimit], [code, true, undefined], kind);
      assert.ok(error.message.includes(detail), `${kind}: ${error.message}`);
    }
    assert.ok((await readSimState(dir)).sites["example.com"], "no fault before the work deleted anything");
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: true });

    // Killed after its work: the retry finds no site, and that counts as done.
    await panel.addStaticSite(DOMAIN, TIMEOUT);
    await setFaults(dir, { deleteFailures: 1, deleteFailureKind: "killed", deleteFailureAfterWork: true });
    const killed = await rejection(panel.deleteSite(DOMAIN, TIMEOUT));
    assert.deepEqual([killed.code, killed.transient], ["cloudpanel_unavailable", true]);
    assert.deepEqual((await readSimState(dir)).sites, {}, "the work was done before the process died");
    assert.deepEqual(await panel.deleteSite(DOMAIN, TIMEOUT), { deleted: false });
  });
});

Deno.test("over SSH: a connection dropped mid-command is ssh_unreachable, not a CloudPanel failure", async () => {
  await withSshPanel(async (panel, dir, _shell, sshd) => {
    await setFaults(dir, { hang: 1, hangMs: 30_000 });
    const running = rejection(panel.addStaticSite(DOMAIN, TIMEOUT));
    // Wait until the simulator has taken its hang: the command is running, past the login shell's startup.
    const deadline = Date.now() + TIMEOUT.timeoutMs;
    while ((await readSimState(dir)).faults.hang !== 0) {
      assert.ok(Date.now() < deadline, "the command never started");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await sshd.stop(); // the server goes away with the command
    const error = await running;
    assert.deepEqual([error.code, error.transient], ["ssh_unreachable", true]);
  });
});
