/**
 * The CloudPanel client: builds `clpctl` command lines from validated values and runs them; what clpctl
 * answers is classified by the outcome table (cloudpanel_outcomes.ts), which reads the text of both streams,
 * the exit status and the signal.
 */
import {
  docRootFor,
  type Domain,
  generatePassword,
  shellQuote,
  type SiteUser,
  siteUserFor,
} from "./domain.ts";
import { isFinished, linesOf, outcomeOf, type Verb } from "./cloudpanel_outcomes.ts";
import { HostingError } from "./errors.ts";
import { type Logger, Redactor } from "./log.ts";
import type { ExecResult, RemoteShell } from "./remote.ts";

export interface DeleteResult {
  /** False when there was no site to delete (an earlier, interrupted run deleted it, or none was made). */
  deleted: boolean;
}

export interface SiteResult {
  siteUser: SiteUser;
  docRoot: string;
  /** False when the site was already there (an earlier, interrupted run). */
  created: boolean;
}

/** What generatePassword makes; a password from anywhere else must look the same. */
const SITE_PASSWORD_RE = /^[A-Za-z0-9]{16,128}$/;

/** Internal messages keep at most this much of clpctl's output. */
const MAX_OUTPUT_CHARS = 2000;

/** The orphan user's line; with it alone, a site that exists with another user is not ours (a warning). */
const SITE_USER_EXISTS = "siteUser: This value already exists.";

export function addStaticSiteCommand(domain: Domain, user: SiteUser, password: string): string {
  return `clpctl site:add:static --domainName=${shellQuote(domain)} --siteUser=${shellQuote(user)}` +
    ` --siteUserPassword=${shellQuote(password)}`;
}

export function installCertificateCommand(domain: Domain): string {
  return `clpctl lets-encrypt:install:certificate --domainName=${shellQuote(domain)}`;
}

/** `--force`: without it clpctl asks for confirmation, which over SSH without a terminal would never come. */
export function deleteSiteCommand(domain: Domain): string {
  return `clpctl site:delete --domainName=${shellQuote(domain)} --force`;
}

/** For callers without the app's redactor (tests of the classifiers): the secret shapes only. */
const PATTERNS_ONLY = new Redactor();

/** The output for internal messages: how it ended, redacted, trimmed, bounded. */
function outputOf(result: ExecResult, redactor: Redactor): string {
  const text = redactor.redact(linesOf(result).join("\n"));
  const bounded = text.length > MAX_OUTPUT_CHARS ? `${text.slice(0, MAX_OUTPUT_CHARS)} …[truncated]` : text;
  const ended = result.exitCode !== null
    ? `exit ${result.exitCode}`
    : result.signal
    ? `signal ${result.signal}`
    : "no exit status";
  return `${ended}: ${bounded || "(no output)"}`;
}

/**
 * The step's answer by the outcome table: the finished row's result, or the row's HostingError (code, retry,
 * attempt limit, public text; the internal message names the row and keeps the output).
 */
function classify(verb: Verb, result: ExecResult, domain: Domain, redactor: Redactor, siteUser?: SiteUser) {
  const row = outcomeOf(verb, result, domain);
  if (isFinished(row.result)) return row.result;
  const publicMessage = typeof row.publicMessage === "function"
    ? row.publicMessage({ lines: linesOf(result), domain, siteUser })
    : row.publicMessage;
  throw new HostingError(row.result, `clpctl ${verb} (${row.id}): ${outputOf(result, redactor)}`, {
    transient: row.transient,
    attemptLimit: row.attemptLimit,
    publicMessage,
  });
}

/**
 * The site step's answer: created, already there, or a HostingError saying whether a retry can help. Its
 * internal message passes `redactor` (the app's, which knows the generated password).
 */
export function classifyAddSite(
  result: ExecResult,
  domain: Domain,
  user: SiteUser,
  redactor: Redactor = PATTERNS_ONLY,
): SiteResult {
  const done = classify("site:add:static", result, domain, redactor, user);
  return { siteUser: user, docRoot: docRootFor(user, domain), created: done === "created" };
}

/** The certificate step's answer; returns on success. */
export function classifyCertificate(
  result: ExecResult,
  domain: Domain,
  redactor: Redactor = PATTERNS_ONLY,
): void {
  classify("lets-encrypt:install:certificate", result, domain, redactor);
}

