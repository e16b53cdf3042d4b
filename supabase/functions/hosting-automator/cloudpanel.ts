/**
 * The CloudPanel client: builds `clpctl` command lines from validated values and classifies what clpctl
 * answers (design §7, `reference/cloudpanel.md` §2). Classification reads the text of both streams, not only
 * the exit status: which stream carries a message and which exit status a failure has are undocumented
 * (reference §2.3), and the text is what independent integrations match on.
 */
import {
  docRootFor,
  type Domain,
  generatePassword,
  shellQuote,
  type SiteUser,
  siteUserFor,
} from "./domain.ts";
import { ERROR_CODES, HostingError } from "./errors.ts";
import { type Logger, Redactor } from "./log.ts";
import type { ExecResult, RemoteShell } from "./remote.ts";

export interface SiteResult {
  siteUser: SiteUser;
  docRoot: string;
  /** False when the site was already there (an earlier, interrupted run). */
  created: boolean;
}

/** Internal messages keep at most this much of clpctl's output. */
const MAX_OUTPUT_CHARS = 2000;

/** The reference's exact lines (§2.1, §2.2). */
const DOMAIN_EXISTS = "domainName: This value already exists.";
const SITE_USER_EXISTS = "siteUser: This value already exists.";
/** `<cliOption>: <Symfony validator message>`; Symfony's messages start with "This". */
const VALIDATION_RE = /^([A-Za-z][A-Za-z ]{0,40}): (This .+)$/;
/** Validator text that may be shown publicly: plain words, no quotes, paths or values. */
const SAFE_VALIDATOR_TEXT_RE = /^This [A-Za-z0-9 .,]{1,150}$/;
/** Timeouts CloudPanel reports (CE#390, CE#449, CE#182): the server is slow or its outbound calls are. */
const TIMEOUT_RE = /exceeded the timeout|cURL error 28|Operation timed out/i;
/** Let's Encrypt could not validate yet, or its ACME account could not be registered (reference §4.2). */
const ACME_TYPE_RE = /urn:ietf:params:acme:error:([A-Za-z]+)/;
const NOT_VALIDATED_RE = /Domain could not be validated|urn:ietf:params:acme:error:/;
const ACCOUNT_RE = /An error occurred while registering an account/;
/** Failure markers in output whose exit status says success. */
const FAILURE_MARKER_RE =
  /An error has occurred|"level_name":"(?:ERROR|CRITICAL|ALERT|EMERGENCY)"|^[A-Za-z ]+: This /m;

export function addStaticSiteCommand(domain: Domain, user: SiteUser, password: string): string {
  return `clpctl site:add:static --domainName=${shellQuote(domain)} --siteUser=${shellQuote(user)}` +
    ` --siteUserPassword=${shellQuote(password)}`;
}

export function installCertificateCommand(domain: Domain): string {
  return `clpctl lets-encrypt:install:certificate --domainName=${shellQuote(domain)}`;
}

/** Pattern redaction for callers that pass raw output (the class redacts known secrets before this). */
const patterns = new Redactor();

/** Both streams as trimmed lines, colour codes removed. */
function linesOf(result: ExecResult): string[] {
  // deno-lint-ignore no-control-regex
  const text = `${result.stdout}\n${result.stderr}`.replace(/\x1b\[[0-9;]*m/g, "");
  return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line.length > 0);
}

/** The output for internal messages: redacted by pattern, trimmed, bounded. */
function outputOf(result: ExecResult): string {
  const text = patterns.redact(linesOf(result).join("\n"));
  const bounded = text.length > MAX_OUTPUT_CHARS ? `${text.slice(0, MAX_OUTPUT_CHARS)} …[truncated]` : text;
  return `exit ${result.exitCode ?? "none"}: ${bounded || "(no output)"}`;
}

function noExitStatus(result: ExecResult, what: string): HostingError {
  return new HostingError(
    "ssh_unreachable",
    `${what}: the command ended without an exit status; ${outputOf(result)}`,
  );
}

