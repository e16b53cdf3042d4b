/**
 * Configuration, validated once at start (docs/architecture.md §13). Every bad value is reported at once, each
 * with the variable's name and the rule it broke; values are never echoed, because most of them are secrets.
 * Each use reads only the settings it needs: the Edge Function all of them, the CLI's runs all but the keys
 * callers present, its reports only the store's.
 */
import { isIP } from "node:net";
import { z } from "zod";
import { type DbConnection, parseDbUrl } from "./db_url.ts";
import { LEASE_SECONDS, MATOMO_TIMEOUT_SECONDS } from "./defaults.ts";
import { HostingError, isHostingError } from "./errors.ts";
import type { LogLevel } from "./log.ts";
import {
  DEFAULT_SSH_PORT,
  DEFAULT_SSH_USER,
  HOST_KEY_INPUT_RE,
  SERVER_HOST_RE,
  SERVER_NAME_RE,
  SSH_USER_RE,
} from "./server_rules.ts";
import { privateKeyProblem } from "./ssh_key.ts";

export interface SshConfig {
  host: string;
  port: number;
  user: string;
  /** PEM or OpenSSH private key text (ECDSA or RSA). */
  privateKey: string;
  /** OpenSSH fingerprint of the server's host key, `SHA256:` and 43 base64 characters. */
  hostKey: string;
  connectTimeoutMs: number;
}

/** Where a CloudPanel server is (a row of hosting_automator.servers, or the configured `default`). */
export interface ServerAddress {
  name: string;
  host: string;
  port: number;
  user: string;
  hostKey: string;
}

/** The CloudPanel servers as the configuration knows them; the fleet itself is rows in the database. */
export interface FleetConfig {
  /** CLOUDPANEL_SSH_HOST's server, registered as `default` while no server is registered; null without it. */
  defaultServer: Omit<ServerAddress, "name"> | null;
  /** CLOUDPANEL_SSH_PRIVATE_KEY: the key for every server without its own; null when only those are given. */
  sharedKey: string | null;
  /** CLOUDPANEL_SSH_PRIVATE_KEYS: a server's own key, by the server's name. */
  keys: Record<string, string>;
  connectTimeoutMs: number;
}

/** What to connect to a server with: its own key, else the shared one. */
export function sshConfigFor(fleet: FleetConfig, server: ServerAddress): SshConfig {
  const privateKey = fleet.keys[server.name] ?? fleet.sharedKey;
  if (privateKey === null) {
    throw new HostingError("ssh_auth_failed", `no SSH key for server ${server.name}`, {
      publicMessage:
        `No SSH key for CloudPanel server ${server.name}: set CLOUDPANEL_SSH_PRIVATE_KEY, or its entry in CLOUDPANEL_SSH_PRIVATE_KEYS.`,
    });
  }
  return {
    host: server.host,
    port: server.port,
    user: server.user,
    privateKey,
    hostKey: server.hostKey,
    connectTimeoutMs: fleet.connectTimeoutMs,
  };
}

export interface MatomoConfig {
  url: string;
  token: string;
  timeoutMs: number;
}

export type StoreConfig =
  | { kind: "rpc"; url: string; key: string }
  /** `url` is SUPABASE_DB_URL as given, kept only to be redacted: the driver is given `db`, its parts. */
  | { kind: "postgres"; db: DbConnection; url: string };

/**
 * What reads the configuration: the Edge Function (and the local server), which callers authenticate to, or a
 * worker without callers (the CLI's runs). The CLI's reports read only the store's settings (loadStoreConfig).
 */
export type ConfigUse = "function" | "worker";

export interface Config {
  store: StoreConfig;
  /** Keys a caller may present (`apikey` or `Authorization: Bearer`); empty for a worker without callers. */
  authKeys: string[];
  fleet: FleetConfig;
  /** Null when Matomo is not configured: the analytics step is skipped with a warning. */
  matomo: MatomoConfig | null;
  timeouts: { siteMs: number; certificateMs: number };
  /** What a removal does with the site's Matomo site: keep its analytics data (default) or delete it. */
  matomoOnRemove: "keep" | "delete";
  /** The checks around the certificate: DNS before it, the served certificate before and after it. */
  checks: ChecksConfig;
  /** Wall-clock time one invocation may spend on jobs before it stops claiming. */
  budgetMs: number;
  /**
   * The worker's own wall-clock limit, counted from its start (Supabase: 150 s free, 400 s paid). Null when not
   * set: the app then applies Supabase's free-plan limit on the Edge Runtime and none elsewhere (a local
   * server or the CLI is not stopped by a platform).
   */
  wallClockMs: number | null;
  /** How long a claimed job's lease lasts; renewed every third of it while a step runs. */
  leaseSeconds: number;
  logLevel: LogLevel;
}

