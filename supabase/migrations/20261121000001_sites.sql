-- public.sites: the Hub's table of websites (docs/architecture.md §3).
--
-- On a fresh database this module creates it. When the Hub's table already exists, it is only completed:
-- missing columns are added, nothing is dropped, retyped or rewritten, and existing rows keep their values
-- (a column added here is NULL on existing rows, so no old row suddenly looks "pending").

-- Wait at most 5 s for a lock on a table others use (public.sites above all): a busy Hub makes the push fail,
-- to be run again, instead of queueing every reader and writer of the table behind this migration.
set local lock_timeout = '5s';

do $$
begin
  if to_regclass('public.sites') is null then
    create table public.sites (
      id uuid primary key default gen_random_uuid(),
      domain text not null unique,
      status_dns text not null default 'pending',
      status_hosting text not null default 'pending'
        constraint sites_status_hosting_check
        check (status_hosting in ('pending', 'provisioning', 'active', 'failed')),
      hosting_doc_root text,
      matomo_site_id integer,
      error_message text,
      created_at timestamptz not null default now()
    );
    comment on table public.sites is
      'Websites of the factory. hosting-automator provisions a row when status_dns becomes active.';
    -- Created here, so protected here: no policies means only service_role (which bypasses RLS) reads it.
    alter table public.sites enable row level security;
  end if;
end
$$;

-- The module's contract with an existing table: `id` must be a uuid key.
do $$
declare
  v_type text;
begin
  select format_type(a.atttypid, a.atttypmod) into v_type
  from pg_attribute a
  where a.attrelid = 'public.sites'::regclass and a.attname = 'id' and not a.attisdropped;
  if v_type is distinct from 'uuid' then
    raise exception 'hosting-automator: public.sites.id must be of type uuid (found %)', coalesce(v_type, 'no id column')
      using hint = 'The jobs table references public.sites(id), so hosting-automator needs a uuid key.';
  end if;
end
$$;

-- Complete a Hub table: add each missing column; defaults only for columns added here.
-- Safe on a large, busy table: a column added without a default (and NOT NULL) is a catalog change, no
-- rewrite and no scan; the default is set afterwards, which applies to new rows only. Each ALTER holds an
-- ACCESS EXCLUSIVE lock on public.sites for that moment (bounded by lock_timeout above while waiting for it).
do $$
declare
  v_col record;
begin
  for v_col in
    select * from (values
      ('domain', 'text', null),
      ('status_dns', 'text', null),
      ('status_hosting', 'text', '''pending'''),
      ('hosting_doc_root', 'text', null),
      ('matomo_site_id', 'integer', null),
      ('error_message', 'text', null)
    ) as c(name, type, default_value)
  loop
    if not exists (
      select 1 from pg_attribute
      where attrelid = 'public.sites'::regclass and attname = v_col.name and not attisdropped
    ) then
      execute format('alter table public.sites add column %I %s', v_col.name, v_col.type);
      if v_col.default_value is not null then
        execute format('alter table public.sites alter column %I set default %s', v_col.name, v_col.default_value);
      end if;
    end if;
  end loop;
end
$$;
