/**
 * A simulator of CloudPanel's `clpctl` (the server side of the tests and the demo).
 *
 * It follows what CloudPanel's documentation, its issue tracker and independent integrations establish
 * (docs/architecture.md §15.1, §15.2): the documented syntax of the three verbs this project uses, the
 * observed messages verbatim, Symfony Console's behaviour for unknown commands and options (the single-line
 * Monolog JSON record), and the panel's state (sites, Linux users, certificates) kept as JSON under a state
 * directory. Where no source shows what CloudPanel does, the choice is marked "Assumption" below.
 *
 * Streams and exit codes (CloudPanel documents neither): everything CloudPanel itself renders —
 * success lines, validation lines, "An error has occurred …", Let's Encrypt errors, cURL errors, the delete
 * prompt — goes to stdout (integrations that read only stdout surface these messages); the Monolog JSON record
 * of an uncaught exception and "Aborted." go to stderr. Exit status 0 on success, 1 on every failure (Symfony's
 * Command::FAILURE, and what an uncaught exception with code 0 becomes). Two faults end otherwise: `killed`
 * (the process kills itself with SIGKILL, as the OOM killer would: over sshd the client sees `exit-signal
 * KILL`; in-process the result has no exit status and `signal: "KILL"`) and `exit137` (what a shell wrapper
 * reports when its child was killed: status 137, no output).
 *
 * Importable (`runClpctl` and the test helpers) and executable: `CLPCTL_SIM_STATE=<dir> deno run … clpctl_sim.ts
 * site:add:static --domainName=…`; `dev/bin/clpctl` wraps the latter.
 *
 * Concurrency: every read-modify-write of the state holds an exclusive `flock` on `<stateDir>/.lock`, so
 * concurrent processes (and concurrent calls in one process) see one consistent panel.
 */
import { certificateNames } from "../supabase/functions/hosting-automator/certificate_names.ts";

export interface ClpctlResult {
  stdout: string;
  stderr: string;
  /** Null when a signal ended the command (then `signal` names it), as over SSH. */
  exitCode: number | null;
  /** The signal that ended it, without "SIG" (`KILL`), as SSH's exit-signal names it. */
  signal?: string;
}

export interface SiteRecord {
  domainName: string;
  siteUser: string;
  /** Kept as CloudPanel keeps it, so leak tests can look for it everywhere else. */
  siteUserPassword: string;
  type: "static";
  docRoot: string;
  createdAt: string;
}

export interface UserRecord {
  userName: string;
  home: string;
  /** `site`: belongs to a site; `orphan`: a Linux user without a site (half-failed creation, manual leftovers). */
  kind: "site" | "orphan";
}

export interface CertificateRecord {
  domainName: string;
  type: "self-signed" | "lets-encrypt";
  names: string[];
  installedAt: string;
}

export interface CallRecord {
  time: string;
  verb: string;
  domainName: string | null;
  siteUser?: string;
  outcome: string;
  exitCode: number | null;
  signal?: string;
}

/**
 * Faults every command that changes the panel (add, certificate, delete) can meet, whatever it was doing:
 * - `timeout`: CloudPanel reports one of its steps exceeded its timeout (CE#390's shape);
 * - `database`: "An error has occurred, error message: Connection to the internal database timed out.";
 * - `locked`: CloudPanel's SQLite database is busy (Assumption: PDO's text for SQLite's busy error; not
 *   observed from clpctl);
 * - `killed`: the process dies by SIGKILL without a word; `exit137`: no output, exit status 137;
 * - `unrecognised`: a line no client knows, exit status 1;
 * - `hang`: the command does its work, then answers only after `hangMs` (a client gives up first: the server
 *   timed out for the client and finished anyway).
 */
export type CommonFaultKind =
  | "timeout"
  | "database"
  | "locked"
  | "killed"
  | "exit137"
  | "unrecognised"
  | "hang";
export const COMMON_FAULT_KINDS: readonly CommonFaultKind[] = [
  "timeout",
  "database",
  "locked",
  "killed",
  "exit137",
  "unrecognised",
  "hang",
];
export type SiteFailureKind = "system" | "network" | "exception" | CommonFaultKind;
export type CertificateFailureKind = "dns" | "unauthorized" | "connection" | "account" | CommonFaultKind;
export type DeleteFailureKind = CommonFaultKind;
/** The commands faults apply to, as `RandomFaults.commands` names them. */
export type FaultCommand = "site" | "certificate" | "delete";

/**
 * A seeded fault mix for chaos runs: each site:add:static, certificate request or site:delete that passes
 * validation (and meets no counted fault) fails with probability `rate`, with a kind drawn from `kinds`; with probability
 * `afterWorkRate` (default 0) it does its work first. Drawn under the panel's lock; the generator's state is
 * kept in `seed`, so one seed gives one sequence of draws.
 */
export interface RandomFaults {
  seed: number;
  rate: number;
  kinds: readonly CommonFaultKind[];
  afterWorkRate?: number;
  /** Which commands it applies to (default all three). */
  commands?: readonly FaultCommand[];
}

/** `faults.json`: counters are decremented under the lock as faults are used. */
export interface Faults {
  /** Every command sleeps this long first. */
  delayMs?: number;
  /** `true`: every command hangs; a number: the next n commands hang. A hang sleeps `hangMs`, then goes on. */
  hang?: boolean | number;
  /** How long a hang lasts (default 120 000 ms: long enough for any client timeout, short enough to end). */
  hangMs?: number;
  /**
   * How long the work of a valid site:add:static, certificate request or site:delete takes, spent holding the panel's lock
   * (so concurrent calls queue, and a race would show). Unlike `delayMs`, which all calls sleep in parallel.
   */
  workMs?: number;
  /** The next n `site:add:static` calls that pass validation fail. */
  siteFailures?: number;
  /** How they fail (default "timeout"): see `siteFailureText` and `CommonFaultKind`. */
  siteFailureKind?: SiteFailureKind;
  /** The failed creation leaves the Linux user behind, an orphan (as in CE#390). Default false. */
  siteFailureLeavesUser?: boolean;
  /** The failing site command creates the site first, then fails as its kind says. Default false. */
  siteFailureAfterWork?: boolean;
  /** The next n certificate requests for an existing site fail. */
  certificateFailures?: number;
  /**
   * How they fail (default "dns"): the ACME error type they report, "account" for an account-registration
   * failure, or a `CommonFaultKind`.
   */
  certificateFailureKind?: CertificateFailureKind;
  /** The failing certificate request installs the certificate first, then fails as its kind says. */
  certificateFailureAfterWork?: boolean;
  /** The next n `site:delete` calls that pass validation (and confirmation) fail, whether the site exists or not. */
  deleteFailures?: number;
  /** How they fail (default "timeout"): a `CommonFaultKind`. */
  deleteFailureKind?: DeleteFailureKind;
  /** The failing delete removes the site first (when there is one), then fails as its kind says. */
  deleteFailureAfterWork?: boolean;
  /** A seeded probabilistic mix of common faults (see RandomFaults). */
  randomFaults?: RandomFaults;
}

