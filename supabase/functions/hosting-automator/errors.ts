/**
 * The one error type of hosting-automator.
 *
 * Every failure carries a stable `code` (what operators and clients match on), whether a retry can help
 * (`transient`), and a `publicMessage` that is safe to show anyone: it goes to `sites.error_message` and to
 * HTTP clients. The `message` is the internal detail (redacted before it is logged or stored) and `cause`
 * keeps the original error.
 */

/**
 * A schedule of its own for a job that is not ready yet: it waits on that schedule's backoff without spending
 * an attempt, and fails once the schedule's limit has passed (the database keeps each schedule's settings).
 */
export type Schedule = "dns";

/** What a code means to the queue: its public text, whether a retry can help, and how the job waits. */
export interface FailureClass {
  transient: boolean;
  text: string;
  /** Not a failure of the work but "not ready yet": the job waits on this schedule, attempt kept. */
  schedule?: Schedule;
  /**
   * Met while connecting to the job's server: the server's trouble, not the site's. Its circuit opens and its
   * jobs wait for it, attempt kept (the same code in the middle of a command is a failure of that step).
   */
  serverTrouble?: true;
}

/** Stable codes with their default public text and whether a retry can help. */
export const ERROR_CODES = {
  // input and configuration
  bad_request: { transient: false, text: "The request is invalid." },
  unauthorized: { transient: false, text: "Missing or wrong credentials." },
  not_found: { transient: false, text: "Not found." },
  method_not_allowed: { transient: false, text: "Method not allowed." },
  payload_too_large: { transient: false, text: "The request body is too large." },
  config_invalid: { transient: false, text: "The function is not configured correctly." },
  invalid_domain: { transient: false, text: "The domain is invalid." },
  domain_taken: {
    transient: false,
    text: "The domain is already hosted for another row of public.sites; a domain has one site.",
  },
  domain_being_removed: {
    transient: true,
    text:
      "The domain is still being removed for another row of public.sites; this site is provisioned once that removal has finished.",
  },
  no_server_capacity: {
    transient: true,
    text: "No active CloudPanel server has room for another site; add a server or raise a capacity.",
  },
  credentials_unavailable: {
    transient: false,
    text: "The site user's password is not stored (this database has no Vault).",
  },

  // CloudPanel over SSH
  ssh_unreachable: {
    transient: true,
    serverTrouble: true,
    text: "The CloudPanel server could not be reached; will retry.",
  },
  ssh_timeout: {
    transient: true,
    serverTrouble: true,
    text: "The CloudPanel server did not answer in time; will retry.",
  },
  ssh_host_key_mismatch: {
    transient: false,
    serverTrouble: true,
    text:
      "The CloudPanel server's host key does not match the pinned one (CLOUDPANEL_SSH_HOST_KEY, or the server's host_key in hosting_automator.servers); nothing was executed on the server.",
  },
  ssh_auth_failed: {
    transient: false,
    serverTrouble: true,
    text: "The CloudPanel server refused the SSH key; nothing was executed on the server.",
  },
  cloudpanel_site_user_exists: {
    transient: false,
    text:
      "CloudPanel already has the site user for this domain but no site for it (an orphan user); an operator must remove that user, then retry.",
  },
  cloudpanel_rejected: { transient: false, text: "CloudPanel rejected the request." },
  cloudpanel_misconfigured: {
    transient: false,
    text:
      "CloudPanel's command-line tool cannot run this command on the server (not installed, not allowed, or unknown to this CloudPanel version); an operator must fix the server, then retry.",
  },
  cloudpanel_unavailable: {
    transient: true,
    text:
      "CloudPanel was unavailable (its internal database timed out or was busy, or the command was killed before it answered); will retry.",
  },
  cloudpanel_busy: { transient: true, text: "CloudPanel timed out; will retry." },
  // Unrecognised answers: retried, but the same one attemptLimit times in a row fails the job.
  cloudpanel_failed: {
    transient: true,
    text:
      "CloudPanel could not create the site and gave an answer that is not recognised; retried a few times.",
  },
  cloudpanel_delete_failed: {
    transient: true,
    text:
      "CloudPanel could not remove the site and gave an answer that is not recognised; retried a few times.",
  },
  certificate_not_validated: {
    transient: true,
    text: "Let's Encrypt could not validate the domain yet (DNS may not have propagated); will retry.",
  },
  certificate_failed: {
    transient: true,
    text:
      "The Let's Encrypt certificate could not be issued and CloudPanel's answer is not recognised; retried a few times.",
  },

  // DNS before the certificate, asked over DNS-over-HTTPS: Let's Encrypt validates against the same records
  dns_not_ready: {
    transient: true,
    schedule: "dns",
    text:
      "DNS does not point at the server yet (a name has no A or AAAA record, or one that is not the server's); will retry.",
  },
  dns_resolver_unavailable: {
    transient: true,
    text:
      "The DNS resolver could not be asked whether the domain points at the server (unreachable, too slow, or an answer that is not DNS); will retry.",
  },

  // The certificate the server serves (a TLS handshake with the domain as SNI)
  https_unreachable: {
    transient: true,
    text: "The site's server could not be reached over HTTPS; will retry.",
  },
  https_not_ready: { transient: true, text: "The site does not serve a valid certificate yet." },

  // Matomo over HTTP (never fails a provisioning job: the site goes active without analytics)
  matomo_unreachable: { transient: true, text: "Matomo could not be reached." },
  matomo_error: { transient: false, text: "Matomo refused the request." },
  matomo_bad_response: { transient: true, text: "Matomo answered something that is not its API." },
  matomo_not_configured: { transient: false, text: "Matomo is not configured." },
  // Removing a site whose analytics are to be deleted: Matomo keeps at least one site, whoever asks.
  matomo_only_site: {
    transient: false,
    text:
      "Matomo refused to delete this domain's site because it is the only site registered in Matomo; add another site in Matomo first (or keep the analytics data), then retry.",
  },

  // our own machinery
  lease_lost: { transient: true, text: "Another worker took over this job." },
  cancelled: { transient: false, text: "Cancelled: the site is being removed." },
  interrupted: { transient: true, text: "Provisioning was interrupted; will resume." },
  store_failed: { transient: true, text: "The database could not be reached." },
  internal: { transient: false, text: "Internal error." },
} as const satisfies Record<string, FailureClass>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The failure class of a code. */
export function failureClass(code: ErrorCode): FailureClass {
  return ERROR_CODES[code];
}

