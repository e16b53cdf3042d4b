/**
 * Test support: the parts of a secret scan, for the final scan of the suite and for the chaos run. A secret is
 * any registered value of 8 characters or more, and each 24+ character line of a PEM key on its own (a leak of
 * part of a key is a leak). The database text is everything this module writes that a person may read: event
 * messages, stored errors, journal results, `error_message` and the doc root.
 */
import type postgres from "postgres";

/** The values to look for: trimmed, PEM keys also line by line, short values dropped. */
export function needlesOf(secrets: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const secret of secrets) {
    out.add(secret.trim());
    for (const part of secret.split("\n")) if (part.trim().length >= 24) out.add(part.trim());
  }
  return [...out].filter((s) => s.length >= 8);
}

/** The needles found in `haystack`, each named by its first 4 characters and its length only. */
export function leaks(haystack: string, needles: string[]): string[] {
  return needles.filter((n) => haystack.includes(n)).map((n) => `${n.slice(0, 4)}… (${n.length} chars)`);
}

/** Every site-user password a clpctl simulator state directory holds. */
export async function simPasswords(stateDir: string): Promise<string[]> {
  const state = await Deno.readTextFile(`${stateDir}/state.json`).catch(() => null);
  if (!state) return [];
  const sites = Object.values(JSON.parse(state).sites ?? {}) as Array<{ siteUserPassword?: string }>;
  return sites.map((s) => s.siteUserPassword).filter((p): p is string => Boolean(p));
}

/** The readable text this module stored in one database; null when the database does not hold the module. */
export async function databaseText(sql: postgres.Sql): Promise<string | null> {
  const [{ present }] = await sql`select to_regclass('hosting_automator.events') is not null as present`;
  if (!present) return null;
  const [row] = await sql<{ text: string | null }[]>`
    select concat_ws(E'\\n',
      (select string_agg(concat_ws(' ', code, message), E'\\n') from hosting_automator.events),
      (select string_agg(concat_ws(' ', last_error, public_error), E'\\n') from hosting_automator.jobs),
      (select string_agg(result::text, E'\\n') from hosting_automator.steps),
      (select string_agg(concat_ws(' ', error_message, hosting_doc_root), E'\\n') from public.sites)
    ) as text`;
  return row.text ?? "";
}
