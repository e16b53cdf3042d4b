/**
 * The direct-Postgres store (`HOSTING_STORE=postgres`, `SUPABASE_DB_URL`): the same SQL functions as the
 * supabase-js store, over one small connection pool. Used by the CLI, the demo and tests.
 */
import postgres from "postgres";
import { functionCall, type SqlCaller, Store, storeError } from "./store.ts";

export function postgresStore(url: string, options: { max?: number } = {}): Store {
  const sql = postgres(url, {
    max: options.max ?? 4,
    idle_timeout: 20,
    connect_timeout: 10,
    onnotice: () => {},
    connection: { application_name: "hosting-automator" },
  });

  const call: SqlCaller = async (fn, args, returns) => {
    const { text, values } = functionCall(fn, args, returns);
    try {
      const rows = await sql.unsafe(text, values as postgres.ParameterOrJSON<never>[]);
      return returns === "rows" ? [...rows] : rows[0]?.value;
    } catch (error) {
      throw storeError(fn, (error as { code?: unknown }).code, (error as Error).message, error);
    }
  };

  return new Store(call, () => sql.end({ timeout: 5 }));
}