export interface HostingErrorOptions {
  /** Safe text for clients and `sites.error_message`; defaults to the code's text. */
  publicMessage?: string;
  /** Overrides the code's default retry classification. */
  transient?: boolean;
  /**
   * A transient failure whose code, met this many times in a row, fails the job: for failures nobody
   * recognised, so a command that is broken for good cannot be retried for hours.
   */
  attemptLimit?: number;
  cause?: unknown;
}

export class HostingError extends Error {
  override name = "HostingError" as const;
  readonly code: ErrorCode;
  readonly transient: boolean;
  readonly publicMessage: string;
  /** Set only on transient failures: the same code this many times in a row fails the job. */
  readonly attemptLimit?: number;

  constructor(code: ErrorCode, message: string, options: HostingErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.transient = options.transient ?? ERROR_CODES[code].transient;
    this.publicMessage = options.publicMessage ?? ERROR_CODES[code].text;
    if (options.attemptLimit !== undefined && this.transient) {
      if (!Number.isInteger(options.attemptLimit) || options.attemptLimit < 1) {
        throw new RangeError(`attemptLimit must be a positive integer, got ${options.attemptLimit}`);
      }
      this.attemptLimit = options.attemptLimit;
    }
  }
}

/** Cross-realm guard (compares by name, as ky does). */
export function isHostingError(value: unknown): value is HostingError {
  return value instanceof Error && value.name === "HostingError" && "code" in value;
}

/** Any thrown value as a HostingError; unknown failures become `internal` and keep the original as cause. */
export function toHostingError(value: unknown): HostingError {
  if (isHostingError(value)) return value;
  const message = value instanceof Error ? `${value.name}: ${value.message}` : String(value);
  return new HostingError("internal", message, { cause: value });
}
