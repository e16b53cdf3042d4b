/**
 * The steps of a job, declared as data: what each step does, its timeout, whether a provisioning job may go on
 * without it, when it is skipped, what it means to the database (it takes the domain, settles the password,
 * keeps values for a removal), and which steps each kind of job runs, in order, and how the job ends. The
 * workflow runs whatever the kind lists; adding a step is one entry here plus its client call.
 */
import { certificateNames } from "./certificate_names.ts";
import type { CloudPanel } from "./cloudpanel.ts";
import { docRootFor, type Domain, siteUserFor } from "./domain.ts";
import type { Logger } from "./log.ts";
import type { MatomoClient } from "./matomo.ts";
import type { ClaimedJob, EventLevel, JobKind, KeptKey, SiteCredentials, StepName } from "./store.ts";
import { HostingError, toHostingError } from "./errors.ts";
import type { StepEnd } from "./journal.ts";
import { type Completion, Outcome } from "./outcome.ts";

export interface StepTimeouts {
  siteMs: number;
  certificateMs: number;
  matomoMs: number;
  /** The DNS check and the HTTPS check, each. */
  checkMs: number;
}

/** What the served certificate is, as the TLS check saw it. */
export interface ServedCertificate {
  valid: boolean;
  /** Why it is not valid (untrusted, another name, expired or expiring soon). */
  reason?: string;
  notAfter?: Date;
  names?: string[];
}

/** The checks around the certificate, bound to the job's server. */
export interface Checks {
  /** The server's public addresses (its row's `public_ips`, or CLOUDPANEL_PUBLIC_IPS for `default`). */
  publicIps: readonly string[];
  /** Every name resolves only to the server's addresses; else throws `dns_not_ready` (or the resolver's trouble). */
  dnsPointsTo(names: string[], signal: AbortSignal): Promise<{ answered: Record<string, string[]> }>;
  /** The certificate the server presents for `servername`; throws `https_unreachable` when it cannot be reached. */
  servedCertificate(servername: string, signal: AbortSignal): Promise<ServedCertificate>;
}

/** Choices of the deployment that steps read. */
export interface StepOptions {
  /** What a removal does with the site's Matomo site. */
  matomoOnRemove: "keep" | "delete";
}

export interface StepContext {
  job: ClaimedJob;
  domain: Domain;
  log: Logger;
  /** The CloudPanel client (its SSH connection opens on first use). */
  cloudPanel: () => CloudPanel;
  matomo: MatomoClient | null;
  /** The results of the job's steps done so far (in this run or an earlier one). */
  results: Partial<Record<StepName, Record<string, unknown>>>;
  /** The site user's password, for a step that declares `password` (stored before the step starts). */
  credentials?: SiteCredentials;
  /** The checks around the certificate, on the job's server. */
  checks: Checks;
  /** Aborted when the lease is lost or the worker shuts down. */
  signal: AbortSignal;
}

export interface StepDone {
  /** Journaled; never a secret. */
  result: Record<string, unknown>;
  message: string;
}

/** Why a step does not run in this deployment; journaled as skipped. `warn` also warns the job's outcome. */
export interface Skip {
  code: string;
  message: string;
  level: Extract<EventLevel, "info" | "warn">;
}

export interface StepDef {
  name: StepName;
  timeoutMs: (timeouts: StepTimeouts) => number;
  /**
   * In a job whose kind allows it, the job goes on without an optional step that failed (the site goes active
   * without analytics; a transient failure is then retried by the queue as an `analytics` job). In a job of
   * its own it fails like any step.
   */
  optional: boolean;
  /**
   * The step needs the site user's password: the workflow generates one, and the transition that starts the
   * step stores it in Vault (or returns the one an earlier attempt stored), so every retry sends the same. Its
   * done end settles the stored password (`settles_password`): its result's `credentials` says whether the
   * password is the site user's.
   */
  password?: true;
  /**
   * Starting it takes ownership of the job's canonical domain (one site per domain): the transition that
   * starts it carries the domain, and a domain another site owns ends the job there.
   */
  claimsDomain?: true;
  /** Result values a later removal needs, sent with its done end (`keeps`) for the database to keep. */
  keeps?: readonly KeptKey[];
  skip: (context: { matomo: MatomoClient | null; options: StepOptions; checks: Checks }) => Skip | null;
  run: (context: StepContext, timeoutMs: number) => Promise<StepDone>;
}

