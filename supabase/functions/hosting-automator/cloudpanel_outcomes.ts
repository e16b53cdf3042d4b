/**
 * Every answer the three clpctl commands can give, as one table: what a row matches (lines of output, exit
 * status, signal), what it means, its error code, whether a retry can help, the public message and, for
 * answers nobody recognised, how many attempts a job may spend on it. The CloudPanel client reads its
 * classification from here and nowhere else; the first row that matches wins.
 *
 * Why retries are safe: every command is idempotent from the outside. A second `site:add:static` answers
 * "domainName: This value already exists." when the first one created the site (that counts as done), a
 * second certificate request installs the certificate again, and a second `site:delete` finds no site (that
 * counts as done too). So anything that may pass (a timeout, a busy database, a killed process) is retried
 * with backoff; what will not pass by waiting (a refused value, an orphan user, a missing command) fails at
 * once with a message saying what to fix; and an answer that is not recognised is retried only a few times,
 * so a command that is broken for good cannot loop for hours.
 *
 * Which stream carries a message and which exit status a failure has are not documented by CloudPanel, so
 * text is matched on both streams and, except where a row says otherwise, with any exit status.
 */
import { ERROR_CODES, type ErrorCode } from "./errors.ts";
import type { ExecResult } from "./remote.ts";

export type Verb = "site:add:static" | "lets-encrypt:install:certificate" | "site:delete";
export const VERBS: readonly Verb[] = ["site:add:static", "lets-encrypt:install:certificate", "site:delete"];

/** A finished step: the site created or already there, the certificate installed, the site deleted or absent. */
export const FINISHED = ["created", "exists", "installed", "deleted", "absent"] as const;
export type Finished = typeof FINISHED[number];

export function isFinished(result: Outcome["result"]): result is Finished {
  return (FINISHED as readonly string[]).includes(result);
}

/** What a command's answer is matched on. Every field given must hold; an empty match holds always. */
export interface Match {
  /**
   * The exit status: one of these numbers, `zero`, `nonzero`, or `none` (no exit status and no signal: the
   * connection dropped, so nobody knows how the command ended).
   */
  exit?: readonly number[] | "zero" | "nonzero" | "none";
  /** Ended by one of these signals (SSH `exit-signal` names, without "SIG"). */
  signal?: readonly string[];
  /** Nothing at all on stdout and stderr. */
  silent?: true;
  /** Some line is this text exactly (`{domain}` stands for the domain), or matches this pattern. */
  line?: string | RegExp;
  /** No line matches this pattern. */
  noLine?: RegExp;
}

/** What the row makes of the answer as the public message needs it. */
export interface Seen {
  lines: readonly string[];
  domain: string;
  siteUser?: string;
}

export interface Outcome {
  /** Stable name, shown in internal messages so an event says which row matched. */
  id: string;
  verbs: readonly Verb[];
  /** One match, or several of which any may hold. */
  when: Match | readonly Match[];
  /** A finished step (one of FINISHED) or the error code the step fails with. */
  result: Finished | ErrorCode;
  /** Retry with backoff. Always the code's own setting in ERROR_CODES (a test checks): one code, one policy. */
  transient?: boolean;
  /** For transient rows that nobody recognised: the same code this many times in a row fails the job. */
  attemptLimit?: number;
  /** Public text, when the code's default text is not the best one; never holds values or output. */
  publicMessage?: string | ((seen: Seen) => string);
  /** What it means, for operators. */
  meaning: string;
  /** Where the text comes from: observed (with a source), or plausible (not observed from clpctl). */
  basis: string;
}

/** Times in a row a job may meet the same answer that no row recognises before it fails. */
export const UNRECOGNISED_ATTEMPT_LIMIT = 3;

/** Signals that end a process from outside (OOM killer, a restart, an operator), and their shell statuses. */
const KILL_SIGNALS = ["KILL", "TERM", "INT", "HUP"] as const;
/** 128 + the signal number: how a shell reports a child that a signal ended (HUP 1, INT 2, KILL 9, TERM 15). */
const KILL_EXIT_STATUSES = [129, 130, 137, 143] as const;
/**
 * What a shell prints when a signal ended its child: `<script>: line 5:  4877 Killed   <command>` (bash), or a
 * bare `Killed`. clpctl is a shell wrapper around sudo and PHP, so a killed PHP may be reported this way.
 */
const SHELL_KILLED_RE = /^(?:.+: line \d+: +\d+ +)?(?:Killed|Terminated|Hangup)(?: .*)?$/;

