/**
 * Test support: the whole product on real parts, for end-to-end tests.
 *
 *   real Postgres (own database, migrations applied by the Supabase CLI, pg_net/Vault stand-ins)
 *   ← PostgREST RPC stand-in ← supabase-js store (or the direct-Postgres store)
 *   real sshd on loopback → clpctl simulator (dev/bin/clpctl, state on disk)
 *   Matomo simulator over HTTP
 *   TLS simulator on 127.0.0.1 (the servers' HTTPS side: serves the certificates the clpctl states hold, signed
 *     by a CA of its own, which the app trusts through HOSTING_HTTPS_CA; its port is HOSTING_HTTPS_PORT)
 *   DNS-over-HTTPS simulator (HOSTING_DOH_URL): its records are the test's; the DNS check runs only where the
 *     server has public addresses, so only when a test sets `publicIps` (CLOUDPANEL_PUBLIC_IPS)
 *   the app (createApp) called in-process, as Supabase would call it
 *
 * Kicks the trigger requested through pg_net (the stand-in records them) are delivered to the app in-process
 * with `deliverKicks()`. Secrets are registered for the final scan.
 */
import type postgres from "postgres";
import { type App, createApp } from "../../supabase/functions/hosting-automator/app.ts";
import {
  createHandler,
  type Handler,
  type HandlerDeps,
} from "../../supabase/functions/hosting-automator/http.ts";
import { readSimState, type SimState } from "../../dev/clpctl_sim.ts";
import { type MatomoSim, type MatomoSimOptions, startMatomoSim } from "../../dev/matomo_sim.ts";
import { type DohSim, startDohSim } from "../../dev/doh_sim.ts";
import { startTlsSim, type TlsSim } from "../../dev/tls_sim.ts";
import { type TestDb, testDb } from "./db.ts";
import { artifactDir, captureSink, registerSecret } from "./env.ts";
import { DEV_BIN } from "./local_shell.ts";
import { type PostgrestStandIn, startPostgrest } from "./postgrest.ts";
import { generateClientKey, type Sshd, startSshd } from "./sshd.ts";

export const FUNCTION_URL = "http://functions.test/functions/v1/hosting-automator";

export interface SiteRow {
  id: string;
  domain: string;
  status_dns: string | null;
  status_hosting: string | null;
  hosting_doc_root: string | null;
  matomo_site_id: number | null;
  error_message: string | null;
  /** The server the site was placed on (null before placement, and after removal). */
  hosting_server: string | null;
}

export interface EventRow {
  id: string;
  site_id: string | null;
  job_id: string | null;
  step: string | null;
  level: string;
  code: string | null;
  message: string;
  created_at: Date;
}

export interface StackOptions {
  label?: string;
  /** "rpc" (supabase-js through the PostgREST stand-in, the default) or "postgres". */
  store?: "rpc" | "postgres";
  matomo?: MatomoSimOptions | false;
  /** Extra or replaced environment for the app. */
  env?: Record<string, string | undefined>;
  /** Vault holds the function URL and key (so the trigger kicks); default true. */
  vault?: boolean;
  /** A forced command for the SSH key (the CloudPanel gate). */
  forcedCommand?: string;
  /** More variables for the commands sshd runs (e.g. the gate's CLPCTL_GATE_BIN); they override the defaults. */
  sshdEnv?: Record<string, string>;
  /**
   * CLOUDPANEL_PUBLIC_IPS: the `default` server's public addresses, so that DNS is checked (against the DoH
   * simulator's records) before the certificate. Default: none, and the DNS check is skipped with a warning.
   */
  publicIps?: string[];
  /** A migrated database to use instead of a fresh clone of the template (e.g. on a cluster of the test's
   * own); the caller keeps it and closes it. */
  db?: TestDb;
}

