/**
 * What the chaos run measures at its end, each figure counted from the real end state (the rows, the jobs, the
 * journal, Vault's stand-in, the simulated CloudPanel and Matomo): where every site ended, what the removal
 * phase left, whether each stored password is the site user's, duplicates and half-made sites on the
 * simulated servers, lost rows, leaked secrets, and the store's statements.
 */
import type { CallRecord, SimState } from "../../dev/clpctl_sim.ts";
import { databaseText, leaks, needlesOf, simPasswords } from "../support/secret_scan.ts";
import type { Stack } from "../support/stack.ts";
import type { RemovalPlan } from "./removals.ts";

export interface Measured {
  /** Rows meant to end active: every row nobody asked to remove, the re-created ones included. */
  sites: number;
  /** Active with a Matomo site id, with no operator action (the run never takes one). */
  activeWithAnalytics: number;
  activeWithoutAnalytics: number;
  /** Why analytics is missing: the analytics step's last code. */
  withoutAnalyticsCodes: Record<string, number>;
  failed: number;
  /** The failed sites' last job error codes. */
  failedCodes: Record<string, number>;
  /** Jobs of any kind still queued or running (only after a deadline). */
  open: number;
  /** Rows meant to end active that are neither active nor failed, with no open job. */
  lost: number;
  duplicates: {
    /** Domains for which site:add:static created a site more often than rows asked for one. */
    cloudPanelSites: number;
    /** Site URLs that more than one Matomo site holds. */
    matomoSites: number;
    /** Domains that got more Let's Encrypt certificates issued than rows asked for one. */
    certificates: number;
  };
  /** CloudPanel sites whose domain belongs to no active row (left by a removal, or made for nobody). */
  halfMade: string[];
  /** The site user's password kept in Vault, checked against the simulated CloudPanel's. */
  credentials: {
    /** Active rows whose site step's journal says `credentials: "known"`. */
    known: number;
    /** Of those, domains whose Vault secret is missing or is not the CloudPanel site user's password. */
    mismatched: string[];
    /** Active rows with no stored password at all (none pre-existed in the run, so each is a loss). */
    missing: string[];
  };
  /** The removal phase's end state; null without one. */
  removals: RemovalFigures | null;
  /** Leaks found (names only: 4 characters and the length), and how much was scanned. */
  secrets: { found: string[]; needles: number; scannedChars: number };
  /** Calls through the store (PostgREST stand-in requests: one SQL function call each). */
  storeCalls: { total: number; perSite: number; byFunction: Record<string, number> };
  /** Attempts (claims) per row ever inserted, summed over all jobs (removals included). */
  attemptsPerSite: number;
  /** For a few failed sites: their event codes in order, to see what ended them. */
  failedSamples: Array<{ domain: string; codes: string }>;
}

export interface RemovalFigures {
  /** Rows kept and set `removing`: how many ended `removed`, and whose CloudPanel site is still there. */
  kept: { asked: number; removed: number; siteLeft: string[] };
  /** Deleted rows not inserted again: whose CloudPanel site is still there. */
  deleted: { asked: number; siteLeft: string[] };
  /**
   * Deleted rows whose domain was inserted again at once: the new row active, exactly one CloudPanel site
   * made after the old one was deleted (CloudPanel's calls: add, delete, add), with the row's doc root.
   */
  recreated: { asked: number; active: number; oneNewSite: number; rightDocRoot: number };
  /** Vault secrets still kept for a removed site (kept or deleted row). */
  vaultLeft: number;
  /** The removal jobs' final states, and the failed ones' error codes. */
  jobStates: Record<string, number>;
  failedCodes: Record<string, number>;
  /** Targets that missed: domain, what, and their events in order. */
  problems: Array<{ domain: string; what: string; codes: string }>;
}

function tally<T>(items: T[], key: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort(([, a], [, b]) => b - a));
}

async function lines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path).catch(() => "")).split("\n").filter((l) => l.length > 0);
}

/** A domain's site:add:static and site:delete calls that did their work, in order: "add", "delete". */
function panelHistory(state: SimState): Map<string, string[]> {
  const history = new Map<string, string[]>();
  for (const call of state.calls) {
    const domain = call.domainName ?? "";
    const work = call.verb === "site:add:static" && call.outcome.startsWith("added")
      ? "add"
      : call.verb === "site:delete" && call.outcome.startsWith("deleted")
      ? "delete"
      : null;
    if (work) history.set(domain, [...history.get(domain) ?? [], work]);
  }
  return history;
}

/** Event codes of one site (by id: a deleted row's events outlive it), in order. */
async function eventCodes(stack: Stack, siteIds: string[]): Promise<string> {
  const [row] = await stack.sql<{ codes: string | null }[]>`
    select string_agg(coalesce(e.step::text || ':', '') || coalesce(e.code, '-'), ' → ' order by e.id) as codes
    from hosting_automator.events e where e.site_id = any(${siteIds}::uuid[])`;
  return row?.codes ?? "";
}