/** The site step's answer: created, already there, or a HostingError saying whether a retry can help. */
export function classifyAddSite(result: ExecResult, domain: Domain, user: SiteUser): SiteResult {
  if (result.exitCode === null) throw noExitStatus(result, "clpctl site:add:static");
  const lines = linesOf(result);
  const added = lines.includes(`Site ${domain} has been added.`);
  if (added && result.exitCode === 0) {
    return { siteUser: user, docRoot: docRootFor(user, domain), created: true };
  }
  // The domain line wins over the siteUser line: re-adding our own site reports both.
  if (lines.includes(DOMAIN_EXISTS)) {
    return { siteUser: user, docRoot: docRootFor(user, domain), created: false };
  }
  if (lines.includes(SITE_USER_EXISTS)) {
    throw new HostingError("cloudpanel_site_user_exists", `clpctl site:add:static: ${outputOf(result)}`);
  }
  if (lines.some((line) => TIMEOUT_RE.test(line))) {
    throw new HostingError(
      "cloudpanel_busy",
      `clpctl site:add:static timed out on the server: ${outputOf(result)}`,
    );
  }
  const violations = lines.map((line) => VALIDATION_RE.exec(line)).filter((m) => m !== null);
  if (violations.length > 0) {
    const safe = (text: string) =>
      SAFE_VALIDATOR_TEXT_RE.test(text) && !text.includes(domain) && !text.includes(user);
    const shown = violations.map(([, field, text]) => safe(text) ? `${field}: ${text}` : field);
    throw new HostingError("cloudpanel_rejected", `clpctl site:add:static rejected: ${outputOf(result)}`, {
      publicMessage: `CloudPanel rejected the site: ${shown.join(" ")}`,
    });
  }
  if (result.exitCode === 0 || added) {
    // Success without its text, or its text with a failure status. Retrying is safe and settles it: a second
    // site:add:static answers "domainName: This value already exists." if the site is there. So transient.
    throw new HostingError(
      "cloudpanel_failed",
      `clpctl site:add:static gave an unexpected answer (${added ? "success text" : "no success text"}, ` +
        `${outputOf(result)}); a retry will confirm`,
      { transient: true, publicMessage: "CloudPanel gave an unexpected answer; will retry." },
    );
  }
  throw new HostingError("cloudpanel_failed", `clpctl site:add:static failed: ${outputOf(result)}`);
}

/**
 * The certificate step's answer; returns on success. CloudPanel's success text is not known (reference §2.1),
 * so success is exit status 0 without any failure marker in the output.
 */
export function classifyCertificate(result: ExecResult): void {
  if (result.exitCode === null) throw noExitStatus(result, "clpctl lets-encrypt:install:certificate");
  const text = linesOf(result).join("\n");
  if (ACCOUNT_RE.test(text)) {
    throw new HostingError(
      "certificate_not_validated",
      `Let's Encrypt account registration failed: ${outputOf(result)}`,
      { publicMessage: "Let's Encrypt could not be reached to register the ACME account; will retry." },
    );
  }
  if (NOT_VALIDATED_RE.test(text)) {
    const type = ACME_TYPE_RE.exec(text)?.[1];
    const base = ERROR_CODES.certificate_not_validated.text;
    throw new HostingError(
      "certificate_not_validated",
      `Let's Encrypt validation failed: ${outputOf(result)}`,
      {
        publicMessage: type ? base.replace("yet", `yet (ACME error: ${type})`) : base,
      },
    );
  }
  if (TIMEOUT_RE.test(text)) {
    throw new HostingError(
      "cloudpanel_busy",
      `clpctl lets-encrypt:install:certificate timed out: ${outputOf(result)}`,
    );
  }
  if (result.exitCode === 0 && !FAILURE_MARKER_RE.test(text)) return;
  throw new HostingError(
    "certificate_failed",
    `clpctl lets-encrypt:install:certificate failed: ${outputOf(result)}`,
  );
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

  /** Creates the static site, or finds it already there; the site user is derived, the password is new. */
  async addStaticSite(domain: Domain, options: StepOptions): Promise<SiteResult> {
    const user = siteUserFor(domain);
    const password = generatePassword();
    // Registered before the command exists, so no log line, error or event can ever carry it.
    this.#logger.redactor.add(password);
    const command = addStaticSiteCommand(domain, user, password);
    const result = await this.#exec(command, options);
    const site = this.#classified("site", domain, () => classifyAddSite(result, domain, user));
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
    this.#classified("certificate", domain, () => classifyCertificate(result));
    this.#logger.info("let's encrypt certificate installed", { domain });
  }

  /**
   * Passes a classification failure on with its internal message redacted against every known secret (the
   * output may hold the password, e.g. in CloudPanel's exception record), and logs it.
   */
  #classified<T>(step: string, domain: Domain, classify: () => T): T {
    try {
      return classify();
    } catch (error) {
      if (!(error instanceof HostingError)) throw error;
      const redacted = new HostingError(error.code, this.#logger.redact(error.message), {
        publicMessage: error.publicMessage,
        transient: error.transient,
      });
      this.#logger.warn(`cloudpanel ${step} step failed`, {
        domain,
        code: redacted.code,
        transient: redacted.transient,
        detail: redacted.message,
      });
      throw redacted;
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
      duration_ms: Math.round(performance.now() - started),
    });
    return result;
  }
}
