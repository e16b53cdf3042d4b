// deno-lint-ignore-file no-console
/**
 * `deno task demo`: the product working, on a machine with nothing but Deno, in a few seconds.
 *
 * Real: every migration of supabase/migrations (on PostgreSQL, embedded as PGlite), the row trigger that queues
 * the jobs, the SQL functions of the store (called as service_role), the workflow, the CloudPanel client (its
 * command lines and output classification) and the Matomo client (over HTTP).
 * Simulated, in this process: two CloudPanel servers, each its own `clpctl` state (dev/clpctl_sim.ts, reached
 * through dev/inprocess_shell.ts instead of SSH), one of which is down for a while (its connections refused);
 * their HTTPS side (dev/tls_sim.ts: the certificate each site serves, signed by a CA made at start); public DNS
 * (dev/doh_sim.ts, a DNS-over-HTTPS resolver answering each site's names with its server's address, read from
 * the placements in the database); and Matomo's HTTP API (dev/matomo_sim.ts on loopback).
 * Absent, as on plain Postgres: pg_net, Vault and pg_cron. No kick is sent; this script does what the sweep
 * would, running the function's workflow until no job is due or waiting for a retry.
 *
 * Nothing to configure: the function's environment is built below. Exits 0 when every site ended as expected.
 */
import { PGlite } from "@electric-sql/pglite";
import { fileURLToPath } from "node:url";
import { progressLines, serverTable, type Style, styleFor, table } from "../cli/format.ts";
import { createApp } from "../supabase/functions/hosting-automator/app.ts";
import { certificateNames } from "../supabase/functions/hosting-automator/certificate_names.ts";
import type { ServerAddress } from "../supabase/functions/hosting-automator/config.ts";
import { docRootFor, parseDomain, siteUserFor } from "../supabase/functions/hosting-automator/domain.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import type { LogLevel, LogSink } from "../supabase/functions/hosting-automator/log.ts";
import type { Store } from "../supabase/functions/hosting-automator/store.ts";
import type { JobOutcome, Progress } from "../supabase/functions/hosting-automator/workflow.ts";
import { readSimState, setFaults, type SimState } from "./clpctl_sim.ts";
import { type DohSim, startDohSim } from "./doh_sim.ts";
import { inProcessShell } from "./inprocess_shell.ts";
import { type MatomoSim, type SimRequestInfo, startMatomoSim } from "./matomo_sim.ts";
import { pgliteStore } from "./store_pglite.ts";
import { SUPABASE_DATABASE_SQL, SUPABASE_ROLES_SQL } from "./supabase_base.ts";
import { startTlsSim, type TlsSim } from "./tls_sim.ts";

const started = performance.now();
const MIGRATIONS = fileURLToPath(new URL("../supabase/migrations", import.meta.url));
/** The demo gives up waiting for retries after this long (they are due within two seconds here). */
const WAIT_LIMIT_MS = 45_000;

type Expected = "active" | "active_without_analytics" | "invalid" | "removed";

/** The Matomo simulator refuses every call about this site, so it goes live without analytics. */
const NO_ANALYTICS = "photo-studio.example";

const SITES: { domain: string; expect: Expected; note: string }[] = [
  { domain: "bakery-berlin.example", expect: "active", note: "" },
  { domain: "bücher.example", expect: "active", note: "an IDN: CloudPanel gets its punycode form" },
  { domain: "www.flower-shop.example", expect: "active", note: "" },
  { domain: "yoga-retreat.example", expect: "removed", note: "goes active, then the Hub removes it" },
  { domain: NO_ANALYTICS, expect: "active_without_analytics", note: "Matomo refuses every call about it" },
  { domain: "bad domain.example", expect: "invalid", note: "a space: refused before any command is built" },
  { domain: "shop.example;reboot", expect: "invalid", note: "a shell metacharacter: refused likewise" },
];

/**
 * The fleet: two rows of hosting_automator.servers, inserted before the sites (so no `default` server is
 * registered). Their capacities add up to the number of sites, so while cp-2 is down cp-1 fills up and the
 * sites left wait for cp-2. `public_ips` is where the sites' DNS must point (documentation addresses, RFC 5737);
 * `host` is loopback because the HTTPS check connects to it, and one TLS simulator there serves both servers'
 * sites (SSH is not used: clpctl runs in-process).
 */