export interface SimState {
  sites: Record<string, SiteRecord>;
  users: Record<string, UserRecord>;
  certificates: Record<string, CertificateRecord>;
  faults: Faults;
  calls: CallRecord[];
}

interface Panel {
  sites: Record<string, SiteRecord>;
  users: Record<string, UserRecord>;
  certificates: Record<string, CertificateRecord>;
}

/**
 * Accounts of a Debian/Ubuntu CloudPanel server (site user names collide with them). Not exhaustive:
 * a real server has what its packages created.
 */
// deno-fmt-ignore
export const SYSTEM_USERS: ReadonlySet<string> = new Set([
  "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
  "backup", "list", "irc", "gnats", "nobody", "_apt", "systemd-network", "systemd-resolve", "systemd-timesync",
  "messagebus", "sshd", "polkitd", "admin", "debian", "ubuntu", "clp", "mysql", "nginx", "proftpd", "varnish",
  "redis", "postfix", "clamav", "postgres",
]);

export const CLI_VERSION_LINE =
  "CloudPanel CLI 6.0.8 (env: prod, debug: false) #StandWithUkraine https://sf.to/ukraine";
const VENDOR = "/home/clp/htdocs/app/files/vendor/symfony/console";
const DEFAULT_HANG_MS = 120_000;
const MAX_SITE_USER_LENGTH = 32;
const MIN_PASSWORD_LENGTH = 8;
/** Assumption: Linux `useradd`'s usual NAME_REGEX; CloudPanel documents no charset for site users. */
const SITE_USER_RE = /^[a-z_][a-z0-9_-]*$/;
const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

// ---------------------------------------------------------------------------------------------------------
// Messages. Verbatim as observed (docs/architecture.md §15.1, §15.2) unless marked "Assumption".

const msg = {
  siteAdded: (domain: string) => `Site ${domain} has been added.`,
  notBlank: (field: string) => `${field}: This value should not be blank.`, // Symfony NotBlank; assumption
  notValid: (field: string) => `${field}: This value is not valid.`,
  alreadyExists: (field: string) => `${field}: This value already exists.`,
  tooShort: (field: string, limit: number) =>
    `${field}: This value is too short. It should have ${limit} characters or more.`,
  tooLong: (field: string, limit: number) =>
    `${field}: This value is too long. It should have ${limit} characters or less.`,
  /** Assumption: no source shows the text for a domain without a site. */
  siteNotFound: (domain: string) => `Site "${domain}" does not exist.`,
  /** Assumption: no verbatim success text is known for lets-encrypt:install:certificate. */
  certificateInstalled: (names: string[]) => `Certificate for ${names.join(", ")} has been installed.`,
  /** Assumption: no verbatim success text is known for site:delete. */
  siteDeleted: (domain: string) => `Site ${domain} has been deleted.`,
  /** The docs: "Confirm your action by entering yes"; the exact prompt rendering is an assumption. */
  confirmDelete: "Confirm your action by entering yes: ",
};

/** How a command meets a common fault: what it prints and how it ends (`hang` answers normally, late). */
function commonFailure(kind: Exclude<CommonFaultKind, "timeout" | "hang">): Ending {
  switch (kind) {
    case "database":
      return {
        out: ["An error has occurred, error message: Connection to the internal database timed out."],
        exitCode: 1,
      };
    case "locked": // Assumption: PDO's message for SQLite's SQLITE_BUSY.
      return {
        out: ["An error has occurred, error message: SQLSTATE[HY000]: General error: 5 database is locked"],
        exitCode: 1,
      };
    case "unrecognised": // Assumption: any line no client knows.
      return { out: ["The panel could not finish the request (state 7)."], exitCode: 1 };
    case "killed":
      return { out: [], exitCode: null, signal: "KILL" };
    case "exit137":
      return { out: [], exitCode: 137 };
  }
}

interface Ending {
  out: string[];
  err?: string[];
  exitCode: number | null;
  signal?: string;
}

/** What a failed `site:add:static` prints, by fault kind (shapes of CloudPanel's system-failure text). */
function siteFailureText(
  kind: Exclude<SiteFailureKind, "hang">,
  user: string,
  input: string,
): Ending {
  switch (kind) {
    case "timeout": {
      // CE#390 (simplified command text).
      const cmd = `/usr/bin/sudo /usr/bin/find -P '/home/${user}' -type d -exec chmod '770' {} \\;`;
      return {
        out: [
          `An error has occurred, error message: Command " : ${cmd}" failed, error message: The process "${cmd}" exceeded the timeout of 90 seconds.`,
        ],
        exitCode: 1,
      };
    }
    case "system": // CE#341 / CE#323 shape.
      return {
        out: [
          `An error has occurred, error message: Command " : /usr/bin/sudo /usr/sbin/useradd -m -d '/home/${user}' -s '/bin/bash' '${user}'" failed, error message: useradd: failed to reset the lastlog entry of UID 1001: No such file or directory`,
        ],
        exitCode: 1,
      };
    case "network": // CE#449: no outbound access while fetching the public suffix list.
      return {
        out: [
          "cURL error 28: Operation timed out after 10000 milliseconds with 68188 out of 308886 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://publicsuffix.org/list/public_suffix_list.dat",
        ],
        exitCode: 1,
      };
    case "exception": // Assumption: an uncaught exception inside the command; Monolog logs the whole input.
      return {
        out: [],
        exitCode: 1,
        err: [
          monologRecord(
            "RuntimeException",
            "Unable to write the vhost configuration.",
            input,
            "/home/clp/htdocs/app/files/src/Command/Site/AddStaticCommand.php:112",
          ),
        ],
      };
    default:
      return commonFailure(kind);
  }
}