export const STEPS: Record<StepName, StepDef> = {
  cloudpanel_site: {
    name: "cloudpanel_site",
    timeoutMs: (t) => t.siteMs,
    optional: false,
    password: true,
    claimsDomain: true,
    keeps: ["site_user", "doc_root"],
    skip: () => null,
    run: async ({ cloudPanel, domain, signal, credentials }, timeoutMs) => {
      const site = await cloudPanel().addStaticSite(domain, {
        password: credentials!.password,
        timeoutMs,
        signal,
      });
      // The stored password is the site user's when this attempt created the site, or when an earlier claim sent
      // the same password (its answer was lost); a site that was there before this module has another one.
      const known = site.created || credentials!.prior;
      return {
        result: {
          site_user: site.siteUser,
          doc_root: site.docRoot,
          created: site.created,
          credentials: credentials!.stored ? (known ? "known" : "unknown") : "not_stored",
        },
        message: site.created
          ? "Site created on CloudPanel."
          : known
          ? "Site already existed on CloudPanel (created by an earlier attempt whose answer was lost)."
          : "Site already existed on CloudPanel; its document root is inferred from the site user and its password is not known.",
      };
    },
  },
  dns_check: {
    name: "dns_check",
    timeoutMs: (t) => t.checkMs,
    optional: false,
    skip: ({ checks }) =>
      checks.publicIps.length > 0 ? null : {
        code: "dns_check_skipped",
        message:
          "DNS is not checked before the certificate: the server has no public addresses (its public_ips, or CLOUDPANEL_PUBLIC_IPS).",
        level: "warn",
      },
    run: async ({ domain, checks, signal }) => {
      const names = certificateNames(domain);
      const { answered } = await checks.dnsPointsTo(names, signal);
      return {
        result: { names, answered },
        message: `DNS points at the server: ${
          names.map((n) => `${n} → ${answered[n].join(", ")}`).join("; ")
        }.`,
      };
    },
  },
  ssl_certificate: {
    name: "ssl_certificate",
    timeoutMs: (t) => t.certificateMs,
    optional: false,
    skip: () => null,
    run: async ({ cloudPanel, domain, checks, signal, log }, timeoutMs) => {
      // A certificate that is already served and valid (an earlier attempt's, whose answer was lost) is not
      // issued again: Let's Encrypt allows 5 duplicates a week.
      const served = await checks.servedCertificate(domain, signal).catch((error) => {
        // Stopped (lease lost, shutdown, deadline): nothing more is sent.
        if (signal.aborted) throw error;
        log.info("the served certificate could not be checked before issuing; issuing", {
          code: toHostingError(error).code,
        });
        return null;
      });
      if (served?.valid) {
        return {
          result: { installed_at: null, reused: true, not_after: served.notAfter?.toISOString() ?? null },
          message:
            `A valid certificate is already served (until ${served.notAfter?.toISOString()}); not issued again.`,
        };
      }
      await cloudPanel().installCertificate(domain, { timeoutMs, signal });
      return {
        result: { installed_at: new Date().toISOString(), reused: false },
        message: "Let's Encrypt certificate installed.",
      };
    },
  },
  https_verify: {
    name: "https_verify",
    timeoutMs: (t) => t.checkMs,
    optional: false,
    skip: () => null,
    run: async ({ domain, checks, signal }) => {
      const served = await checks.servedCertificate(domain, signal);
      if (!served.valid) {
        throw new HostingError("https_not_ready", `the served certificate is not valid: ${served.reason}`, {
          publicMessage: `The site does not serve a valid certificate yet (${served.reason}); will retry.`,
        });
      }
      return {
        result: { not_after: served.notAfter?.toISOString() ?? null, names: served.names ?? [] },
        message: `The site serves a valid certificate until ${served.notAfter?.toISOString()}.`,
      };
    },
  },
  matomo_site: {
    name: "matomo_site",
    timeoutMs: (t) => t.matomoMs,
    optional: true,
    keeps: ["matomo_site_id"],
    skip: ({ matomo }) =>
      matomo ? null : {
        code: "matomo_not_configured",
        message: "Matomo is not configured (MATOMO_API_URL, MATOMO_API_TOKEN); the site has no analytics.",
        level: "warn",
      },
    run: async ({ matomo, domain, signal }) => {
      const site = await matomo!.ensureSite(domain, { signal });
      return {
        result: { matomo_site_id: site.idSite, reused: site.reused },
        message: site.reused ? `Matomo site ${site.idSite} reused.` : `Matomo site ${site.idSite} added.`,
      };
    },
  },
  cloudpanel_site_delete: {
    name: "cloudpanel_site_delete",
    timeoutMs: (t) => t.siteMs,
    optional: false,
    skip: () => null,
    run: async ({ cloudPanel, domain, signal }, timeoutMs) => {
      const { deleted } = await cloudPanel().deleteSite(domain, { timeoutMs, signal });
      return {
        result: { deleted },
        message: deleted
          ? "Site deleted on CloudPanel, with its files and site user."
          : "CloudPanel has no site for this domain: nothing to delete.",
      };
    },
  },
  matomo_site_delete: {
    name: "matomo_site_delete",
    timeoutMs: (t) => t.matomoMs,
    optional: false,
    skip: ({ matomo, options }) =>
      options.matomoOnRemove === "keep"
        ? {
          code: "matomo_kept",
          message: "The site's analytics data is kept in Matomo (MATOMO_ON_REMOVE=keep).",
          level: "info",
        }
        : matomo
        ? null
        : {
          code: "matomo_not_configured",
          message: "Matomo is not configured (MATOMO_API_URL, MATOMO_API_TOKEN); its site, if any, is kept.",
          level: "warn",
        },
    run: async ({ matomo, domain, signal, job }) => {
      const { deleted } = await matomo!.deleteSite(domain, {
        idSite: job.target?.matomoSiteId ?? null,
        signal,
      });
      return {
        result: { deleted },
        message: deleted.length > 0
          ? `Matomo site ${deleted.join(", ")} deleted.`
          : "Matomo has no site for this domain: nothing to delete.",
      };
    },
  },
};

