/**
 * SUPABASE_DB_URL, read into its parts: `postgresql://user:password@host:port/database?sslmode=…`.
 *
 * The driver is given these parts, never the URL, so nothing re-parses it differently. A URL that is not
 * right is refused with a rule that never quotes it, nor any piece of it: a password is often in it, and a
 * generated password often holds `#`, `@`, `/` or `?`, which a URL reserves and which must be percent-encoded.
 */
import { isIP } from "node:net";

export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";
const SSL_MODES: readonly string[] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

export interface DbConnection {
  host: string;
  port: number;
  database: string;
  /** Null: the driver's default (PGUSER, else the local user). */
  user: string | null;
  password: string | null;
  sslmode: SslMode | null;
}

/** How to write the characters a URL reserves, for the rule that refuses them. */
export const PERCENT_ENCODING =
  "in a URL they must be percent-encoded: @ as %40, / as %2F, ? as %3F, # as %23, % as %25 " +
  "(JavaScript's encodeURIComponent does it)";

const SHAPE = "must be a URL such as postgresql://postgres:<password>@<host>:5432/postgres";
// A host name (Docker's container names have underscores), or an IPv4 address; IPv6 goes in brackets.
const HOST_RE = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$/;

/** The URL's parts, or the rule it broke (said after the setting's name, never quoting the URL). */
export function parseDbUrl(text: string): DbConnection | { problem: string } {
  const problem = (rule: string) => ({ problem: rule });
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text.trim());
  if (!scheme) return problem(SHAPE);
  if (!["postgres", "postgresql"].includes(scheme[1].toLowerCase())) {
    return problem("must start with postgresql:// (or postgres://)");
  }
  const rest = text.trim().slice(scheme[0].length);

  // The credentials end at the last `@`: neither the host nor the database may hold one.
  const at = rest.lastIndexOf("@");
  const userinfo = at >= 0 ? rest.slice(0, at) : null;
  const tail = at >= 0 ? rest.slice(at + 1) : rest;
  let user: string | null = null;
  let password: string | null = null;
  if (userinfo !== null) {
    const colon = userinfo.indexOf(":");
    const parts = [
      { what: "user name", raw: colon >= 0 ? userinfo.slice(0, colon) : userinfo },
      { what: "password", raw: colon >= 0 ? userinfo.slice(colon + 1) : null },
    ];
    for (const { what, raw } of parts) {
      if (raw === null) continue;
      if (/[@/?#]/.test(raw)) {
        return problem(
          `the ${what} holds characters a URL reserves (@ / ? #), so the URL cannot be read; ${PERCENT_ENCODING}`,
        );
      }
      if (/%(?![0-9A-Fa-f]{2})/.test(raw)) {
        return problem(
          `the ${what} holds a % that does not start a percent-encoded character; ${PERCENT_ENCODING}`,
        );
      }
    }
    try {
      user = decodeURIComponent(parts[0].raw!) || null;
      password = parts[1].raw === null ? null : decodeURIComponent(parts[1].raw);
    } catch {
      return problem(`the user name or password is not valid percent-encoded UTF-8; ${PERCENT_ENCODING}`);
    }
  }

  const fragment = tail.indexOf("#");
  if (fragment >= 0) {
    return problem("must not have a # after the host (a # in the password must be written %23)");
  }
  const query = tail.indexOf("?");
  const beforeQuery = query >= 0 ? tail.slice(0, query) : tail;
  const slash = beforeQuery.indexOf("/");
  const authority = slash >= 0 ? beforeQuery.slice(0, slash) : beforeQuery;
  const path = slash >= 0 ? beforeQuery.slice(slash + 1) : "";

  const hostPort = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(authority)!;
  const bracketed = hostPort[1].startsWith("[");
  const host = bracketed ? hostPort[1].slice(1, -1) : hostPort[1];
  if (host === "") return problem(`must name the database server's host after the @ (${SHAPE})`);
  if (bracketed ? isIP(host) !== 6 : !HOST_RE.test(host)) {
    return problem("must name one host: a host name, an IPv4 address, or an IPv6 address in brackets");
  }
  let port = 5432;
  if (hostPort[2] !== undefined) {
    port = /^[0-9]{1,5}$/.test(hostPort[2]) ? Number(hostPort[2]) : 0;
    if (port < 1 || port > 65535) {
      return problem("must have a port from 1 to 65535 after the host (or none: 5432)");
    }
  }

  let database: string;
  try {
    database = decodeURIComponent(path);
  } catch {
    return problem("has a database name that is not valid percent-encoded UTF-8");
  }
  if (database === "" || database.includes("/")) {
    return problem(`must end with the database's name after the host, such as /postgres (${SHAPE})`);
  }

  let sslmode: SslMode | null = null;
  for (const [name, value] of new URLSearchParams(query >= 0 ? tail.slice(query + 1) : "")) {
    if (name !== "sslmode") {
      const shown = /^[A-Za-z_]{1,40}$/.test(name) ? ` ${name}` : "";
      return problem(`has the parameter${shown}, which is not supported: the only one is sslmode`);
    }
    if (!SSL_MODES.includes(value)) {
      return problem("has an sslmode other than disable, allow, prefer, require, verify-ca and verify-full");
    }
    sslmode = value as SslMode;
  }
  return { host, port, database, user, password, sslmode };
}