/**
 * One `Domain could not be validated` line per name (CE#810, CE#372), the account error (CE#182), or a common
 * fault.
 */
function certificateFailureText(kind: Exclude<CertificateFailureKind, "hang">, names: string[]): Ending {
  switch (kind) {
    case "dns":
    case "unauthorized":
    case "connection":
      return { out: acmeFailureLines(kind, names), exitCode: 1 };
    case "account":
      return {
        out: [
          "An error occurred while registering an account, error message: cURL error 28: Operation timed out after 15001 milliseconds with 0 bytes received (see https://curl.haxx.se/libcurl/c/libcurl-errors.html) for https://acme-v02.api.letsencrypt.org/acme/new-acct",
        ],
        exitCode: 1,
      };
    case "timeout": // Assumption: CE#390's shape, for the nginx reload that installs the certificate.
      return {
        out: [
          `An error has occurred, error message: Command " : /usr/bin/sudo /usr/bin/systemctl reload nginx" failed, error message: The process "/usr/bin/sudo /usr/bin/systemctl reload nginx" exceeded the timeout of 90 seconds.`,
        ],
        exitCode: 1,
      };
    default:
      return commonFailure(kind);
  }
}

/** What a failed `site:delete` prints: a common fault. */
function deleteFailureText(kind: Exclude<DeleteFailureKind, "hang">, user: string | undefined): Ending {
  if (kind !== "timeout") return commonFailure(kind);
  // Assumption: CE#390's shape, for the removal of the site user with its home.
  const cmd = `/usr/bin/sudo /usr/sbin/userdel -r '${user ?? "unknown"}'`;
  return {
    out: [
      `An error has occurred, error message: Command " : ${cmd}" failed, error message: The process "${cmd}" exceeded the timeout of 90 seconds.`,
    ],
    exitCode: 1,
  };
}

function acmeFailureLines(kind: "dns" | "unauthorized" | "connection", names: string[]): string[] {
  const token = "Tm4vHsj87oF8XwIcN6aB3o4Ic0UmE4B2-nXuefMbcAI";
  const detail = (name: string) => {
    switch (kind) {
      case "dns": // Let's Encrypt's wording for a missing record (NXDOMAIN).
        return `DNS problem: NXDOMAIN looking up A for ${name} - check that a DNS record exists for this domain`;
      case "unauthorized":
        return `203.0.113.10: Invalid response from https://${name}/.well-known/acme-challenge/${token}: 404`;
      case "connection":
        return `203.0.113.10: Fetching https://${name}/.well-known/acme-challenge/${token}: Timeout during connect (likely firewall problem)`;
    }
  };
  return names.map((name) =>
    `${name}: Domain could not be validated, error message: error type: urn:ietf:params:acme:error:${kind}, error detail: ${
      detail(name)
    }`
  );
}

// ---------------------------------------------------------------------------------------------------------
// Symfony Console: command lookup, option binding, the Monolog record of an uncaught exception.

interface OptionDef {
  name: string;
  shortcut?: string;
  acceptsValue: boolean;
  description: string;
  /** How `list` shows it, where Symfony shows more than one spelling. */
  display?: string;
}

interface Invocation {
  options: Map<string, string | true>;
  /** Symfony's input string, as Monolog logs it. */
  input: string;
}

interface Io {
  /** Asks a question; returns the answer line, or null at end of input or without interaction. */
  prompt(question: string, out: string[]): Promise<string | null>;
  signal?: AbortSignal;
}

interface Outcome {
  out: string[];
  err?: string[];
  exitCode: number | null;
  signal?: string;
  /** Answer only after this long (the `hang` fault, slept outside the lock). */
  answerAfterMs?: number;
  outcome: string;
  domainName?: string | null;
  siteUser?: string;
}

interface CommandDef {
  name: string;
  description: string;
  options: OptionDef[];
  run(inv: Invocation, stateDir: string, io: Io): Promise<Outcome>;
}

const GLOBAL_OPTIONS: OptionDef[] = [
  {
    name: "help",
    shortcut: "h",
    acceptsValue: false,
    description:
      "Display help for the given command. When no command is given display help for the list command",
  },
  { name: "quiet", shortcut: "q", acceptsValue: false, description: "Do not output any message" },
  { name: "version", shortcut: "V", acceptsValue: false, description: "Display this application version" },
  {
    name: "ansi",
    acceptsValue: false,
    description: "Force (or disable --no-ansi) ANSI output",
    display: "    --ansi|--no-ansi",
  },
  { name: "no-ansi", acceptsValue: false, description: "" },
  {
    name: "no-interaction",
    shortcut: "n",
    acceptsValue: false,
    description: "Do not ask any interactive question",
  },
  {
    name: "verbose",
    shortcut: "v",
    acceptsValue: false,
    display: "-v|vv|vvv, --verbose",
    description:
      "Increase the verbosity of messages: 1 for normal output, 2 for more verbose output and 3 for debug",
  },
];

/** A Symfony Console exception, by its short name in the `Symfony\Component\Console\Exception` namespace. */
class ConsoleException extends Error {
  readonly className: string;
  constructor(shortName: string, message: string, readonly file: string) {
    super(message);
    this.className = `Symfony\\Component\\Console\\Exception\\${shortName}`;
  }
}

