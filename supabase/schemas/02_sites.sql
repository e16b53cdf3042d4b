-- public.sites: the Hub's table of websites (docs/architecture.md §3), as this module creates it on a fresh
-- database. Where the Hub's table already exists the migrations only complete it (supabase/migrations/
-- 20261121000001_sites.sql and the columns added later): missing columns are added without a default, nothing
-- is dropped, retyped or rewritten, and `id` must be a uuid, because the jobs refer to it.

create table public.sites (
  id uuid primary key default gen_random_uuid(),
  domain text not null unique,
  status_dns text not null default 'pending',
  status_hosting text not null default 'pending',
  hosting_doc_root text,
  matomo_site_id integer,
  error_message text,
  created_at timestamptz not null default now(),
  -- The CloudPanel server the site lives on (docs/architecture.md §16).
  hosting_server text,
  -- When the certificate the site serves expires, as its HTTPS check saw it.
  certificate_expires_at timestamptz
);
comment on table public.sites is
  'Websites of the factory. hosting-automator provisions a row when status_dns becomes active.';

-- NOT VALID, as on a database installed before removals existed: there the check was widened without scanning the
-- Hub's table under an exclusive lock (every row had passed the narrower check); new writes are checked all the
-- same.
alter table public.sites add constraint sites_status_hosting_check
  check (status_hosting in ('pending', 'provisioning', 'active', 'failed', 'removing', 'removed')) not valid;

-- Created here, so protected here: no policies means only service_role (which bypasses RLS) reads it.
alter table public.sites enable row level security;
