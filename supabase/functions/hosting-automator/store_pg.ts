/**
 * The direct-Postgres store (`HOSTING_STORE=postgres`, `SUPABASE_DB_URL`): the same SQL functions as the
 * supabase-js store, over one small connection pool. Used by the CLI, the demo and tests.
 */
import postgres from "postgres";
import { HostingError } from "./errors.ts";
import type { Redactor } from "./log.ts";
import { functionCall, type SqlCaller, Store, STORE_CALL_TIMEOUT_MS, storeError } from "./store.ts";

export function postgresStore(url: string, options: { max?: number; redactor?: Redactor } = {}): Store {
  const sql = postgres(url, {
    max: options.max ?? 4,
    idle_timeout: 20,
    connect_timeout: 10,
    onnotice: () => {},
    connection: { application_name: "hosting-automator" },
  });

  const call: SqlCaller = async (fn, args, returns) => {
    const { text, values } = functionCall(fn, args, returns);
    const query = sql.unsafe(text, values as postgres.ParameterOrJSON<never>[]);
    let timer: number | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        query.cancel();
        reject(new HostingError("store_failed", `${fn} failed: no answer in ${STORE_CALL_TIMEOUT_MS} ms`));
      }, STORE_CALL_TIMEOUT_MS);
    });
    try {
      const rows = await Promise.race([query, timeout]);
      return returns === "rows" ? [...rows] : rows[0]?.value;
    } catch (error) {
      if (error instanceof HostingError) throw error;
      throw storeError(fn, (error as { code?: unknown }).code, (error as Error).message, error);
    } finally {
      clearTimeout(timer);
      query.catch(() => {});
    }
  };

  return new Store(call, () => sql.end({ timeout: 5 }), { redactor: options.redactor });
}
