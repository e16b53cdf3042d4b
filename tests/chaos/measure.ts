/**
 * What the chaos run measures at its end: where every site ended, duplicates on the simulated servers,
 * lost rows, leaked secrets, and the store's statements.
 */
import type { CallRecord } from "../../dev/clpctl_sim.ts";
import { databaseText, leaks, needlesOf, simPasswords } from "../support/secret_scan.ts";
import type { Stack } from "../support/stack.ts";

export interface Measured {
  sites: number;
  /** Active with a Matomo site id, with no operator action (the run never takes one). */
  activeWithAnalytics: number;
  activeWithoutAnalytics: number;
  /** Why analytics is missing: the analytics step's last code. */
  withoutAnalyticsCodes: Record<string, number>;
  failed: number;
  /** The failed sites' last job error codes. */
  failedCodes: Record<string, number>;
  /** Sites still with an open job (only after a deadline). */
  open: number;
  /** Neither active nor failed, and no open job. */
  lost: number;
  duplicates: {
    /** Domains for which site:add:static created a site more than once. */
    cloudPanelSites: number;
    /** Site URLs that more than one Matomo site holds. */
    matomoSites: number;
    /** Domains that got more than one Let's Encrypt certificate issued. */
    certificates: number;
  };
  /** Leaks found (names only: 4 characters and the length), and how much was scanned. */
  secrets: { found: string[]; needles: number; scannedChars: number };
  /** Calls through the store (PostgREST stand-in requests: one SQL function call each). */
  storeCalls: { total: number; perSite: number; byFunction: Record<string, number> };
  /** Attempts (claims) per job, summed over the sites' jobs. */
  attemptsPerSite: number;
  /** For a few failed sites: their event codes in order, to see what ended them. */
  failedSamples: Array<{ domain: string; codes: string }>;
}

function tally<T>(items: T[], key: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort(([, a], [, b]) => b - a));
}

async function lines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path).catch(() => "")).split("\n").filter((l) => l.length > 0);
}

export async function measure(
  stack: Stack,
  chaosDir: string,
  sites: number,
  workerOutput: string[],
): Promise<Measured> {
  const rows = await stack.sql<
    {
      domain: string;
      status: string | null;
      matomo_site_id: number | null;
      open: number;
      last_code: string | null;
      matomo_code: string | null;
      attempts: number;
    }[]
  >`
    select s.domain, s.status_hosting as status, s.matomo_site_id,
      (select count(*)::int from hosting_automator.jobs j
        where j.site_id = s.id and j.state in ('queued', 'running')) as open,
      (select j.last_error_code from hosting_automator.jobs j where j.site_id = s.id order by j.id desc limit 1)
        as last_code,
      (select st.last_error_code from hosting_automator.steps st
        where st.site_id = s.id and st.step = 'matomo_site') as matomo_code,
      (select coalesce(sum(j.attempts), 0)::int from hosting_automator.jobs j where j.site_id = s.id) as attempts
    from public.sites s`;
  const active = rows.filter((r) => r.status === "active");
  const withAnalytics = active.filter((r) => r.matomo_site_id !== null);
  const without = active.filter((r) => r.matomo_site_id === null);
  const failed = rows.filter((r) => r.status === "failed");
  const open = rows.filter((r) => r.status !== "active" && r.status !== "failed" && r.open > 0);
  const lost = rows.filter((r) => r.status !== "active" && r.status !== "failed" && r.open === 0);

  const state = await stack.simState();
  const created = tally(
    state.calls.filter((c: CallRecord) => c.verb === "site:add:static" && c.outcome.startsWith("added")),
    (c) => c.domainName ?? "",
  );
  const issued = tally(
    state.calls.filter((c: CallRecord) =>
      c.verb === "lets-encrypt:install:certificate" && c.outcome.startsWith("installed")
    ),
    (c) => c.domainName ?? "",
  );
  const urls = tally(stack.matomo?.sites.flatMap((s) => [s.main_url, ...s.alias_urls]) ?? [], (u) => u);

  const passwords = (await lines(`${chaosDir}/passwords.txt`)).map((l) => JSON.parse(l) as string);
  const needles = needlesOf([
    stack.env.CLOUDPANEL_SSH_PRIVATE_KEY ?? "",
    stack.env.MATOMO_API_TOKEN ?? "",
    stack.serviceKey,
    ...passwords,
    ...await simPasswords(stack.clpctlState),
  ]);
  const database = await databaseText(stack.sql) ?? "";
  const sshdLog = await Deno.readTextFile(stack.sshd.logPath).catch(() => "");
  const logs = stack.logs.join("\n");
  const found = [
    ...leaks(logs, needles).map((l) => `function log: ${l}`),
    ...leaks(workerOutput.join("\n"), needles).map((l) => `worker process output: ${l}`),
    ...leaks(database, needles).map((l) => `database: ${l}`),
    ...leaks(sshdLog, needles).map((l) => `sshd log: ${l}`),
  ];

  const failedSamples = [];
  for (const site of failed.slice(0, 5)) {
    const events = await stack.sql<{ codes: string }[]>`
      select string_agg(coalesce(e.step::text || ':', '') || coalesce(e.code, '-'), ' → ' order by e.id) as codes
      from hosting_automator.events e join public.sites s on s.id = e.site_id where s.domain = ${site.domain}`;
    failedSamples.push({ domain: site.domain, codes: events[0]?.codes ?? "" });
  }

  const calls = stack.postgrest?.calls ?? [];
  return {
    sites,
    activeWithAnalytics: withAnalytics.length,
    activeWithoutAnalytics: without.length,
    withoutAnalyticsCodes: tally(without, (r) => r.matomo_code ?? "none"),
    failed: failed.length,
    failedCodes: tally(failed, (r) => r.last_code ?? "none"),
    open: open.length,
    lost: lost.length,
    duplicates: {
      cloudPanelSites: Object.values(created).filter((n) => n > 1).length,
      matomoSites: Object.values(urls).filter((n) => n > 1).length,
      certificates: Object.values(issued).filter((n) => n > 1).length,
    },
    secrets: {
      found,
      needles: needles.length,
      scannedChars: logs.length + database.length + workerOutput.join("").length + sshdLog.length,
    },
    storeCalls: {
      total: calls.length,
      perSite: calls.length / sites,
      byFunction: tally(calls, (c) => c.fn),
    },
    attemptsPerSite: rows.reduce((n, r) => n + r.attempts, 0) / sites,
    failedSamples,
  };
}