export async function measure(
  stack: Stack,
  chaosDir: string,
  inserted: number,
  workerOutput: string[],
  removals: RemovalPlan | null = null,
): Promise<Measured> {
  const all = await stack.sql<
    {
      id: string;
      domain: string;
      status: string | null;
      doc_root: string | null;
      matomo_site_id: number | null;
      open: number;
      last_code: string | null;
      matomo_code: string | null;
      credentials: string | null;
      secret: string | null;
    }[]
  >`
    select s.id::text, s.domain, s.status_hosting as status, s.hosting_doc_root as doc_root, s.matomo_site_id,
      (select count(*)::int from hosting_automator.jobs j
        where j.site_id = s.id and j.state in ('queued', 'running')) as open,
      (select j.last_error_code from hosting_automator.jobs j where j.site_id = s.id order by j.id desc limit 1)
        as last_code,
      (select st.last_error_code from hosting_automator.steps st
        where st.site_id = s.id and st.step = 'matomo_site') as matomo_code,
      (select st.result ->> 'credentials' from hosting_automator.steps st
        where st.site_id = s.id and st.step = 'cloudpanel_site') as credentials,
      -- Vault's stand-in keeps the secret in clear; on Supabase this view decrypts it.
      (select v.decrypted_secret from vault.decrypted_secrets v
        where v.name = 'hosting_automator_site_' || s.id::text) as secret
    from public.sites s`;
  const targets = removals?.targets ?? [];
  const keptIds = new Set(targets.filter((t) => t.how === "keep").map((t) => t.id));
  const rows = all.filter((r) => !keptIds.has(r.id));
  const active = rows.filter((r) => r.status === "active");
  const withAnalytics = active.filter((r) => r.matomo_site_id !== null);
  const without = active.filter((r) => r.matomo_site_id === null);
  const failed = rows.filter((r) => r.status === "failed");
  const lost = rows.filter((r) => r.status !== "active" && r.status !== "failed" && r.open === 0);
  const [{ open }] = await stack.sql<{ open: number }[]>`
    select count(*)::int as open from hosting_automator.jobs where state in ('queued', 'running')`;

  const state = await stack.simState();
  const history = panelHistory(state);
  // How many rows ever asked for each domain: one, two for a domain inserted again.
  const rowsFor = new Map<string, number>();
  for (const r of all) rowsFor.set(r.domain, (rowsFor.get(r.domain) ?? 0) + 1);
  for (const t of targets.filter((t) => t.how === "delete")) {
    rowsFor.set(t.domain, (rowsFor.get(t.domain) ?? 0) + 1);
  }
  const adds = (domain: string) => (history.get(domain) ?? []).filter((w) => w === "add").length;
  const issued = tally(
    state.calls.filter((c: CallRecord) =>
      c.verb === "lets-encrypt:install:certificate" && c.outcome.startsWith("installed")
    ),
    (c) => c.domainName ?? "",
  );
  const urls = tally(stack.matomo?.sites.flatMap((s) => [s.main_url, ...s.alias_urls]) ?? [], (u) => u);
  const activeDomains = new Set(all.filter((r) => r.status === "active").map((r) => r.domain));
  const halfMade = Object.keys(state.sites).filter((d) => !activeDomains.has(d)).sort();

  // Credentials: every active row (kept removal targets are never active at the end unless a removal was lost).
  const password = (domain: string) => state.sites[domain]?.siteUserPassword;
  const known = active.filter((r) => r.credentials === "known");
  const mismatched = known.filter((r) => r.secret === null || r.secret !== password(r.domain)).map((r) =>
    r.domain
  );
  const missing = active.filter((r) => r.secret === null).map((r) => r.domain);

  const removalFigures = removals ? await measureRemovals(stack, removals, all, state, history) : null;

  const passwords = (await lines(`${chaosDir}/passwords.txt`)).map((l) => JSON.parse(l) as string);
  const needles = needlesOf([
    stack.env.CLOUDPANEL_SSH_PRIVATE_KEY ?? "",
    stack.env.MATOMO_API_TOKEN ?? "",
    stack.serviceKey,
    ...passwords,
    ...await simPasswords(stack.clpctlState),
  ]);
  // Vault's table is not scanned: it stands in for Vault, where the passwords belong.
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
    failedSamples.push({ domain: site.domain, codes: await eventCodes(stack, [site.id]) });
  }

  const calls = stack.postgrest?.calls ?? [];
  const everInserted = inserted + targets.filter((t) => t.recreate).length;
  const [{ attempts }] = await stack.sql<{ attempts: number }[]>`
    select coalesce(sum(attempts), 0)::int as attempts from hosting_automator.jobs`;
  return {
    sites: rows.length,
    activeWithAnalytics: withAnalytics.length,
    activeWithoutAnalytics: without.length,
    withoutAnalyticsCodes: tally(without, (r) => r.matomo_code ?? "none"),
    failed: failed.length,
    failedCodes: tally(failed, (r) => r.last_code ?? "none"),
    open,
    lost: lost.length,
    duplicates: {
      cloudPanelSites: [...history.keys()].filter((d) => adds(d) > (rowsFor.get(d) ?? 0)).length,
      matomoSites: Object.values(urls).filter((n) => n > 1).length,
      certificates: Object.entries(issued).filter(([d, n]) => n > (rowsFor.get(d) ?? 0)).length,
    },
    halfMade,
    credentials: { known: known.length, mismatched, missing },
    removals: removalFigures,
    secrets: {
      found,
      needles: needles.length,
      scannedChars: logs.length + database.length + workerOutput.join("").length + sshdLog.length,
    },
    storeCalls: {
      total: calls.length,
      perSite: calls.length / everInserted,
      byFunction: tally(calls, (c) => c.fn),
    },
    attemptsPerSite: attempts / everInserted,
    failedSamples,
  };
}