/** A done end's policies, as its step declares them: what the end means to the database beyond the journal. */
export function policiesOf(
  def: StepDef,
  result: Record<string, unknown>,
): Pick<StepEnd, "settlesPassword" | "keeps"> {
  return {
    ...(def.password ? { settlesPassword: true as const } : {}),
    ...(def.keeps ? { keeps: Object.fromEntries(def.keeps.map((key) => [key, result[key] ?? null])) } : {}),
  };
}

export interface CompletionContext {
  domain: Domain;
  results: Partial<Record<StepName, Record<string, unknown>>>;
  /** Why an optional step did not give its result (skipped or failed), if it did not. */
  warning?: { code: string };
  /** Queue a job of this kind: an optional step failed for now (the kind's `backfill`). */
  backfill: JobKind | null;
  /** The step ends not written yet, written with the completion. */
  done: StepEnd[];
}

export interface KindDef {
  steps: readonly StepName[];
  /**
   * An optional step that fails lets the job finish without it, and a transient failure queues a job of this
   * kind to do it later. Without it, an optional step's failure fails the job like any step's.
   */
  backfill?: JobKind;
  complete: (context: CompletionContext) => Completion;
}

function siteCompletion({ domain, results, warning, backfill, done }: CompletionContext): Completion {
  const docRoot = typeof results.cloudpanel_site?.doc_root === "string"
    ? results.cloudpanel_site.doc_root
    : docRootFor(siteUserFor(domain), domain);
  const matomoSiteId = typeof results.matomo_site?.matomo_site_id === "number"
    ? results.matomo_site.matomo_site_id
    : null;
  const notAfter = results.https_verify?.not_after;
  return Outcome.active({
    docRoot,
    matomoSiteId,
    certificateExpiresAt: typeof notAfter === "string" ? notAfter : null,
    message: matomoSiteId === null
      ? `Site is active without analytics (${warning?.code ?? "matomo_site"}).`
      : `Site is active; Matomo site ${matomoSiteId}.`,
    backfillKind: matomoSiteId === null ? backfill : null,
  }, done);
}

/** The kinds of job: their steps in order and how each ends. */
export const KINDS: Record<JobKind, KindDef> = {
  provision: {
    steps: ["cloudpanel_site", "dns_check", "ssl_certificate", "https_verify", "matomo_site"],
    backfill: "analytics",
    complete: siteCompletion,
  },
  analytics: {
    steps: ["matomo_site"],
    complete: siteCompletion,
  },
  remove: {
    steps: ["cloudpanel_site_delete", "matomo_site_delete"],
    complete: ({ results, done }) =>
      Outcome.removed(
        results.cloudpanel_site_delete?.deleted === false
          ? "Site removed (CloudPanel had no site for it)."
          : "Site removed.",
        done,
      ),
  },
};

/** The steps each kind of job runs, in order (for the claim's estimate of a job's remaining time). */
export const PLANS: Record<JobKind, readonly StepName[]> = Object.fromEntries(
  Object.entries(KINDS).map(([kind, def]) => [kind, def.steps]),
) as Record<JobKind, readonly StepName[]>;