/** PHP's escapeshellarg. */
function escapeShellArg(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** Symfony's ArgvInput::__toString(): what Monolog records as the command. */
function inputString(tokens: string[], commandName?: string): string {
  const escape = (t: string) => /^[\w-]+$/.test(t) ? t : escapeShellArg(t);
  const text = tokens.map((token) => {
    const m = /^(-[^=]+=)(.+)$/s.exec(token);
    if (m) return m[1] + escape(m[2]);
    if (token && token[0] !== "-") return escape(token);
    return token;
  }).join(" ");
  // Symfony's ErrorListener un-quotes the name of a command it found.
  return commandName ? text.replaceAll(`'${commandName}'`, commandName) : text;
}

/** Monolog's datetime: microseconds and an explicit offset. */
function monologTime(): string {
  return new Date().toISOString().replace("Z", "000+00:00");
}

/** CloudPanel's single-line Monolog JSON record of an uncaught exception (CE#688, CE#720). */
function monologRecord(className: string, message: string, input: string, file: string): string {
  return JSON.stringify({
    message: `Error thrown while running command "${input}". Message: "${message}"`,
    context: {
      exception: { class: className, message, code: 0, file },
      command: input,
      message,
    },
    level: 500,
    level_name: "CRITICAL",
    channel: "console",
    datetime: monologTime(),
    extra: {},
  });
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** Symfony's Application::findAlternatives. */
function findAlternatives(name: string, collection: string[]): string[] {
  const threshold = 1000;
  const alternatives = new Map<string, number>();
  const parts = new Map(collection.map((item) => [item, item.split(":")]));
  name.split(":").forEach((sub, i) => {
    for (const [item, itemParts] of parts) {
      const exists = alternatives.has(item);
      if (itemParts[i] === undefined) {
        if (exists) alternatives.set(item, alternatives.get(item)! + threshold);
        continue;
      }
      const lev = levenshtein(sub, itemParts[i]);
      if (lev <= sub.length / 3 || (sub !== "" && itemParts[i].includes(sub))) {
        alternatives.set(item, exists ? alternatives.get(item)! + lev : lev);
      } else if (exists) {
        alternatives.set(item, alternatives.get(item)! + threshold);
      }
    }
  });
  for (const item of collection) {
    const lev = levenshtein(name, item);
    if (lev <= name.length / 3 || item.includes(name)) {
      alternatives.set(item, alternatives.has(item) ? alternatives.get(item)! - lev : lev);
    }
  }
  return [...alternatives].filter(([, lev]) => lev < 2 * threshold).map(([item]) => item)
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true, sensitivity: "base" }));
}

function withAlternatives(message: string, alternatives: string[]): string {
  if (alternatives.length === 0) return message;
  const head = alternatives.length === 1 ? "Did you mean this?" : "Did you mean one of these?";
  return `${message}\n\n${head}\n    ${alternatives.join("\n    ")}`;
}

const quoteRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
/** Symfony's abbreviation pattern: `si:a` matches `site:add…`. */
const abbreviation = (name: string) => name.split(":").map(quoteRe).join("[^:]*:") + "[^:]*";

function namespacesOf(names: string[]): string[] {
  const out = new Set<string>();
  for (const name of names) {
    const parts = name.split(":");
    for (let i = 1; i < parts.length; i++) out.add(parts.slice(0, i).join(":"));
  }
  return [...out];
}

/** Symfony's Application::findNamespace (throws when no namespace matches). */
function findNamespace(namespace: string): void {
  const all = namespacesOf(COMMANDS.map((c) => c.name));
  const re = new RegExp(`^${abbreviation(namespace)}`);
  const found = all.filter((n) => re.test(n));
  if (found.length === 0) {
    throw new ConsoleException(
      "NamespaceNotFoundException",
      withAlternatives(
        `There are no commands defined in the "${namespace}" namespace.`,
        findAlternatives(namespace, all),
      ),
      `${VENDOR}/Application.php:613`,
    );
  }
  if (found.length > 1 && !found.includes(namespace)) {
    throw new ConsoleException(
      "NamespaceNotFoundException",
      `The namespace "${namespace}" is ambiguous.\nDid you mean one of these?\n    ${found.join("\n    ")}.`,
      `${VENDOR}/Application.php:619`,
    );
  }
}

/** Symfony's Application::find, abbreviations included. */
function findCommand(name: string): CommandDef {
  const exact = COMMANDS.find((c) => c.name === name);
  if (exact) return exact;
  const expr = abbreviation(name);
  const names = COMMANDS.map((c) => c.name);
  let matches = names.filter((n) => new RegExp(`^${expr}`).test(n));
  if (matches.length === 0) matches = names.filter((n) => new RegExp(`^${expr}`, "i").test(n));
  const full = matches.filter((n) => new RegExp(`^${expr}$`, "i").test(n));
  if (matches.length === 0 || full.length === 0) {
    const pos = name.lastIndexOf(":");
    if (pos > 0) findNamespace(name.slice(0, pos));
    throw new ConsoleException(
      "CommandNotFoundException",
      withAlternatives(`Command "${name}" is not defined.`, findAlternatives(name, names)),
      `${VENDOR}/Application.php:737`,
    );
  }
  if (full.length > 1) {
    throw new ConsoleException(
      "CommandNotFoundException",
      `Command "${name}" is ambiguous.\nDid you mean one of these?\n    ${full.join("\n    ")}.`,
      `${VENDOR}/Application.php:767`,
    );
  }
  return COMMANDS.find((c) => c.name === full[0])!;
}

/** Symfony's ArgvInput binding for a command without arguments. */
function bindOptions(tokens: string[], command: CommandDef | null): Map<string, string | true> {
  const defs = [...GLOBAL_OPTIONS, ...(command?.options ?? [])];
  const byName = new Map(defs.map((d) => [d.name, d]));
  const byShortcut = new Map(defs.filter((d) => d.shortcut).map((d) => [d.shortcut!, d]));
  const file = `${VENDOR}/Input/ArgvInput.php`;
  const options = new Map<string, string | true>();
  const queue = [...tokens];
  let commandSeen = false, optionsEnded = false;
  const setLong = (name: string, value: string | undefined) => {
    const def = byName.get(name);
    if (!def) {
      throw new ConsoleException("RuntimeException", `The "--${name}" option does not exist.`, `${file}:226`);
    }
    if (!def.acceptsValue) {
      if (value !== undefined) {
        throw new ConsoleException(
          "RuntimeException",
          `The "--${name}" option does not accept a value.`,
          `${file}:246`,
        );
      }
      options.set(name, true);
      return;
    }
    if (value === undefined) {
      const next = queue[0];
      if (next !== undefined && (next === "" || next[0] !== "-")) value = queue.shift();
    }
    if (value === undefined) {
      throw new ConsoleException(
        "RuntimeException",
        `The "--${name}" option requires a value.`,
        `${file}:264`,
      );
    }
    options.set(name, value);
  };
  while (queue.length > 0) {
    const token = queue.shift()!;
    if (!optionsEnded && token === "--") {
      optionsEnded = true;
    } else if (!optionsEnded && token.startsWith("--")) {
      const eq = token.indexOf("=");
      setLong(eq < 0 ? token.slice(2) : token.slice(2, eq), eq < 0 ? undefined : token.slice(eq + 1));
    } else if (!optionsEnded && token.startsWith("-") && token.length > 1) {
      for (const ch of token.slice(1)) {
        const def = byShortcut.get(ch);
        if (!def) {
          throw new ConsoleException(
            "RuntimeException",
            `The "-${ch}" option does not exist.`,
            `${file}:195`,
          );
        }
        options.set(def.name, true);
      }
    } else if (!commandSeen) {
      commandSeen = true;
    } else if (command?.name === "help" && !options.has("command_name")) {
      options.set("command_name", token); // help's one argument
    } else {
      throw new ConsoleException(
        "RuntimeException",
        command
          ? `No arguments expected for "${command.name}" command, got "${token}".`
          : `Too many arguments, expected arguments "command".`,
        `${file}:178`,
      );
    }
  }
  return options;
}

