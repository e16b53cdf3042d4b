// deno-lint-ignore-file no-console
/**
 * `deno task provision`: the command-line mode, for operators and for the Hub as a fallback. Same
 * configuration, SQL functions and workflow as the Edge Function; see `--help`.
 */
import { parseArgs } from "node:util";
import {
  type Config,
  configProblems,
  loadConfig,
  loadStoreConfig,
  secretsOf,
  sshConfigFor,
  type StoreConfig,
  storeSecrets,
} from "../supabase/functions/hosting-automator/config.ts";
import { storeFor, workflowDeps } from "../supabase/functions/hosting-automator/app.ts";
import {
  addStaticSiteCommand,
  deleteSiteCommand,
  installCertificateCommand,
} from "../supabase/functions/hosting-automator/cloudpanel.ts";
import { type Domain, parseDomain, siteUserFor } from "../supabase/functions/hosting-automator/domain.ts";
import { isHostingError, toHostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, type LogLevel, REDACTED, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import {
  addSiteParams,
  endpointOf,
  lookupParams,
  MatomoClient,
  requestUrl,
} from "../supabase/functions/hosting-automator/matomo.ts";
import { connectSsh } from "../supabase/functions/hosting-automator/ssh.ts";
import type {
  JobKind,
  SiteDetail,
  SiteLogin,
  StepName,
  Store,
} from "../supabase/functions/hosting-automator/store.ts";
import { KINDS } from "../supabase/functions/hosting-automator/steps.ts";
import {
  Invocation,
  type JobOutcome,
  type RunResult,
} from "../supabase/functions/hosting-automator/workflow.ts";
import { loadEnv } from "./dotenv.ts";
import { fitParagraph, outputWidth, progressLines, STEP_LABEL, styleFor, table } from "./format.ts";
import { serverPlan } from "./server_checks.ts";
import { SERVER_TROUBLE, statusLines } from "./status_report.ts";

export const USAGE = `Usage: deno task provision [options]

Provisions websites on CloudPanel and Matomo the way the Edge Function does, from a terminal.

  --site <id|domain>   provision this site now (it is queued first when its DNS is active and hosting pending)
  --pending            run every job that is due
  --retry-failed       re-queue failed sites and active sites missing analytics, then run them
  --remove <id|domain> remove this site now, with live progress: its CloudPanel site (files, certificate,
                       site user) is deleted, its Matomo site too with MATOMO_ON_REMOVE=delete (kept by
                       default), and its row ends status_hosting 'removed'; a site nothing was made for is
                       removed at once. A removal that failed is queued again by --retry-failed
  --credentials <id|domain>
                       the site user's SFTP login: site user, host, port, doc root; the password masked
  --reveal             with --credentials: print the password in clear
  --status             the status report, all of GET /status: counts, queue, whether the database starts jobs
                       by itself (Vault secrets, pg_net, pg_cron and the sweep), every CloudPanel server
                       (state, sites placed of its capacity, jobs running of its concurrency, failures in the
                       last day, circuit and last error, and why its jobs wait), jobs waiting for a server or
                       for capacity, sites waiting for DNS, certificates, running jobs, retries, failures,
                       missing analytics, removals; fitted to the terminal's width (or COLUMNS)
  --dry-run            check the configuration, the database, the SSH connection (host key and login) with
                       the settings it prints (and each other registered server as stored), and Matomo
                       (version, super user), then print the exact commands and requests a run would send,
                       secrets masked; changes nothing. Applies to --site, or to the due jobs (default)
  --concurrency <n>    jobs at once, 1 to 16 (default 2; the per-server cap in the database still applies)
  --env-file <path>    read settings from this file (default: .env when it exists; the environment wins)
  --verbose            also print the JSON log lines (redacted) on stderr
  -h, --help           this text

Settings are the Edge Function's (see README, "Settings"), checked all at once, each command only those it
uses: --status and --credentials read only the store's (with HOSTING_STORE=postgres, SUPABASE_DB_URL alone),
the others also CloudPanel's and Matomo's; none needs the keys callers present. HOSTING_STORE=postgres with
SUPABASE_DB_URL talks to the database directly, the default uses SUPABASE_URL and the secret key.

Exit status: 0 done; 1 a site (or its removal) failed, a --dry-run check failed, or --remove or
--credentials was refused (the message says why); 2 usage or configuration error, or no such site;
3 a site (or its removal) failed for now and will be retried later, or waits for its server.`;

const EXIT = { ok: 0, failed: 1, usage: 2, retrying: 3 } as const;

class UsageError extends Error {}
/** The database refused what was asked (the message says why and what to do): exit 1. */
class Refusal extends Error {}

interface Options {
  site?: string;
  remove?: string;
  credentials?: string;
  reveal: boolean;
  pending: boolean;
  retryFailed: boolean;
  status: boolean;
  dryRun: boolean;
  concurrency: number;
  envFile?: string;
  verbose: boolean;
  help: boolean;
}

export function parseOptions(args: string[]): Options {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        site: { type: "string" },
        remove: { type: "string" },
        credentials: { type: "string" },
        reveal: { type: "boolean", default: false },
        pending: { type: "boolean", default: false },
        "retry-failed": { type: "boolean", default: false },
        status: { type: "boolean", default: false },
        "dry-run": { type: "boolean", default: false },
        concurrency: { type: "string", default: "2" },
        "env-file": { type: "string" },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const concurrency = Number(parsed.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 16) {
    throw new UsageError("--concurrency must be a whole number from 1 to 16");
  }
  const options: Options = {
    site: parsed.site,
    remove: parsed.remove,
    credentials: parsed.credentials,
    reveal: parsed.reveal!,
    pending: parsed.pending!,
    retryFailed: parsed["retry-failed"]!,
    status: parsed.status!,
    dryRun: parsed["dry-run"]!,
    concurrency,
    envFile: parsed["env-file"],
    verbose: parsed.verbose!,
    help: parsed.help!,
  };
  for (const flag of ["site", "remove", "credentials"] as const) {
    if (options[flag] !== undefined && options[flag].trim() === "") {
      throw new UsageError(`--${flag} needs an id or a domain`);
    }
  }
  if (options.reveal && options.credentials === undefined) {
    throw new UsageError("--reveal goes with --credentials");
  }
  const modes = [
    options.site !== undefined,
    options.remove !== undefined,
    options.credentials !== undefined,
    options.pending,
    options.retryFailed,
    options.status,
  ].filter(Boolean).length;
  if (!options.help && modes === 0 && !options.dryRun) {
    throw new UsageError(
      "choose what to do: --site, --remove, --credentials, --pending, --retry-failed, --status or --dry-run",
    );
  }
  if (modes > 1) {
    throw new UsageError(
      "choose one of --site, --remove, --credentials, --pending, --retry-failed and --status",
    );
  }
  if (options.dryRun && !(options.site !== undefined || options.pending || modes === 0)) {
    throw new UsageError("--dry-run goes with --site or --pending");
  }
  return options;
}

const out = (line = "") => console.log(line);
const style = styleFor(Deno.stdout);

function exitFor(outcomes: JobOutcome[]): number {
  if (outcomes.some((o) => o.status === "failed")) return EXIT.failed;
  // Not done yet, and will run again by itself: retried with backoff, or waiting for its server to answer.
  const later = new Set(["retrying", "interrupted", "waiting"]);
  if (outcomes.some((o) => later.has(o.status))) return EXIT.retrying;
  return EXIT.ok;
}

function outcomeTable(outcomes: JobOutcome[]): string {
  return table(
    ["domain", "status", "doc root", "Matomo id", "error or warning"],
    outcomes.map((o) => [
      o.domain,
      o.status,
      o.doc_root,
      o.matomo_site_id,
      o.error?.message ?? o.warning?.message ?? (o.status === "retrying" ? `retry at ${o.next_run_at}` : ""),
    ]),
  );
}

function report(result: RunResult): number {
  out();
  if (result.outcomes.length === 0) out("No job was due.");
  else out(outcomeTable(result.outcomes));
  if (result.stopped) out(style.bad(`Stopped early: ${result.stopped.message} (${result.stopped.code})`));
  const code = result.stopped && result.outcomes.length === 0 ? EXIT.failed : exitFor(result.outcomes);
  return code;
}

type Site = Extract<SiteDetail, { found: true }>["site"];

/** The site an id or a domain names; none is a usage error, as for --site. */
async function siteOf(store: Store, key: string): Promise<Site> {
  const detail = await store.site(key);
  if (!detail.found) throw new UsageError(`no site has the id or domain ${JSON.stringify(key)}`);
  return detail.site;
}

/** The login for SFTP; the password masked unless `reveal`. */
function printCredentials(login: SiteLogin, reveal: boolean): void {
  const rows: Array<[string, string | number | null]> = [
    ["site", `${login.domain ?? "(no domain)"} (${login.site_id})`],
    ["host", login.host],
    ["port", login.port],
    ["site user", login.site_user],
    ["password", reveal ? login.password : `${REDACTED}  (--reveal prints it)`],
    ["doc root", login.doc_root],
  ];
  for (const [label, value] of rows) out(`${`${label}:`.padEnd(11)}${value ?? "–"}`);
}

async function credentials(store: Store, options: Options): Promise<number> {
  const site = await siteOf(store, options.credentials!);
  let login: SiteLogin;
  try {
    login = await store.siteCredentials(site.id);
  } catch (error) {
    // The database says why: not provisioned yet, being removed, adopted, no password kept, no Vault.
    if (isHostingError(error) && (error.code === "not_found" || error.code === "credentials_unavailable")) {
      throw new Refusal(`no credentials for ${site.domain}: ${error.publicMessage}`);
    }
    throw error;
  }
  printCredentials(login, options.reveal);
  return EXIT.ok;
}

async function remove(
  store: Store,
  invocation: Invocation,
  options: Options,
  onProgress: ReturnType<typeof progressLines>,
): Promise<number> {
  const site = await siteOf(store, options.remove!);
  const removal = await store.remove(site.id);
  // Found a moment ago: deleted since, with no removal of its own to follow.
  if (!removal.found) throw new UsageError(`no site has the id or domain ${JSON.stringify(options.remove)}`);
  const open = removal.job_id !== undefined &&
    (removal.job_state === "queued" || removal.job_state === "running");
  if (!open) {
    if (removal.reason === "nothing_to_remove") {
      out(`${site.domain}: nothing was made for it on the servers; it is removed.`);
      return EXIT.ok;
    }
    // An earlier removal of this row failed (or could not be queued): the row says why.
    const detail = await store.site(site.id);
    const why = detail.found && detail.site.error_message ? ` ${detail.site.error_message.trim()}` : "";
    const state = removal.status_hosting ?? "none, the row is deleted";
    throw new Refusal(
      `${site.domain}: its removal is not queued (status_hosting ${state}).${
        why.replace(/(?<![.!?])$/, ".")
      } ` +
        "Fix the cause, then --retry-failed queues it again; --status lists failed removals.",
    );
  }
  out(
    removal.queued
      ? `${site.domain}: removal queued.`
      : `${site.domain}: its removal was already queued${
        removal.job_state === "running" ? " and a worker is running it" : ""
      }.`,
  );
  const result = await invocation.run({ siteId: site.id, drain: false, onProgress });
  if (result.outcomes.length === 0 && !result.stopped) {
    out(
      `${site.domain}: its removal waits (another job of the site is still running, a retry is ` +
        "scheduled, or a worker elsewhere runs it); see --status.",
    );
    return EXIT.retrying;
  }
  return report(result);
}

/** What a step would send, secrets masked (a dry run's lines for one step). */
function dryRunLines(
  step: StepName,
  domain: Domain,
  config: Config,
  mask: (text: string) => string,
): string[] {
  const matomo = (calls: Array<[method: string, params: Record<string, string>, note?: string]>) => {
    if (!config.matomo) return [`  skip ${STEP_LABEL[step]} (Matomo not configured)`];
    const endpoint = endpointOf(config.matomo.url);
    const body = (params: Record<string, string>) =>
      new URLSearchParams({ token_auth: REDACTED, ...params }).toString().replaceAll(
        "%5BREDACTED%5D",
        REDACTED,
      );
    return calls.flatMap(([method, params, note]) => [
      ...(note ? [`  ${note}`] : []),
      `  POST ${mask(requestUrl(endpoint, method))}  ${body(params)}`,
    ]);
  };
  switch (step) {
    case "cloudpanel_site":
      return [`  ssh  ${addStaticSiteCommand(domain, siteUserFor(domain), REDACTED)}`];
    case "dns_check":
      return [`  GET  ${config.checks.dohUrl}?name=<each name the certificate covers>&type=A and AAAA`];
    case "ssl_certificate":
      return [
        `  TLS  <server>:443 with SNI ${domain}: a valid certificate already served is not issued again`,
        `  ssh  ${installCertificateCommand(domain)}`,
      ];
    case "https_verify":
      return [`  TLS  <server>:443 with SNI ${domain}: the served certificate must be valid`];
    case "matomo_site":
      return matomo([
        ["SitesManager.getSitesIdFromSiteUrl", lookupParams(domain)],
        ["SitesManager.addSite", addSiteParams(domain), "then, only when no site matches:"],
      ]);
    case "cloudpanel_site_delete":
      return [`  ssh  ${deleteSiteCommand(domain)}`];
    case "matomo_site_delete":
      return config.matomoOnRemove === "keep"
        ? [`  skip ${STEP_LABEL[step]} (MATOMO_ON_REMOVE=keep: the analytics data is kept)`]
        : matomo([
          ["SitesManager.getSitesIdFromSiteUrl", lookupParams(domain)],
          ["SitesManager.deleteSite", { idSite: "<each id found whose main URL is the domain>" }, "then:"],
        ]);
  }
}

async function dryRun(config: Config, store: Store, redactor: Redactor, options: Options): Promise<number> {
  let ok = true;
  const width = outputWidth(Deno.stdout);
  // A check's or a note's line, fitted to the width; the commands below are printed whole, to be copied.
  const line = (mark: string, paint: (t: string) => string, text: string) =>
    out(paint(mark) + fitParagraph(`${mark} ${text}`, width).slice(mark.length));
  const check = (label: string, good: boolean, detail: string) => {
    ok &&= good;
    line(good ? "✓" : "✗", good ? style.ok : style.bad, `${label.padEnd(10)} ${detail}`);
  };
  const mask = (text: string) => redactor.redact(text);

  check(
    "config",
    true,
    `store ${config.store.kind}, CloudPanel ${
      config.fleet.defaultServer
        ? `${config.fleet.defaultServer.user}@${config.fleet.defaultServer.host}:${config.fleet.defaultServer.port}`
        : "servers from the database"
    }, ` +
      `Matomo ${
        config.matomo ? mask(config.matomo.url) : "not configured (the analytics step will be skipped)"
      }`,
  );

  let due: Awaited<ReturnType<Store["due"]>> = [];
  let plan: ReturnType<typeof serverPlan> = { checks: [], notes: [] };
  let targets: Array<{ domain: string | null; kind: JobKind; steps: Record<string, { state: string }> }> = [];
  try {
    const status = await store.status();
    check("database", true, `reachable; ${status.queue.due} job(s) due, ${status.running.length} running`);
    // The configured server with the settings printed above; every other registered server as stored.
    plan = serverPlan(config.fleet.defaultServer, await store.servers());
    if (options.site !== undefined) {
      const detail = await store.site(options.site);
      if (!detail.found) throw new UsageError(`no site has the id or domain ${JSON.stringify(options.site)}`);
      const open = detail.job?.state === "queued" || detail.job?.state === "running";
      targets = [{
        domain: detail.site.domain,
        kind: open && detail.job?.kind === "remove" ? "remove" : "provision",
        steps: detail.steps as Record<string, { state: string }>,
      }];
    } else {
      due = await store.due();
      targets = due.map((d) => ({ domain: d.domain, kind: d.kind, steps: d.steps }));
    }
  } catch (error) {
    if (error instanceof UsageError) throw error;
    check("database", false, mask(toHostingError(error).message));
  }

  for (const { label, server } of plan.checks) {
    const where = `${server.user}@${server.host}:${server.port}, ${
      label.endsWith("(stored)") ? "as stored in hosting_automator.servers" : "as configured"
    }`;
    try {
      const shell = await connectSsh(sshConfigFor(config.fleet, server));
      await shell.close();
      check(label, true, `logged in; host key matches ${server.hostKey}; no command was run (${where})`);
    } catch (error) {
      const failure = toHostingError(error);
      const trouble = SERVER_TROUBLE[failure.code];
      const cause = trouble ? ` The server ${trouble.what}; to fix: ${trouble.fix}.` : "";
      check(label, false, `${failure.code}: ${mask(failure.message)} (${where}).${cause}`);
    }
  }
  for (const note of plan.notes) {
    if (note.level === "fail") check("servers", false, note.text);
    else line(note.level === "warn" ? "!" : "·", note.level === "warn" ? style.warn : style.dim, note.text);
  }

  if (config.matomo) {
    const silent = new Logger(redactor, { sink: () => {}, level: "error" });
    try {
      const { version, superUser } = await new MatomoClient(config.matomo, silent).preflight();
      check(
        "matomo",
        superUser,
        `version ${version}; ${
          superUser
            ? "the token is a super user's"
            : "the token is NOT a super user's: addSite will be refused"
        }`,
      );
    } catch (error) {
      const failure = toHostingError(error);
      check("matomo", false, `${failure.code}: ${mask(failure.publicMessage)}`);
    }
  }

  out();
  out(targets.length ? `A run would send, per site (secrets masked):` : "No site to run.");
  for (const target of targets) {
    out();
    let domain;
    try {
      domain = parseDomain(target.domain);
    } catch (error) {
      out(
        `${target.domain}: ${style.bad("would fail")}: ${
          isHostingError(error) ? error.publicMessage : error
        }`,
      );
      continue;
    }
    out(`${domain}${target.kind === "provision" ? "" : ` (${target.kind})`}:`);
    for (const step of KINDS[target.kind].steps) {
      if (target.steps[step]?.state === "done") out(`  skip ${STEP_LABEL[step]} (done)`);
      else for (const line of dryRunLines(step, domain, config, mask)) out(line);
    }
  }
  out();
  out(
    ok
      ? "Dry run: every check passed; nothing was changed."
      : style.bad("Dry run: a check failed; nothing was changed."),
  );
  return ok ? EXIT.ok : EXIT.failed;
}

export async function main(args: string[]): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(args);
  } catch (error) {
    console.error(`provision: ${(error as Error).message} (see --help)`);
    return EXIT.usage;
  }
  if (options.help) {
    out(USAGE);
    return EXIT.ok;
  }

  // A report reads only the store's settings; a run (or a dry run) everything but the keys callers present.
  const reportOnly = options.status || options.credentials !== undefined;
  let env: Record<string, string>;
  let config: Config | null = null;
  let storeConfig: StoreConfig;
  const redactor = new Redactor();
  try {
    env = await loadEnv(options.envFile);
    // A terminal run is not bound by the Edge Function's wall clock.
    env.HOSTING_TIME_BUDGET_SECONDS ??= "3600";
    if (reportOnly) storeConfig = loadStoreConfig(env);
    else storeConfig = (config = loadConfig(env, "worker")).store;
  } catch (error) {
    const problems = configProblems(error);
    if (problems.length === 0) problems.push((error as Error).message);
    // Every problem at once, each with the setting's name and the rule; never a value.
    for (const problem of problems) console.error(`provision: configuration: ${problem}`);
    return EXIT.usage;
  }
  for (const secret of config ? secretsOf(config) : storeSecrets(storeConfig)) redactor.add(secret);
  const level: LogLevel = options.verbose ? "debug" : "error";
  const logger = new Logger(redactor, { level, sink: (line) => console.error(style.dim(line)) });
  const store = storeFor({ store: storeConfig }, { redactor });
  let stopListening = () => {};

  try {
    if (options.status) {
      const context = {
        width: outputWidth(Deno.stdout),
        style,
        configuredHost: Boolean(env.CLOUDPANEL_SSH_HOST),
      };
      for (const line of statusLines(await store.status(), context)) out(line);
      return EXIT.ok;
    }
    if (options.credentials !== undefined) return await credentials(store, options);
    if (!config) throw new Error("a run needs the whole configuration");
    if (options.dryRun) return await dryRun(config, store, redactor, options);
    const invocation = new Invocation(workflowDeps(config, logger, store));
    // Ctrl-C or a stop: running jobs are given back at once (attempt not spent) instead of waiting for a lease.
    const giveBack = () => invocation.shutdown("stopped by a signal");
    const signals = ["SIGINT", "SIGTERM"] as const;
    for (const signal of signals) Deno.addSignalListener(signal, giveBack);
    stopListening = () => signals.forEach((signal) => Deno.removeSignalListener(signal, giveBack));
    const onProgress = progressLines(out, style);

    if (options.remove !== undefined) return await remove(store, invocation, options, onProgress);
    if (options.site !== undefined) {
      const site = await siteOf(store, options.site);
      const queued = await store.enqueue(site.id);
      if (queued.job_id === undefined) {
        out(
          `${site.domain}: nothing to do: status_dns ${site.status_dns}, status_hosting ${site.status_hosting}` +
            (site.error_message ? ` (${site.error_message})` : ""),
        );
        if (site.status_hosting === "failed") out("Use --retry-failed to queue it again.");
        return site.status_hosting === "failed" ? EXIT.failed : EXIT.ok;
      }
      if (queued.job_state === "running") out(`${site.domain}: a worker is running its job right now.`);
      const result = await invocation.run({ siteId: site.id, drain: false, onProgress });
      if (result.outcomes.length === 0 && !result.stopped) {
        out(`${site.domain}: its job is not due yet (retry scheduled) or runs elsewhere; see --status.`);
        return EXIT.retrying;
      }
      return report(result);
    }

    if (options.retryFailed) {
      const retried = await store.retry({ allFailed: true });
      out(
        `Re-queued ${retried.requeued.length} site(s)` +
          (retried.requeued.length
            ? `: ${retried.requeued.map((r) => `${r.domain} (${r.reason})`).join(", ")}`
            : "."),
      );
    }
    out(`Running due jobs, ${options.concurrency} at a time…`);
    return report(await invocation.run({ drain: true, concurrency: options.concurrency, onProgress }));
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`provision: ${error.message}`);
      return EXIT.usage;
    }
    if (error instanceof Refusal) {
      console.error(`provision: ${redactor.redact(error.message)}`);
      return EXIT.failed;
    }
    const failure = toHostingError(error);
    console.error(`provision: ${failure.code}: ${redactor.redact(failure.message)}`);
    return EXIT.failed;
  } finally {
    stopListening();
    await store.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
