/**
 * TEST SUPPORT ONLY: a minimal stand-in for PostgREST's RPC endpoint (`POST /rest/v1/rpc/<fn>`), in front of
 * the real Postgres, so that the supabase-js store is exercised end to end (PostgREST cannot run here).
 *
 * Like PostgREST it maps the presented key to a database role (`SET LOCAL ROLE`), so the grants of the
 * migrations decide who may call what; calls functions of `public` with named arguments from the JSON body;
 * answers set-returning functions with a JSON array and others with the JSON value (built by Postgres with
 * to_jsonb/jsonb_agg, as PostgREST does); and maps errors to PostgREST's status codes and error body.
 * Not modelled: JWT claims, GET calls, filters and every other PostgREST feature.
 */
import postgres from "postgres";

export interface PostgrestStandIn {
  /** Use as SUPABASE_URL. */
  url: string;
  /** Requests received: function name and HTTP status. */
  calls: Array<{ fn: string; status: number }>;
  close(): Promise<void>;
}

const FN_RE = /^\/rest\/v1\/rpc\/([a-z_][a-z0-9_]*)$/;
const ARG_RE = /^[a-z_][a-z0-9_]*$/;

/** PostgREST's mapping of SQLSTATE to HTTP status (the part that matters here). */
function statusOf(code: string): number {
  if (code === "42501") return 401; // insufficient_privilege, as for an anonymous role
  if (code === "42883" || code === "42P01") return 404;
  if (code.startsWith("23")) return 409;
  if (code.startsWith("22") || code === "P0001" || code.startsWith("42")) return 400;
  if (code.startsWith("08") || code.startsWith("53") || code.startsWith("57")) return 503;
  return 500;
}

const QUERY_TIMEOUT_MS = 10_000;

export function startPostgrest(
  databaseUrl: string,
  keys: Record<string, "service_role" | "anon" | "authenticated">,
): PostgrestStandIn {
  const connect = () => postgres(databaseUrl, { max: 8, onnotice: () => {} });
  let sql = connect();
  // Real PostgREST reconnects after a database restart. postgres.js can leave a transaction waiting forever on
  // a connection that died mid-way; a call that outlives QUERY_TIMEOUT_MS, or meets a broken connection, gets
  // 503 and the pool is replaced.
  const renew = () => {
    const old = sql;
    sql = connect();
    old.end({ timeout: 0 }).catch(() => {});
  };
  const calls: PostgrestStandIn["calls"] = [];
  const returnsSet = new Map<string, boolean | null>();

  async function isSetReturning(fn: string): Promise<boolean | null> {
    if (!returnsSet.has(fn)) {
      const rows = await sql`
        select p.proretset from pg_proc p
        where p.proname = ${fn} and p.pronamespace = 'public'::regnamespace`;
      returnsSet.set(fn, rows.length ? Boolean(rows[0].proretset) : null);
    }
    return returnsSet.get(fn)!;
  }

  const reply = (status: number, body: unknown) =>
    new Response(body === undefined ? null : JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json; charset=utf-8" },
    });

  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const url = new URL(request.url);
    const match = FN_RE.exec(url.pathname);
    const fn = match?.[1] ?? "?";
    const answer = async (): Promise<Response> => {
      if (!match) return reply(404, { code: "PGRST125", message: "Invalid path specified in request URL" });
      if (request.method !== "POST") {
        return reply(405, { code: "PGRST117", message: "Unsupported HTTP method" });
      }
      const key = request.headers.get("apikey") ??
        request.headers.get("authorization")?.replace(/^Bearer\s+/i, "");
      const role = key ? keys[key] : undefined;
      if (!role) {
        return reply(401, {
          message: "Invalid API key",
          hint: "Double check your Supabase `anon` or `service_role` API key.",
        });
      }
      let args: Record<string, unknown>;
      try {
        const text = await request.text();
        args = text ? JSON.parse(text) : {};
      } catch {
        return reply(400, { code: "PGRST102", message: "Empty or invalid json" });
      }
      if (
        typeof args !== "object" || args === null || Array.isArray(args) ||
        !Object.keys(args).every((k) => ARG_RE.test(k))
      ) {
        return reply(400, { code: "PGRST102", message: "Empty or invalid json" });
      }
      const setReturning = await isSetReturning(fn);
      if (setReturning === null) {
        return reply(404, {
          code: "PGRST202",
          message: `Could not find the function public.${fn} in the schema cache`,
        });
      }
      const names = Object.keys(args);
      const list = names.map((n, i) => `${n} => $${i + 1}`).join(", ");
      const query = setReturning
        ? `select coalesce(jsonb_agg(t), '[]'::jsonb) as body from public.${fn}(${list}) t`
        : `select to_jsonb(public.${fn}(${list})) as body`;
      const values = names.map((n) => args[n]) as postgres.ParameterOrJSON<never>[];
      let timer: number | undefined;
      try {
        const work = sql.begin(async (tx) => {
          await tx.unsafe(`set local role ${role}`);
          return await tx.unsafe(query, values);
        });
        work.catch(() => {});
        const rows = await Promise.race([
          work,
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(Object.assign(new Error("no answer from the database"), { code: "08006" })),
              QUERY_TIMEOUT_MS,
            );
          }),
        ]);
        const body = rows[0]?.body;
        return body === null || body === undefined ? new Response(null, { status: 204 }) : reply(200, body);
      } catch (error) {
        const e = error as { code?: string; message?: string; detail?: string; hint?: string };
        const code = /^[0-9A-Z]{5}$/.test(e.code ?? "") ? e.code! : "08006";
        if (code.startsWith("08") || code === "57P01") renew();
        return reply(statusOf(code), {
          code,
          message: e.message ?? "error",
          details: e.detail ?? null,
          hint: e.hint ?? null,
        });
      } finally {
        clearTimeout(timer);
      }
    };
    const response = await answer();
    calls.push({ fn, status: response.status });
    return response;
  });

  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    calls,
    async close() {
      await server.shutdown();
      await sql.end({ timeout: 5 });
    },
  };
}
