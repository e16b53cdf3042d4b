/**
 * The direct-Postgres store (`HOSTING_STORE=postgres`, `SUPABASE_DB_URL`): the same SQL functions as the
 * supabase-js store, over one small connection pool. Used by the CLI, the demo and tests.
 */
import postgres from "postgres";
import type { DbConnection } from "./db_url.ts";
import { HostingError } from "./errors.ts";
import type { Redactor } from "./log.ts";
import { functionCall, type SqlCaller, Store, STORE_CALL_TIMEOUT_MS, storeError } from "./store.ts";

/** The connection's parts as the driver takes them; never a URL, which the driver would parse again its own way. */
function driverOptions(db: DbConnection) {
  return {
    // Lists, which the driver takes as they are (its types say text): it splits a host given as text at its
    // colons, which would cut an IPv6 address.
    host: [db.host] as unknown as string,
    port: [db.port] as unknown as number,
    database: db.database,
    ...(db.user !== null ? { username: db.user } : {}),
    ...(db.password !== null ? { password: db.password } : {}),
    // verify-ca is checked as verify-full: the driver verifies the certificate and its host name together.
    ...(db.sslmode === null
      ? {}
      : { ssl: db.sslmode === "disable" ? false : db.sslmode === "verify-ca" ? "verify-full" : db.sslmode }),
  };
}

export function postgresStore(db: DbConnection, options: { max?: number; redactor?: Redactor } = {}): Store {
  const sql = postgres({
    ...driverOptions(db),
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
