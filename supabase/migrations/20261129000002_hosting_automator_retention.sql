-- Operating for years without a person: retention of the module's own history, and the doorbell's health.
--
--   * retention_days (default 90): the sweep deletes, in bounded batches, events older than that (the last
--     event of each site's latest job stays), finished jobs older than that (each site's latest job stays), the
--     sweep's own rows of cron.job_run_details, and the kick log;
--   * /status tells failing kicks (a rotated key answers 401) from the responses pg_net records for the kicks
--     the doorbell logged, which otherwise only net._http_response shows.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

alter table hosting_automator.settings
  add column retention_days integer not null default 90 check (retention_days between 1 and 3650);
comment on column hosting_automator.settings.retention_days is
  'Days the event log, finished jobs and the sweep''s cron history are kept; the sweep deletes older rows in batches.';

-- The event log stays append-only for everyone; only the retention below may delete, and only in its own
-- transaction (it sets hosting_automator.retention for that transaction).
create or replace function hosting_automator.refuse_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' and current_setting('hosting_automator.retention', true) = 'on' then
    return old;
  end if;
  raise exception 'hosting_automator.events is append-only' using errcode = '42501';
end
$$;

-- Deletes at most p_batch rows of each kind that are past retention_days. Returns what it deleted.
create function hosting_automator.apply_retention(p_batch integer default 500)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz;
  v_events integer;
  v_jobs integer;
  v_kicks integer;
  v_cron integer := 0;
begin
  select now() - make_interval(days => s.retention_days) into v_cutoff from hosting_automator.settings s;
  perform set_config('hosting_automator.retention', 'on', true);
  with doomed as (
    select e.id from hosting_automator.events e
    where e.created_at < v_cutoff
      -- The last event of a site's latest job says how the site got where it is: it stays.
      and not (
        e.job_id is not null
        and e.job_id = (select max(j.id) from hosting_automator.jobs j where j.site_id = e.site_id)
        and not exists (
          select 1 from hosting_automator.events e2
          where e2.site_id = e.site_id and e2.job_id = e.job_id and e2.id > e.id)
      )
    order by e.id
    limit p_batch
  )
  delete from hosting_automator.events e using doomed where e.id = doomed.id;
  get diagnostics v_events = row_count;
  perform set_config('hosting_automator.retention', 'off', true);

  with doomed as (
    select j.id from hosting_automator.jobs j
    where j.state in ('succeeded', 'failed') and j.finished_at < v_cutoff
      and exists (select 1 from hosting_automator.jobs j2 where j2.site_id = j.site_id and j2.id > j.id)
    order by j.id
    limit p_batch
  )
  delete from hosting_automator.jobs j using doomed where j.id = doomed.id;
  get diagnostics v_jobs = row_count;

  delete from hosting_automator.kick_log k
  where k.request_id in (
    select k2.request_id from hosting_automator.kick_log k2
    where k2.sent_at < now() - interval '1 day' order by k2.sent_at limit p_batch);
  get diagnostics v_kicks = row_count;

  -- pg_cron keeps every run; only the sweep's own runs are this module's to delete.
  if to_regclass('cron.job_run_details') is not null then
    begin
      execute $sql$
        delete from cron.job_run_details d
        where d.runid in (
          select d2.runid from cron.job_run_details d2
          join cron.job c on c.jobid = d2.jobid
          where c.jobname = 'hosting-automator-sweep' and d2.end_time < $1
          order by d2.runid
          limit $2)
      $sql$ using v_cutoff, p_batch;
      get diagnostics v_cron = row_count;
    exception when others then
      raise warning 'hosting-automator: cron history not trimmed (%)', sqlstate;
    end;
  end if;
  return jsonb_build_object('events', v_events, 'jobs', v_jobs, 'kicks', v_kicks, 'cron_runs', v_cron);
end
$$;