const SERVERS = [
  { name: "cp-1", host: "127.0.0.1", publicIp: "203.0.113.10", capacity: 3, concurrency: 2 },
  { name: "cp-2", host: "127.0.0.1", publicIp: "203.0.113.20", capacity: 4, concurrency: 2 },
];
/** This server is down as the run starts: it refuses this many connections, then answers again. */
const OUTAGE = { server: "cp-2", refusals: 2 };
/** The server whose first certificate request Let's Encrypt fails once (its own view of DNS lagging). */
const CERTIFICATE_FAULT_SERVER = "cp-1";
/**
 * The site whose DNS is not ready at first: the resolver still has its apex's old address cached, and answers
 * it for `staleMs` after the first question (the record's TTL running out); `www.` already points right. The
 * certificate covers both names, so the job waits (`dns_not_ready`) without asking for a certificate.
 */
const DNS_LATE = {
  site: "www.flower-shop.example",
  name: "flower-shop.example",
  oldIp: "198.51.100.7",
  staleMs: 3_000,
};

/**
 * A key of the right type and shape, made for this run and never used: `connect` is overridden (the demo runs
 * clpctl in-process), but the configuration still checks every key it is given.
 */
async function throwawaySshKey(): Promise<string> {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign"]);
  const der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const base64 = btoa(String.fromCharCode(...der)).replace(/.{64}/g, "$&\n").trim();
  return `-----BEGIN PRIVATE KEY-----\n${base64}\n-----END PRIVATE KEY-----\n`;
}
/** A placeholder that only satisfies the configuration's syntax: no SSH happens, so it is never checked. */
const PLACEHOLDER_HOST_KEY = `SHA256:${"DemoPlaceholderNeverChecked".padEnd(43, "0")}`;

/** The summary's error cell is cut to this; the progress lines above it show the whole text. */
const ERROR_CELL_CHARS = 56;

const out = (line = "") => console.log(line);
const cut = (text: string | null, max: number) =>
  text !== null && text.length > max ? `${text.slice(0, max - 1)}…` : text;
const style: Style = styleFor(Deno.stdout);
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every log line to a file; warnings and errors also on screen, dimmed and short. */
function demoLogSink(file: Deno.FsFile): LogSink {
  const encoder = new TextEncoder();
  return (line: string, level: LogLevel) => {
    file.writeSync(encoder.encode(`${line}\n`));
    if (level !== "warn" && level !== "error") return;
    let text = line;
    try {
      const record = JSON.parse(line) as { msg?: string; code?: string };
      text = `${record.msg ?? ""}${record.code ? ` (${record.code})` : ""}`;
    } catch {
      // not JSON: shown as it is
    }
    out(style.dim(`    log ${level}: ${text}`));
  };
}

async function applyMigrations(pg: PGlite): Promise<void> {
  const files = [...Deno.readDirSync(MIGRATIONS)]
    .filter((entry) => entry.isFile && entry.name.endsWith(".sql"))
    .map((entry) => entry.name)
    .sort();
  for (const file of files) {
    const notices: string[] = [];
    const t = performance.now();
    await pg.exec(await Deno.readTextFile(`${MIGRATIONS}/${file}`), {
      onNotice: (notice) => notices.push(notice.message ?? ""),
    });
    out(`  ${style.ok("✓")} ${file.padEnd(48)} ${Math.round(performance.now() - t)} ms`);
    for (const notice of notices) out(style.dim(`      notice: ${notice}`));
  }
}

interface SiteRow {
  domain: string;
  hosting_server: string | null;
  status_hosting: string | null;
  hosting_doc_root: string | null;
  matomo_site_id: number | null;
  error_message: string | null;
  certificate_expires_at: Date | null;
}

const SITE_COLUMNS =
  "domain, hosting_server, status_hosting, hosting_doc_root, matomo_site_id, error_message, certificate_expires_at";
const DAY_MS = 86_400_000;
const CERTIFICATE_COMMAND = "lets-encrypt:install:certificate";

/** Each server's clpctl state, by server name. */
type Fleet = Map<string, SimState>;

