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

alter function public.hosting_status(integer) rename to status_fleet;
alter function public.status_fleet(integer) set schema hosting_automator;

-- The operator's report (hosting_automator.status_fleet), with the certificates that expire soonest.
create function public.hosting_status(p_limit integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select hosting_automator.status_fleet(p_limit) || jsonb_build_object(
    -- Sites whose job waits for their DNS to point at the server.
    'waiting_for_dns', coalesce((
      select jsonb_agg(x.o order by x.run_at)
      from (
        select j.run_at, jsonb_build_object('site_id', j.site_id, 'domain', s.domain, 'checks', j.error_streak,
          'since', (select st.created_at from hosting_automator.steps st
            where st.site_id = j.site_id and st.step = 'dns_check'),
          'next_check_at', j.run_at, 'error', j.public_error) as o
        from hosting_automator.jobs j join public.sites s on s.id = j.site_id
        where j.state = 'queued' and j.last_error_code = 'dns_not_ready'
        order by j.run_at
        limit p_limit
      ) x
    ), '[]'::jsonb),
    'certificates', jsonb_build_object(
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

-- Waiting for DNS is not a failure of the work: it has its own, gentler schedule and spends no attempt, but it
-- is bounded, so a domain whose DNS never points ends `failed` for a person to fix.
alter table hosting_automator.settings
  add column dns_backoff_seconds integer not null default 60 check (dns_backoff_seconds between 1 and 3600),
  add column dns_backoff_max_seconds integer not null default 900 check (dns_backoff_max_seconds between 1 and 86400),
  add column dns_wait_hours integer not null default 48 check (dns_wait_hours between 1 and 720);
-- The module's one-row settings table: the check scans one row.
-- squawk-ignore constraint-missing-not-valid
alter table hosting_automator.settings add constraint settings_dns_backoff_order
  check (dns_backoff_max_seconds >= dns_backoff_seconds);
comment on column hosting_automator.settings.dns_backoff_seconds is
  'First wait before DNS is checked again (doubling, with jitter, up to dns_backoff_max_seconds).';
comment on column hosting_automator.settings.dns_wait_hours is
  'How long a site may wait for its DNS (from its first DNS check) before its job fails.';

-- DNS does not point at the server yet (`dns_not_ready`): the job is queued again without spending its attempt,
-- after dns_backoff_seconds × 2^(waits in a row − 1), capped, with jitter; once the site has waited
-- dns_wait_hours since its first DNS check, the job fails instead. Answers as hosting_fail_job does
-- ({"state": "queued", "run_at", "attempts"} or {"state": "failed", …}), null when the lease is lost.
create function public.hosting_wait_for_dns(
  p_job_id bigint,
  p_lease_token uuid,
  p_public_message text,
  p_internal_message text default null,
  p_done jsonb default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
  v_settings hosting_automator.settings;
  v_since timestamptz;
  v_streak integer;
  v_delay double precision;
begin
  if p_public_message is null or length(p_public_message) not between 1 and 500 then
    raise exception 'p_public_message must be 1 to 500 characters' using errcode = '22023';
  end if;
  select * into v_settings from hosting_automator.settings;
  select j.id, j.site_id, j.last_error_code, j.error_streak into v_job from hosting_automator.jobs j
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  for update;
  if not found then
    return null;
  end if;
  select st.created_at into v_since from hosting_automator.steps st
  where st.site_id = v_job.site_id and st.step = 'dns_check';
  if v_since is not null and v_since < now() - make_interval(hours => v_settings.dns_wait_hours) then
    return public.hosting_fail_job(p_job_id, p_lease_token, 'dns_not_ready',
      left(format('DNS has not pointed at the server for %s hours: %s', v_settings.dns_wait_hours,
        p_public_message), 500),
      p_internal_message, true, null, p_done);
  end if;
  v_streak := case when v_job.last_error_code = 'dns_not_ready' then v_job.error_streak + 1 else 1 end;
  v_delay := least(v_settings.dns_backoff_max_seconds::double precision,
    v_settings.dns_backoff_seconds * power(2::double precision, v_streak - 1));
  update hosting_automator.jobs j set
    state = 'queued',
    attempts = greatest(j.attempts - 1, 0),
    run_at = now() + make_interval(secs => v_delay / 2 + random() * v_delay / 2),
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    last_error_code = 'dns_not_ready',
    last_error = left(p_internal_message, 4000),
    public_error = p_public_message,
    error_streak = v_streak,
    updated_at = now()
  where j.id = p_job_id
  returning j.run_at, j.attempts into v_job;
  if p_done is not null then
    perform hosting_automator.journal_ends((select j.site_id from hosting_automator.jobs j where j.id = p_job_id),
      p_job_id, p_done);
  end if;
  insert into hosting_automator.events (site_id, job_id, step, level, code, message)
  select j.site_id, p_job_id, 'dns_check', 'warn', 'dns_not_ready',
    left(format('Waiting for DNS (check %s); next check at %s: %s', v_streak,
      to_char(j.run_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), p_public_message), 2000)
  from hosting_automator.jobs j where j.id = p_job_id;
  return jsonb_build_object('state', 'queued', 'run_at', v_job.run_at, 'attempts', v_job.attempts);
end
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
    'public.hosting_status(integer)',
    'public.hosting_wait_for_dns(bigint, uuid, text, text, jsonb)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