-- The sweep: reap expired leases, ring once per free slot while jobs are due (the doorbell's rules), apply the
-- retention (a bounded batch per run).
create or replace function hosting_automator.sweep()
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reaped integer;
  v_due integer;
  v_kicks integer;
begin
  v_reaped := hosting_automator.reap_expired_leases();
  select count(*)::integer into v_due from hosting_automator.jobs j where j.state = 'queued' and j.run_at <= now();
  v_kicks := hosting_automator.ring(v_due);
  return jsonb_build_object('reaped', v_reaped, 'due', v_due, 'running', hosting_automator.slots_taken(),
    'kicks', v_kicks, 'deleted', hosting_automator.apply_retention(500));
end
$$;

-- The kicks' answers as pg_net recorded them (net._http_response, kept 6 hours): sent in the last hour, the
-- failures since the last success, and the last failure. Empty where pg_net is absent.
create function hosting_automator.kick_health()
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_health jsonb;
begin
  if to_regclass('net._http_response') is null then
    return jsonb_build_object('sent_last_hour',
      (select count(*) from hosting_automator.kick_log k where k.sent_at > now() - interval '1 hour'),
      'responses', 'pg_net is not installed');
  end if;
  execute $sql$
    with answered as (
      select r.id, r.status_code, r.timed_out, r.error_msg, r.created,
        (r.status_code between 200 and 299 and coalesce(r.timed_out, false) = false) as ok
      from net._http_response r
      join hosting_automator.kick_log k on k.request_id = r.id
    ), last_ok as (select max(a.id) as id from answered a where a.ok)
    select jsonb_build_object(
      'sent_last_hour', (select count(*) from hosting_automator.kick_log k where k.sent_at > now() - interval '1 hour'),
      'last_success_at', (select max(a.created) from answered a where a.ok),
      'failing_since_last_success', (select count(*) from answered a, last_ok l where not a.ok and a.id > coalesce(l.id, 0)),
      'last_failure', (
        select jsonb_build_object('status', a.status_code, 'timed_out', a.timed_out, 'error', left(a.error_msg, 200),
          'at', a.created)
        from answered a where not a.ok order by a.id desc limit 1))
  $sql$ into v_health;
  return v_health;
end
$$;

-- The operator's report grows the doorbell (kicks on their way, slots, and the kicks' answers: a rotated key
-- shows as failing kicks with status 401) and each missing-analytics site's backfill.
create or replace function public.hosting_status(p_limit integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'generated_at', now(),
    'sites', coalesce((
      select jsonb_object_agg(coalesce(x.status_hosting, 'null'), x.n)
      from (select s.status_hosting, count(*) as n from public.sites s group by s.status_hosting) x
    ), '{}'::jsonb),
    'jobs', coalesce((
      select jsonb_object_agg(x.state, x.n)
      from (select j.state, count(*) as n from hosting_automator.jobs j group by j.state) x
    ), '{}'::jsonb),
    'doorbell', jsonb_build_object(
      'kicks_on_the_way', (
        select count(*) from hosting_automator.rings r cross join hosting_automator.settings st
        where r.rung_at > now() - make_interval(secs => st.ring_ttl_seconds)),
      'slots_taken', hosting_automator.slots_taken(),
      'slots', (select s.server_concurrency from hosting_automator.settings s),
      'kicks', hosting_automator.kick_health()
    ),
    'queue', (
      select jsonb_build_object(
        'depth', count(*),
        'due', count(*) filter (where j.run_at <= now()),
        'oldest_age_seconds', coalesce(floor(extract(epoch from now() - min(j.created_at))), 0)
      )
      from hosting_automator.jobs j
      where j.state = 'queued'
    ),
    'running', coalesce((
      select jsonb_agg(jsonb_build_object(
        'job_id', j.id, 'site_id', j.site_id, 'domain', s.domain, 'step', j.current_step,
        'attempt', j.attempts, 'worker', j.lease_owner, 'server', j.server,
        'lease_expires_at', j.lease_expires_at) order by j.id)
      from hosting_automator.jobs j join public.sites s on s.id = j.site_id
      where j.state = 'running'
    ), '[]'::jsonb),
    'retrying', coalesce((
      select jsonb_agg(x.o order by x.run_at)
      from (
        select j.run_at, jsonb_build_object(
          'job_id', j.id, 'site_id', j.site_id, 'domain', s.domain, 'attempts', j.attempts,
          'max_attempts', j.max_attempts, 'next_run_at', j.run_at, 'code', j.last_error_code,
          'error', j.public_error) as o
        from hosting_automator.jobs j join public.sites s on s.id = j.site_id
        where j.state = 'queued' and j.attempts > 0
        order by j.run_at
        limit p_limit
      ) x
    ), '[]'::jsonb),
    'recent_failures', coalesce((
      select jsonb_agg(x.o order by x.finished_at desc)
      from (
        select j.finished_at, jsonb_build_object(
          'site_id', s.id, 'domain', s.domain, 'error_message', s.error_message, 'code', j.last_error_code,
          'failed_at', j.finished_at, 'attempts', j.attempts) as o
        from public.sites s
        join lateral (
          select j2.* from hosting_automator.jobs j2
          where j2.site_id = s.id and j2.state = 'failed'
          order by j2.id desc limit 1
        ) j on true
        where s.status_hosting = 'failed'
        order by j.finished_at desc
        limit p_limit
      ) x
    ), '[]'::jsonb),
    'missing_analytics', coalesce((
      select jsonb_agg(x.o)
      from (
        select jsonb_build_object(
          'site_id', s.id, 'domain', s.domain,
          'warning', (
            select jsonb_build_object('code', e.code, 'message', e.message, 'at', e.created_at)
            from hosting_automator.events e
            where e.site_id = s.id and e.step = 'matomo_site' and e.level in ('warn', 'error')
            order by e.id desc limit 1
          ),
          -- The automatic backfill: its state, attempts and next run (null once it gave up: retry by hand).
          'backfill', (
            select jsonb_build_object('job_id', j.id, 'state', j.state, 'attempts', j.attempts,
              'max_attempts', j.max_attempts, 'next_run_at', case when j.state = 'queued' then j.run_at end)
            from hosting_automator.jobs j
            where j.site_id = s.id and j.kind = 'analytics'
            order by j.id desc limit 1
          )) as o
        from public.sites s
        where s.status_hosting = 'active' and s.matomo_site_id is null
        order by s.id
        limit p_limit
      ) x
    ), '[]'::jsonb)
  )
$$;


revoke all on function public.hosting_status(integer) from public, anon, authenticated;
grant execute on function public.hosting_status(integer) to service_role;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
