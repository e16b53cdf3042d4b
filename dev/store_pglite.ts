/**
 * The store on PGlite (PostgreSQL compiled to WebAssembly, in this process): the same `public.hosting_*`
 * functions as the supabase-js and direct-Postgres stores, with the calling convention of `store_pg.ts`
 * (named arguments `p_x => $n`; set-returning functions read as rows, the others as one `value`).
 * For the demo, which must run where nothing but Deno is installed.
 *
 * `role`: each call runs in its own transaction under `SET LOCAL ROLE <role>`, so the functions are called with
 * the privileges the Edge Function has on Supabase (`service_role`: EXECUTE on `public.hosting_*` and nothing in
 * the private schema) rather than as PGlite's superuser. Without it calls run as the session user.
 */
import type { PGlite, Transaction } from "@electric-sql/pglite";
import {
  functionCall,
  type SqlCaller,
  Store,
  storeError,
} from "../supabase/functions/hosting-automator/store.ts";

const ROLE_RE = /^[a-z_][a-z0-9_]{0,62}$/;

export interface PgliteStoreOptions {
  /** A role the session user may switch to, e.g. `service_role`. */
  role?: string;
}

/** The PGlite instance stays the caller's: `close()` of the store does not close it. */
export function pgliteStore(pg: PGlite, options: PgliteStoreOptions = {}): Store {
  const role = options.role;
  if (role !== undefined && !ROLE_RE.test(role)) throw new Error(`not a role name: ${role}`);

  const call: SqlCaller = async (fn, args, returns) => {
    const { text, values } = functionCall(fn, args, returns);
    const run = (db: PGlite | Transaction) => db.query<Record<string, unknown>>(text, values);
    try {
      const result = role === undefined ? await run(pg) : await pg.transaction(async (tx) => {
        await tx.exec(`set local role ${role}`);
        return await run(tx);
      });
      return returns === "rows" ? result.rows : result.rows[0]?.value;
    } catch (error) {
      throw storeError(fn, (error as { code?: unknown }).code, (error as Error).message, error);
    }
  };

  return new Store(call);
}