function firstArgument(tokens: string[]): string | undefined {
  for (const token of tokens) {
    if (token === "--") return undefined;
    if (!token.startsWith("-") || token === "-") return token;
  }
  return undefined;
}

function optionLine(def: OptionDef): string {
  if (def.display) return def.display;
  const short = def.shortcut ? `-${def.shortcut}, ` : "    ";
  const value = def.acceptsValue ? `=${def.name.toUpperCase()}` : "";
  return `${short}--${def.name}${value}`;
}

function listText(): string[] {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  const lines = [
    CLI_VERSION_LINE,
    "",
    "Usage:",
    "  command [options] [arguments]",
    "",
    "Options:",
    ...GLOBAL_OPTIONS.filter((o) => o.description).map((o) =>
      `  ${optionLine(o).padEnd(22)}${o.description}`
    ),
    "",
    "Available commands:",
  ];
  // Symfony's order: commands without a namespace first, then each namespace under its heading.
  const ns = (c: CommandDef) => c.name.includes(":") ? c.name.split(":")[0] : "";
  const key = (c: CommandDef) => `${ns(c) === "" ? 0 : 1}:${ns(c)}:${c.name}`;
  const sorted = [...COMMANDS].sort((a, b) => key(a).localeCompare(key(b)));
  let namespace = "";
  for (const command of sorted) {
    if (ns(command) !== namespace) lines.push(` ${ns(command)}`);
    namespace = ns(command);
    lines.push(`  ${command.name.padEnd(width)}${command.description}`);
  }
  return lines;
}

function helpText(command: CommandDef): string[] {
  const options = [...command.options, ...GLOBAL_OPTIONS.filter((o) => o.description)];
  const width = Math.max(...options.map((o) => optionLine(o).length)) + 2;
  return [
    "Description:",
    `  ${command.description}`,
    "",
    "Usage:",
    `  ${command.name} [options]`,
    "",
    "Options:",
    ...options.map((o) => `  ${optionLine(o).padEnd(width)}${o.description}`),
  ];
}

// ---------------------------------------------------------------------------------------------------------
// State on disk: `state.json` (sites, users, certificates), `faults.json`, `calls.jsonl`, `.lock`.

const path = (stateDir: string, name: string) => `${stateDir.replace(/\/+$/, "")}/${name}`;

async function withLock<T>(stateDir: string, exclusive: boolean, fn: () => Promise<T>): Promise<T> {
  await Deno.mkdir(stateDir, { recursive: true });
  const file = await Deno.open(path(stateDir, ".lock"), { read: true, write: true, create: true });
  try {
    await file.lock(exclusive);
    return await fn();
  } finally {
    file.close(); // closing releases the flock
  }
}

/** A file's text, or null when it does not exist yet. */
async function readText(file: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

async function readJson<T>(file: string, fallback: T): Promise<T> {
  const text = await readText(file);
  return text === null ? fallback : JSON.parse(text) as T;
}

/** Write-then-rename, so a reader never sees half a file. */
async function writeJson(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(value, null, 2) + "\n");
  await Deno.rename(tmp, file);
}

const readPanel = (stateDir: string) =>
  readJson<Panel>(path(stateDir, "state.json"), { sites: {}, users: {}, certificates: {} });
const writePanel = (stateDir: string, panel: Panel) => writeJson(path(stateDir, "state.json"), panel);
const readFaults = (stateDir: string) => readJson<Faults>(path(stateDir, "faults.json"), {});
const writeFaults = (stateDir: string, faults: Faults) => writeJson(path(stateDir, "faults.json"), faults);

async function appendCall(stateDir: string, call: CallRecord): Promise<void> {
  await Deno.writeTextFile(path(stateDir, "calls.jsonl"), JSON.stringify(call) + "\n", { append: true });
}

async function readCalls(stateDir: string): Promise<CallRecord[]> {
  const text = await readText(path(stateDir, "calls.jsonl")) ?? "";
  return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line) as CallRecord);
}

/** Everything the simulated panel holds, read under a shared lock. */
export function readSimState(stateDir: string): Promise<SimState> {
  return withLock(stateDir, false, async () => ({
    ...(await readPanel(stateDir)),
    faults: await readFaults(stateDir),
    calls: await readCalls(stateDir),
  }));
}

/** Replaces `faults.json`. */
export function setFaults(stateDir: string, faults: Faults): Promise<void> {
  return withLock(stateDir, true, () => writeFaults(stateDir, faults));
}

/** A Linux user without a site, as a half-failed creation leaves behind. */
export function addOrphanUser(stateDir: string, user: string): Promise<void> {
  return withLock(stateDir, true, async () => {
    const panel = await readPanel(stateDir);
    panel.users[user] = { userName: user, home: `/home/${user}`, kind: "orphan" };
    await writePanel(stateDir, panel);
  });
}

/** An operator removes a Linux user on the server (e.g. an orphan, so that a retry can create the site). */
export function removeUser(stateDir: string, user: string): Promise<void> {
  return withLock(stateDir, true, async () => {
    const panel = await readPanel(stateDir);
    delete panel.users[user];
    await writePanel(stateDir, panel);
  });
}

/** A site created earlier (by this module in an interrupted run, or by hand with another site user). */
export function addExistingSite(stateDir: string, domain: string, siteUser: string): Promise<void> {
  return withLock(stateDir, true, async () => {
    const panel = await readPanel(stateDir);
    createSite(panel, domain.toLowerCase(), siteUser, crypto.randomUUID().replaceAll("-", ""));
    await writePanel(stateDir, panel);
  });
}