/** Why a site did not end its provisioning as expected, or null when it did (a site to remove goes active). */
function problem(
  site: (typeof SITES)[number],
  row: SiteRow | undefined,
  fleet: Fleet,
  matomo: MatomoSim,
): string | null {
  if (!row) return "row missing";
  if (site.expect === "invalid") {
    if (row.status_hosting !== "failed") return `expected failed, got ${row.status_hosting}`;
    if (!row.error_message?.startsWith("The domain is invalid")) {
      return `expected the invalid-domain message, got ${JSON.stringify(row.error_message)}`;
    }
    return null;
  }
  const ascii = parseDomain(site.domain);
  if (row.status_hosting !== "active") {
    return `expected active, got ${row.status_hosting} (${row.error_message})`;
  }
  if (row.hosting_doc_root !== docRootFor(siteUserFor(ascii), ascii)) {
    return `unexpected doc root ${row.hosting_doc_root}`;
  }
  // The site lives on the server its row names, and on no other.
  const clpctl = row.hosting_server === null ? undefined : fleet.get(row.hosting_server);
  if (!clpctl) return `hosting_server ${row.hosting_server} is not one of the demo's servers`;
  const elsewhere = [...fleet].filter(([name, state]) => name !== row.hosting_server && state.sites[ascii]);
  if (elsewhere.length > 0) return `also on ${elsewhere.map(([name]) => name).join(", ")}`;
  if (!clpctl.sites[ascii]) return `no CloudPanel site on ${row.hosting_server}`;
  if (clpctl.certificates[ascii]?.type !== "lets-encrypt") return "no Let's Encrypt certificate";
  // No certificate issued twice: one certificate command succeeded for the site, on any server.
  const issued = [...fleet.values()].flatMap((state) => state.calls)
    .filter((call) => call.verb === CERTIFICATE_COMMAND && call.domainName === ascii && call.exitCode === 0);
  if (issued.length !== 1) return `${issued.length} certificates issued, expected 1`;
  // The HTTPS check saw the served certificate and stored its expiry (Let's Encrypt's: 90 days).
  const daysLeft = row.certificate_expires_at === null
    ? null
    : (new Date(row.certificate_expires_at).getTime() - Date.now()) / DAY_MS;
  if (daysLeft === null || daysLeft < 89 || daysLeft > 90) {
    return `certificate expiry ${row.certificate_expires_at} is not the served certificate's (90 days)`;
  }
  const registered = matomo.sites.find((s) => s.main_url === `https://${ascii}`);
  if (site.expect === "active_without_analytics") {
    if (row.matomo_site_id !== null || registered) return "expected no Matomo site";
    return null;
  }
  if (!registered || row.matomo_site_id !== registered.idsite) {
    return `Matomo id ${row.matomo_site_id} does not match the Matomo site (${registered?.idsite ?? "none"})`;
  }
  return null;
}

/** Why a removed site is not gone as expected: the row cleared, no CloudPanel site, its analytics kept. */
function removalProblem(
  domain: string,
  row: SiteRow | undefined,
  fleet: Fleet,
  matomo: MatomoSim,
): string | null {
  if (!row) return "row missing";
  if (row.status_hosting !== "removed") {
    return `expected removed, got ${row.status_hosting} (${row.error_message})`;
  }
  if (row.hosting_doc_root !== null || row.matomo_site_id !== null || row.hosting_server !== null) {
    return "doc root, Matomo id or server not cleared";
  }
  const still = [...fleet].filter(([, state]) => state.sites[domain]).map(([name]) => name);
  if (still.length > 0) return `the CloudPanel site is still there on ${still.join(", ")}`;
  if (!matomo.sites.some((s) => s.main_url === `https://${domain}`)) return "its Matomo site was not kept";
  return null;
}

/** Every server's clpctl state. */
async function readFleet(stateDirOf: (name: string) => string): Promise<Fleet> {
  const fleet: Fleet = new Map();
  for (const server of SERVERS) fleet.set(server.name, await readSimState(stateDirOf(server.name)));
  return fleet;
}

/**
 * When the next job can run, as pg_cron's sweep would find it: its retry time, or later when its server's
 * circuit is open (a site not placed yet waits for the server it would be placed on). `server`: the open
 * circuit it waits for, if any. Null when no job is left.
 */
