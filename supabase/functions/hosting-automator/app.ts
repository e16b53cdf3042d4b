/**
 * The composition root: configuration → logger → store → clients → workflow → HTTP handler.
 * `index.ts` serves it on Supabase; the local server, the CLI, the demo and the tests build it with their own
 * overrides.
 */
import {
  type Config,
  configProblems,
  loadConfig,
  secretsOf,
  type ServerAddress,
  sshConfigFor,
} from "./config.ts";
import { MATOMO_TIMEOUT_SECONDS } from "./defaults.ts";
import { toHostingError } from "./errors.ts";
import { configErrorHandler, createHandler, type Handler } from "./http.ts";
import { Logger, type LogSink, Redactor } from "./log.ts";
import { MatomoClient } from "./matomo.ts";
import type { RemoteShell } from "./remote.ts";
import { connectSsh } from "./ssh.ts";
import type { Store } from "./store.ts";
import { postgresStore } from "./store_pg.ts";
import { rpcStore } from "./store_rpc.ts";
import { Invocation, type WorkflowDeps } from "./workflow.ts";
import { checkPointsTo } from "./dns.ts";
import { probeCertificate } from "./tls_probe.ts";
import type { Checks } from "./steps.ts";
import type { ClaimedServer } from "./store.ts";

export interface AppOverrides {
  store?: Store;
  logSink?: LogSink;
  /** Defaults to `EdgeRuntime.waitUntil` where that global exists. */
  waitUntil?: (work: Promise<unknown>) => void;
  /** Replaces the SSH connection (the demo runs the clpctl simulator in-process). */
  connect?: (server: ServerAddress) => Promise<RemoteShell>;
  /** For supabase-js, Matomo and the DNS-over-HTTPS resolver (tests). */
  fetch?: typeof fetch;
  /** Where the HTTPS check connects and what it trusts (tests: a TLS simulator with its own CA). */
  https?: { port?: number; caCerts?: string[] };
  clock?: () => number;
}

export interface App {
  fetch: Handler;
  /** Null when the configuration is invalid; `fetch` then answers every request with that error. */
  config: Config | null;
  /** Each problem of an invalid configuration (`NAME: rule`); empty when it is valid. */
  configProblems: string[];
  logger: Logger;
  store: Store | null;
  newInvocation: (() => Invocation) | null;
  /**
   * The worker is about to stop (Supabase's `beforeunload`, SIGTERM locally): running jobs are given back at
   * once, without spending their attempts, so another worker continues them without waiting for the lease.
   */
  shutdown(reason: string): Promise<void>;
  close(): Promise<void>;
}

function edgeRuntimeWaitUntil(): ((work: Promise<unknown>) => void) | undefined {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil?: (p: Promise<unknown>) => void } }).EdgeRuntime;
  return runtime?.waitUntil ? (work) => runtime.waitUntil!(work) : undefined;
}

/** Supabase's free-plan worker limit, applied on the Edge Runtime when HOSTING_WALL_CLOCK_SECONDS is not set. */
export const EDGE_RUNTIME_WALL_CLOCK_MS = 150_000;

/** The worker's wall-clock limit: as configured; else the free plan's on the Edge Runtime; else none. */
function wallClockMs(config: Config): number | null {
  if (config.wallClockMs !== null) return config.wallClockMs;
  return "EdgeRuntime" in globalThis ? EDGE_RUNTIME_WALL_CLOCK_MS : null;
}

/** The store, writing every text through `redactor` (the one that knows every secret of this process). */
export function storeFor(
  config: Pick<Config, "store">,
  options: { fetch?: typeof fetch; redactor?: Redactor } = {},
): Store {
  return config.store.kind === "rpc"
    ? rpcStore(config.store.url, config.store.key, { fetch: options.fetch, redactor: options.redactor })
    : postgresStore(config.store.db, { redactor: options.redactor });
}

