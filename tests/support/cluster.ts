/**
 * Test support: a throwaway PostgreSQL 15 cluster in a temporary directory, on a free loopback port, with
 * pg_cron preloaded, and the Supabase base roles and default privileges.
 *
 * Also the stand-ins for the Supabase platform pieces that are not packaged here (pg_net's `net.http_post`
 * and Vault's `vault.decrypted_secrets`). They are TEST SUPPORT ONLY: they record what would be sent / hold
 * secrets in clear text, and exist so the migrations can be exercised as on Supabase.
 */

import { SUPABASE_DATABASE_SQL, SUPABASE_ROLES_SQL } from "../../dev/supabase_base.ts";

export const PG_BIN = Deno.env.get("HA_PG_BIN") ?? "/usr/lib/postgresql/15/bin";

export interface Cluster {
  port: number;
  dir: string;
  url(database?: string): string;
  psql(database: string, sql: string): Promise<string>;
  stop(): Promise<void>;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function run(
  cmd: string,
  args: string[],
  options: { asPostgres?: boolean; env?: Record<string, string> } = {},
) {
  // initdb and postgres refuse to run as root; the Debian packages create the `postgres` user.
  const root = Deno.uid() === 0;
  const [bin, argv] = root && options.asPostgres
    ? ["runuser", ["-u", "postgres", "--", cmd, ...args]]
    : [cmd, args];
  const out = await new Deno.Command(bin, { args: argv, env: options.env, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} failed (${out.code}):\n${text}`);
  return text;
}

export async function startCluster(): Promise<Cluster> {
  const dir = await Deno.makeTempDir({ prefix: "ha-pg-" });
  const data = `${dir}/data`;
  if (Deno.uid() === 0) await run("chown", ["postgres:postgres", dir]);
  await run(`${PG_BIN}/initdb`, ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], {
    asPostgres: true,
  });
  const port = freePort();
  const options = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    "-c shared_preload_libraries=pg_cron",
    "-c cron.database_name=postgres",
    // A throwaway cluster: durability off for speed.
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=300",
  ].join(" ");
  await run(`${PG_BIN}/pg_ctl`, [
    "-D",
    data,
    "-o",
    options,
    "-l",
    `${dir}/postgres.log`,
    "-w",
    "-t",
    "30",
    "start",
  ], {
    asPostgres: true,
  });

  const url = (database = "postgres") => `postgresql://postgres:postgres@127.0.0.1:${port}/${database}`;
  const psql = (database: string, sql: string) =>
    run(`${PG_BIN}/psql`, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url(database), "-c", sql]);

  return {
    port,
    dir,
    url,
    psql,
    async stop() {
      await run(`${PG_BIN}/pg_ctl`, ["-D", data, "-m", "immediate", "-w", "stop"], { asPostgres: true })
        .catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** The Supabase roles, plus PostgREST's login role `authenticator` (the cluster is shared by all tests). */
export const SUPABASE_BASE_SQL = SUPABASE_ROLES_SQL + `
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit password 'authenticator';
  end if;
end $$;
grant anon, authenticated, service_role to authenticator;
`;

export { SUPABASE_DATABASE_SQL };

/** TEST SUPPORT ONLY: pg_net and Vault stand-ins (see the file header). */
export const PLATFORM_STANDINS_SQL = `
create schema if not exists net;
comment on schema net is 'TEST SUPPORT ONLY: stand-in for pg_net; records requests instead of sending them';
create table if not exists net.http_request_queue (
  id bigserial primary key,
  method text not null default 'POST',
  url text not null,
  headers jsonb,
  body jsonb,
  timeout_milliseconds integer,
  created_at timestamptz not null default now()
);
create or replace function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds integer default 5000
) returns bigint language sql as $$
  insert into net.http_request_queue (url, headers, body, timeout_milliseconds)
  values (url, headers, body, timeout_milliseconds) returning id
$$;

create schema if not exists vault;
comment on schema vault is 'TEST SUPPORT ONLY: stand-in for Supabase Vault (no encryption)';
create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text unique,
  description text not null default '',
  secret text not null
);
create or replace view vault.decrypted_secrets as
  select id, name, description, secret as decrypted_secret from vault.secrets;
create or replace function vault.create_secret(new_secret text, new_name text default null, new_description text default '')
returns uuid language sql as $$
  insert into vault.secrets (name, description, secret) values (new_name, new_description, new_secret) returning id
$$;
`;