export interface Stack {
  db: TestDb;
  sql: postgres.Sql;
  app: App;
  env: Record<string, string | undefined>;
  serviceKey: string;
  sshd: Sshd;
  clpctlState: string;
  matomo: MatomoSim | null;
  postgrest: PostgrestStandIn | null;
  /** The servers' HTTPS side (one listener for every server of a fleet: `tls.addStateDir`). */
  tls: TlsSim;
  /** The DNS-over-HTTPS resolver the DNS check asks. */
  doh: DohSim;
  /** Captured log lines of this stack's app. */
  logs: string[];
  /** Calls the app as an HTTP client would (`key: null` sends no credentials). */
  request(
    path: string,
    init?: { method?: string; body?: unknown; key?: string | null; query?: string; rawBody?: BodyInit },
  ): Promise<Response>;
  /** Delivers the kicks pg_net would have sent (stand-in queue), in order; returns the responses. */
  deliverKicks(): Promise<Response[]>;
  /** Waits for all background work (waitUntil) to finish. */
  settle(): Promise<void>;
  /** Background works (waitUntil) not finished yet. */
  pendingWork(): number;
  insertSite(domain: string, fields?: { status_dns?: string; status_hosting?: string }): Promise<string>;
  site(id: string): Promise<SiteRow>;
  events(siteId: string): Promise<EventRow[]>;
  simState(): Promise<SimState>;
  /** Builds another app on the same stack (a second function instance), with env changes. */
  newApp(env?: Record<string, string | undefined>): App;
  /**
   * The app's HTTP handler built again with some dependencies replaced (a short `waitAnswerMs`); background
   * work goes to the same waitUntil as the app's, so `settle()` waits for it.
   */
  handler(overrides?: Partial<HandlerDeps>): Handler;
  close(): Promise<void>;
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const db = options.db ?? await testDb(options.label ?? "stack");
    if (!options.db) cleanups.push(() => db.close());
    const clpctlState = await artifactDir("clpctl");
    const client = await generateClientKey("ecdsa", "pem");
    registerSecret(client.privateKey);
    const sshd = await startSshd({
      authorizedKey: client.publicKeyLine,
      forcedCommand: options.forcedCommand,
      env: {
        PATH: `${DEV_BIN}:/usr/local/bin:/usr/bin:/bin`,
        CLPCTL_SIM_STATE: clpctlState,
        ...options.sshdEnv,
      },
    });
    cleanups.push(() => sshd.stop());
    const matomo = options.matomo === false ? null : await startMatomoSim(options.matomo ?? {});
    if (matomo) {
      registerSecret(matomo.token);
      cleanups.push(() => matomo.close());
    }
    const tls = await startTlsSim({ stateDir: clpctlState });
    cleanups.push(() => tls.close());
    const doh = await startDohSim();
    cleanups.push(() => doh.close());
    const serviceKey = registerSecret(`sb_secret_${crypto.randomUUID().replaceAll("-", "")}`);
    const storeKind = options.store ?? "rpc";
    const postgrest = storeKind === "rpc" ? startPostgrest(db.url, { [serviceKey]: "service_role" }) : null;
    if (postgrest) cleanups.push(() => postgrest.close());
    if (options.vault !== false) {
      await db.sql`select vault.create_secret(${FUNCTION_URL}, 'hosting_automator_url')`;
      await db.sql`select vault.create_secret(${serviceKey}, 'hosting_automator_key')`;
    }