export interface ChecksConfig {
  /** The DNS-over-HTTPS resolver (JSON API) the DNS check asks. */
  dohUrl: string;
  /** CLOUDPANEL_PUBLIC_IPS: the configured server's public addresses (a server row has its own `public_ips`). */
  defaultPublicIps: string[];
  /** A served certificate counts as valid only with more than this many days left. */
  certificateMinDays: number;
  /** Each DNS query and each TLS connection. */
  timeoutMs: number;
  /** The port the HTTPS checks connect to on a server (443). */
  httpsPort: number;
  /** HOSTING_HTTPS_CA: certificates (PEM) trusted besides the system's roots, e.g. a private or staging CA. */
  extraCaCerts: string[];
}

/** Every value that must never be printed. */
export function secretsOf(config: Config): string[] {
  const out = [
    ...config.authKeys,
    ...(config.fleet.sharedKey ? [config.fleet.sharedKey] : []),
    ...Object.values(config.fleet.keys),
  ];
  out.push(...storeSecrets(config.store));
  if (config.matomo) out.push(config.matomo.token);
  return out.filter((s) => s.length > 0);
}

/** The store's values that must never be printed. */
export function storeSecrets(store: StoreConfig): string[] {
  return (store.kind === "rpc" ? [store.key] : [store.url, store.db.password ?? ""]).filter((s) =>
    s.length > 0
  );
}

/** An optional whole number in a range (the fallback when unset or empty). */
const wholeNumber = (fallback: number, min: number, max: number, rule: string) =>
  z.string().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({ code: "custom", message: rule });
      return z.NEVER;
    }
    return n;
  });

const seconds = (name: string, fallback: number, min: number, max: number) =>
  z.string().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return fallback * 1000;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({ code: "custom", message: `must be a whole number of seconds from ${min} to ${max}` });
      return z.NEVER;
    }
    return n * 1000;
  }).describe(name);

const HOST_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$/;
const KEY_HEADER_RE = /^-----BEGIN (EC |RSA |OPENSSH )?PRIVATE KEY-----/;
const TOKEN_RE = /^[A-Za-z0-9]{16,128}$/;

/** An optional setting; set to the empty string, it counts as not set. */
const unsetWhenEmpty = <T extends z.ZodType>(schema: T) =>
  z.preprocess((v) => (v === "" ? undefined : v), schema.optional());

const KEY_TEXT_RULE =
  "must be the text of a PEM or OpenSSH private key (ECDSA or RSA), starting with -----BEGIN";