/** `<cliOption>: <Symfony validator message>`; Symfony's messages start with "This". */
const VALIDATION_RE = /^([A-Za-z][A-Za-z ]{0,40}): (This .+)$/;
/** Validator text that may be shown publicly: plain words, no quotes, paths or values. */
const SAFE_VALIDATOR_TEXT_RE = /^This [A-Za-z0-9 .,]{1,150}$/;
/** Timeouts CloudPanel reports (CE#390, CE#449, CE#182): the server is slow or its outbound calls are. */
const TIMEOUT_RE = /exceeded the timeout|cURL error 28|Operation timed out/i;
const ACME_TYPE_RE = /urn:ietf:params:acme:error:([A-Za-z]+)/;
/**
 * A command about a site that is not there. Assumed text: no source shows what CloudPanel prints for a domain
 * without a site, so the domain may come quoted or bare and the full stop may be missing.
 */
const SITE_MISSING_RE = /^Site "?[^"]+"? does not exist\.?$/;
/** Failure markers in output whose exit status says success. */
const FAILURE_MARKER_RE =
  /An error has occurred|"level_name":"(?:ERROR|CRITICAL|ALERT|EMERGENCY)"|^[A-Za-z ]+: This /;

const ALL = VERBS;
const SITE: readonly Verb[] = ["site:add:static"];
const CERTIFICATE: readonly Verb[] = ["lets-encrypt:install:certificate"];
const DELETE: readonly Verb[] = ["site:delete"];

/** The refused fields, with the validator's text where it is safe to show. */
function refusedFields(seen: Seen): string {
  const safe = (text: string) =>
    SAFE_VALIDATOR_TEXT_RE.test(text) && !text.includes(seen.domain) &&
    (seen.siteUser === undefined || !text.includes(seen.siteUser));
  return seen.lines.map((line) => VALIDATION_RE.exec(line)).filter((m) => m !== null)
    .map(([, field, text]) => safe(text) ? `${field}: ${text}` : field).join(" ");
}