async function nextDue(pg: PGlite): Promise<{ at: number; server: string | null } | null> {
  const row = (await pg.query<{ at: number | null; server: string | null }>(`
    select (extract(epoch from x.at) * 1000)::float8 as at, x.server
    from (
      select greatest(j.run_at, coalesce(sv.open_until, j.run_at)) as at,
        case when sv.open_until > now() then sv.name end as server
      from hosting_automator.jobs j
      left join hosting_automator.placements p on p.site_id = j.site_id
      left join hosting_automator.servers sv on sv.name = coalesce(p.server, hosting_automator.best_server())
      where j.state in ('queued', 'running')
    ) x
    order by x.at
    limit 1`)).rows[0];
  return row?.at == null ? null : { at: row.at, server: row.server };
}

/** The servers as `/status` and `deno task provision --status` show them. */
async function printServers(store: Store): Promise<void> {
  const status = await store.status();
  out(serverTable(status.servers));
  if (status.waiting_for_capacity > 0) {
    out(style.warn(`  ${status.waiting_for_capacity} job(s) waiting for capacity`));
  }
}

/**
 * Public DNS as the DNS check sees it: each site's names (the domain, and `www.` or the apex as its certificate
 * covers them) answer the public address of the server the site was placed on, read from the database as the
 * Hub's DNS module would have set it; DNS_LATE's name answers its old address for a while. Other names: none.
 */
function demoResolver(pg: PGlite, clock: { staleUntil: number | null }) {
  const siteOf = new Map<string, string>();
  for (const site of SITES) {
    if (site.expect === "invalid") continue;
    for (const name of certificateNames(parseDomain(site.domain))) siteOf.set(name, site.domain);
  }
  return async (name: string, type: "A" | "AAAA"): Promise<string[] | null> => {
    const domain = siteOf.get(name);
    if (domain === undefined) return null;
    // The demo's servers have IPv4 addresses only.
    if (type === "AAAA") return [];
    const placed = (await pg.query<{ server: string }>(
      "select p.server from hosting_automator.placements p join public.sites s on s.id = p.site_id " +
        "where s.domain = $1",
      [domain],
    )).rows[0];
    const server = SERVERS.find((s) => s.name === placed?.server);
    if (!server) return null;
    if (name === DNS_LATE.name) {
      clock.staleUntil ??= Date.now() + DNS_LATE.staleMs;
      if (Date.now() < clock.staleUntil) return [DNS_LATE.oldIp];
    }
    return [server.publicIp];
  };
}