/** A private key's text (a `\n`-escaped one on one line is unfolded), of a type and shape that can be used. */
const privateKeyText = z.string()
  .transform((v) => (v.includes("\\n") && !v.includes("\n") ? v.replaceAll("\\n", "\n") : v).trim() + "\n")
  .superRefine((v, ctx) => {
    const problem = KEY_HEADER_RE.test(v) ? privateKeyProblem(v) : KEY_TEXT_RULE;
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

const env = z.object({
  HOSTING_STORE: z.enum(["rpc", "postgres"], { message: 'must be "rpc" or "postgres"' }).default("rpc"),
  SUPABASE_URL: z.string().optional(),
  SUPABASE_SECRET_KEYS: z.string().optional(),
  SUPABASE_SERVICE_ROLE_KEY: z.string().optional(),
  SUPABASE_DB_URL: z.string().optional(),
  CLOUDPANEL_SSH_HOST: unsetWhenEmpty(
    z.string().regex(HOST_RE, { message: "must be a host name or an IP address" })
      // What the servers table stores (brackets dropped) must pass its check too.
      .refine((v) => SERVER_HOST_RE.test(v.replace(/^\[|\]$/g, "")), {
        message: "must be a host name or an IP address",
      }),
  ),
  CLOUDPANEL_SSH_PORT: wholeNumber(DEFAULT_SSH_PORT, 1, 65535, "must be a port number from 1 to 65535"),
  CLOUDPANEL_SSH_USER: z.string().regex(SSH_USER_RE, { message: "must be a Linux user name" }).default(
    DEFAULT_SSH_USER,
  ),
  CLOUDPANEL_SSH_PRIVATE_KEY: unsetWhenEmpty(privateKeyText),
  CLOUDPANEL_SSH_PRIVATE_KEYS: z.string().optional(),
  CLOUDPANEL_SSH_HOST_KEY: unsetWhenEmpty(
    z.string().trim().regex(HOST_KEY_INPUT_RE, {
      message:
        "must be the host key fingerprint as ssh-keygen -lf prints it: SHA256: followed by 43 characters",
    }),
  ),
  MATOMO_API_URL: z.string().optional(),
  MATOMO_API_TOKEN: z.string().optional(),
  MATOMO_ON_REMOVE: z.enum(["keep", "delete"], { message: 'must be "keep" or "delete"' }).default("keep"),
  HOSTING_TIME_BUDGET_SECONDS: seconds("HOSTING_TIME_BUDGET_SECONDS", 130, 10, 3600),
  HOSTING_WALL_CLOCK_SECONDS: seconds("HOSTING_WALL_CLOCK_SECONDS", 0, 30, 86400),
  HOSTING_LEASE_SECONDS: seconds(
    "HOSTING_LEASE_SECONDS",
    LEASE_SECONDS.default,
    LEASE_SECONDS.min,
    LEASE_SECONDS.max,
  ),
  HOSTING_SSH_CONNECT_TIMEOUT_SECONDS: seconds("HOSTING_SSH_CONNECT_TIMEOUT_SECONDS", 10, 1, 120),
  HOSTING_SITE_TIMEOUT_SECONDS: seconds("HOSTING_SITE_TIMEOUT_SECONDS", 90, 5, 900),
  HOSTING_CERTIFICATE_TIMEOUT_SECONDS: seconds("HOSTING_CERTIFICATE_TIMEOUT_SECONDS", 120, 5, 900),
  HOSTING_MATOMO_TIMEOUT_SECONDS: seconds("HOSTING_MATOMO_TIMEOUT_SECONDS", MATOMO_TIMEOUT_SECONDS, 1, 120),
  HOSTING_DOH_URL: z.string().optional(),
  CLOUDPANEL_PUBLIC_IPS: z.string().optional(),
  HOSTING_CERTIFICATE_MIN_DAYS: wholeNumber(14, 0, 60, "must be a whole number of days from 0 to 60"),
  HOSTING_CHECK_TIMEOUT_SECONDS: seconds("HOSTING_CHECK_TIMEOUT_SECONDS", 10, 1, 60),
  HOSTING_HTTPS_PORT: wholeNumber(443, 1, 65535, "must be a port number from 1 to 65535"),
  HOSTING_HTTPS_CA: unsetWhenEmpty(
    z.string().refine((v) => v.includes("-----BEGIN CERTIFICATE-----"), {
      message: "must be PEM certificates (-----BEGIN CERTIFICATE-----)",
    }),
  ),
  HOSTING_ACCEPT_SERVICE_ROLE_KEY: z.enum(["true", "false"], { message: "must be true or false" }).default(
    "true",
  ),
  HOSTING_LOG_LEVEL: z.enum(["debug", "info", "warn", "error"], {
    message: "must be debug, info, warn or error",
  }).default("info"),
});

/** The names this module reads, for documentation and for `--dry-run`. */
export const CONFIG_NAMES = Object.keys(env.shape);

type Env = z.output<typeof env>;

/** The keys callers present: only the Edge Function's use; the rpc store calls the database with one of them. */
const CALLER_SETTINGS = [
  "SUPABASE_SECRET_KEYS",
  "SUPABASE_SERVICE_ROLE_KEY",
  "HOSTING_ACCEPT_SERVICE_ROLE_KEY",
];

/** The settings a use reads; the others are not looked at, so a value there cannot stop it. */
function settingsOf(use: ConfigUse | "store", source: Record<string, string | undefined>): Set<string> {
  const store = source.HOSTING_STORE === "postgres"
    ? ["HOSTING_STORE", "SUPABASE_DB_URL"]
    : ["HOSTING_STORE", "SUPABASE_URL", ...CALLER_SETTINGS];
  if (use === "store") return new Set(store);
  const own = CONFIG_NAMES.filter((name) => use === "function" || !CALLER_SETTINGS.includes(name));
  return new Set([...own, ...store]);
}

/** Every problem found, each `NAME: rule`; thrown together, once everything was checked. */
class Problems {
  readonly #lines: string[] = [];
  readonly #names = new Set<string>();

  add(name: string, rule: string): null {
    this.#lines.push(`${name}: ${rule}`);
    this.#names.add(name);
    return null;
  }

  has(name: string): boolean {
    return this.#names.has(name);
  }

  /** Throws them in the order of the settings (as the README lists them), problems of one setting together. */
  throwIfAny(): void {
    if (this.#lines.length === 0) return;
    const order = (line: string) => CONFIG_NAMES.indexOf(line.slice(0, line.indexOf(":")));
    const text = this.#lines.map((line, i) => ({ line, i }))
      .sort((a, b) => order(a.line) - order(b.line) || a.i - b.i)
      .map((x) => x.line)
      .join("\n");
    throw new HostingError("config_invalid", text, { publicMessage: text });
  }
}

/** The lines of a `config_invalid` error, one per problem (`NAME: rule`). */
export function configProblems(error: unknown): string[] {
  return isHostingError(error) && error.code === "config_invalid" ? error.publicMessage.split("\n") : [];
}

/**
 * Each setting the use reads, parsed on its own so every bad one is reported; one that is bad (or not read)
 * takes its default, so that the checks between settings can still run.
 */
function readSettings(
  source: Record<string, string | undefined>,
  names: Set<string>,
  problems: Problems,
): Env {
  const out: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(env.shape) as Array<[string, z.ZodType]>) {
    let parsed = schema.safeParse(names.has(name) ? source[name] : undefined);
    if (!parsed.success) {
      problems.add(name, parsed.error.issues[0].message);
      parsed = schema.safeParse(undefined);
    }
    out[name] = parsed.data;
  }
  return out as Env;
}

function httpUrl(
  name: string,
  value: string,
  allowPlainHttpOnLoopback: boolean,
  problems: Problems,
): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return problems.add(name, "must be an absolute http(s) URL");
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname) ||
    url.hostname.endsWith(".localhost") || url.hostname === "kong" || url.hostname === "host.docker.internal";
  if (url.protocol === "https:" || (url.protocol === "http:" && (loopback || !allowPlainHttpOnLoopback))) {
    if (url.username || url.password) return problems.add(name, "must not contain credentials");
    return value.replace(/\/+$/, "");
  }
  return problems.add(
    name,
    allowPlainHttpOnLoopback ? "must use https (plain http only on localhost)" : "must be http or https",
  );
}

