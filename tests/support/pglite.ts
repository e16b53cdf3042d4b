/**
 * Test support: PostgreSQL 17, the major version of new Supabase projects, as PGlite (Postgres compiled to
 * WebAssembly) served on a loopback port, so the same tools as on the PostgreSQL 15 cluster reach it: the
 * Supabase CLI applies the migrations and pg_prove runs the pgTAP files.
 *
 * PGlite 0.4 embeds PostgreSQL 17 (0.5, the demo's, embeds 18). It has no pg_cron and no pgTAP package of
 * its own for 17: pgTAP is plain SQL, so its install script (from the PostgreSQL 15 cluster's pgTAP package)
 * is run as is; pgTAP statements that need pg_cron are replaced by pgTAP's `skip` (see `skipStatements`).
 * pg_net and Vault are the same TEST SUPPORT stand-ins as on the cluster.
 *
 * Run as a program (`deno run -A tests/support/pglite.ts <port>`) it is the server: it prints one JSON line
 * when it listens, then serves until it is killed. PGlite serves every connection from one backend session:
 * a session setting (`SET`) made by one connection holds for the next ones, and the startup options of a
 * connection (PGOPTIONS) are ignored. Clients must not ask for TLS (`sslmode=disable`).
 */
import { PGlite } from "npm:@electric-sql/pglite@0.4.6";
import { PGLiteSocketServer } from "npm:@electric-sql/pglite-socket@0.1.6";
import { freePort, PLATFORM_STANDINS_SQL, SUPABASE_BASE_SQL, SUPABASE_DATABASE_SQL } from "./cluster.ts";
import { ROOT } from "./env.ts";

export const PGLITE_LABEL = "PGlite 0.4.6";

export interface PgliteServer {
  /** e.g. `PostgreSQL 17.5` */
  version: string;
  port: number;
  url(user?: string): string;
  stop(): Promise<void>;
}

/** pgTAP's install script, from the pgTAP package of the PostgreSQL binaries in use (`pgtap.control` names it). */
export async function pgtapScript(shareDir: string): Promise<string> {
  const control = await Deno.readTextFile(`${shareDir}/extension/pgtap.control`);
  const version = control.match(/^default_version\s*=\s*'([^']+)'/m)?.[1];
  if (!version) throw new Error(`no default_version in ${shareDir}/extension/pgtap.control`);
  return await Deno.readTextFile(`${shareDir}/extension/pgtap--${version}.sql`);
}

/** Starts the server in a process of its own; with `pgtapShareDir`, pgTAP is installed in `extensions`. */
export async function startPgliteServer(options: { pgtapShareDir?: string } = {}): Promise<PgliteServer> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tests/support/pglite.ts`, String(port), options.pgtapShareDir ?? ""],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the PGlite server stopped before it listened:\n${seen}${await stderr}`);
    seen += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const ready = JSON.parse(seen.slice(0, seen.indexOf("\n"))) as { version: string };
  return {
    version: ready.version,
    port,
    url: (user = "postgres") => `postgresql://${user}:${user}@127.0.0.1:${port}/postgres?sslmode=disable`,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
      await stderr.catch(() => {});
    },
  };
}

/**
 * A psql script cut into its top-level statements: each ends after its `;`, or at the end of the line of a
 * psql meta-command (`\gset`, `\set` …). Quotes, quoted identifiers, dollar quotes and comments are skipped
 * over. Joined again the pieces give the script back unchanged.
 */
