/**
 * What a Supabase database has before any migration, as far as these migrations care: the API roles, the
 * `extensions` schema, and Supabase's default grants in `public` (which is why the migrations revoke EXECUTE
 * from anon and authenticated). Used by the demo (PGlite) and the test cluster; neither is Supabase.
 */

/** Cluster-wide: the roles PostgREST switches to. */
export const SUPABASE_ROLES_SQL = `
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
end $$;
`;

/** Per database: Supabase grants the API roles everything in public by default; RLS and revokes do the rest. */
export const SUPABASE_DATABASE_SQL = `
create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
`;