/** A public resolver, asked when HOSTING_DOH_URL is not set. */
export const DEFAULT_DOH_URL = "https://cloudflare-dns.com/dns-query";

/** CLOUDPANEL_PUBLIC_IPS: IPv4 and IPv6 addresses, separated by commas or spaces. */
function publicIps(raw: string | undefined, problems: Problems): string[] {
  const list = (raw ?? "").split(/[\s,]+/).filter(Boolean);
  if (list.some((ip) => !isIP(ip))) {
    problems.add("CLOUDPANEL_PUBLIC_IPS", "must be IPv4 or IPv6 addresses separated by commas");
    return [];
  }
  return list;
}

/** CLOUDPANEL_SSH_PRIVATE_KEYS: a JSON object of server name → private key text. */
function serverKeys(raw: string | undefined, problems: Problems): Record<string, string> {
  const name = "CLOUDPANEL_SSH_PRIVATE_KEYS";
  if (raw === undefined || raw.trim() === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    problems.add(
      name,
      'must be a JSON object of server names to private keys, such as {"cp-2": "-----BEGIN …"}',
    );
    return {};
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    problems.add(name, "must be a JSON object of server names to private keys");
    return {};
  }
  const keys: Record<string, string> = {};
  for (const [server, text] of Object.entries(parsed)) {
    if (!SERVER_NAME_RE.test(server)) {
      problems.add(name, "has a server name that is not 1 to 63 of a-z, 0-9 and -");
      continue;
    }
    const key = typeof text === "string" ? privateKeyText.safeParse(text) : null;
    if (!key?.success) {
      const rule = key?.error.issues[0].message ?? KEY_TEXT_RULE;
      problems.add(name, `the key of server ${server} ${rule}`);
      continue;
    }
    keys[server] = key.data;
  }
  return keys;
}

