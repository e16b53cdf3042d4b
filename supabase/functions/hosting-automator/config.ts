/**
 * Configuration, validated once at start (docs/architecture.md §13). A bad value stops with the variable's
 * name and the rule it broke; values are never echoed, because most of them are secrets.
 */
import { isIP } from "node:net";
import { z } from "zod";
import { LEASE_SECONDS, MATOMO_TIMEOUT_SECONDS } from "./defaults.ts";
import { HostingError } from "./errors.ts";
import type { LogLevel } from "./log.ts";
import {
  DEFAULT_SSH_PORT,
  DEFAULT_SSH_USER,
  HOST_KEY_INPUT_RE,
  SERVER_HOST_RE,
  SERVER_NAME_RE,
  SSH_USER_RE,
} from "./server_rules.ts";

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
  | { kind: "postgres"; dbUrl: string };

export interface Config {
  store: StoreConfig;
  /** Keys a caller may present (`apikey` or `Authorization: Bearer`). */
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
  if (config.store.kind === "rpc") out.push(config.store.key);
  else out.push(config.store.dbUrl, dbPassword(config.store.dbUrl));
  if (config.matomo) out.push(config.matomo.token);
  return out.filter((s) => s.length > 0);
}

function dbPassword(url: string): string {
  try {
    return decodeURIComponent(new URL(url).password);
  } catch {
    return "";
  }
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

/** A private key's text (a `\n`-escaped one on one line is unfolded). */
const privateKeyText = z.string()
  .transform((v) => (v.includes("\\n") && !v.includes("\n") ? v.replaceAll("\\n", "\n") : v).trim() + "\n")
  .refine((v) => KEY_HEADER_RE.test(v), {
    message: "must be the text of a PEM or OpenSSH private key (ECDSA or RSA), starting with -----BEGIN",
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

function fail(name: string, rule: string): never {
  throw new HostingError("config_invalid", `${name}: ${rule}`, { publicMessage: `${name}: ${rule}` });
}

function httpUrl(name: string, value: string, allowPlainHttpOnLoopback: boolean): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    fail(name, "must be an absolute http(s) URL");
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname) ||
    url.hostname.endsWith(".localhost") || url.hostname === "kong" || url.hostname === "host.docker.internal";
  if (url.protocol === "https:" || (url.protocol === "http:" && (loopback || !allowPlainHttpOnLoopback))) {
    if (url.username || url.password) fail(name, "must not contain credentials");
    return value.replace(/\/+$/, "");
  }
  fail(
    name,
    allowPlainHttpOnLoopback ? "must use https (plain http only on localhost)" : "must be http or https",
  );
}

/** A public resolver, asked when HOSTING_DOH_URL is not set. */
export const DEFAULT_DOH_URL = "https://cloudflare-dns.com/dns-query";

/** CLOUDPANEL_PUBLIC_IPS: IPv4 and IPv6 addresses, separated by commas or spaces. */
function publicIps(raw: string | undefined): string[] {
  const name = "CLOUDPANEL_PUBLIC_IPS";
  const list = (raw ?? "").split(/[\s,]+/).filter(Boolean);
  for (const ip of list) {
    if (!isIP(ip)) fail(name, "must be IPv4 or IPv6 addresses separated by commas");
  }
  return list;
}

/** CLOUDPANEL_SSH_PRIVATE_KEYS: a JSON object of server name → private key text. */
function serverKeys(raw: string | undefined): Record<string, string> {
  const name = "CLOUDPANEL_SSH_PRIVATE_KEYS";
  if (raw === undefined || raw.trim() === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    fail(name, 'must be a JSON object of server names to private keys, such as {"cp-2": "-----BEGIN …"}');
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    fail(name, "must be a JSON object of server names to private keys");
  }
  const keys: Record<string, string> = {};
  for (const [server, text] of Object.entries(parsed)) {
    if (!SERVER_NAME_RE.test(server)) fail(name, "has a server name that is not 1 to 63 of a-z, 0-9 and -");
    const key = privateKeyText.safeParse(text);
    if (typeof text !== "string" || !key.success) {
      fail(
        name,
        `the key of server ${server} must be the text of a PEM or OpenSSH private key (ECDSA or RSA)`,
      );
    }
    keys[server] = key.data;
  }
  return keys;
}

/** Parses the secret keys Supabase injects: a JSON object of name → key. */
function secretKeys(raw: string | undefined): Record<string, string> {
  if (raw === undefined || raw === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    fail("SUPABASE_SECRET_KEYS", 'must be a JSON object such as {"default": "sb_secret_..."}');
  }
  const keys = z.record(z.string(), z.string().min(1)).safeParse(parsed);
  if (!keys.success) fail("SUPABASE_SECRET_KEYS", "must be a JSON object of key names to non-empty strings");
  return keys.data;
}

export function loadConfig(source: Record<string, string | undefined>): Config {
  const parsed = env.safeParse(source);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = String(issue.path[0] ?? "configuration");
    const rule = issue.code === "invalid_type" && issue.input === undefined ? "is required" : issue.message;
    fail(name, rule);
  }
  const e = parsed.data;

  const named = secretKeys(e.SUPABASE_SECRET_KEYS);
  // After the legacy service_role key is revoked, an operator turns it off here so it stops authenticating.
  const legacy = e.HOSTING_ACCEPT_SERVICE_ROLE_KEY === "true" ? e.SUPABASE_SERVICE_ROLE_KEY ?? "" : "";
  const authKeys = [...new Set([...Object.values(named), legacy])].filter(Boolean);
  if (authKeys.length === 0) {
    fail(
      "SUPABASE_SECRET_KEYS",
      legacy === "" && e.SUPABASE_SERVICE_ROLE_KEY
        ? "is required when HOSTING_ACCEPT_SERVICE_ROLE_KEY is false: callers authenticate with it"
        : "or SUPABASE_SERVICE_ROLE_KEY is required: callers authenticate with it",
    );
  }

  let store: StoreConfig;
  if (e.HOSTING_STORE === "rpc") {
    if (!e.SUPABASE_URL) fail("SUPABASE_URL", "is required when HOSTING_STORE is rpc");
    store = {
      kind: "rpc",
      url: httpUrl("SUPABASE_URL", e.SUPABASE_URL, false),
      key: named.default ?? authKeys[0],
    };
  } else {
    if (!e.SUPABASE_DB_URL) fail("SUPABASE_DB_URL", "is required when HOSTING_STORE is postgres");
    if (!/^postgres(ql)?:\/\//.test(e.SUPABASE_DB_URL)) {
      fail("SUPABASE_DB_URL", "must be a postgres:// connection URL");
    }
    store = { kind: "postgres", dbUrl: e.SUPABASE_DB_URL };
  }

  const keys = serverKeys(e.CLOUDPANEL_SSH_PRIVATE_KEYS);
  if (!e.CLOUDPANEL_SSH_PRIVATE_KEY && Object.keys(keys).length === 0) {
    fail("CLOUDPANEL_SSH_PRIVATE_KEY", "is required (or CLOUDPANEL_SSH_PRIVATE_KEYS, a key per server)");
  }
  if (e.CLOUDPANEL_SSH_HOST && !e.CLOUDPANEL_SSH_HOST_KEY) {
    fail("CLOUDPANEL_SSH_HOST_KEY", "is required when CLOUDPANEL_SSH_HOST is set");
  }
  const fleet: FleetConfig = {
    defaultServer: e.CLOUDPANEL_SSH_HOST
      ? {
        host: e.CLOUDPANEL_SSH_HOST.replace(/^\[|\]$/g, ""),
        port: e.CLOUDPANEL_SSH_PORT,
        user: e.CLOUDPANEL_SSH_USER,
        hostKey: e.CLOUDPANEL_SSH_HOST_KEY!.replace(/=$/, ""),
      }
      : null,
    sharedKey: e.CLOUDPANEL_SSH_PRIVATE_KEY ?? null,
    keys,
    connectTimeoutMs: e.HOSTING_SSH_CONNECT_TIMEOUT_SECONDS,
  };

  let matomo: MatomoConfig | null = null;
  const hasUrl = Boolean(e.MATOMO_API_URL), hasToken = Boolean(e.MATOMO_API_TOKEN);
  if (hasUrl !== hasToken) {
    fail(hasUrl ? "MATOMO_API_TOKEN" : "MATOMO_API_URL", "is required when the other Matomo setting is set");
  }
  if (hasUrl && hasToken) {
    if (!TOKEN_RE.test(e.MATOMO_API_TOKEN!)) {
      fail("MATOMO_API_TOKEN", "must be a Matomo token_auth: 16 to 128 letters and digits");
    }
    matomo = {
      url: httpUrl("MATOMO_API_URL", e.MATOMO_API_URL!, true),
      token: e.MATOMO_API_TOKEN!,
      timeoutMs: e.HOSTING_MATOMO_TIMEOUT_SECONDS,
    };
  }

  return {
    store,
    authKeys,
    fleet,
    matomo,
    timeouts: {
      siteMs: e.HOSTING_SITE_TIMEOUT_SECONDS,
      certificateMs: e.HOSTING_CERTIFICATE_TIMEOUT_SECONDS,
    },
    matomoOnRemove: e.MATOMO_ON_REMOVE,
    checks: {
      dohUrl: e.HOSTING_DOH_URL ? httpUrl("HOSTING_DOH_URL", e.HOSTING_DOH_URL, true) : DEFAULT_DOH_URL,
      defaultPublicIps: publicIps(e.CLOUDPANEL_PUBLIC_IPS),
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