export function splitPsqlScript(sql: string): string[] {
  const pieces: string[] = [];
  let start = 0;
  let i = 0;
  const cut = (end: number) => {
    pieces.push(sql.slice(start, end));
    start = end;
  };
  while (i < sql.length) {
    const c = sql[i];
    const next = sql[i + 1];
    if (c === "-" && next === "-") {
      const eol = sql.indexOf("\n", i);
      i = eol === -1 ? sql.length : eol + 1;
    } else if (c === "/" && next === "*") {
      let depth = 1;
      i += 2;
      while (i < sql.length && depth > 0) {
        if (sql[i] === "/" && sql[i + 1] === "*") (depth++, i += 2);
        else if (sql[i] === "*" && sql[i + 1] === "/") (depth--, i += 2);
        else i++;
      }
    } else if (c === "'" || c === '"') {
      i++;
      while (i < sql.length) {
        if (sql[i] === c && sql[i + 1] === c) i += 2;
        else if (sql[i] === c) break;
        else i++;
      }
      i++;
    } else if (c === "$" && /^\$[A-Za-z_]*\$/.test(sql.slice(i)) && !/[\w$]/.test(sql[i - 1] ?? " ")) {
      const tag = sql.slice(i).match(/^\$[A-Za-z_]*\$/)![0];
      const close = sql.indexOf(tag, i + tag.length);
      i = close === -1 ? sql.length : close + tag.length;
    } else if (c === ";") {
      i++;
      cut(i);
    } else if (c === "\\") {
      const eol = sql.indexOf("\n", i);
      i = eol === -1 ? sql.length : eol + 1;
      cut(i);
    } else {
      i++;
    }
  }
  if (start < sql.length) pieces.push(sql.slice(start));
  return pieces;
}

/** The statement without its comments (strings are kept: a statement that quotes `cron.job` still needs it). */
function withoutComments(statement: string): string {
  return splitComments(statement).filter((p) => !p.comment).map((p) => p.text).join(" ");
}

function splitComments(statement: string): { text: string; comment: boolean }[] {
  const parts: { text: string; comment: boolean }[] = [];
  const re = /--[^\n]*|\/\*[\s\S]*?\*\/|'(?:[^']|'')*'|"(?:[^"]|"")*"|\$([A-Za-z_]*)\$[\s\S]*?\$\1\$/g;
  let last = 0;
  for (const m of statement.matchAll(re)) {
    const comment = m[0].startsWith("--") || m[0].startsWith("/*");
    if (!comment) continue;
    parts.push({ text: statement.slice(last, m.index), comment: false }, { text: m[0], comment: true });
    last = m.index! + m[0].length;
  }
  parts.push({ text: statement.slice(last), comment: false });
  return parts;
}

export interface Skipped {
  /** The statement replaced, without its comments, on one line. */
  statement: string;
}

/**
 * Replaces each pgTAP assertion of a script that uses something the server lacks (`needs` matches its text)
 * by `select skip(<why>, 1);`, so the plan still adds up and the TAP output says what was not tested and why.
 * Only a statement that is one assertion (`select <function>(…);`) can be replaced; any other statement that
 * matches is an error, so nothing is dropped silently.
 */
export function skipStatements(
  script: string,
  needs: RegExp,
  why: string,
): { script: string; skipped: Skipped[] } {
  const skipped: Skipped[] = [];
  const out = splitPsqlScript(script).map((statement) => {
    const code = withoutComments(statement).trim();
    if (!needs.test(code)) return statement;
    if (!/^select\s+[a-z_][a-z0-9_]*\s*\([\s\S]*\)\s*;$/i.test(code) || /^select\s+\*/i.test(code)) {
      throw new Error(`cannot skip this statement (${why}): it is not one pgTAP assertion:\n${code}`);
    }
    skipped.push({ statement: code.replace(/\s+/g, " ") });
    // Whitespace and comments before the statement stay, so the skip sits where the assertion was.
    const leading = statement.match(/^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*/)![0];
    return `${leading}select skip('${why.replaceAll("'", "''")}', 1);`;
  });
  return { script: out.join(""), skipped };
}

if (import.meta.main) {
  const [port, pgtapShareDir] = Deno.args;
  const db = await PGlite.create();
  await db.exec(SUPABASE_BASE_SQL + SUPABASE_DATABASE_SQL + PLATFORM_STANDINS_SQL);
  if (pgtapShareDir) {
    await db.exec(`set search_path = extensions;\n${await pgtapScript(pgtapShareDir)}\n;reset search_path;`);
  }
  const [{ version }] = (await db.query<{ version: string }>(
    `select split_part(version(), ' ', 1) || ' ' || split_part(version(), ' ', 2) as version`,
  )).rows;
  const server = new PGLiteSocketServer({ db, port: Number(port), host: "127.0.0.1" });
  await server.start();
  // deno-lint-ignore no-console
  console.log(JSON.stringify({ version }));
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
}