/** Parses the secret keys Supabase injects: a JSON object of name → key. */
function secretKeys(raw: string | undefined, problems: Problems): Record<string, string> {
  if (raw === undefined || raw === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    problems.add("SUPABASE_SECRET_KEYS", 'must be a JSON object such as {"default": "sb_secret_..."}');
    return {};
  }
  const keys = z.record(z.string(), z.string().min(1)).safeParse(parsed);
  if (!keys.success) {
    problems.add("SUPABASE_SECRET_KEYS", "must be a JSON object of key names to non-empty strings");
    return {};
  }
  return keys.data;
}

/** The secret keys: by name, and every one that authenticates (the legacy one only while accepted). */
function keysOf(e: Env, problems: Problems): { named: Record<string, string>; all: string[] } {
  const named = secretKeys(e.SUPABASE_SECRET_KEYS, problems);
  // After the legacy service_role key is revoked, an operator turns it off here so it stops authenticating.
  const legacy = e.HOSTING_ACCEPT_SERVICE_ROLE_KEY === "true" ? e.SUPABASE_SERVICE_ROLE_KEY ?? "" : "";
  return { named, all: [...new Set([...Object.values(named), legacy])].filter(Boolean) };
}

/** The keys callers may present (the Edge Function's use): at least one. */
function authKeysOf(e: Env, keys: { all: string[] }, problems: Problems): string[] {
  if (keys.all.length === 0 && !problems.has("SUPABASE_SECRET_KEYS")) {
    problems.add(
      "SUPABASE_SECRET_KEYS",
      e.SUPABASE_SERVICE_ROLE_KEY && e.HOSTING_ACCEPT_SERVICE_ROLE_KEY === "false"
        ? "is required when HOSTING_ACCEPT_SERVICE_ROLE_KEY is false: callers authenticate with it"
        : "or SUPABASE_SERVICE_ROLE_KEY is required: callers authenticate with it",
    );
  }
  return keys.all;
}

type Keys = ReturnType<typeof keysOf>;

function storeOf(e: Env, keys: Keys, problems: Problems): StoreConfig | null {
  if (problems.has("HOSTING_STORE")) return null;
  if (e.HOSTING_STORE === "postgres") {
    if (problems.has("SUPABASE_DB_URL")) return null;
    if (!e.SUPABASE_DB_URL) {
      return problems.add("SUPABASE_DB_URL", "is required when HOSTING_STORE is postgres");
    }
    const db = parseDbUrl(e.SUPABASE_DB_URL);
    if ("problem" in db) return problems.add("SUPABASE_DB_URL", db.problem);
    return { kind: "postgres", db, url: e.SUPABASE_DB_URL };
  }
  if (keys.all.length === 0 && !problems.has("SUPABASE_SECRET_KEYS")) {
    problems.add(
      "SUPABASE_SECRET_KEYS",
      "or SUPABASE_SERVICE_ROLE_KEY is required when HOSTING_STORE is rpc: the SQL functions are called with it",
    );
  }
  if (!e.SUPABASE_URL) return problems.add("SUPABASE_URL", "is required when HOSTING_STORE is rpc");
  const url = httpUrl("SUPABASE_URL", e.SUPABASE_URL, false, problems);
  const key = keys.named.default ?? keys.all[0];
  return url && key ? { kind: "rpc", url, key } : null;
}

function fleetOf(e: Env, problems: Problems): FleetConfig {
  const keys = serverKeys(e.CLOUDPANEL_SSH_PRIVATE_KEYS, problems);
  // A key given but refused has its own problem already.
  const anyKey = e.CLOUDPANEL_SSH_PRIVATE_KEY || Object.keys(keys).length > 0 ||
    problems.has("CLOUDPANEL_SSH_PRIVATE_KEY") || problems.has("CLOUDPANEL_SSH_PRIVATE_KEYS");
  if (!anyKey) {
    problems.add(
      "CLOUDPANEL_SSH_PRIVATE_KEY",
      "is required (or CLOUDPANEL_SSH_PRIVATE_KEYS, a key per server)",
    );
  }
  if (e.CLOUDPANEL_SSH_HOST && !e.CLOUDPANEL_SSH_HOST_KEY && !problems.has("CLOUDPANEL_SSH_HOST_KEY")) {
    problems.add("CLOUDPANEL_SSH_HOST_KEY", "is required when CLOUDPANEL_SSH_HOST is set");
  }
  return {
    defaultServer: e.CLOUDPANEL_SSH_HOST && e.CLOUDPANEL_SSH_HOST_KEY
      ? {
        host: e.CLOUDPANEL_SSH_HOST.replace(/^\[|\]$/g, ""),
        port: e.CLOUDPANEL_SSH_PORT,
        user: e.CLOUDPANEL_SSH_USER,
        hostKey: e.CLOUDPANEL_SSH_HOST_KEY.replace(/=$/, ""),
      }
      : null,
    sharedKey: e.CLOUDPANEL_SSH_PRIVATE_KEY ?? null,
    keys,
    connectTimeoutMs: e.HOSTING_SSH_CONNECT_TIMEOUT_SECONDS,
  };
}

