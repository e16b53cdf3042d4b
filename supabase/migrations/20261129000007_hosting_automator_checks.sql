-- Checks around the certificate:
--
--   * the claim tells the worker the server's public addresses (the sites' DNS must point there before a
--     certificate is asked for: the `dns_check` step);
--   * the completion stores the expiry of the certificate the site serves (`https_verify`), in
--     public.sites.certificate_expires_at, and /status shows the certificates that expire soonest.
--
-- The claim, the completion and the report are wrapped, not restated: each keeps its body in the migration that
-- wrote it, renamed into the private schema, and the public function adds what this migration is about.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- When the certificate the site serves expires (empty on rows provisioned before these checks). Added without a
-- default: a catalog change, no rewrite of the Hub's table.
do $$
begin
  if not exists (
    select 1 from pg_attribute
    where attrelid = 'public.sites'::regclass and attname = 'certificate_expires_at' and not attisdropped
  ) then
    alter table public.sites add column certificate_expires_at timestamptz;
  end if;
end
$$;

alter function public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb)
  rename to claim_jobs_core;
alter function public.claim_jobs_core(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb)
  set schema hosting_automator;

-- Claim due jobs (hosting_automator.claim_jobs_core), each answer's `server` with the server's `public_ips`.
create function public.hosting_claim_jobs(
  p_worker text,
  p_server text,
  p_lease_seconds integer,
  p_limit integer default 1,
  p_site_id uuid default null,
  p_time_left_ms integer default null,
  p_plan jsonb default null,
  p_default_step_ms integer default 15000,
  p_first boolean default false,
  p_default_server jsonb default null
)
returns table (
  job_id bigint,
  lease_token uuid,
  site_id uuid,
  domain text,
  domain_chars integer,
  domain_bytes integer,
  kind text,
  attempt integer,
  max_attempts integer,
  lease_expires_at timestamptz,
  steps jsonb,
  estimates jsonb,
  target jsonb,
  server jsonb
)
language sql
security definer
set search_path = ''
as $$
  select c.job_id, c.lease_token, c.site_id, c.domain, c.domain_chars, c.domain_bytes, c.kind, c.attempt,
    c.max_attempts, c.lease_expires_at, c.steps, c.estimates, c.target,
    c.server || jsonb_build_object('public_ips', coalesce((
      select jsonb_agg(host(ip) order by ip) from hosting_automator.servers s, unnest(s.public_ips) ip
      where s.name = c.server ->> 'name'), '[]'::jsonb))
  from hosting_automator.claim_jobs_core(p_worker, p_server, p_lease_seconds, p_limit, p_site_id, p_time_left_ms,
    p_plan, p_default_step_ms, p_first, p_default_server) c
$$;

alter function public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean)
  rename to complete_job_core;
alter function public.complete_job_core(bigint, uuid, text, integer, text, jsonb, boolean)
  set schema hosting_automator;

-- Finish a build job (hosting_automator.complete_job_core), and store the expiry of the certificate the site
-- was seen to serve (a null keeps what the row has: an analytics job does not look at the certificate).
create function public.hosting_complete_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_doc_root text,
  p_matomo_site_id integer default null,
  p_message text default null,
  p_done jsonb default null,
  p_backfill_analytics boolean default false,
  p_certificate_expires_at timestamptz default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not hosting_automator.complete_job_core(p_job_id, p_lease_token, p_doc_root, p_matomo_site_id, p_message,
    p_done, p_backfill_analytics)
  then
    return false;
  end if;
  if p_certificate_expires_at is not null then
    update public.sites s set certificate_expires_at = p_certificate_expires_at
    from hosting_automator.jobs j
    where j.id = p_job_id and s.id = j.site_id and not hosting_automator.row_in_removal(s.status_hosting);
  end if;
  return true;
end
$$;

alter function public.hosting_status(integer) rename to status_core;
alter function public.status_core(integer) set schema hosting_automator;

-- The operator's report (hosting_automator.status_core), with the certificates that expire soonest.
create function public.hosting_status(p_limit integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select hosting_automator.status_core(p_limit) || jsonb_build_object('certificates', jsonb_build_object(
    'expiring_within_30_days', (
      select count(*) from public.sites s
      where s.status_hosting = 'active' and s.certificate_expires_at < now() + interval '30 days'),
    'soonest', coalesce((
      select jsonb_agg(x.o order by x.at)
      from (
        select s.certificate_expires_at as at, jsonb_build_object('site_id', s.id, 'domain', s.domain,
          'expires_at', s.certificate_expires_at) as o
        from public.sites s
        where s.status_hosting = 'active' and s.certificate_expires_at is not null
        order by s.certificate_expires_at
        limit p_limit
      ) x
    ), '[]'::jsonb)))
$$;

-- The cores are internal now: nobody but their owner executes them; the public functions are for service_role.
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb)',
    'public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean, timestamptz)',
    'public.hosting_status(integer)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