/** The table. Order matters: the first row that matches wins. */
export const CLOUDPANEL_OUTCOMES: readonly Outcome[] = [
  {
    id: "no_exit_status",
    verbs: ALL,
    when: { exit: "none" },
    result: "ssh_unreachable",
    transient: true,
    meaning: "the command ended without an exit status or signal: the connection dropped while it ran",
    basis:
      "SSH: sshd sends neither when the session is torn down; the step is idempotent, a retry settles it",
  },
  {
    id: "site_added",
    verbs: SITE,
    when: { exit: "zero", line: "Site {domain} has been added." },
    result: "created",
    meaning: "the site was created",
    basis: "observed (CE#351)",
  },
  {
    // Before the siteUser line: re-adding our own site reports both lines.
    id: "domain_exists",
    verbs: SITE,
    when: { line: "domainName: This value already exists." },
    result: "exists",
    meaning: "the site is already there (an earlier attempt created it): the step is done",
    basis: "observed by independent integrations that match this line",
  },
  {
    id: "site_user_orphan",
    verbs: SITE,
    when: { line: "siteUser: This value already exists." },
    result: "cloudpanel_site_user_exists",
    transient: false,
    meaning: "the site user exists on the server without the site (a half-finished earlier creation)",
    basis: "observed by independent integrations (orphan Linux user)",
  },
  {
    id: "acme_account",
    verbs: CERTIFICATE,
    when: { line: /An error occurred while registering an account/ },
    result: "certificate_not_validated",
    transient: true,
    publicMessage: "Let's Encrypt could not be reached to register the ACME account; will retry.",
    meaning: "the server could not reach Let's Encrypt to register its ACME account",
    basis: "observed (CE#182)",
  },
  {
    id: "acme_not_validated",
    verbs: CERTIFICATE,
    when: { line: /Domain could not be validated|urn:ietf:params:acme:error:/ },
    result: "certificate_not_validated",
    transient: true,
    publicMessage: (seen) => {
      const type = seen.lines.map((line) => ACME_TYPE_RE.exec(line)?.[1]).find((t) => t !== undefined);
      const text = ERROR_CODES.certificate_not_validated.text;
      return type ? text.replace("yet", `yet (ACME error: ${type})`) : text;
    },
    meaning: "Let's Encrypt could not validate the domain: DNS not propagated, or ports 80/443 closed",
    basis: "observed (CE#372, CE#810; NXDOMAIN in Let's Encrypt's wording)",
  },
  {
    id: "internal_database_timeout",
    verbs: ALL,
    when: { line: /Connection to the internal database timed out/i },
    result: "cloudpanel_unavailable",
    transient: true,
    meaning: "CloudPanel's own database did not answer in time",
    basis: "observed on a production server: " +
      "`An error has occurred, error message: Connection to the internal database timed out.`",
  },
  {
    id: "database_locked",
    verbs: ALL,
    when: {
      line:
        /database is locked|database table is locked|Resource temporarily unavailable|Lock wait timeout exceeded|Deadlock found when trying to get lock/i,
    },
    result: "cloudpanel_unavailable",
    transient: true,
    meaning: "CloudPanel's database or a system resource was busy (locked by another command)",
    basis:
      "plausible, not observed from clpctl: SQLite's busy errors (CloudPanel keeps its state in SQLite), " +
      "EAGAIN from fork or flock, MySQL's lock timeouts",
  },
  {
    id: "process_timeout",
    verbs: ALL,
    when: { line: TIMEOUT_RE },
    result: "cloudpanel_busy",
    transient: true,
    meaning: "a step inside CloudPanel or one of its outbound calls timed out",
    basis: "observed (CE#390 `exceeded the timeout of 90 seconds`, CE#449 `cURL error 28`)",
  },
  {
    id: "killed",
    verbs: ALL,
    when: [
      { signal: KILL_SIGNALS },
      { exit: KILL_EXIT_STATUSES, silent: true },
      { exit: KILL_EXIT_STATUSES, line: SHELL_KILLED_RE },
    ],
    result: "cloudpanel_unavailable",
    transient: true,
    meaning: "clpctl was killed before it answered (out of memory, a restart, an operator): a signal ended " +
      "it, or its shell reported 128 + the signal with no output or only its `Killed` line",
    basis: "SSH `exit-signal` (sshd reports a command a signal ended); 128 + n is how a shell reports it",
  },
  {
    id: "gate_refused",
    verbs: ALL,
    when: { exit: [64], line: /^[a-z][a-z -]*: refused: / },
    result: "cloudpanel_rejected",
    transient: false,
    publicMessage:
      "The CloudPanel server's command gate refused the command; the gate and this function may be different versions.",
    meaning:
      "the forced-command gate on the server refused the command line (exit 64, `… refused: <reason>`)",
    basis: "this project's gate (deploy/cloudpanel/clpctl-gate)",
  },
  {
    id: "not_runnable",
    verbs: ALL,
    when: [
      { exit: [126, 127] },
      { exit: [78], line: /^clpctl-gate: error: / },
      { line: /^sudo: (?:a password is required|a terminal is required|sorry, you are not allowed)/ },
    ],
    result: "cloudpanel_misconfigured",
    transient: false,
    meaning: "clpctl could not be started: not found or not executable (126, 127), the gate's " +
      "CLPCTL_GATE_BIN is wrong (78), or sudo asks for a password",
    basis: "shell and sudo conventions; this project's gate",
  },
  {
    id: "unknown_command_or_option",
    verbs: ALL,
    when: { line: /"class":"Symfony(?:\\)+Component(?:\\)+Console(?:\\)+Exception/ },
    result: "cloudpanel_misconfigured",
    transient: false,
    meaning: "this CloudPanel version does not know the command or one of its options (Symfony Console " +
      "exception in CloudPanel's JSON error record)",
    basis: "observed (CE#688, CE#720)",
  },
  {
    id: "site_refused",
    verbs: SITE,
    when: { line: VALIDATION_RE },
    result: "cloudpanel_rejected",
    transient: false,
    publicMessage: (seen) => `CloudPanel rejected the site: ${refusedFields(seen)}`,
    meaning: "CloudPanel refused a value (`<field>: This value …`)",
    basis: "observed (CE#284, CE#277, CE#471)",
  },
  {
    id: "certificate_refused",
    verbs: CERTIFICATE,
    when: { line: VALIDATION_RE },
    result: "cloudpanel_rejected",
    transient: false,
    publicMessage: (seen) => `CloudPanel rejected the certificate request: ${refusedFields(seen)}`,
    meaning: "CloudPanel refused a value (`<field>: This value …`)",
    basis: "observed for other commands (CE#284); the same validator serves this one",
  },
  {
    id: "certificate_site_missing",
    verbs: CERTIFICATE,
    when: { exit: "nonzero", line: SITE_MISSING_RE },
    result: "cloudpanel_rejected",
    transient: false,
    publicMessage:
      "CloudPanel has no site for this domain (removed on the server?), so no certificate can be installed.",
    meaning: "the site is not on the server although the site step finished (removed by hand)",
    basis: "assumed text: no source shows what CloudPanel prints for a domain without a site",
  },
  {
    id: "delete_refused",
    verbs: DELETE,
    when: { line: VALIDATION_RE },
    result: "cloudpanel_rejected",
    transient: false,
    publicMessage: (seen) => `CloudPanel rejected the site removal: ${refusedFields(seen)}`,
    meaning: "CloudPanel refused a value (`<field>: This value …`)",
    basis: "observed for other commands (CE#284); the same validator serves this one",
  },
  {
    id: "delete_site_absent",
    verbs: DELETE,
    when: { exit: "nonzero", line: SITE_MISSING_RE },
    result: "absent",
    meaning: "there is no site for the domain (an earlier attempt deleted it, or it was never made): the " +
      "removal is done",
    basis: "assumed text: no source shows what CloudPanel prints for a domain without a site; the same " +
      "shapes as the certificate command's missing site",
  },
  {
    id: "site_unconfirmed",
    verbs: SITE,
    when: [{ exit: "zero" }, { line: "Site {domain} has been added." }],
    result: "cloudpanel_failed",
    transient: true,
    attemptLimit: UNRECOGNISED_ATTEMPT_LIMIT,
    publicMessage: "CloudPanel gave an unexpected answer; will retry.",
    meaning: "success without its text, or its text with a failure status: a second attempt answers " +
      "`domainName: This value already exists.` if the site is there",
    basis: "defensive: the success text is observed (CE#351), other wordings are not",
  },
  {
    id: "certificate_installed",
    verbs: CERTIFICATE,
    when: { exit: "zero", noLine: FAILURE_MARKER_RE },
    result: "installed",
    meaning: "the certificate was installed (exit 0 without any failure marker: the success text is unknown)",
    basis: "no verbatim success text is known",
  },
  {
    id: "site_deleted",
    verbs: DELETE,
    when: { exit: "zero", noLine: FAILURE_MARKER_RE },
    result: "deleted",
    meaning: "the site was deleted (exit 0 without any failure marker: the success text is unknown)",
    basis: "no verbatim success text is known",
  },
  {
    id: "site_unrecognised",
    verbs: SITE,
    when: {},
    result: "cloudpanel_failed",
    transient: true,
    attemptLimit: UNRECOGNISED_ATTEMPT_LIMIT,
    meaning: "any other failure (e.g. `useradd: …`, an uncaught exception, `cURL error 6`): retried a few " +
      "times in case it passes, then the site fails with CloudPanel's output in the event log",
    basis: "observed shapes (CE#341, CE#323, CE#580) and anything unknown",
  },
  {
    id: "certificate_unrecognised",
    verbs: CERTIFICATE,
    when: {},
    result: "certificate_failed",
    transient: true,
    attemptLimit: UNRECOGNISED_ATTEMPT_LIMIT,
    meaning: "any other failure, or exit 0 with an error in the output: retried a few times, then the site " +
      "fails with CloudPanel's output in the event log",
    basis: "anything unknown",
  },
  {
    id: "delete_unrecognised",
    verbs: DELETE,
    when: {},
    result: "cloudpanel_delete_failed",
    transient: true,
    attemptLimit: UNRECOGNISED_ATTEMPT_LIMIT,
    meaning: "any other failure, or exit 0 with an error in the output: retried a few times (a second " +
      "attempt finds no site if the first one deleted it), then the removal fails with CloudPanel's output " +
      "in the event log",
    basis: "anything unknown",
  },
];

/** Both streams as trimmed lines, colour codes removed. */
export function linesOf(result: ExecResult): string[] {
  // deno-lint-ignore no-control-regex
  const text = `${result.stdout}\n${result.stderr}`.replace(/\x1b\[[0-9;]*m/g, "");
  return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line.length > 0);
}

function holds(match: Match, result: ExecResult, lines: readonly string[], domain: string): boolean {
  const { exitCode, signal } = result;
  if (match.exit !== undefined) {
    const ok = match.exit === "none"
      ? exitCode === null && !signal
      : match.exit === "zero"
      ? exitCode === 0
      : match.exit === "nonzero"
      ? exitCode !== null && exitCode !== 0
      : exitCode !== null && match.exit.includes(exitCode);
    if (!ok) return false;
  }
  if (match.signal !== undefined && (exitCode !== null || !signal || !match.signal.includes(signal))) {
    return false;
  }
  if (match.silent && lines.length > 0) return false;
  if (match.line !== undefined) {
    const pattern = match.line;
    const ok = typeof pattern === "string"
      ? lines.includes(pattern.replaceAll("{domain}", domain))
      : lines.some((line) => pattern.test(line));
    if (!ok) return false;
  }
  if (match.noLine !== undefined && lines.some((line) => match.noLine!.test(line))) return false;
  return true;
}

/** The first row of `verb` that matches the answer; the last rows match anything, so there always is one. */
export function outcomeOf(verb: Verb, result: ExecResult, domain: string): Outcome {
  const lines = linesOf(result);
  for (const row of CLOUDPANEL_OUTCOMES) {
    if (!row.verbs.includes(verb)) continue;
    const matches = Array.isArray(row.when) ? row.when : [row.when as Match];
    if (matches.some((match) => holds(match, result, lines, domain))) return row;
  }
  throw new Error(`no outcome row for ${verb}: the table must end with a row that matches anything`);
}