function matomoOf(e: Env, problems: Problems): MatomoConfig | null {
  const hasUrl = Boolean(e.MATOMO_API_URL), hasToken = Boolean(e.MATOMO_API_TOKEN);
  if (hasUrl !== hasToken) {
    return problems.add(
      hasUrl ? "MATOMO_API_TOKEN" : "MATOMO_API_URL",
      "is required when the other Matomo setting is set",
    );
  }
  if (!hasUrl) return null;
  if (!TOKEN_RE.test(e.MATOMO_API_TOKEN!)) {
    problems.add("MATOMO_API_TOKEN", "must be a Matomo token_auth: 16 to 128 letters and digits");
  }
  const url = httpUrl("MATOMO_API_URL", e.MATOMO_API_URL!, true, problems);
  return url ? { url, token: e.MATOMO_API_TOKEN!, timeoutMs: e.HOSTING_MATOMO_TIMEOUT_SECONDS } : null;
}

/**
 * The whole configuration of the Edge Function (`use` "function") or of a worker without callers ("worker":
 * the keys callers present are not read). Throws one `config_invalid` error listing every problem.
 */
export function loadConfig(source: Record<string, string | undefined>, use: ConfigUse = "function"): Config {
  const problems = new Problems();
  const e = readSettings(source, settingsOf(use, source), problems);
  const keys = keysOf(e, problems);
  const authKeys = use === "function" ? authKeysOf(e, keys, problems) : [];
  const store = storeOf(e, keys, problems);
  const fleet = fleetOf(e, problems);
  const matomo = matomoOf(e, problems);
  const dohUrl = e.HOSTING_DOH_URL ? httpUrl("HOSTING_DOH_URL", e.HOSTING_DOH_URL, true, problems) : null;
  const defaultPublicIps = publicIps(e.CLOUDPANEL_PUBLIC_IPS, problems);
  problems.throwIfAny();

  return {
    store: store!,
    authKeys,
    fleet,
    matomo,
    timeouts: {
      siteMs: e.HOSTING_SITE_TIMEOUT_SECONDS,
      certificateMs: e.HOSTING_CERTIFICATE_TIMEOUT_SECONDS,
    },
    matomoOnRemove: e.MATOMO_ON_REMOVE,
    checks: {
      dohUrl: dohUrl ?? DEFAULT_DOH_URL,
      defaultPublicIps,
      certificateMinDays: e.HOSTING_CERTIFICATE_MIN_DAYS,
      timeoutMs: e.HOSTING_CHECK_TIMEOUT_SECONDS,
      httpsPort: e.HOSTING_HTTPS_PORT,
      extraCaCerts: e.HOSTING_HTTPS_CA ? [e.HOSTING_HTTPS_CA] : [],
    },
    budgetMs: e.HOSTING_TIME_BUDGET_SECONDS,
    wallClockMs: e.HOSTING_WALL_CLOCK_SECONDS || null,
    leaseSeconds: e.HOSTING_LEASE_SECONDS / 1000,
    logLevel: e.HOSTING_LOG_LEVEL,
  };
}

/**
 * Only the store's settings, for what reads reports and nothing else (the CLI's `--status` and
 * `--credentials`): with HOSTING_STORE=postgres that is SUPABASE_DB_URL alone.
 */
export function loadStoreConfig(source: Record<string, string | undefined>): StoreConfig {
  const problems = new Problems();
  const e = readSettings(source, settingsOf("store", source), problems);
  const store = storeOf(e, keysOf(e, problems), problems);
  problems.throwIfAny();
  return store!;
}