function createSite(panel: Panel, domain: string, user: string, password: string): void {
  const now = new Date().toISOString();
  panel.sites[domain] = {
    domainName: domain,
    siteUser: user,
    siteUserPassword: password,
    type: "static",
    docRoot: `/home/${user}/htdocs/${domain}`,
    createdAt: now,
  };
  panel.users[user] = { userName: user, home: `/home/${user}`, kind: "site" };
  // CloudPanel's docs: "By default, a self-signed certificate is generated" when a site is created.
  panel.certificates[domain] = { domainName: domain, type: "self-signed", names: [domain], installedAt: now };
}

// ---------------------------------------------------------------------------------------------------------
// The commands.

function validDomain(domain: string): boolean {
  if (domain.length > 253) return false;
  const labels = domain.split(".");
  return labels.length >= 2 && labels.every((l) => LABEL_RE.test(l)) && !/^[0-9]+$/.test(labels.at(-1)!);
}

/** Validates a `--domainName`: the lines for a blank or invalid value, or none. */
function domainErrors(value: string | true | undefined): string[] {
  if (value === undefined || value === true || value === "") return [msg.notBlank("domainName")];
  return validDomain(value.toLowerCase()) ? [] : [msg.notValid("domainName")];
}

const ALL_FAULT_COMMANDS: readonly FaultCommand[] = ["site", "certificate", "delete"];

type Fault<K> = { kind: Exclude<K, "hang">; afterWork: boolean } | {
  kind: "hang";
  afterWork: true;
  hangMs: number;
};

/**
 * The fault a valid site, certificate or delete command meets now, if any: a counted one first, else a random draw.
 * Called under the panel's lock with `faults` just read; writes back what it used up (counter, generator).
 */
async function takeFault(
  stateDir: string,
  faults: Faults,
  command: "site",
): Promise<Fault<SiteFailureKind> | null>;
async function takeFault(
  stateDir: string,
  faults: Faults,
  command: "certificate",
): Promise<Fault<CertificateFailureKind> | null>;
async function takeFault(
  stateDir: string,
  faults: Faults,
  command: "delete",
): Promise<Fault<DeleteFailureKind> | null>;
async function takeFault(
  stateDir: string,
  faults: Faults,
  command: FaultCommand,
): Promise<Fault<SiteFailureKind | CertificateFailureKind> | null> {
  let kind: SiteFailureKind | CertificateFailureKind | undefined;
  let afterWork = false;
  if (command === "site" && (faults.siteFailures ?? 0) > 0) {
    faults.siteFailures! -= 1;
    kind = faults.siteFailureKind ?? "timeout";
    afterWork = faults.siteFailureAfterWork ?? false;
  } else if (command === "certificate" && (faults.certificateFailures ?? 0) > 0) {
    faults.certificateFailures! -= 1;
    kind = faults.certificateFailureKind ?? "dns";
    afterWork = faults.certificateFailureAfterWork ?? false;
  } else if (command === "delete" && (faults.deleteFailures ?? 0) > 0) {
    faults.deleteFailures! -= 1;
    kind = faults.deleteFailureKind ?? "timeout";
    afterWork = faults.deleteFailureAfterWork ?? false;
  } else if (faults.randomFaults && (faults.randomFaults.commands ?? ALL_FAULT_COMMANDS).includes(command)) {
    const random = faults.randomFaults;
    if (draw(random) < random.rate && random.kinds.length > 0) {
      kind = random.kinds[Math.floor(draw(random) * random.kinds.length)];
      afterWork = draw(random) < (random.afterWorkRate ?? 0);
    }
    await writeFaults(stateDir, faults); // the generator moved on, fault or not
  }
  if (kind === undefined) return null;
  await writeFaults(stateDir, faults);
  // A hang always comes after the work: a hang before it is the `hang` fault.
  if (kind === "hang") return { kind, afterWork: true, hangMs: faults.hangMs ?? DEFAULT_HANG_MS };
  return { kind, afterWork };
}