async function measureRemovals(
  stack: Stack,
  plan: RemovalPlan,
  all: Array<{ id: string; domain: string; status: string | null; doc_root: string | null }>,
  state: SimState,
  history: Map<string, string[]>,
): Promise<RemovalFigures> {
  const byId = new Map(all.map((r) => [r.id, r]));
  const kept = plan.targets.filter((t) => t.how === "keep");
  const deleted = plan.targets.filter((t) => t.how === "delete" && !t.recreate);
  const recreated = plan.targets.filter((t) => t.recreate);
  const present = (domain: string) => state.sites[domain] !== undefined;
  const problems: Array<{ id: string[]; domain: string; what: string }> = [];

  const keptRemoved = kept.filter((t) => byId.get(t.id)?.status === "removed");
  for (const t of kept.filter((t) => byId.get(t.id)?.status !== "removed")) {
    problems.push({ id: [t.id], domain: t.domain, what: `kept row ended ${byId.get(t.id)?.status}` });
  }
  const keptLeft = kept.filter((t) => present(t.domain)).map((t) => t.domain);
  const deletedLeft = deleted.filter((t) => present(t.domain)).map((t) => t.domain);
  for (const domain of [...keptLeft, ...deletedLeft]) {
    const t = plan.targets.find((x) => x.domain === domain)!;
    problems.push({ id: [t.id], domain, what: "CloudPanel site left after its removal" });
  }

  let active = 0, oneNewSite = 0, rightDocRoot = 0;
  for (const t of recreated) {
    const row = all.find((r) => r.domain === t.domain && r.id !== t.id);
    const site = state.sites[t.domain];
    const works = history.get(t.domain) ?? [];
    const ok = {
      active: row?.status === "active",
      // The old site deleted, then exactly one made for the new row.
      one: site !== undefined && works.join(",") === "add,delete,add",
      docRoot: site !== undefined && row?.doc_root === site.docRoot,
    };
    active += ok.active ? 1 : 0;
    oneNewSite += ok.one ? 1 : 0;
    rightDocRoot += ok.docRoot ? 1 : 0;
    if (!ok.active || !ok.one || !ok.docRoot) {
      problems.push({
        id: [t.id, ...(row ? [row.id] : [])],
        domain: t.domain,
        what: `re-created row ${row?.status ?? "missing"}; CloudPanel: ${works.join(", ") || "none"}${
          ok.docRoot ? "" : "; doc root differs"
        }`,
      });
    }
  }

  // Every target's old id: a re-created domain's new row has an id (and a secret) of its own.
  const names = plan.targets.map((t) => `hosting_automator_site_${t.id}`);
  const [{ left }] = await stack.sql<{ left: number }[]>`
    select count(*)::int as left from vault.secrets where name = any(${names}::text[])`;
  const jobs = await stack.sql<{ state: string; code: string | null }[]>`
    select state::text, last_error_code as code from hosting_automator.jobs
    where kind = 'remove' and id > ${plan.afterJobId}`;

  return {
    kept: { asked: kept.length, removed: keptRemoved.length, siteLeft: keptLeft },
    deleted: { asked: deleted.length, siteLeft: deletedLeft },
    recreated: { asked: recreated.length, active, oneNewSite, rightDocRoot },
    vaultLeft: left,
    jobStates: tally(jobs, (j) => j.state),
    failedCodes: tally(jobs.filter((j) => j.state === "failed"), (j) => j.code ?? "none"),
    problems: await Promise.all(
      problems.slice(0, 10).map(async (p) => ({
        domain: p.domain,
        what: p.what,
        codes: await eventCodes(stack, p.id),
      })),
    ),
  };
}
