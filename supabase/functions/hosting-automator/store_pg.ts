/**
 * The direct-Postgres store (`HOSTING_STORE=postgres`, `SUPABASE_DB_URL`): the same SQL functions as the
 * supabase-js store, over one small connection pool. Used by the CLI, the demo and tests.
 */
import postgres from "postgres";
import { HostingError } from "./errors.ts";
import { isPermanentSqlState, type SqlCaller, Store } from "./store.ts";

const FUNCTION_RE = /^hosting_[a-z_]+$/;

export function postgresStore(url: string, options: { max?: number } = {}): Store {
  const sql = postgres(url, {
    max: options.max ?? 4,
    idle_timeout: 20,
    connect_timeout: 10,
    onnotice: () => {},
    connection: { application_name: "hosting-automator" },
  });

  const call: SqlCaller = async (fn, args, returns) => {
    if (!FUNCTION_RE.test(fn)) throw new HostingError("internal", `not a store function: ${fn}`);
    const names = Object.keys(args);
    const list = names.map((name, i) => `${name} => $${i + 1}`).join(", ");
    const query = returns === "rows"
      ? `select * from public.${fn}(${list})`
      : `select public.${fn}(${list}) as value`;
    // postgres.js learns each parameter's type from the server (the function's signature) and serialises
    // objects for jsonb parameters itself.
    const values = names.map((name) => args[name]) as postgres.ParameterOrJSON<never>[];
    try {
      const rows = await sql.unsafe(query, values);
      return returns === "rows" ? [...rows] : rows[0]?.value;
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      throw new HostingError(
        isPermanentSqlState(code) ? "internal" : "store_failed",
        `${fn} failed: ${code ?? ""} ${(error as Error).message}`,
        { cause: error },
      );
    }
  };

  return new Store(call, () => sql.end({ timeout: 5 }));
}
