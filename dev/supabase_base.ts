/**
 * What a Supabase database has before any migration, as far as these migrations care: the API roles, the
 * `extensions` schema, and Supabase's default grants in `public`. The SQL is dev/supabase_roles.sql, the
 * script the README's local quick start runs on a plain PostgreSQL; the demo (PGlite) and the test clusters
 * run the same text, split here into its cluster-wide and its per-database part. Neither is Supabase.
 */

const SCRIPT = Deno.readTextFileSync(new URL("./supabase_roles.sql", import.meta.url));
/** The line that starts the per-database part of the script. */
const PER_DATABASE = "-- Per database:";

const split = SCRIPT.indexOf(PER_DATABASE);
if (split < 0) throw new Error(`dev/supabase_roles.sql: no "${PER_DATABASE}" line`);

/** Cluster-wide: the roles PostgREST switches to. */
export const SUPABASE_ROLES_SQL = SCRIPT.slice(0, split);

/** Per database: Supabase grants the API roles everything in public by default; RLS and revokes do the rest. */
export const SUPABASE_DATABASE_SQL = SCRIPT.slice(split);