/** mulberry32: a small seeded generator; its state is `random.seed`, advanced in place. */
function draw(random: RandomFaults): number {
  let t = (random.seed = (random.seed + 0x6d2b79f5) >>> 0);
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const str = (value: string | true | undefined): string | undefined =>
  typeof value === "string" ? value : undefined;

const siteAddStatic: CommandDef = {
  name: "site:add:static",
  description: "Add a static HTML site.", // assumption: the real description is not quoted anywhere
  options: [
    { name: "domainName", acceptsValue: true, description: "Domain Name" },
    { name: "siteUser", acceptsValue: true, description: "Site User" },
    { name: "siteUserPassword", acceptsValue: true, description: "Site User Password" },
  ],
  run(inv, stateDir) {
    const domain = str(inv.options.get("domainName"))?.toLowerCase();
    const user = str(inv.options.get("siteUser"));
    const password = str(inv.options.get("siteUserPassword"));
    return withLock(stateDir, true, async () => {
      const panel = await readPanel(stateDir);
      // One line per violated constraint, fields in option order (Symfony validator: `<option>: <message>`).
      const errors = domainErrors(domain);
      if (errors.length === 0 && panel.sites[domain!]) errors.push(msg.alreadyExists("domainName"));
      const domainExists = errors.includes(msg.alreadyExists("domainName"));
      let userExists = false;
      if (user === undefined || user === "") {
        errors.push(msg.notBlank("siteUser"));
      } else {
        const before = errors.length;
        if (user.length > MAX_SITE_USER_LENGTH) errors.push(msg.tooLong("siteUser", MAX_SITE_USER_LENGTH));
        if (!SITE_USER_RE.test(user)) errors.push(msg.notValid("siteUser"));
        if (errors.length === before && (panel.users[user] || SYSTEM_USERS.has(user))) {
          errors.push(msg.alreadyExists("siteUser"));
          userExists = true;
        }
      }
      if (password === undefined) errors.push(msg.notBlank("siteUserPassword"));
      else {
        if (password === "") errors.push(msg.notBlank("siteUserPassword"));
        if (password.length < MIN_PASSWORD_LENGTH) {
          errors.push(msg.tooShort("siteUserPassword", MIN_PASSWORD_LENGTH));
        }
      }
      const who = { domainName: domain ?? null, siteUser: user };
      if (errors.length > 0) {
        const outcome = domainExists ? "domain_exists" : userExists ? "site_user_exists" : "rejected";
        return { out: errors, exitCode: 1, outcome, ...who };
      }

      const faults = await readFaults(stateDir);
      await sleep(faults.workMs ?? 0);
      const fault = await takeFault(stateDir, faults, "site");
      if (fault && !fault.afterWork) {
        if (faults.siteFailureLeavesUser) {
          panel.users[user!] = { userName: user!, home: `/home/${user}`, kind: "orphan" };
          await writePanel(stateDir, panel);
        }
        return { ...siteFailureText(fault.kind, user!, inv.input), outcome: `failed_${fault.kind}`, ...who };
      }

      createSite(panel, domain!, user!, password!);
      await writePanel(stateDir, panel);
      const added = { out: [msg.siteAdded(domain!)], exitCode: 0, outcome: "added", ...who };
      if (!fault) return added;
      if (fault.kind === "hang") return { ...added, answerAfterMs: fault.hangMs, outcome: "added_then_hang" };
      return {
        ...siteFailureText(fault.kind, user!, inv.input),
        outcome: `added_then_${fault.kind}`,
        ...who,
      };
    });
  },
};

const letsEncryptInstall: CommandDef = {
  name: "lets-encrypt:install:certificate",
  description: "Install a Let's Encrypt certificate.", // assumption
  options: [
    { name: "domainName", acceptsValue: true, description: "Domain Name" },
    {
      name: "subjectAlternativeName",
      acceptsValue: true,
      description: "Subject Alternative Names, comma separated",
    },
  ],
  run(inv, stateDir) {
    const domain = str(inv.options.get("domainName"))?.toLowerCase();
    const san = inv.options.get("subjectAlternativeName");
    return withLock(stateDir, true, async () => {
      const errors = domainErrors(domain);
      const extra = typeof san === "string"
        ? san.split(",").map((n) => n.trim().toLowerCase()).filter(Boolean)
        : [];
      if (san !== undefined && (extra.length === 0 || !extra.every(validDomain))) {
        errors.push(msg.notValid("subjectAlternativeName"));
      }
      const who = { domainName: domain ?? null };
      if (errors.length > 0) return { out: errors, exitCode: 1, outcome: "rejected", ...who };

      const panel = await readPanel(stateDir);
      if (!panel.sites[domain!]) {
        return { out: [msg.siteNotFound(domain!)], exitCode: 1, outcome: "no_site", ...who };
      }

      // The names the function's DNS check expects: one rule for both (the Public Suffix List's apex).
      const names = [...new Set([...certificateNames(domain!), ...extra])];
      const faults = await readFaults(stateDir);
      await sleep(faults.workMs ?? 0);
      const fault = await takeFault(stateDir, faults, "certificate");
      if (fault && !fault.afterWork) {
        const outcome = fault.kind === "account"
          ? "account_error"
          : ["dns", "unauthorized", "connection"].includes(fault.kind)
          ? "not_validated"
          : `failed_${fault.kind}`;
        return { ...certificateFailureText(fault.kind, names), outcome, ...who };
      }
      panel.certificates[domain!] = {
        domainName: domain!,
        type: "lets-encrypt",
        names,
        installedAt: new Date().toISOString(),
      };
      await writePanel(stateDir, panel);
      const installed = { out: [msg.certificateInstalled(names)], exitCode: 0, outcome: "installed", ...who };
      if (!fault) return installed;
      if (fault.kind === "hang") {
        return { ...installed, answerAfterMs: fault.hangMs, outcome: "installed_then_hang" };
      }
      return {
        ...certificateFailureText(fault.kind, names),
        outcome: `installed_then_${fault.kind}`,
        ...who,
      };
    });
  },
};

const siteDelete: CommandDef = {
  name: "site:delete",
  description: "Delete a site.", // assumption
  options: [
    { name: "domainName", acceptsValue: true, description: "Domain Name" },
    { name: "force", acceptsValue: false, description: "Skip the confirmation" },
  ],
  async run(inv, stateDir, io) {
    const domain = str(inv.options.get("domainName"))?.toLowerCase();
    const errors = domainErrors(domain);
    const who = { domainName: domain ?? null };
    if (errors.length > 0) return { out: errors, exitCode: 1, outcome: "rejected", ...who };
    const out: string[] = [];
    if (!inv.options.has("force")) {
      // CloudPanel's docs: prompts unless --force. Assumption: anything but "yes" (or none) aborts, exit 1.
      const answer = inv.options.has("no-interaction") ? null : await io.prompt(msg.confirmDelete, out);
      if (answer?.trim() !== "yes") {
        return { out, err: ["Aborted."], exitCode: 1, outcome: "aborted", ...who };
      }
    }
    return withLock(stateDir, true, async () => {
      const panel = await readPanel(stateDir);
      const site = panel.sites[domain!];
      const faults = await readFaults(stateDir);
      await sleep(faults.workMs ?? 0);
      // Faults meet a delete whether the site is there or not: a retry of a delete that did its work meets
      // them too, so a client's "already absent" path is exercised under faults as well.
      const fault = await takeFault(stateDir, faults, "delete");
      // After a confirmed prompt its line comes first, then the failure.
      const failed = (kind: Exclude<DeleteFailureKind, "hang">, outcome: string): Outcome => {
        const ending = deleteFailureText(kind, site?.siteUser);
        return { ...ending, out: [...out, ...ending.out], outcome, ...who };
      };
      if (fault && !fault.afterWork) return failed(fault.kind, `failed_${fault.kind}`);
      let answer: Outcome;
      if (!site) {
        answer = { out: [...out, msg.siteNotFound(domain!)], exitCode: 1, outcome: "no_site", ...who };
      } else {
        // site:delete removes the vhost, the certificates and the site user with its home (userdel -r).
        delete panel.sites[domain!];
        delete panel.certificates[domain!];
        delete panel.users[site.siteUser];
        await writePanel(stateDir, panel);
        answer = { out: [...out, msg.siteDeleted(domain!)], exitCode: 0, outcome: "deleted", ...who };
      }
      if (!fault) return answer;
      if (fault.kind === "hang") {
        return { ...answer, answerAfterMs: fault.hangMs, outcome: `${answer.outcome}_then_hang` };
      }
      return failed(fault.kind, `${answer.outcome}_then_${fault.kind}`);
    });
  },
};

const helpCommand: CommandDef = {
  name: "help",
  description: "Display help for a command",
  options: [],
  run(inv) {
    const target = str(inv.options.get("command_name"));
    const subject = target === undefined ? helpCommand : findCommand(target);
    return Promise.resolve({ out: helpText(subject), exitCode: 0, outcome: "help" });
  },
};

const listCommand: CommandDef = {
  name: "list",
  description: "List commands",
  options: [],
  run() {
    return Promise.resolve({ out: listText(), exitCode: 0, outcome: "listed" });
  },
};

/** Assumption: only the verbs this project uses (and Symfony's help/list) exist in the simulator. */
const COMMANDS: CommandDef[] = [helpCommand, listCommand, letsEncryptInstall, siteAddStatic, siteDelete];

// ---------------------------------------------------------------------------------------------------------
// Running one invocation.

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 && !signal?.aborted) return Promise.resolve();
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The `delayMs` and `hang` faults: read (and a hang counter decremented) under the lock, slept outside it. */
async function applyDelayFaults(stateDir: string, signal?: AbortSignal): Promise<void> {
  const wait = await withLock(stateDir, true, async () => {
    const faults = await readFaults(stateDir);
    let ms = faults.delayMs ?? 0;
    if (faults.hang === true || (typeof faults.hang === "number" && faults.hang > 0)) {
      ms += faults.hangMs ?? DEFAULT_HANG_MS;
      if (typeof faults.hang === "number") {
        faults.hang -= 1;
        await writeFaults(stateDir, faults);
      }
    }
    return ms;
  });
  if (wait > 0) await sleep(wait, signal);
}

