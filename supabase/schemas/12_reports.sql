-- What operators read (`GET /status`, the CLI's --site and --dry-run): read-only, service_role only.

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

-- What the database needs to start jobs by itself, as booleans: a kick needs pg_net and both Vault secrets, and
-- the sweep (retries, expired leases, a lost kick) needs pg_cron as well. Secrets are looked up by name only:
-- nothing is decrypted. `sweep_scheduled` is null when the schedule cannot be read.
create function hosting_automator.setup_report()
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_vault boolean := hosting_automator.vault_present();
  v_url boolean := false;
  v_key boolean := false;
  v_cron boolean := exists (select 1 from pg_extension e where e.extname = 'pg_cron');
  v_schedule text;
  v_sweep boolean := false;
begin
  if v_vault then
    -- Dynamic SQL: Vault may not exist where this function is created.
    execute $sql$
      select coalesce(bool_or(s.name = 'hosting_automator_url'), false),
        coalesce(bool_or(s.name = 'hosting_automator_key'), false)
      from vault.secrets s
      where s.name in ('hosting_automator_url', 'hosting_automator_key')
    $sql$ into v_url, v_key;
  end if;
  if v_cron and to_regclass('cron.job') is not null then
    begin
      execute $sql$
        select j.schedule from cron.job j where j.jobname = 'hosting-automator-sweep' and j.active limit 1
      $sql$ into v_schedule;
      v_sweep := v_schedule is not null;
    exception when insufficient_privilege then
      v_sweep := null;
    end;
  end if;
  return jsonb_build_object(
    'vault', v_vault,
    'vault_url', v_url,
    'vault_key', v_key,
    'pg_net', to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null,
    'pg_cron', v_cron,
    'sweep_scheduled', v_sweep,
    'sweep_schedule', v_schedule);
end
$$;

-- Queued jobs that wait for a server rather than for their own turn: their server is disabled, could not be
-- reached (waiting_for = 'server', by the code the worker gave back with), or no active server has room
-- (waiting_for = 'capacity': no_server_capacity). `sites` counts their sites by status_hosting, which says
-- `provisioning` for a site whose job waits.
create function hosting_automator.waiting_for_server()
returns jsonb
language sql
stable
set search_path = ''
as $$
  with waiting as (
    select j.site_id, s.status_hosting,
      case
        when sv.state = 'disabled' then 'server_disabled'
        when j.waiting_for = 'server' then coalesce(j.last_error_code, 'server_unreachable')
        when j.waiting_for = 'capacity' then 'no_server_capacity'
      end as reason
    from hosting_automator.jobs j
    left join hosting_automator.placements pl on pl.site_id = j.site_id
    left join hosting_automator.servers sv on sv.name = pl.server
    left join public.sites s on s.id = j.site_id
    where j.state = 'queued'
  )
  select jsonb_build_object(
    'jobs', (select count(*) from waiting w where w.reason is not null),
    'by_reason', coalesce((
      select jsonb_object_agg(x.reason, x.n)
      from (select w.reason, count(*) as n from waiting w where w.reason is not null group by w.reason) x
    ), '{}'::jsonb),
    'sites', coalesce((
      select jsonb_object_agg(x.status, x.n)
      from (
        select coalesce(w.status_hosting, 'null') as status, count(distinct w.site_id) as n
        from waiting w where w.reason is not null and w.site_id is not null
        group by coalesce(w.status_hosting, 'null')
      ) x
    ), '{}'::jsonb))
$$;

-- The operator's report, one section per key: counts of sites and jobs by state; the doorbell (kicks on their
-- way, the fleet's slots, and the kicks' answers: a rotated key shows as failing kicks with status 401); each
-- server; the queue and the jobs waiting for room or for DNS; running and retrying jobs (a removal's domain comes
-- from the job, its row may be gone); recent failures; removals; active sites without analytics, with their
-- backfill; the certificates that expire soonest; whether the database starts jobs by itself (setup); and the
-- jobs that wait for a server.
create function public.hosting_status(p_limit integer default 20)
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
      'slots', hosting_automator.slots(),
      'kicks', hosting_automator.kick_health()
    ),
    -- Every server: its state, placed sites against capacity, running jobs, failures of the last day, circuit.
    'servers', coalesce((
      select jsonb_agg(jsonb_build_object(
        'name', sv.name, 'host', sv.host, 'port', sv.port, 'state', sv.state,
        'placed', (select count(*) from hosting_automator.placements p where p.server = sv.name),
        'capacity', sv.capacity,
        'running', (select count(*) from hosting_automator.jobs j where j.state = 'running' and j.server = sv.name),
        'concurrency', sv.concurrency,
        -- Jobs given back because this server could not be reached, waiting for its circuit to close.
        'waiting', (select count(*) from hosting_automator.jobs j where j.state = 'queued' and j.server = sv.name
          and j.waiting_for = 'server'),
        'failed_last_day', (
          select count(*) from hosting_automator.jobs j
          where j.server = sv.name and j.state = 'failed' and j.finished_at > now() - interval '1 day'),
        'circuit', jsonb_build_object(
          'state', case when sv.open_until > now() then 'open' when sv.failures > 0 then 'half_open' else 'closed' end,
          'failures', sv.failures, 'open_until', sv.open_until, 'last_error_code', sv.last_error_code,
          'last_error', sv.last_error, 'last_error_at', sv.last_error_at)
      ) order by sv.name)
      from hosting_automator.servers sv
    ), '[]'::jsonb),
    'queue', (
      select jsonb_build_object(
        'depth', count(*),
        'due', count(*) filter (where j.run_at <= now()),
        'oldest_age_seconds', coalesce(floor(extract(epoch from now() - min(j.created_at))), 0)
      )
      from hosting_automator.jobs j
      where j.state = 'queued'
    ),
    'waiting_for_capacity', (
      select count(*) from hosting_automator.jobs j where j.state = 'queued' and j.waiting_for = 'capacity'),
    -- Sites whose job waits on the DNS schedule: how many checks, since the waiting step was first journaled.
    'waiting_for_dns', coalesce((
      select jsonb_agg(x.o order by x.run_at)
      from (
        select j.run_at, jsonb_build_object('site_id', j.site_id, 'domain', s.domain, 'checks', j.error_streak,
          'since', (select st.created_at from hosting_automator.steps st
            where st.site_id = j.site_id and st.step = j.current_step),
          'next_check_at', j.run_at, 'error', j.public_error) as o
        from hosting_automator.jobs j join public.sites s on s.id = j.site_id
        where j.state = 'queued' and j.waiting_for = 'dns'
        order by j.run_at
        limit p_limit
      ) x
    ), '[]'::jsonb),
    'running', coalesce((
      select jsonb_agg(jsonb_build_object(
        'job_id', j.id, 'kind', j.kind, 'site_id', j.site_id, 'domain', coalesce(j.domain, s.domain),
        'step', j.current_step,
        'attempt', j.attempts, 'worker', j.lease_owner, 'server', j.server,
        'lease_expires_at', j.lease_expires_at) order by j.id)
      from hosting_automator.jobs j left join public.sites s on s.id = j.site_id
      where j.state = 'running'
    ), '[]'::jsonb),
    'retrying', coalesce((
      select jsonb_agg(x.o order by x.run_at)
      from (
        select j.run_at, jsonb_build_object(
          'job_id', j.id, 'kind', j.kind, 'site_id', j.site_id, 'domain', coalesce(j.domain, s.domain),
          'attempts', j.attempts,
          'max_attempts', j.max_attempts, 'next_run_at', j.run_at, 'code', j.last_error_code,
          'error', j.public_error) as o
        from hosting_automator.jobs j left join public.sites s on s.id = j.site_id
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
    -- Removals: open ones, and failed ones waiting for an operator (of kept rows and of deleted rows).
    'removals', jsonb_build_object(
      'queued', (select count(*) from hosting_automator.jobs j where j.kind = 'remove' and j.state = 'queued'),
      'running', (select count(*) from hosting_automator.jobs j where j.kind = 'remove' and j.state = 'running'),
      'removed_last_day', (
        select count(*) from hosting_automator.jobs j
        where j.kind = 'remove' and j.state = 'succeeded' and j.finished_at > now() - interval '1 day'),
      'failed', coalesce((
        select jsonb_agg(x.o order by x.finished_at desc)
        from (
          select j.finished_at, jsonb_build_object(
            'job_id', j.id, 'site_id', j.site_id, 'domain', j.domain, 'row', case when s.id is null then 'deleted'
              else 'kept' end, 'code', j.last_error_code, 'error', j.public_error, 'failed_at', j.finished_at,
            'attempts', j.attempts) as o
          from hosting_automator.jobs j
          left join public.sites s on s.id = j.site_id
          where j.kind = 'remove' and j.state = 'failed'
            and j.id = (select max(j2.id) from hosting_automator.jobs j2 where j2.site_id = j.site_id)
          order by j.finished_at desc
          limit p_limit
        ) x
      ), '[]'::jsonb)
    ),
    'missing_analytics', coalesce((
      select jsonb_agg(x.o)
      from (
        select jsonb_build_object(
          'site_id', s.id, 'domain', s.domain,
          -- An active site has done its required steps; the warning is the last one of a step it has not done.
          'warning', (
            select jsonb_build_object('code', e.code, 'message', e.message, 'at', e.created_at)
            from hosting_automator.events e
            join hosting_automator.steps st on st.site_id = e.site_id and st.step::text = e.step and st.state <> 'done'
            where e.site_id = s.id and e.level in ('warn', 'error')
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
      ), '[]'::jsonb)),
    'setup', hosting_automator.setup_report(),
    'waiting_for_server', hosting_automator.waiting_for_server()
  )
$$;

-- One site by id or by domain: the row, its latest job (with its kind), its step journal and its latest events.
create function public.hosting_site(p_key text, p_events integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  with site as (
    select s.* from public.sites s
    -- CASE, not AND: Postgres may evaluate AND's operands in any order, and the cast fails on a domain.
    where s.id = case when p_key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then p_key::uuid end
       or s.domain = p_key
    order by s.id
    limit 1
  )
  select case when not exists (select 1 from site) then jsonb_build_object('found', false) else (
    select jsonb_build_object(
      'found', true,
      'site', jsonb_build_object(
        'id', s.id, 'domain', s.domain, 'status_dns', s.status_dns, 'status_hosting', s.status_hosting,
        'hosting_doc_root', s.hosting_doc_root, 'matomo_site_id', s.matomo_site_id, 'error_message', s.error_message),
      'job', (
        select jsonb_build_object(
          'job_id', j.id, 'kind', j.kind, 'state', j.state, 'attempts', j.attempts, 'max_attempts', j.max_attempts,
          'run_at', j.run_at, 'current_step', j.current_step, 'worker', j.lease_owner,
          'lease_expires_at', j.lease_expires_at, 'last_error_code', j.last_error_code, 'error', j.public_error)
        from hosting_automator.jobs j where j.site_id = s.id order by j.id desc limit 1),
      'steps', coalesce((
        select jsonb_object_agg(st.step, jsonb_build_object(
          'state', st.state, 'attempts', st.attempts, 'result', st.result, 'code', st.last_error_code,
          'updated_at', st.updated_at))
        from hosting_automator.steps st where st.site_id = s.id), '{}'::jsonb),
      'events', coalesce((
        select jsonb_agg(e.o order by e.id)
        from (
          select ev.id, jsonb_build_object('at', ev.created_at, 'level', ev.level, 'step', ev.step,
            'code', ev.code, 'message', ev.message) as o
          from hosting_automator.events ev where ev.site_id = s.id order by ev.id desc limit greatest(p_events, 0)
        ) e), '[]'::jsonb))
    from site s)
  end
$$;

-- Jobs due now, oldest first, with their kind and the journal a worker would resume from; removals of deleted
-- rows included (their domain comes from the job).
create function public.hosting_due(p_limit integer default 100)
returns table (job_id bigint, site_id uuid, domain text, kind text, attempts integer, run_at timestamptz, steps jsonb)
language sql
stable
security definer
set search_path = ''
as $$
  select j.id, j.site_id, case when j.kind = 'remove' then j.domain else s.domain end, j.kind, j.attempts, j.run_at,
    coalesce((
      select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
      from hosting_automator.steps st where st.site_id = j.site_id), '{}'::jsonb)
  from hosting_automator.jobs j
  left join public.sites s on s.id = j.site_id
  where j.state = 'queued' and j.run_at <= now()
  order by j.run_at, j.id
  limit least(greatest(p_limit, 1), 1000)
$$;