/** The removal step's answer: deleted, already absent, or a HostingError saying whether a retry can help. */
export function classifyDeleteSite(
  result: ExecResult,
  domain: Domain,
  redactor: Redactor = PATTERNS_ONLY,
): DeleteResult {
  return { deleted: classify("site:delete", result, domain, redactor) === "deleted" };
}

export interface StepOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/** CloudPanel over a remote shell; the shell (one SSH connection per invocation) belongs to the caller. */
export class CloudPanel {
  readonly #shell: () => Promise<RemoteShell>;
  readonly #logger: Logger;

  constructor(shell: () => Promise<RemoteShell>, logger: Logger) {
    this.#shell = shell;
    this.#logger = logger;
  }

  /**
   * Creates the static site, or finds it already there; the site user is derived from the domain. The password
   * is the caller's (stored before the command is sent), or a new one.
   */
  async addStaticSite(domain: Domain, options: StepOptions & { password?: string }): Promise<SiteResult> {
    const user = siteUserFor(domain);
    const password = options.password ?? generatePassword();
    // A password read back from Vault is text from outside this process: checked before it reaches a shell.
    if (!SITE_PASSWORD_RE.test(password)) {
      throw new HostingError("internal", "the site password is not 16 to 128 letters and digits", {
        publicMessage:
          "The stored site-user password is malformed; delete the site's Vault secret, then retry.",
      });
    }
    // Registered before the command exists, so no log line, error or event can ever carry it.
    this.#logger.redactor.add(password);
    const command = addStaticSiteCommand(domain, user, password);
    const result = await this.#exec(command, options);
    const site = this.#classified(
      "site",
      domain,
      () => classifyAddSite(result, domain, user, this.#logger.redactor),
    );
    if (!site.created && !linesOf(result).includes(SITE_USER_EXISTS)) {
      // The domain exists but our site user does not: someone made the site with another user by hand.
      this.#logger.warn("cloudpanel site exists with another site user; the recorded doc root may differ", {
        domain,
        site_user: user,
      });
    }
    this.#logger.info(site.created ? "cloudpanel site added" : "cloudpanel site already exists", {
      domain,
      site_user: user,
    });
    return site;
  }

  /** Issues the Let's Encrypt certificate for a site that exists. */
  async installCertificate(domain: Domain, options: StepOptions): Promise<void> {
    const result = await this.#exec(installCertificateCommand(domain), options);
    this.#classified("certificate", domain, () => classifyCertificate(result, domain, this.#logger.redactor));
    this.#logger.info("let's encrypt certificate installed", { domain });
  }

  /** Deletes the site (its files, site user and certificates go with it), or finds it already absent. */
  async deleteSite(domain: Domain, options: StepOptions): Promise<DeleteResult> {
    const result = await this.#exec(deleteSiteCommand(domain), options);
    const done = this.#classified(
      "site removal",
      domain,
      () => classifyDeleteSite(result, domain, this.#logger.redactor),
    );
    this.#logger.info(done.deleted ? "cloudpanel site deleted" : "cloudpanel site already absent", {
      domain,
    });
    return done;
  }

  /** Logs a classification failure and passes it on (its internal message is redacted by the classifier). */
  #classified<T>(step: string, domain: Domain, classify: () => T): T {
    try {
      return classify();
    } catch (error) {
      if (!(error instanceof HostingError)) throw error;
      this.#logger.warn(`cloudpanel ${step} step failed`, {
        domain,
        code: error.code,
        transient: error.transient,
        ...(error.attemptLimit ? { attempt_limit: error.attemptLimit } : {}),
        detail: error.message,
      });
      throw error;
    }
  }

  /**
   * Runs a command. The output is classified as it came: redacting it first could cut a success line in two
   * where a secret's text happens to occur in it (a domain containing a short database password). Internal
   * messages built from it are redacted where they leave the process: the logger and the workflow's writes.
   */
  async #exec(command: string, options: StepOptions): Promise<ExecResult> {
    const shell = await this.#shell();
    const started = performance.now();
    this.#logger.debug("clpctl", { command }); // every log line passes the redactor
    const result = await shell.exec(command, options);
    this.#logger.debug("clpctl finished", {
      exit_code: result.exitCode,
      ...(result.signal ? { signal: result.signal } : {}),
      duration_ms: Math.round(performance.now() - started),
    });
    return result;
  }
}