async function main(): Promise<boolean> {
  out(style.ok("hosting-automator demo"));
  out(
    style.dim("  real: migrations, trigger, store (SQL functions), workflow, CloudPanel and Matomo clients"),
  );
  out(
    style.dim(
      "  simulated in this process: two CloudPanel servers (clpctl, HTTPS), public DNS (DNS-over-HTTPS), Matomo's",
    ),
  );
  out(style.dim("  HTTP API; PostgreSQL embedded (PGlite)"));

  const work = await Deno.makeTempDir({ prefix: "hosting-automator-demo-" });
  const stateDirOf = (server: string) => `${work}/clpctl-${server}`;
  for (const server of SERVERS) await Deno.mkdir(stateDirOf(server.name));
  const logFile = await Deno.open(`${work}/app.log`, { create: true, write: true, append: true });
  let pg: PGlite | null = null;
  let matomo: MatomoSim | null = null;
  let doh: DohSim | null = null;
  let tls: TlsSim | null = null;
  /** When DNS_LATE's name starts answering the server's address: set by its first lookup. */
  const dnsClock: { staleUntil: number | null } = { staleUntil: null };
  let http: Deno.HttpClient | null = null;
  let ok = false;
  try {
    // 1. The database, as `supabase db push` would leave it.
    pg = await PGlite.create();
    const version = (await pg.query<{ v: string }>("select split_part(version(), ' ', 2) as v")).rows[0].v;
    out();
    out(`▸ PostgreSQL ${version} (PGlite, in memory): Supabase's roles, then every migration in order`);
    await pg.exec(SUPABASE_ROLES_SQL + SUPABASE_DATABASE_SQL);
    await applyMigrations(pg);
    // Retries due in about a second (the queue policy is a row: hosting_automator.settings; its defaults are
    // the migrations', read before they are changed).
    const policy = (await pg.query<{ retry: number; dns: number }>(
      "select backoff_base_seconds as retry, dns_backoff_seconds as dns from hosting_automator.settings",
    )).rows[0];
    await pg.exec(
      "update hosting_automator.settings set backoff_base_seconds = 1, backoff_max_seconds = 2, " +
        "dns_backoff_seconds = 1, dns_backoff_max_seconds = 2",
    );
    out(
      style.dim(
        `  settings: retry and DNS backoff 1 s (instead of ${policy.retry} s and ${policy.dns} s) so the demo's retries come quickly`,
      ),
    );

    // 2. The outside world.
    matomo = await startMatomoSim();
    const aboutNoAnalytics = (request: SimRequestInfo) =>
      Object.values(request.params).some((value) => value.includes(NO_ANALYTICS));
    matomo.failWhen(aboutNoAnalytics, { kind: "error", message: "Mysql server has gone away (simulated)" });
    await setFaults(stateDirOf(CERTIFICATE_FAULT_SERVER), {
      certificateFailures: 1,
      certificateFailureKind: "dns",
    });
    // The servers' HTTPS side: one listener for both (a domain lives on one server), its own CA, trusted below.
    tls = await startTlsSim({ stateDirs: SERVERS.map((server) => stateDirOf(server.name)) });
    doh = await startDohSim();
    doh.setResolver(demoResolver(pg, dnsClock));
    out();
    out(
      `▸ Simulators: ${SERVERS.length} CloudPanel servers (clpctl in-process, one state each), Matomo on ${matomo.url}`,
    );
    out(
      style.dim(`  HTTPS of both servers on 127.0.0.1:${tls.port} (test CA), DNS-over-HTTPS on ${doh.url}`),
    );
    out(
      style.dim(
        `  faults: ${OUTAGE.server} is down as the run starts: it refuses the next ${OUTAGE.refusals} connections;`,
      ),
    );
    out(
      style.dim(
        `          Let's Encrypt fails ${CERTIFICATE_FAULT_SERVER}'s first certificate request once (its view of DNS lags);`,
      ),
    );
    out(
      style.dim(
        `          DNS still answers ${DNS_LATE.name} → ${DNS_LATE.oldIp} (its old host) for ${
          seconds(DNS_LATE.staleMs)
        } after the first lookup;`,
      ),
    );
    out(style.dim(`          Matomo refuses every call about ${NO_ANALYTICS}`));

    // 3. The operator registers the servers (rows, edited with SQL; the SSH keys stay the function's secrets).
    out();
    out("▸ The operator registers two CloudPanel servers: rows of hosting_automator.servers");
    for (const server of SERVERS) {
      await pg.query(
        "insert into hosting_automator.servers (name, host, public_ips, host_key, capacity, concurrency) " +
          "values ($1, $2, $3, $4, $5, $6)",
        [
          server.name,
          server.host,
          [server.publicIp],
          PLACEHOLDER_HOST_KEY,
          server.capacity,
          server.concurrency,
        ],
      );
      out(
        `  + ${server.name.padEnd(6)} ${server.host.padEnd(10)} public ${server.publicIp.padEnd(14)} ` +
          style.dim(`capacity ${server.capacity} sites, ${server.concurrency} jobs at once`),
      );
    }

    // 4. The Hub adds sites; the DNS module marks them active. The trigger queues the jobs.
    out();
    out(`▸ The Hub inserts ${SITES.length} sites; the DNS module then sets status_dns = 'active' on all`);
    for (const site of SITES) {
      await pg.query("insert into public.sites (domain, status_dns) values ($1, 'pending')", [site.domain]);
      out(site.note ? `  + ${site.domain.padEnd(28)} ${style.dim(site.note)}` : `  + ${site.domain}`);
    }
    await pg.exec("update public.sites set status_dns = 'active'");
    const queued = (await pg.query<{ n: number }>(
      "select count(*)::int as n from hosting_automator.jobs where state = 'queued'",
    )).rows[0].n;
    out(
      `  the row trigger queued ${queued} jobs ${
        style.dim("(no pg_net here: nothing kicks, the worker polls)")
      }`,
    );

    // 5. The function: its real composition root, with the store on PGlite and each server's clpctl in-process.
    // No idle keep-alive connections to the Matomo simulator: Deno's client pool would keep one for 90 s, and
    // the simulator's graceful close waits for it (seen in about one run in ten before this).
    http = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    const client = http;
    let refused = 0;
    /** A server that is down refuses the connection, as SSH to a stopped server does. */
    const connect = (server: ServerAddress) => {
      if (server.name === OUTAGE.server && refused < OUTAGE.refusals) {
        refused++;
        return Promise.reject(
          new HostingError(
            "ssh_unreachable",
            `${server.host}:${server.port}: connection refused (simulated outage)`,
          ),
        );
      }
      return Promise.resolve(inProcessShell(stateDirOf(server.name)));
    };
    const store = pgliteStore(pg, { role: "service_role" });
    const app = createApp({
      HOSTING_STORE: "postgres",
      // Never connected to: the store is passed in below. The configuration only checks its form.
      SUPABASE_DB_URL: "postgresql://unused@pglite.invalid/postgres",
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: `sb_secret_demo${crypto.randomUUID().slice(0, 8)}` }),
      // No CLOUDPANEL_SSH_HOST: the servers are the rows above. One key for all of them.
      CLOUDPANEL_SSH_PRIVATE_KEY: await throwawaySshKey(),
      MATOMO_API_URL: matomo.url,
      MATOMO_API_TOKEN: matomo.token,
      HOSTING_MATOMO_TIMEOUT_SECONDS: "5",
      HOSTING_DOH_URL: doh.url,
      HOSTING_CHECK_TIMEOUT_SECONDS: "5",
    }, {
      store,
      connect,
      logSink: demoLogSink(logFile),
      // Matomo and the DNS-over-HTTPS resolver.
      fetch: (input, init) => fetch(input, { ...init, client }),
      // The HTTPS check connects to the servers' host on the simulator's port and trusts its CA.
      https: { port: tls.port, caCerts: [tls.caPem] },
    });
    if (!app.newInvocation) throw new Error("the demo's configuration was refused (see the log line above)");

    out();
    out(
      "▸ The workflow runs the due jobs, two at a time; each site is placed on a server when its job starts",
    );
    const outcomes: JobOutcome[] = [];
    /** The server of each job, from its progress events (an outcome does not name it). */
    const serverOf = new Map<number, string>();
    const print = progressLines(out, style);
    const onProgress = (event: Progress) => {
      serverOf.set(event.job.jobId, event.job.server.name);
      print(event);
    };
    const giveUp = performance.now() + WAIT_LIMIT_MS;
    let shownOpen = false;
    let idle = 0;
    for (;;) {
      const result = await app.newInvocation().run({ drain: true, concurrency: 2, onProgress });
      outcomes.push(...result.outcomes);
      if (result.stopped) {
        out(style.bad(`  the invocation stopped: ${result.stopped.message}`));
        break;
      }
      // What pg_cron's sweep would do: come back when the next job can run.
      const next = await nextDue(pg);
      if (next === null) break;
      if (next.server && !shownOpen) {
        shownOpen = true;
        out();
        out(`  what /status shows now (deno task provision --status), ${next.server} still down:`);
        await printServers(store);
        out();
      }
      const wait = Math.max(0, next.at - Date.now());
      // Something is due but nothing could be claimed: stop rather than spin.
      idle = result.outcomes.length === 0 && wait === 0 ? idle + 1 : 0;
      if (idle > 20) {
        out(style.bad("  jobs are due but none could be claimed: stopped waiting"));
        break;
      }
      if (performance.now() + wait > giveUp) {
        out(style.bad(`  the next job is due only in ${seconds(wait)}: stopped waiting`));
        break;
      }
      out(style.dim(
        next.server
          ? `  … waiting ${seconds(wait)} for ${next.server}'s circuit to close (it could not be reached)`
          : `  … waiting ${seconds(wait)} for a retry to become due`,
      ));
      await sleep(wait + 20);
    }

    // 6. The outcome, as the Hub sees it in public.sites.
    const rows = (await pg.query<SiteRow>(`select ${SITE_COLUMNS} from public.sites`)).rows;
    const byDomain = new Map(rows.map((row) => [row.domain, row]));
    // Public text the workflow reported for a site that went live without analytics.
    const warningOf = (domain: string) =>
      outcomes.findLast((o) => o.domain === domain && o.status === "active")?.warning?.message;
    const fleet = await readFleet(stateDirOf);
    const problems: [string, string][] = [];
    for (const site of SITES) {
      const found = problem(site, byDomain.get(site.domain), fleet, matomo);
      if (found) problems.push([site.domain, found]);
    }
    const valid = new Set<string>(
      SITES.filter((s) => s.expect !== "invalid").map((s) => parseDomain(s.domain)),
    );
    const stray = [...fleet.values()].flatMap((state) => state.calls)
      .filter((call) => !valid.has(call.domainName ?? ""));
    if (stray.length > 0) {
      problems.push(["clpctl", `${stray.length} commands for a domain that is not valid`]);
    }
    const retried = outcomes.filter((o) =>
      o.status === "retrying" && o.error?.code === "certificate_not_validated"
    );
    if (retried.length !== 1) {
      problems.push(["Let's Encrypt", `expected one retried certificate, saw ${retried.length}`]);
    }
    // DNS: only DNS_LATE's job waited for it, until its name pointed at the server, and asked for no
    // certificate meanwhile; every other active site's DNS and HTTPS checks passed at their first run.
    const dnsWaits = outcomes.filter((o) => o.error?.code === "dns_not_ready");
    if (dnsWaits.length === 0 || dnsWaits.some((o) => o.domain !== DNS_LATE.site)) {
      problems.push(["DNS", `expected only ${DNS_LATE.site} to wait for DNS, saw ${dnsWaits.length} waits`]);
    }
    if (dnsWaits.some((o) => o.status !== "retrying")) {
      problems.push(["DNS", "a job that waited for DNS was not retried"]);
    }
    const lateCertificates = [...fleet.values()].flatMap((state) => state.calls)
      .filter((call) => call.verb === CERTIFICATE_COMMAND && call.domainName === parseDomain(DNS_LATE.site));
    if (
      dnsClock.staleUntil === null ||
      lateCertificates.some((call) => Date.parse(call.time) < dnsClock.staleUntil!)
    ) {
      problems.push([DNS_LATE.site, "a certificate was asked for before its DNS pointed at the server"]);
    }
    for (const site of SITES.filter((s) => s.expect !== "invalid")) {
      const done = outcomes.findLast((o) => o.domain === site.domain && o.status.startsWith("active"));
      const unchecked = ["dns_check", "https_verify"].filter((step) =>
        !done?.steps.some((s) => s.step === step && (s.status === "done" || s.status === "already_done"))
      );
      if (unchecked.length > 0) problems.push([site.domain, `went active without ${unchecked.join(", ")}`]);
    }
    const httpsWaits = outcomes.filter((o) => o.error?.code?.startsWith("https_"));
    if (httpsWaits.length > 0) {
      problems.push([
        "HTTPS",
        `${httpsWaits.length} job(s) did not see a valid certificate after issuing it`,
      ]);
    }

    // The outage: the down server's jobs waited (attempt kept) while the other server's sites went on.
    const waited = outcomes.filter((o) => o.status === "waiting");
    const firstWait = outcomes.findIndex((o) => o.status === "waiting");
    const backOn = outcomes.findIndex((o) =>
      o.status === "active" && serverOf.get(o.job_id) === OUTAGE.server
    );
    if (refused !== OUTAGE.refusals) {
      problems.push([OUTAGE.server, `refused ${refused} connections, expected ${OUTAGE.refusals}`]);
    }
    if (waited.length === 0 || waited.some((o) => serverOf.get(o.job_id) !== OUTAGE.server)) {
      problems.push([OUTAGE.server, `expected only its jobs to wait, saw ${waited.length} waiting`]);
    }
    if (waited.some((o) => o.error?.code !== "ssh_unreachable")) {
      problems.push([OUTAGE.server, "a job waited for another reason than ssh_unreachable"]);
    }
    if (
      backOn < 0 ||
      !outcomes.slice(firstWait, backOn).some((o) =>
        o.status === "active" && serverOf.get(o.job_id) !== OUTAGE.server
      )
    ) {
      problems.push([OUTAGE.server, "no other server's site went active while it was down"]);
    }

    // 7. The Hub takes one site down: the row is kept and ends `removed`.
    const toRemove = SITES.filter((s) => s.expect === "removed").map((s) => s.domain);
    out();
    out(
      `▸ The Hub removes ${
        toRemove.join(", ")
      } (status_hosting = 'removing'); the trigger queues the removal`,
    );
    for (const domain of toRemove) {
      await pg.query("update public.sites set status_hosting = 'removing' where domain = $1", [domain]);
    }
    const removal = await app.newInvocation().run({ drain: true, concurrency: 2, onProgress });
    outcomes.push(...removal.outcomes);
    const afterRemoval = await readFleet(stateDirOf);
    const removedRows = new Map(
      (await pg.query<SiteRow>(`select ${SITE_COLUMNS} from public.sites`)).rows.map((
        row,
      ) => [row.domain, row]),
    );
    for (const domain of toRemove) {
      byDomain.set(domain, removedRows.get(domain)!);
      const found = removalProblem(domain, removedRows.get(domain), afterRemoval, matomo);
      if (found) problems.push([domain, found]);
    }
    out(style.dim("  MATOMO_ON_REMOVE is keep (the default): the site's analytics data stays in Matomo"));

    out();
    out(`▸ The servers at the end (${OUTAGE.server} answers again: its circuit closed, its last error kept)`);
    await printServers(store);

    // The expiry the HTTPS check read from each served certificate, as /status reports it.
    const certificates = (await pg.query<
      { c: { expiring_within_30_days: number; soonest: { domain: string; expires_at: string }[] } }
    >("select public.hosting_status() -> 'certificates' as c")).rows[0].c;
    const soonest = certificates.soonest[0];
    out();
    out(
      `▸ /status's certificates: ${certificates.soonest.length} served and checked, ` +
        `${certificates.expiring_within_30_days} expiring within 30 days` +
        (soonest ? `; the soonest: ${soonest.domain} on ${soonest.expires_at.slice(0, 10)}` : ""),
    );
    if (certificates.soonest.length !== SITES.filter((s) => s.expect.startsWith("active")).length) {
      problems.push([
        "/status",
        `${certificates.soonest.length} certificates listed, expected one per active site`,
      ]);
    }

    out();
    out("▸ public.sites (hosting_server: where each site was placed; placement is sticky)");
    out(table(
      ["domain", "server", "status", "doc root", "Matomo id", "error"],
      SITES.map(({ domain }) => {
        const row = byDomain.get(domain);
        const warning = warningOf(domain);
        return [
          domain,
          row?.hosting_server,
          row?.status_hosting,
          row?.hosting_doc_root,
          row?.matomo_site_id,
          cut(row?.error_message ?? (warning ? `(warning) ${warning}` : null), ERROR_CELL_CHARS),
        ];
      }),
      72, // whole doc roots; the error cell is cut shorter above (the full text is in the progress lines)
    ));
    out();
    const count = (expect: Expected) => SITES.filter((s) => s.expect === expect).length;
    const elapsed = seconds(performance.now() - started);
    if (problems.length === 0) {
      ok = true;
      out(style.ok(
        `✓ all ${SITES.length} sites ended as expected: ${count("active")} active, ` +
          `${count("active_without_analytics")} active without analytics, ${count("invalid")} refused as ` +
          `invalid, ${count("removed")} provisioned then removed; 1 certificate retried; ` +
          `${DNS_LATE.site} waited for DNS ${dnsWaits.length} time(s), no certificate asked meanwhile; ` +
          `${OUTAGE.server} was down: its jobs waited ${waited.length} time(s), attempt kept (${elapsed})`,
      ));
    } else {
      const listed = problems.map(([what, why]) => `${what}: ${why}`).join("; ");
      out(style.bad(`✗ ${problems.length} unexpected: ${listed} (${elapsed})`));
      out(`  app log and simulator state kept in ${work}`);
    }
  } finally {
    logFile.close();
    await matomo?.close();
    await doh?.close();
    await tls?.close();
    http?.close();
    // PGlite keeps the process alive for seconds unless closed.
    await pg?.close();
    if (ok) await Deno.remove(work, { recursive: true });
  }
  return ok;
}

try {
  Deno.exit(await main() ? 0 : 1);
} catch (error) {
  console.error(style.bad(`✗ the demo could not run: ${error instanceof Error ? error.stack : error}`));
  Deno.exit(1);
}
