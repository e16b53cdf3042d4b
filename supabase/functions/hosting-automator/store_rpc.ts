/**
 * The default store: supabase-js calling the SQL functions through PostgREST's RPC endpoint
 * (`SUPABASE_URL`, the secret key). Thin on purpose: `store.ts` types the answers.
 */
import { createClient } from "@supabase/supabase-js";
import { HostingError } from "./errors.ts";
import type { Redactor } from "./log.ts";
import { type SqlCaller, Store, STORE_CALL_TIMEOUT_MS, storeError } from "./store.ts";

export function rpcStore(
  url: string,
  key: string,
  options: { fetch?: typeof fetch; redactor?: Redactor } = {},
): Store {
  const client = createClient(url, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: options.fetch ? { fetch: options.fetch } : undefined,
  });

  const call: SqlCaller = async (fn, args) => {
    let answer;
    try {
      answer = await client.rpc(fn, args).abortSignal(AbortSignal.timeout(STORE_CALL_TIMEOUT_MS));
    } catch (error) {
      throw new HostingError("store_failed", `${fn} failed: ${(error as Error).message}`, { cause: error });
    }
    const { data, error } = answer;
    if (error) throw storeError(fn, error.code, error.message, error);
    return data;
  };

  return new Store(call, undefined, { redactor: options.redactor });
}
