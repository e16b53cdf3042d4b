/**
 * The steps of a job, declared as data: what each step does, its timeout, whether a provisioning job may go on
 * without it, and which steps each job kind runs, in order. The workflow runs whatever the plan lists.
 */
import type { CloudPanel } from "./cloudpanel.ts";
import type { Domain } from "./domain.ts";
import type { Logger } from "./log.ts";
import type { MatomoClient } from "./matomo.ts";
import type { ClaimedJob, JobKind, StepName } from "./store.ts";

export interface StepTimeouts {
  siteMs: number;
  certificateMs: number;
  matomoMs: number;
}

export interface StepContext {
  job: ClaimedJob;
  domain: Domain;
  log: Logger;
  /** The CloudPanel client (its SSH connection opens on first use). */
  cloudPanel: () => CloudPanel;
  matomo: MatomoClient | null;
  /** Aborted when the lease is lost or the worker shuts down. */
  signal: AbortSignal;
}

export interface StepDone {
  /** Journaled; never a secret. */
  result: Record<string, unknown>;
  message: string;
}

export interface StepDef {
  name: StepName;
  timeoutMs: (timeouts: StepTimeouts) => number;
  /**
   * In a provisioning job the site goes active without an optional step that failed; a transient failure is
   * then retried by the queue (an `analytics` job). In a job of its own it fails like any step.
   */
  optional: boolean;
  /** Why the step cannot run in this deployment (it is journaled as skipped with this warning), or null. */
  unavailable: (context: { matomo: MatomoClient | null }) => { code: string; message: string } | null;
  run: (context: StepContext, timeoutMs: number) => Promise<StepDone>;
}

export const STEPS: Record<StepName, StepDef> = {
  cloudpanel_site: {
    name: "cloudpanel_site",
    timeoutMs: (t) => t.siteMs,
    optional: false,
    unavailable: () => null,
    run: async ({ cloudPanel, domain, signal }, timeoutMs) => {
      const site = await cloudPanel().addStaticSite(domain, { timeoutMs, signal });
      return {
        result: { site_user: site.siteUser, doc_root: site.docRoot, created: site.created },
        message: site.created
          ? "Site created on CloudPanel."
          : "Site already existed on CloudPanel; its document root is inferred from the site user.",
      };
    },
  },
  ssl_certificate: {
    name: "ssl_certificate",
    timeoutMs: (t) => t.certificateMs,
    optional: false,
    unavailable: () => null,
    run: async ({ cloudPanel, domain, signal }, timeoutMs) => {
      await cloudPanel().installCertificate(domain, { timeoutMs, signal });
      return {
        result: { installed_at: new Date().toISOString() },
        message: "Let's Encrypt certificate installed.",
      };
    },
  },
  matomo_site: {
    name: "matomo_site",
    timeoutMs: (t) => t.matomoMs,
    optional: true,
    unavailable: ({ matomo }) =>
      matomo ? null : {
        code: "matomo_not_configured",
        message: "Matomo is not configured (MATOMO_API_URL, MATOMO_API_TOKEN); the site has no analytics.",
      },
    run: async ({ matomo, domain, signal }) => {
      const site = await matomo!.ensureSite(domain, { signal });
      return {
        result: { matomo_site_id: site.idSite, reused: site.reused },
        message: site.reused ? `Matomo site ${site.idSite} reused.` : `Matomo site ${site.idSite} added.`,
      };
    },
  },
};

/** The steps each kind of job runs, in order. */
export const PLANS: Record<JobKind, readonly StepName[]> = {
  provision: ["cloudpanel_site", "ssl_certificate", "matomo_site"],
  analytics: ["matomo_site"],
};