/** The checks around the certificate on one server: DNS over HTTPS, and the certificate it serves over TLS. */
function checksFor(config: Config, server: ClaimedServer, overrides: AppOverrides): Checks {
  const { checks } = config;
  const publicIps = server.publicIps.length > 0
    ? server.publicIps
    : server.name === "default"
    ? checks.defaultPublicIps
    : [];
  return {
    publicIps,
    dnsPointsTo: (names, signal) =>
      checkPointsTo(names, publicIps, {
        resolverUrl: checks.dohUrl,
        fetch: overrides.fetch,
        timeoutMs: checks.timeoutMs,
        signal,
      }),
    servedCertificate: (servername, signal) =>
      probeCertificate({
        // The server itself, whatever DNS says: the certificate it serves is what counts.
        address: server.host,
        port: overrides.https?.port ?? checks.httpsPort,
        servername,
        caCerts: overrides.https?.caCerts ??
          (checks.extraCaCerts.length > 0 ? checks.extraCaCerts : undefined),
        timeoutMs: checks.timeoutMs,
        signal,
        minValidDays: checks.certificateMinDays,
      }),
  };
}

export function workflowDeps(
  config: Config,
  logger: Logger,
  store: Store,
  overrides: AppOverrides = {},
  worker: { startedAt?: number; registry?: Set<Invocation> } = {},
): WorkflowDeps {
  const wallClock = wallClockMs(config);
  return {
    store,
    logger,
    connect: overrides.connect ?? ((server) => connectSsh(sshConfigFor(config.fleet, server), { logger })),
    matomo: config.matomo ? new MatomoClient(config.matomo, logger, { fetch: overrides.fetch }) : null,
    defaultServer: config.fleet.defaultServer,
    timeouts: {
      siteMs: config.timeouts.siteMs,
      certificateMs: config.timeouts.certificateMs,
      matomoMs: config.matomo?.timeoutMs ?? MATOMO_TIMEOUT_SECONDS * 1000,
      // Two DNS queries per name, or a TLS handshake and a certificate read: a few round trips each.
      checkMs: 4 * config.checks.timeoutMs,
    },
    matomoOnRemove: config.matomoOnRemove,
    checksFor: (server) => checksFor(config, server, overrides),
    budgetMs: config.budgetMs,
    workerDeadline: worker.startedAt === undefined || wallClock === null
      ? undefined
      : worker.startedAt + wallClock,
    leaseSeconds: config.leaseSeconds,
    clock: overrides.clock,
    registry: worker.registry,
  };
}

/** Configuration read once; a bad value is logged (name and rule only) and answered to every request. */
export function createApp(env: Record<string, string | undefined>, overrides: AppOverrides = {}): App {
  const redactor = new Redactor();
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (error) {
    const failure = toHostingError(error);
    const logger = new Logger(redactor, { sink: overrides.logSink });
    logger.error("configuration invalid: every request is refused until it is fixed", {
      code: failure.code,
      detail: failure.publicMessage,
    });
    return {
      fetch: configErrorHandler(failure),
      config: null,
      configProblems: configProblems(failure),
      logger,
      store: null,
      newInvocation: null,
      shutdown: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
  }
  for (const secret of secretsOf(config)) redactor.add(secret);
  const logger = new Logger(redactor, { sink: overrides.logSink, level: config.logLevel });
  const store = overrides.store?.withRedactor(redactor) ??
    storeFor(config, { fetch: overrides.fetch, redactor });
  // The worker starts with this module; its wall-clock limit counts from here, not from each request.
  const startedAt = (overrides.clock ?? (() => performance.now()))();
  const registry = new Set<Invocation>();
  const deps = workflowDeps(config, logger, store, overrides, { startedAt, registry });
  const newInvocation = () => new Invocation(deps);
  const shutdown = async (reason: string) => {
    const live = [...registry];
    if (live.length > 0) {
      logger.warn("worker shutting down: giving running jobs back", { reason, invocations: live.length });
    }
    for (const invocation of live) invocation.shutdown(reason);
    await Promise.all(live.map((invocation) => invocation.finished));
  };
  return {
    fetch: createHandler({
      authKeys: config.authKeys,
      logger,
      store,
      newInvocation,
      waitUntil: overrides.waitUntil ?? edgeRuntimeWaitUntil(),
    }),
    config,
    configProblems: [],
    logger,
    store,
    newInvocation,
    shutdown,
    close: () => store.close(),
  };
}