function domainFromArgv(argv: string[]): string | null {
  const token = argv.find((t) => t.startsWith("--domainName="));
  return token ? token.slice("--domainName=".length).toLowerCase() : null;
}

async function dispatch(argv: string[], stateDir: string, io: Io): Promise<Outcome & { verb: string }> {
  const name = firstArgument(argv);
  const beforeDashes = argv.indexOf("--") < 0 ? argv : argv.slice(0, argv.indexOf("--"));
  // Symfony answers --version before it looks for the command.
  if (beforeDashes.includes("--version") || beforeDashes.includes("-V")) {
    return { verb: "version", out: [CLI_VERSION_LINE], exitCode: 0, outcome: "version" };
  }
  let command: CommandDef | null = null;
  try {
    // No command: Symfony runs `list`.
    command = name === undefined ? listCommand : findCommand(name);
    const options = bindOptions(argv, name === undefined ? null : command);
    if (options.has("help")) return { verb: "help", out: helpText(command), exitCode: 0, outcome: "help" };
    const result = await command.run({ options, input: inputString(argv, command.name) }, stateDir, io);
    if (options.has("quiet")) result.out = [];
    return { verb: command.name, ...result };
  } catch (error) {
    if (!(error instanceof ConsoleException)) throw error;
    const record = monologRecord(
      error.className,
      error.message,
      inputString(argv, command?.name),
      error.file,
    );
    return {
      verb: command?.name ?? name ?? "",
      out: [],
      err: [record],
      exitCode: 1,
      outcome: "error",
      domainName: domainFromArgv(argv),
    };
  }
}

async function run(argv: string[], stateDir: string, io: Io): Promise<ClpctlResult> {
  await applyDelayFaults(stateDir, io.signal);
  const result = await dispatch(argv, stateDir, io);
  const signal = result.signal ? { signal: result.signal } : {};
  await withLock(stateDir, true, () =>
    appendCall(stateDir, {
      time: new Date().toISOString(),
      verb: result.verb,
      domainName: result.domainName ?? domainFromArgv(argv),
      ...(result.siteUser ? { siteUser: result.siteUser } : {}),
      outcome: result.outcome,
      exitCode: result.exitCode,
      ...signal,
    }));
  // The work is done and logged; the answer is late (a client that gives up sooner never sees it).
  if (result.answerAfterMs) await sleep(result.answerAfterMs, io.signal);
  const text = (lines: string[] | undefined) => lines && lines.length ? lines.join("\n") + "\n" : "";
  return { stdout: text(result.out), stderr: text(result.err), exitCode: result.exitCode, ...signal };
}

/**
 * Runs one clpctl invocation against the state in `stateDir`. `stdin` answers a prompt (site:delete without
 * --force); without it the prompt meets end of input. `signal` cuts a `delayMs` or `hang` short (it rejects).
 */
export function runClpctl(
  argv: string[],
  stateDir: string,
  options: { stdin?: string; signal?: AbortSignal } = {},
): Promise<ClpctlResult> {
  const io: Io = {
    signal: options.signal,
    prompt(question, out) {
      out.push(question);
      return Promise.resolve(options.stdin === undefined ? null : options.stdin.split("\n")[0]);
    },
  };
  return run(argv, stateDir, io);
}

async function writeAll(stream: { write(p: Uint8Array): Promise<number> }, text: string): Promise<void> {
  let bytes = new TextEncoder().encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(await stream.write(bytes));
}

/** Reads one line from stdin; null at end of input. */
async function readLine(): Promise<string | null> {
  const buf = new Uint8Array(1024);
  let line = "";
  const decoder = new TextDecoder();
  while (true) {
    const n = await Deno.stdin.read(buf);
    if (n === null) return line === "" ? null : line;
    line += decoder.decode(buf.subarray(0, n), { stream: true });
    const nl = line.indexOf("\n");
    if (nl >= 0) return line.slice(0, nl);
  }
}

if (import.meta.main) {
  const stateDir = Deno.env.get("CLPCTL_SIM_STATE");
  if (!stateDir) {
    await writeAll(
      Deno.stderr,
      "clpctl simulator: CLPCTL_SIM_STATE is not set. Set it to the simulator's state directory " +
        "(created if missing), e.g. CLPCTL_SIM_STATE=/tmp/clpctl-state clpctl site:add:static ...\n",
    );
    Deno.exit(2);
  }
  const result = await run(Deno.args, stateDir, {
    async prompt(question) {
      await writeAll(Deno.stdout, question); // shown before waiting, as a terminal user would see it
      return await readLine();
    },
  });
  await writeAll(Deno.stdout, result.stdout);
  await writeAll(Deno.stderr, result.stderr);
  // The `killed` fault: die by the signal itself, so the parent (sshd, a shell) sees what it would see.
  if (result.signal) Deno.kill(Deno.pid, `SIG${result.signal}` as Deno.Signal);
  Deno.exit(result.exitCode ?? 1);
}
