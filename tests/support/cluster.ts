/**
 * Test support: a throwaway PostgreSQL 15 cluster in a temporary directory, on a free loopback port, with
 * pg_cron preloaded, and the Supabase base roles and default privileges.
 *
 * Also the stand-ins for the Supabase platform pieces that are not packaged here (pg_net's `net.http_post`
 * and Vault's `vault.decrypted_secrets`). They are TEST SUPPORT ONLY: they record what would be sent / hold
 * secrets in clear text, and exist so the migrations can be exercised as on Supabase.
 *
 * And a hosted-like cluster (`HOSTED_ADMIN`, `hostedRolesSql`, `hostedDatabaseSql`): on a Supabase project the
 * cluster's superuser is the platform's own role, `postgres` (which runs `supabase db push`) is not a superuser,
 * and the platform creates the extensions and grants `postgres` what it may do with them.
 */

import { SUPABASE_DATABASE_SQL, SUPABASE_ROLES_SQL } from "../../dev/supabase_base.ts";

export const PG_BIN = Deno.env.get("HA_PG_BIN") ?? "/usr/lib/postgresql/15/bin";

export interface Cluster {
  port: number;
  dir: string;
  /** The bootstrap superuser's name (`postgres`, or the platform admin of a hosted-like cluster). */
  superuser: string;
  /** As the superuser unless `user` is given (every role logs in without a password: trust). */
  url(database?: string, user?: string): string;
  psql(database: string, sql: string): Promise<string>;
  /** `pg_ctl restart` (fast shutdown: sessions are ended, as on a server restart), same port and options. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export function freePort(): number {
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

export interface ClusterOptions {
  /** initdb's bootstrap superuser (default `postgres`). */
  superuser?: string;
}

export async function startCluster(config: ClusterOptions = {}): Promise<Cluster> {
  const superuser = config.superuser ?? "postgres";
  const dir = await Deno.makeTempDir({ prefix: "ha-pg-" });
  const data = `${dir}/data`;
  if (Deno.uid() === 0) await run("chown", ["postgres:postgres", dir]);
  await run(`${PG_BIN}/initdb`, ["-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8", "--no-sync"], {
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

  const url = (database = "postgres", user = superuser) =>
    `postgresql://${user}:${user}@127.0.0.1:${port}/${database}`;
  const psql = (database: string, sql: string) =>
    run(`${PG_BIN}/psql`, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url(database), "-c", sql]);

  return {
    port,
    dir,
    superuser,
    url,
    psql,
    async restart() {
      // pg_ctl restart starts the server again with the options it recorded (postmaster.opts).
      await run(`${PG_BIN}/pg_ctl`, [
        "-D",
        data,
        "-m",
        "fast",
        "-w",
        "-t",
        "60",
        "-l",
        `${dir}/postgres.log`,
        "restart",
      ], {
        asPostgres: true,
      });
    },
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

/** The platform's superuser in a hosted-like cluster (Supabase's is named so too). */
export const HOSTED_ADMIN = "supabase_admin";

/**
 * Cluster-wide, run by `HOSTED_ADMIN`: `postgres` with the attributes it has on a Supabase project (not a
 * superuser: it may create databases and roles, replicate, and bypass RLS), the API roles, and PostgREST's
 * `authenticator`.
 */
export const HOSTED_ROLES_SQL = `
create role postgres login nosuperuser createdb createrole replication bypassrls;
${SUPABASE_BASE_SQL}
-- Supabase grants postgres the API roles (with admin option from Postgres 16 on); the pgTAP files switch to them.
grant anon, authenticated, service_role to postgres with admin option;
`;

/**
 * Per database, run by `HOSTED_ADMIN` before any migration: what a Supabase project's database holds for
 * `postgres` when `supabase db push` runs. The API roles' default grants apply to what `postgres` creates
 * (so the migrations' revokes are tested as on Supabase); pgcrypto and, in the database pg_cron serves, pg_cron
 * are created by the admin with the grants Supabase gives `postgres` on `cron` (usage, execute on its
 * functions, read-only `cron.job`); the pg_net and Vault stand-ins (TEST SUPPORT ONLY, see above) are owned
 * by the admin and grant `postgres` what Supabase's pg_net and Vault grant it.
 */
export function hostedDatabaseSql(database: string, options: { pgCron: boolean }): string {
  return `
grant all on database "${database}" to postgres;
grant create on schema public to postgres;
${SUPABASE_DATABASE_SQL}
grant all on schema extensions to postgres;
alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
create extension if not exists pgcrypto with schema extensions;
${options.pgCron ? HOSTED_PG_CRON_SQL : ""}
${PLATFORM_STANDINS_SQL}
-- pg_net: its schema and functions for postgres and the API roles; its tables for postgres.
grant usage on schema net to postgres, anon, authenticated, service_role;
grant all on all tables in schema net to postgres;
grant all on all sequences in schema net to postgres;
alter function net.http_post(text, jsonb, jsonb, jsonb, integer) security definer set search_path = net;
revoke all on function net.http_post(text, jsonb, jsonb, jsonb, integer) from public;
grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to postgres, anon, authenticated, service_role;
-- Vault: postgres and service_role read and delete secrets and create them through vault.create_secret.
alter function vault.create_secret(text, text, text) security definer set search_path = '';
revoke all on function vault.create_secret(text, text, text) from public;
grant usage on schema vault to postgres with grant option;
grant select, delete on vault.secrets, vault.decrypted_secrets to postgres with grant option;
grant execute on function vault.create_secret(text, text, text) to postgres with grant option;
grant usage on schema vault to service_role;
grant select, delete on vault.secrets, vault.decrypted_secrets to service_role;
grant execute on function vault.create_secret(text, text, text) to service_role;
`;
}

/** pg_cron as the platform installs it, and what postgres may do with it (schedule, unschedule, read jobs). */
const HOSTED_PG_CRON_SQL = `
create extension if not exists pg_cron with schema pg_catalog;
grant usage on schema cron to postgres with grant option;
grant all on all functions in schema cron to postgres with grant option;
grant all privileges on all tables in schema cron to postgres with grant option;
revoke all on table cron.job from postgres;
grant select on table cron.job to postgres with grant option;
revoke trigger on cron.job_run_details from postgres;
`;
