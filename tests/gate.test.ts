/**
 * The forced-command gate (deploy/cloudpanel/clpctl-gate) behind a real OpenSSH sshd: the key may only run
 * the gate (`restrict,command="…"`), the client's command line reaches it as $SSH_ORIGINAL_COMMAND, and the
 * gate runs the clpctl simulator (CLPCTL_GATE_BIN) when it allows the command.
 *
 * There is no syslog daemon here, so a stand-in `logger` first on sshd's PATH appends its arguments to a file:
 * every decision must show up there, and no password may.
 *
 * The last test runs the whole product through the gate and needs the harness (`deno task test`); the others
 * run alone: `deno test -A tests/gate.test.ts --filter <name>`.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { readSimState, setFaults } from "../dev/clpctl_sim.ts";
import {
  addStaticSiteCommand,
  deleteSiteCommand,
  installCertificateCommand,
} from "../supabase/functions/hosting-automator/cloudpanel.ts";
import {
  type Domain,
  generatePassword,
  type SiteUser,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import type { ExecResult, RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";
import { connectSsh } from "../supabase/functions/hosting-automator/ssh.ts";
import { registerSecret } from "./support/env.ts";
import { DEV_BIN } from "./support/local_shell.ts";
import { type Stack, startStack } from "./support/stack.ts";
import { generateClientKey, type Sshd, startSshd } from "./support/sshd.ts";

const GATE = fileURLToPath(new URL("../deploy/cloudpanel/clpctl-gate", import.meta.url));
const CLPCTL_SIM = `${DEV_BIN}/clpctl`;
const TIMEOUT = { timeoutMs: 20_000 };
const REFUSED_LINE = /^clpctl-gate: refused: [^\n]+\n$/;

const DOMAIN = "example.com" as Domain;
const USER = siteUserFor(DOMAIN);

/** A site password, registered for the suite's final secret scan when running under the harness. */
function password(length = 32): string {
  const value = generatePassword(length);
  if (Deno.env.get("HA_ARTIFACTS")) registerSecret(value);
  return value;
}

/** A directory with the stand-in `logger` (and optionally other commands), and the file it writes. */
async function fakeBin(extra: Record<string, string> = {}): Promise<{ dir: string; syslog: string }> {
  const dir = await Deno.makeTempDir({ prefix: "clpctl-gate-bin-" });
  const syslog = `${dir}/syslog.log`;
  await Deno.writeTextFile(syslog, "");
  const scripts: Record<string, string> = {
    // One line per call: the arguments as logger received them.
    logger: `#!/bin/sh\nprintf '%s\\n' "$*" >> '${syslog}'\n`,
    // Prints the argv it was given, one per line: what the gate executed, exactly.
    "argv-recorder": `#!/bin/sh\nprintf '%s\\n' "$@"\n`,
    ...extra,
  };
  for (const [name, text] of Object.entries(scripts)) {
    await Deno.writeTextFile(`${dir}/${name}`, text, { mode: 0o755 });
  }
  return { dir, syslog };
}

async function readLines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path)).split("\n").filter((line) => line.length > 0);
}

interface GateServer {
  sshd: Sshd;
  shell: RemoteShell;
  state: string;
  bin: string;
  run(command: string): Promise<ExecResult>;
  syslog(): Promise<string[]>;
  close(): Promise<void>;
}