    const env: Record<string, string | undefined> = {
      HOSTING_STORE: storeKind,
      SUPABASE_URL: postgrest?.url ?? "http://127.0.0.1:9",
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: serviceKey }),
      SUPABASE_DB_URL: db.url,
      CLOUDPANEL_SSH_HOST: sshd.host,
      CLOUDPANEL_SSH_PORT: String(sshd.port),
      CLOUDPANEL_SSH_USER: sshd.user,
      CLOUDPANEL_SSH_PRIVATE_KEY: client.privateKey,
      CLOUDPANEL_SSH_HOST_KEY: sshd.hostKeyFingerprint,
      MATOMO_API_URL: matomo?.url,
      MATOMO_API_TOKEN: matomo?.token,
      HOSTING_MATOMO_TIMEOUT_SECONDS: "2",
      HOSTING_SITE_TIMEOUT_SECONDS: "20",
      HOSTING_CERTIFICATE_TIMEOUT_SECONDS: "20",
      HOSTING_LOG_LEVEL: "debug",
      HOSTING_HTTPS_PORT: String(tls.port),
      HOSTING_HTTPS_CA: tls.caPem,
      HOSTING_DOH_URL: doh.url,
      // Only when asked: a key with no value would break a worker process started from `env`.
      ...(options.publicIps ? { CLOUDPANEL_PUBLIC_IPS: options.publicIps.join(",") } : {}),
      ...options.env,
    };

    const logs: string[] = [];
    const pending = new Set<Promise<unknown>>();
    // No idle pooled connections: a server's graceful shutdown (the simulators, the stand-in) would wait on them.
    const http = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    cleanups.push(() => Promise.resolve(http.close()));
    const unpooled: typeof fetch = (input, init) => fetch(input, { ...init, client: http });
    const waitUntil = (work: Promise<unknown>) => {
      const tracked = work.finally(() => pending.delete(tracked));
      pending.add(tracked);
    };
    const newApp = (extra: Record<string, string | undefined> = {}) => {
      const app = createApp({ ...env, ...extra }, {
        fetch: unpooled,
        logSink: captureSink(logs),
        waitUntil,
      });
      cleanups.push(() => app.close());
      return app;
    };
    const app = newApp();

    const stack: Stack = {
      db,
      sql: db.sql,
      app,
      env,
      serviceKey,
      sshd,
      clpctlState,
      matomo,
      postgrest,
      tls,
      doh,
      logs,
      request(path, init = {}) {
        const headers = new Headers();
        const key = init.key === undefined ? serviceKey : init.key;
        if (key !== null) headers.set("apikey", key);
        let body: BodyInit | undefined = init.rawBody;
        if (init.body !== undefined) {
          body = JSON.stringify(init.body);
          headers.set("content-type", "application/json");
        }
        const url = `${FUNCTION_URL}${path}${init.query ? `?${init.query}` : ""}`;
        return app.fetch(new Request(url, { method: init.method ?? (body ? "POST" : "GET"), headers, body }));
      },
      async deliverKicks() {
        const kicks = await db.sql<{ url: string; headers: Record<string, string>; body: unknown }[]>`
          delete from net.http_request_queue returning url, headers, body`;
        const responses: Response[] = [];
        for (const kick of kicks) {
          responses.push(
            await app.fetch(
              new Request(kick.url, {
                method: "POST",
                headers: kick.headers,
                body: JSON.stringify(kick.body),
              }),
            ),
          );
        }
        return responses;
      },
      async settle() {
        while (pending.size > 0) await Promise.allSettled([...pending]);
      },
      pendingWork: () => pending.size,
      async insertSite(domain, fields = {}) {
        const [row] = await db.sql`
          insert into public.sites (domain, status_dns, status_hosting)
          values (${domain}, ${fields.status_dns ?? "pending"}, ${fields.status_hosting ?? "pending"})
          returning id`;
        return row.id as string;
      },
      async site(id) {
        const [row] = await db.sql<SiteRow[]>`select * from public.sites where id = ${id}`;
        return row;
      },
      events(siteId) {
        return db.sql<
          EventRow[]
        >`select * from hosting_automator.events where site_id = ${siteId} order by id`;
      },
      simState: () => readSimState(clpctlState),
      newApp,
      handler(overrides = {}) {
        return createHandler({
          authKeys: app.config!.authKeys,
          logger: app.logger,
          store: app.store!,
          newInvocation: app.newInvocation!,
          waitUntil,
          ...overrides,
        });
      },
      async close() {
        await stack.settle();
        for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
      },
    };
    return stack;
  } catch (error) {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
    throw error;
  }
}

/** Runs `body` on a fresh stack and always closes it. */
export async function withStack(options: StackOptions, body: (stack: Stack) => Promise<void>): Promise<void> {
  const stack = await startStack(options);
  try {
    await body(stack);
  } finally {
    await stack.close();
  }
}
