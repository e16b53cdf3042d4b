-- What a Supabase database has before any migration, as far as hosting-automator's migrations care, for a
-- plain PostgreSQL (15 or later) that is not Supabase: the API roles PostgREST switches to, the `extensions`
-- schema, and Supabase's default grants in `public` (which is why the migrations revoke EXECUTE from anon and
-- authenticated). Without it `supabase migration up` stops with: role "anon" does not exist.
--
-- Run it once per database, as a superuser, before the migrations (it may run again: nothing is created twice):
--   psql "$DB" -v ON_ERROR_STOP=1 -f dev/supabase_roles.sql
-- The tests' clusters and the demo run this same file (dev/supabase_base.ts reads it).

-- Cluster-wide: the roles.
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
end $$;

-- Per database: Supabase grants the API roles everything in public by default; RLS and revokes do the rest.
create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