/** An sshd whose only key is forced through the gate, and a connection to it. `clpctl` defaults to the sim. */
async function openGate(options: { clpctl?: "sim" | "argv-recorder" } = {}): Promise<GateServer> {
  const { dir: bin, syslog } = await fakeBin();
  const state = await Deno.makeTempDir({ prefix: "clpctl-gate-state-" });
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({
    authorizedKey: key.publicKeyLine,
    forcedCommand: GATE,
    env: {
      PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`,
      CLPCTL_GATE_BIN: options.clpctl === "argv-recorder" ? `${bin}/argv-recorder` : CLPCTL_SIM,
      CLPCTL_SIM_STATE: state,
    },
  });
  const shell = await connectSsh({
    host: sshd.host,
    port: sshd.port,
    user: sshd.user,
    privateKey: key.privateKey,
    hostKey: sshd.hostKeyFingerprint,
    connectTimeoutMs: 10_000,
  }).catch(async (error) => {
    await sshd.stop();
    throw error;
  });
  return {
    sshd,
    shell,
    state,
    bin,
    run: (command) => shell.exec(command, TIMEOUT),
    syslog: () => readLines(syslog),
    async close() {
      await shell.close();
      await sshd.stop();
      await Deno.remove(bin, { recursive: true });
      await Deno.remove(state, { recursive: true });
    },
  };
}

async function withGate(
  options: { clpctl?: "sim" | "argv-recorder" },
  body: (gate: GateServer) => Promise<void>,
): Promise<void> {
  const gate = await openGate(options);
  try {
    await body(gate);
  } finally {
    await gate.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Allowed: exactly what the function sends.

Deno.test("the function's site and certificate commands pass the gate and reach clpctl with the right values", async () => {
  const pw = password();
  await withGate({}, async (gate) => {
    const added = await gate.run(addStaticSiteCommand(DOMAIN, USER, pw));
    assert.equal(added.exitCode, 0, added.stderr);
    assert.equal(added.stdout.trim(), "Site example.com has been added.");
    const certificate = await gate.run(installCertificateCommand(DOMAIN));
    assert.equal(certificate.exitCode, 0, certificate.stderr);

    const state = await readSimState(gate.state);
    assert.equal(state.sites[DOMAIN].siteUser, USER);
    assert.equal(state.sites[DOMAIN].siteUserPassword, pw, "the password arrives unquoted and whole");
    assert.equal(state.certificates[DOMAIN].type, "lets-encrypt");
    assert.deepEqual(
      state.calls.map((c) => [c.verb, c.domainName, c.exitCode]),
      [["site:add:static", DOMAIN, 0], ["lets-encrypt:install:certificate", DOMAIN, 0]],
    );

    const log = await gate.syslog();
    assert.deepEqual(log, [
      `-t clpctl-gate -p auth.notice -- allowed: site:add:static domain=${DOMAIN} siteUser=${USER} from=127.0.0.1`,
      `-t clpctl-gate -p auth.notice -- allowed: lets-encrypt:install:certificate domain=${DOMAIN} from=127.0.0.1`,
    ]);
  });
});

Deno.test("the function's removal command passes the gate: the site is deleted, and a second removal finds none", async () => {
  await withGate({}, async (gate) => {
    assert.equal((await gate.run(addStaticSiteCommand(DOMAIN, USER, password()))).exitCode, 0);
    const deleted = await gate.run(deleteSiteCommand(DOMAIN));
    assert.deepEqual(deleted, { stdout: "Site example.com has been deleted.\n", stderr: "", exitCode: 0 });
    const state = await readSimState(gate.state);
    assert.deepEqual([state.sites, state.users, state.certificates], [{}, {}, {}]);
    // clpctl's own answer for a missing site comes back unchanged: the gate does not look at the panel.
    const again = await gate.run(deleteSiteCommand(DOMAIN));
    assert.deepEqual(again, { stdout: 'Site "example.com" does not exist.\n', stderr: "", exitCode: 1 });
    // A killed clpctl is reported as such for this command too.
    await setFaults(gate.state, { deleteFailures: 1, deleteFailureKind: "killed" });
    assert.equal((await gate.run(deleteSiteCommand(DOMAIN))).signal, "KILL");
    assert.deepEqual(
      (await readSimState(gate.state)).calls.map((c) => [c.verb, c.domainName, c.outcome]),
      [
        ["site:add:static", DOMAIN, "added"],
        ["site:delete", DOMAIN, "deleted"],
        ["site:delete", DOMAIN, "no_site"],
        ["site:delete", DOMAIN, "failed_killed"],
      ],
    );
    const log = await gate.syslog();
    assert.deepEqual(log.slice(1), [
      `-t clpctl-gate -p auth.notice -- allowed: site:delete domain=${DOMAIN} from=127.0.0.1`,
      `-t clpctl-gate -p auth.notice -- allowed: site:delete domain=${DOMAIN} from=127.0.0.1`,
      `-t clpctl-gate -p auth.notice -- allowed: site:delete domain=${DOMAIN} from=127.0.0.1`,
    ]);
  });
});

Deno.test("clpctl's own answer and exit status come back through the gate unchanged (site already exists)", async () => {
  const pw = password();
  await withGate({}, async (gate) => {
    assert.equal((await gate.run(addStaticSiteCommand(DOMAIN, USER, pw))).exitCode, 0);
    const again = await gate.run(addStaticSiteCommand(DOMAIN, USER, password()));
    assert.equal(again.exitCode, 1);
    assert.match(`${again.stdout}${again.stderr}`, /domainName: This value already exists\./);
    assert.doesNotMatch(again.stderr, /clpctl-gate/);
  });
});

Deno.test("a clpctl killed by a signal, or exiting 137, is reported as such through the gate", async () => {
  await withGate({}, async (gate) => {
    // The gate execs clpctl, so sshd's child is clpctl itself: its death by SIGKILL arrives as exit-signal.
    await setFaults(gate.state, { siteFailures: 1, siteFailureKind: "killed" });
    const killed = await gate.run(addStaticSiteCommand(DOMAIN, USER, password()));
    assert.deepEqual(killed, { stdout: "", stderr: "", exitCode: null, signal: "KILL" });
    await setFaults(gate.state, { siteFailures: 1, siteFailureKind: "exit137" });
    const exited = await gate.run(addStaticSiteCommand(DOMAIN, USER, password()));
    assert.deepEqual(exited, { stdout: "", stderr: "", exitCode: 137 });
    // And after the work: the retry through the gate finds the site.
    await setFaults(gate.state, { siteFailures: 1, siteFailureKind: "killed", siteFailureAfterWork: true });
    assert.equal((await gate.run(addStaticSiteCommand(DOMAIN, USER, password()))).signal, "KILL");
    const again = await gate.run(addStaticSiteCommand(DOMAIN, USER, password()));
    assert.match(again.stdout, /^domainName: This value already exists\.$/m);
    await setFaults(gate.state, { certificateFailures: 1, certificateFailureKind: "killed" });
    assert.equal((await gate.run(installCertificateCommand(DOMAIN))).signal, "KILL");
  });
});

Deno.test("the gate executes clpctl with one argument per flag, unquoted, in a fixed order, for bare, reordered and boundary values", async () => {
  const pw24 = password(24);
  const pw128 = password(128);
  // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 characters, every label at most 63.
  const longest = `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}` as Domain;
  const user32 = `u${"x".repeat(31)}` as SiteUser;
  const cases: Array<[string, string[]]> = [
    [addStaticSiteCommand(longest, user32, pw128), [
      "site:add:static",
      `--domainName=${longest}`,
      `--siteUser=${user32}`,
      `--siteUserPassword=${pw128}`,
    ]],
    [`clpctl site:add:static --siteUserPassword=${pw24} --siteUser=a --domainName=xn--bcher-kva.example`, [
      "site:add:static",
      "--domainName=xn--bcher-kva.example",
      "--siteUser=a",
      `--siteUserPassword=${pw24}`,
    ]],
    ["clpctl lets-encrypt:install:certificate --domainName=www.1-example.co.uk", [
      "lets-encrypt:install:certificate",
      "--domainName=www.1-example.co.uk",
    ]],
    // The shortest name the domain rules accept: a one-letter label and a two-letter top-level domain.
    [installCertificateCommand("a.bc" as Domain), ["lets-encrypt:install:certificate", "--domainName=a.bc"]],
    [deleteSiteCommand(longest), ["site:delete", `--domainName=${longest}`, "--force"]],
    // The switch first and the domain bare: the same argument array.
    ["clpctl site:delete --force --domainName=xn--bcher-kva.example", [
      "site:delete",
      "--domainName=xn--bcher-kva.example",
      "--force",
    ]],
  ];
  await withGate({ clpctl: "argv-recorder" }, async (gate) => {
    for (const [command, argv] of cases) {
      const result = await gate.run(command);
      assert.equal(result.exitCode, 0, result.stderr);
      assert.deepEqual(result.stdout.split("\n").slice(0, -1), argv);
    }
    const log = await gate.syslog();
    assert.equal(log.length, cases.length, "one log line per decision");
    for (const pw of [pw24, pw128]) assert.ok(!log.join("\n").includes(pw), "no password in the log");
  });
});

// ---------------------------------------------------------------------------------------------------------
// Refused: everything else.

const PW = password();
const ADD =
  `clpctl site:add:static --domainName='example.com' --siteUser='${USER}' --siteUserPassword='${PW}'`;
const CERT = "clpctl lets-encrypt:install:certificate --domainName='example.com'";
const addWith = (fields: { domain?: string; user?: string; pw?: string }) =>
  `clpctl site:add:static --domainName=${fields.domain ?? "'example.com'"} --siteUser=${
    fields.user ?? `'${USER}'`
  } --siteUserPassword=${fields.pw ?? `'${PW}'`}`;
const certFor = (domain: string) => `clpctl lets-encrypt:install:certificate --domainName=${domain}`;
const DELETE = "clpctl site:delete --domainName='example.com' --force";
const deleteFor = (domain: string) => `clpctl site:delete --domainName=${domain} --force`;

/** [what is tried, the command line, the reason the gate must give]. */
const REFUSED: Array<[string, string, RegExp]> = [
  // site:delete only as the function sends it: with --force, bare, once, and nothing else.
  [
    "site:delete without --force (clpctl would wait for a typed yes)",
    "clpctl site:delete --domainName='example.com'",
    /--force is required for site:delete$/,
  ],
  ["site:delete with --force=yes", `${DELETE}=yes`, /--force takes no value$/],
  ["site:delete with a quoted value on --force", `${DELETE}='yes'`, /--force takes no value$/],
  ["site:delete with an empty value on --force", `${DELETE}=`, /--force takes no value$/],
  ["site:delete with --force twice", `${DELETE} --force`, /--force given twice$/],
  [
    "site:delete without --domainName",
    "clpctl site:delete --force",
    /--domainName is required for site:delete$/,
  ],
  ["site:delete with two domainName", `${DELETE} --domainName='other.example'`, /--domainName given twice$/],
  [
    "site:delete with two domainName, the second before --force",
    "clpctl site:delete --domainName=example.com --domainName=other.example --force",
    /--domainName given twice$/,
  ],
  [
    "site:delete with a flag of another verb",
    `${DELETE} --siteUser='${USER}'`,
    /flag not allowed for site:delete: --siteUser$/,
  ],
  ["site:delete with --no-interaction", `${DELETE} --no-interaction`, /argument 3 .* not --flag=value$/],
  ["site:delete with --quiet", `${DELETE} --quiet`, /argument 3 .* not --flag=value$/],
  ["site:delete with -n", `${DELETE} -n`, /argument 3 .* not --flag=value$/],
  [
    "site:delete with --Force",
    "clpctl site:delete --domainName='example.com' --Force",
    /argument 2 .* not --flag=value$/,
  ],
  [
    "site:delete with a quoted --force",
    "clpctl site:delete --domainName='example.com' '--force'",
    /argument 2 .* not --flag=value$/,
  ],
  [
    "site:delete with an extra positional argument",
    `${DELETE} example.org`,
    /argument 3 .* not --flag=value$/,
  ],
  [
    "site:delete with --force on the domain's word",
    "clpctl site:delete --domainName='example.com'--force",
    /unbalanced quote in --domainName$/,
  ],
  [
    "site:delete with --force inside the quotes",
    "clpctl site:delete --domainName='example.com --force'",
    /unbalanced quote in --domainName$/,
  ],
  ["site:delete of an invalid domain", deleteFor("'Example.com'"), /domainName may only hold/],
  ["site:delete of an IP address", deleteFor("'192.0.2.1'"), /is an IP address$/],
  ["site:delete of a single label", deleteFor("'localhost'"), /at least two labels$/],
  ["site:delete of an empty domain", deleteFor("''"), /domainName is empty$/],
  ["site:delete of a wildcard", deleteFor("'*.example.com'"), /character not allowed: \*$/],
  ["site:delete of a path", deleteFor("'../example.com'"), /character not allowed: \/$/],
  [
    "site:delete with ; and another delete",
    `${DELETE}; ${deleteFor("other.example")}`,
    /character not allowed: ;$/,
  ],
  ["site:delete with && after it", `${DELETE} && id`, /character not allowed: &$/],
  ["site:delete with $() in the domain", deleteFor("'$(id).example.com'"), /character not allowed: \$$/],
  [
    "site:delete with a newline before --force",
    "clpctl site:delete --domainName='example.com'\n--force",
    /control character/,
  ],
  [
    "site:delete with a tab before --force",
    "clpctl site:delete --domainName='example.com'\t--force",
    /control character/,
  ],
  [
    "site:delete with two spaces before --force",
    "clpctl site:delete --domainName='example.com'  --force",
    /unexpected whitespace$/,
  ],
  // Other verbs, including real clpctl commands and Symfony's abbreviations of the allowed ones.
  [
    "an abbreviation of site:delete",
    "clpctl site:del --domainName='example.com' --force",
    /command not allowed: site:del$/,
  ],
  ["another delete verb", "clpctl user:delete --userName='admin'", /command not allowed: user:delete$/],
  ["db:delete", "clpctl db:delete --databaseName='x' --force", /command not allowed: db:delete$/],
  [
    "user:add",
    `clpctl user:add --userName='eve' --firstName='Eve' --lastName='X' --role='admin' --password='${PW}'`,
    /command not allowed: user:add$/,
  ],
  [
    "db:add",
    `clpctl db:add --domainName='example.com' --databaseName='x' --databaseUserName='x' --databaseUserPassword='${PW}'`,
    /command not allowed: db:add$/,
  ],
  [
    "site:add:php",
    "clpctl site:add:php --domainName='example.com' --phpVersion='8.2' --vhostTemplate='Generic' --siteUser='x'",
    /command not allowed: site:add:php$/,
  ],
  ["an abbreviated verb", "clpctl le:i:c --domainName='example.com'", /command not allowed: le:i:c$/],
  ["clpctl list", "clpctl list", /command not allowed$/],
  ["clpctl --version", "clpctl --version", /command not allowed$/],
  // Flags: unknown, duplicated, missing, malformed.
  [
    "an unknown flag",
    `${CERT} --subjectAlternativeName='www.example.com'`,
    /flag not allowed for .*: --subjectAlternativeName$/,
  ],
  [
    "an extra flag on site:add:static",
    `${ADD} --vhostTemplate='x'`,
    /flag not allowed for site:add:static: --vhostTemplate$/,
  ],
  [
    "a flag of the other verb",
    `${CERT} --siteUser='${USER}'`,
    /flag not allowed for lets-encrypt:install:certificate: --siteUser$/,
  ],
  [
    "a flag in other case",
    "clpctl lets-encrypt:install:certificate --domainname='example.com'",
    /flag not allowed/,
  ],
  ["a flag without a value", `${CERT} --force`, /argument 2 after the command is not --flag=value$/],
  ["a short option", `${CERT} -n`, /argument 2 .* not --flag=value$/],
  [
    "a value as its own word",
    "clpctl lets-encrypt:install:certificate --domainName example.com",
    /argument 1 .* not --flag=value$/,
  ],
  ["an extra positional argument", `${CERT} extra`, /argument 2 .* not --flag=value$/],
  ["a duplicated domainName", `${CERT} --domainName='evil.example'`, /--domainName given twice$/],
  ["a duplicated siteUser", `${ADD} --siteUser='root'`, /--siteUser given twice$/],
  [
    "a missing siteUserPassword",
    `clpctl site:add:static --domainName='example.com' --siteUser='${USER}'`,
    /--siteUserPassword is required/,
  ],
  [
    "a missing siteUser",
    `clpctl site:add:static --domainName='example.com' --siteUserPassword='${PW}'`,
    /--siteUser is required/,
  ],
  ["a missing domainName", "clpctl lets-encrypt:install:certificate", /--domainName is required/],
  // Shell syntax, inside and outside the quotes.
  ["; after the command", `${CERT}; id`, /character not allowed: ;$/],
  ["&& after the command", `${CERT} && id`, /character not allowed: &$/],
  ["|| after the command", `${CERT} || id`, /character not allowed: \|$/],
  ["a pipe", `${ADD} | sh`, /character not allowed: \|$/],
  ["a background &", `${CERT} & id`, /character not allowed: &$/],
  ["$() in a quoted value", certFor("'$(id).example.com'"), /character not allowed: \$$/],
  ["$() bare", certFor("$(id).com"), /character not allowed: \$$/],
  ["backticks", certFor("`id`.example.com"), /character not allowed: `$/],
  ["${IFS}", "clpctl${IFS}site:delete${IFS}--domainName=example.com", /character not allowed: \$$/],
  ["a newline in the command", `${CERT}\nid`, /control character/],
  ["a carriage return in the command", `${CERT}\rid`, /control character/],
  [
    "a tab between words",
    "clpctl\tlets-encrypt:install:certificate --domainName='example.com'",
    /control character/,
  ],
  ["a DEL byte", `${CERT}\x7f`, /control character/],
  ["double quotes", certFor('"example.com"'), /character not allowed: "$/],
  ["a quote inside a value", certFor("'exa'mple.com'"), /quote inside the value of --domainName$/],
  ["two quoted strings in one value", certFor("'exa''mple.com'"), /quote inside the value of --domainName$/],
  ["a quote in a bare value", addWith({ user: "ab'c" }), /quote inside the value of --siteUser$/],
  ["an unbalanced quote", certFor("'example.com"), /unbalanced quote in --domainName$/],
  ["a lone quote", certFor("'"), /unbalanced quote in --domainName$/],
  ["a quoted value with a space", certFor("'example.com --force'"), /unbalanced quote in --domainName$/],
  ["the shellQuote escape of a quote", certFor(`'x'\\''; id'`), /character not allowed: \\$/],
  ["a backslash", certFor("exa\\mple.com"), /character not allowed: \\$/],
  ["redirection >", `${CERT} > /etc/passwd`, /character not allowed: >$/],
  ["redirection <", `${CERT} < /etc/shadow`, /character not allowed: <$/],
  ["a glob *", certFor("*.example.com"), /character not allowed: \*$/],
  ["a glob ?", certFor("exampl?.com"), /character not allowed: \?$/],
  ["a glob [ ]", certFor("exampl[e].com"), /character not allowed: \[$/],
  ["a comment #", `${CERT} #`, /character not allowed: #$/],
  ["a tilde", certFor("~root"), /character not allowed: ~$/],
  ["a brace expansion", certFor("{a,b}.example.com"), /character not allowed: \{$/],
  ["a non-ASCII domain", certFor("'bücher.example'"), /non-ASCII character in the command$/],
  ["a full-width dot", certFor("'example\uff0ecom'"), /non-ASCII character in the command$/],
  // Values that break the function's rules.
  [
    "an overlong domain (254)",
    certFor(`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`),
    /domainName is longer than 253/,
  ],
  ["an overlong label (64)", certFor(`'${"a".repeat(64)}.com'`), /label longer than 63/],
  ["an upper-case domain", certFor("'Example.com'"), /domainName may only hold/],
  ["an IPv4 address as domain", certFor("'192.0.2.1'"), /is an IP address$/],
  ["an IPv4 address with a hex last label", certFor("'1.2.3.0x4'"), /is an IP address$/],
  ["an IPv4 address in hex", certFor("'0x7f.0x0.0x0.0x1'"), /is an IP address$/],
  [
    "'--' in a label's third and fourth characters",
    certFor("'ab--cd.example'"),
    /third and fourth characters$/,
  ],
  ["a numeric top-level domain", certFor("'example.1a'"), /top-level domain that is not letters$/],
  ["a reserved top-level domain", certFor("'printer.local'"), /reserved top-level domain$/],
  ["a single-label domain", certFor("'localhost'"), /at least two labels$/],
  ["an empty label", certFor("'example..com'"), /empty label$/],
  ["a trailing dot", certFor("'example.com.'"), /empty label$/],
  ["a leading hyphen", certFor("'-example.com'"), /starts or ends with '-'$/],
  ["a trailing hyphen", certFor("'example-.com'"), /starts or ends with '-'$/],
  ["an underscore in the domain", certFor("'my_site.example'"), /domainName may only hold/],
  ["an empty domain", certFor("''"), /domainName is empty$/],
  ["an empty bare domain", certFor(""), /domainName is empty$/],
  ["an overlong site user (33)", addWith({ user: `u${"x".repeat(32)}` }), /siteUser must match/],
  ["a site user starting with a digit", addWith({ user: "'1site'" }), /siteUser must match/],
  ["an upper-case site user", addWith({ user: "'Site'" }), /siteUser must match/],
  ["a site user with an underscore", addWith({ user: "'site_user'" }), /siteUser must match/],
  [
    "an overlong password (129)",
    addWith({ pw: generatePassword(128) + "x" }),
    /siteUserPassword must be 24 to 128/,
  ],
  [
    "a short password (23)",
    addWith({ pw: generatePassword(24).slice(1) }),
    /siteUserPassword must be 24 to 128/,
  ],
  ["a password with a symbol", addWith({ pw: `'${PW}-'` }), /siteUserPassword must be 24 to 128/],
  // The command line as a whole.
  ["an empty command", "", /empty command/],
  ["a bare clpctl", "clpctl", /clpctl without a command$/],
  ["an input over 1024 bytes", `${CERT} --x=${"a".repeat(1024)}`, /longer than 1024 bytes$/],
  ["/bin/sh -c", `/bin/sh -c '${CERT}'`, /character not allowed: \/$/],
  ["bash", "bash", /only clpctl commands are allowed$/],
  [
    "sh -c without a path",
    `sh -c 'clpctl site:delete --domainName=example.com'`,
    /only clpctl commands are allowed$/,
  ],
  ["env in front", `env CLPCTL_GATE_BIN=sh ${CERT}`, /only clpctl commands are allowed$/],
  ["clpctl by its full path", `/usr/bin/${CERT}`, /character not allowed: \/$/],
  ["scp", "scp -t .", /only clpctl commands are allowed$/],
  ["a leading space", ` ${CERT}`, /unexpected whitespace$/],
  ["a leading tab", `\t${CERT}`, /control character/],
  ["a trailing space", `${CERT} `, /unexpected whitespace$/],
  ["two spaces between words", CERT.replace(" ", "  "), /unexpected whitespace$/],
];

Deno.test("every other command is refused with exit 64 and one stderr line, reaches no clpctl, and is logged without the password", async (t) => {
  const secrets = [PW];
  await withGate({}, async (gate) => {
    for (const [what, command, reason] of REFUSED) {
      await t.step(what, async () => {
        const before = (await gate.syslog()).length;
        const result = await gate.run(command);
        assert.equal(result.exitCode, 64, `exit status; stderr: ${result.stderr}`);
        assert.equal(result.stdout, "");
        assert.match(result.stderr, REFUSED_LINE);
        assert.match(result.stderr.trimEnd(), reason);

        const state = await readSimState(gate.state);
        assert.equal(state.calls.length, 0, "nothing reached clpctl");
        assert.deepEqual(Object.keys(state.sites), []);

        const added = (await gate.syslog()).slice(before);
        assert.equal(added.length, 1, "one log line per decision");
        assert.ok(added[0].startsWith("-t clpctl-gate -p auth.warning -- refused: "), added[0]);
        assert.ok(added[0].endsWith(" from=127.0.0.1"), added[0]);
        // Every password-shaped run of 24+ characters in the command must appear in neither.
        const passwords = [...secrets, ...(command.match(/[A-Za-z0-9]{24,}/g) ?? [])];
        for (const pw of passwords) {
          assert.ok(!result.stderr.includes(pw), "no password in the refusal");
          assert.ok(!added[0].includes(pw), "no password in the log");
        }
      });
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// The gate on its own (no sshd): what differs between servers.

async function runGate(
  env: Record<string, string>,
  command: string,
  as?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const vars = { ...env, SSH_ORIGINAL_COMMAND: command };
  // runuser may reset parts of the environment; `env -i` sets exactly these, and no shell is involved.
  const out = await (as
    ? new Deno.Command("/usr/sbin/runuser", {
      args: [
        "-u",
        as,
        "--",
        "/usr/bin/env",
        "-i",
        ...Object.entries(vars).map(([k, v]) => `${k}=${v}`),
        GATE,
      ],
      clearEnv: true,
      stdin: "null",
    })
    : new Deno.Command(GATE, { clearEnv: true, env: vars, stdin: "null" })).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("not running as root, the gate runs clpctl through `sudo -n` with the same argument array", {
  ignore: Deno.uid() !== 0,
}, async () => {
  // A stand-in sudo records what it was asked to run; runuser drops to `nobody` as a deploy user would be.
  const { dir, syslog } = await fakeBin({
    sudo: `#!/bin/sh\necho "uid=$(id -u)"\nprintf '%s\\n' "$@"\n`,
  });
  try {
    await Deno.chmod(dir, 0o755);
    await Deno.chmod(syslog, 0o666);
    const result = await runGate(
      { PATH: `${dir}:/usr/bin:/bin`, CLPCTL_GATE_BIN: "/bin/true" },
      installCertificateCommand(DOMAIN),
      "nobody",
    );
    assert.equal(result.code, 0, result.stderr);
    const [uid, ...argv] = result.stdout.split("\n").slice(0, -1);
    assert.notEqual(uid, "uid=0");
    assert.deepEqual(argv, [
      "-n",
      "--",
      "/bin/true",
      "lets-encrypt:install:certificate",
      `--domainName=${DOMAIN}`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("without CLPCTL_GATE_BIN the gate runs /usr/bin/clpctl, and a relative or missing clpctl is a configuration error", async () => {
  const { dir } = await fakeBin();
  try {
    const env = { PATH: `${dir}:/usr/bin:/bin` };
    if (!(await Deno.stat("/usr/bin/clpctl").then(() => true, () => false))) {
      const missing = await runGate(env, installCertificateCommand(DOMAIN));
      assert.equal(missing.code, 78);
      assert.equal(
        missing.stderr,
        "clpctl-gate: error: clpctl not found or not executable: /usr/bin/clpctl\n",
      );
    }
    const relative = await runGate({ ...env, CLPCTL_GATE_BIN: "clpctl" }, installCertificateCommand(DOMAIN));
    assert.equal(relative.code, 78);
    // The command is checked first: a refused command is refused whatever the configuration.
    const refused = await runGate({ ...env, CLPCTL_GATE_BIN: "clpctl" }, "clpctl site:delete");
    assert.equal(refused.code, 64);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a missing or failing logger changes neither the decision nor the output", async () => {
  const { dir } = await fakeBin({
    logger: "#!/bin/sh\necho 'logger: socket /dev/log: No such file' >&2\nexit 1\n",
  });
  const empty = await Deno.makeTempDir();
  try {
    for (const path of [`${dir}:/usr/bin:/bin`, empty]) {
      const env = { PATH: path, CLPCTL_GATE_BIN: `${dir}/argv-recorder` };
      const allowed = await runGate(env, installCertificateCommand(DOMAIN));
      assert.equal(allowed.code, 0, allowed.stderr);
      assert.equal(allowed.stderr, "");
      const refused = await runGate(env, `${CERT}; id`);
      assert.equal(refused.code, 64);
      assert.match(refused.stderr, REFUSED_LINE);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(empty, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// The whole product through the gate (needs the harness: PostgreSQL).

Deno.test("through the gate a site goes active, and a site:add with an injected flag never reaches clpctl", async () => {
  const { dir, syslog } = await fakeBin();
  let stack: Stack | undefined;
  try {
    stack = await startStack({
      label: "gate",
      forcedCommand: GATE,
      sshdEnv: { PATH: `${dir}:${DEV_BIN}:/usr/local/bin:/usr/bin:/bin`, CLPCTL_GATE_BIN: CLPCTL_SIM },
    });
    const id = await stack.insertSite("gate.example", { status_dns: "active" });
    const response = await stack.request("", { body: {}, query: "wait=true" });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.outcomes[0].status, "active", JSON.stringify(body));
    const user = siteUserFor("gate.example" as Domain);
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "active");
    assert.equal(row.hosting_doc_root, `/home/${user}/htdocs/gate.example`);

    const state = await stack.simState();
    assert.equal(state.sites["gate.example"].siteUser, user);
    assert.equal(state.certificates["gate.example"].type, "lets-encrypt");
    const sitePassword = state.sites["gate.example"].siteUserPassword;
    const decisions = await readLines(syslog);
    assert.equal(decisions.length, 2);
    assert.match(decisions[0], /allowed: site:add:static domain=gate\.example siteUser=/);
    assert.match(decisions[1], /allowed: lets-encrypt:install:certificate domain=gate\.example/);
    assert.ok(!decisions.join("\n").includes(sitePassword), "no password in the log");

    // Someone holding the function's key, trying to get more than the function does.
    const shell = await connectSsh({
      host: stack.sshd.host,
      port: stack.sshd.port,
      user: stack.sshd.user,
      privateKey: stack.env.CLOUDPANEL_SSH_PRIVATE_KEY!,
      hostKey: stack.sshd.hostKeyFingerprint,
      connectTimeoutMs: 10_000,
    });
    try {
      const pw = password();
      const evil = "evil.example" as Domain;
      const attempts = [
        `${addStaticSiteCommand(evil, siteUserFor(evil), pw)} --vhostTemplate='x'`,
        addStaticSiteCommand(`${evil}' --siteUser='root` as Domain, siteUserFor(evil), pw),
        `${
          addStaticSiteCommand(evil, siteUserFor(evil), pw)
        }; clpctl site:delete --domainName=gate.example --force`,
        // A removal the function would send, with a second domain appended.
        `${deleteSiteCommand(evil)} --domainName=gate.example`,
      ];
      for (const attempt of attempts) {
        const result = await shell.exec(attempt, TIMEOUT);
        assert.equal(result.exitCode, 64);
        assert.match(result.stderr, REFUSED_LINE);
        assert.ok(!result.stderr.includes(pw));
      }
    } finally {
      await shell.close();
    }
    const after = await stack.simState();
    assert.equal(after.calls.length, state.calls.length, "no call reached clpctl");
    assert.deepEqual(Object.keys(after.sites), ["gate.example"]);
    assert.equal((await readLines(syslog)).filter((l) => l.includes("refused:")).length, 4);
  } finally {
    await stack?.close();
    await Deno.remove(dir, { recursive: true });
  }
});
