-- The functions the Edge Function calls: `security definer`, `set search_path = ''`, executable by
-- service_role only. They live in `public` so that PostgREST's RPC endpoint (supabase-js `rpc`) reaches them;
-- the tables they use stay in the private schema.
--
-- Every change a worker makes to a job is one guarded UPDATE: it applies only while the caller holds the
-- job's current lease (token and expiry), so a worker whose lease expired and was taken over cannot
-- overwrite the new owner's work.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- Claim due jobs for a worker, with a lease, respecting the per-server cap.
create function public.hosting_claim_jobs(
  p_worker text,
  p_server text,
  p_lease_seconds integer,
  p_limit integer default 1,
  p_site_id uuid default null
)
returns table (
  job_id bigint,
  lease_token uuid,
  site_id uuid,
  domain text,
  attempt integer,
  max_attempts integer,
  lease_expires_at timestamptz,
  steps jsonb
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cap integer;
  v_running integer;
  v_take integer;
begin
  if p_worker is null or length(p_worker) not between 1 and 200 then
    raise exception 'p_worker must be 1 to 200 characters' using errcode = '22023';
  end if;
  if p_server is null or length(p_server) not between 1 and 255 then
    raise exception 'p_server must be 1 to 255 characters' using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception 'p_lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  if p_limit is null or p_limit not between 1 and 100 then
    raise exception 'p_limit must be from 1 to 100' using errcode = '22023';
  end if;

  perform hosting_automator.reap_expired_leases();

  -- Claims for one server run one at a time, so concurrent claimers cannot both see a free slot.
  perform pg_advisory_xact_lock(hashtextextended('hosting_automator.claim:' || p_server, 0));
  select s.server_concurrency into v_cap from hosting_automator.settings s;
  select count(*) into v_running
  from hosting_automator.jobs j
  where j.state = 'running' and j.server = p_server;
  v_take := least(p_limit, v_cap - v_running);
  if v_take <= 0 then
    return;
  end if;

  return query
  with picked as (
    select j.id
    from hosting_automator.jobs j
    where j.state = 'queued' and j.run_at <= now() and (p_site_id is null or j.site_id = p_site_id)
    order by j.run_at, j.id
    for update skip locked
    limit v_take
  ), claimed as (
    update hosting_automator.jobs j set
      state = 'running',
      attempts = j.attempts + 1,
      lease_owner = p_worker,
      lease_token = gen_random_uuid(),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      server = p_server,
      current_step = null,
      started_at = coalesce(j.started_at, now()),
      updated_at = now()
    from picked
    where j.id = picked.id
    returning j.*
  ), marked as (
    -- An active site re-queued only for analytics stays active.
    update public.sites s set status_hosting = 'provisioning'
    from claimed c
    where s.id = c.site_id and s.status_hosting is distinct from 'active'
    returning s.id
  ), logged as (
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    select c.site_id, c.id, 'info', 'job_claimed',
      format('Attempt %s of %s started by worker %s.', c.attempts, c.max_attempts, p_worker)
    from claimed c
    returning 1
  )
  select c.id, c.lease_token, c.site_id, s.domain, c.attempts, c.max_attempts, c.lease_expires_at,
    coalesce((
      select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
      from hosting_automator.steps st
      where st.site_id = c.site_id
    ), '{}'::jsonb)
  from claimed c
  join public.sites s on s.id = c.site_id;
end
$$;

-- Renew the lease before a step (and say which step runs). False when the lease is lost.
create function public.hosting_heartbeat(
  p_job_id bigint,
  p_lease_token uuid,
  p_lease_seconds integer,
  p_step text default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception 'p_lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  update hosting_automator.jobs j set
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    current_step = coalesce(p_step::hosting_automator.step_name, j.current_step),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now();
  return found;
end
$$;

-- Journal a step (started, done, failed or skipped), with an optional event. False when the lease is lost.
-- A step that is done stays done.
create function public.hosting_record_step(
  p_job_id bigint,
  p_lease_token uuid,
  p_step text,
  p_state text,
  p_result jsonb default '{}'::jsonb,
  p_code text default null,
  p_message text default null,
  p_level text default 'info'
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
  v_step hosting_automator.step_name := p_step::hosting_automator.step_name;
  v_state hosting_automator.step_state := p_state::hosting_automator.step_state;
begin
  if p_result is null or jsonb_typeof(p_result) <> 'object' then
    raise exception 'p_result must be a JSON object' using errcode = '22023';
  end if;
  update hosting_automator.jobs j set current_step = v_step, updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.site_id into v_site;
  if not found then
    return false;
  end if;

  insert into hosting_automator.steps as st (site_id, step, state, result, attempts, last_error_code, last_job_id)
  values (v_site, v_step, v_state, p_result, case when v_state = 'started' then 1 else 0 end, p_code, p_job_id)
  on conflict (site_id, step) do update set
    state = excluded.state,
    result = excluded.result,
    attempts = st.attempts + excluded.attempts,
    last_error_code = excluded.last_error_code,
    last_job_id = excluded.last_job_id,
    updated_at = now()
  where st.state <> 'done';

  if p_message is not null then
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    values (v_site, p_job_id, p_step, p_level::hosting_automator.event_level, p_code, left(p_message, 2000));
  end if;
  return true;
end
$$;

-- Finish a job: the job succeeds and the site becomes active with its doc root and Matomo id, in one
-- transaction. A null Matomo id keeps any id the site already has. False when the lease is lost.
create function public.hosting_complete_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_doc_root text,
  p_matomo_site_id integer default null,
  p_message text default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
begin
  if p_doc_root is null or p_doc_root !~ '^/home/[a-z][a-z0-9-]{0,31}/htdocs/[a-z0-9.-]{1,253}$' then
    raise exception 'p_doc_root must look like /home/<site user>/htdocs/<domain>' using errcode = '22023';
  end if;
  if p_matomo_site_id is not null and p_matomo_site_id < 1 then
    raise exception 'p_matomo_site_id must be positive' using errcode = '22023';
  end if;

  update hosting_automator.jobs j set
    state = 'succeeded',
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    finished_at = now(),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.site_id into v_site;
  if not found then
    return false;
  end if;

  update public.sites s set
    status_hosting = 'active',
    hosting_doc_root = p_doc_root,
    matomo_site_id = coalesce(p_matomo_site_id, s.matomo_site_id),
    error_message = null
  where s.id = v_site;

  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'job_succeeded', left(coalesce(p_message, 'Site is active.'), 2000));
  return true;
end
$$;

-- Fail an attempt. Transient and attempts left: back to queued, next run time from the backoff.
-- Permanent or out of attempts: the job fails and the site gets status `failed` with the public message only.
-- Returns {"state": "queued", "run_at": …} or {"state": "failed"}, or null when the lease is lost.
create function public.hosting_fail_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_code text,
  p_public_message text,
  p_internal_message text default null,
  p_permanent boolean default false
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
begin
  if p_code is null or p_code !~ '^[a-z][a-z0-9_]{0,63}$' then
    raise exception 'p_code must be a lower-case error code' using errcode = '22023';
  end if;
  if p_public_message is null or length(p_public_message) not between 1 and 500 then
    raise exception 'p_public_message must be 1 to 500 characters' using errcode = '22023';
  end if;

  update hosting_automator.jobs j set
    state = (case when p_permanent or j.attempts >= j.max_attempts then 'failed' else 'queued' end)
      ::hosting_automator.job_state,
    run_at = case when p_permanent or j.attempts >= j.max_attempts
      then j.run_at else now() + hosting_automator.retry_delay(j.attempts) end,
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    last_error_code = p_code,
    last_error = left(p_internal_message, 4000),
    public_error = p_public_message,
    finished_at = case when p_permanent or j.attempts >= j.max_attempts then now() end,
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.id, j.site_id, j.state, j.run_at, j.attempts, j.max_attempts, j.current_step into v_job;
  if not found then
    return null;
  end if;

  if v_job.state = 'failed' then
    -- A live site re-queued only for analytics is not taken down by a failed retry.
    update public.sites s set status_hosting = 'failed', error_message = p_public_message
    where s.id = v_job.site_id and s.status_hosting is distinct from 'active';
  end if;

  insert into hosting_automator.events (site_id, job_id, step, level, code, message)
  values (
    v_job.site_id, v_job.id, v_job.current_step::text,
    (case when v_job.state = 'failed' then 'error' else 'warn' end)::hosting_automator.event_level,
    p_code,
    left(
      -- The public text here; the step's own event carries the (redacted) detail.
      case when v_job.state = 'failed'
        then format('Attempt %s of %s failed; the job failed: %s', v_job.attempts, v_job.max_attempts,
          p_public_message)
        else format('Attempt %s of %s failed; retry at %s: %s', v_job.attempts, v_job.max_attempts,
          to_char(v_job.run_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), p_public_message)
      end,
      2000)
  );

  return case when v_job.state = 'failed'
    then jsonb_build_object('state', 'failed', 'attempts', v_job.attempts)
    else jsonb_build_object('state', 'queued', 'run_at', v_job.run_at, 'attempts', v_job.attempts)
  end;
end
$$;

-- Give a job back unfinished without spending an attempt (the invocation ran out of time before a step).
create function public.hosting_release_job(p_job_id bigint, p_lease_token uuid, p_reason text default null)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
begin
  update hosting_automator.jobs j set
    state = 'queued',
    attempts = greatest(j.attempts - 1, 0),
    run_at = now(),
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.site_id into v_site;
  if not found then
    return false;
  end if;
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'job_released',
    left(coalesce(p_reason, 'The worker ran out of time; the job is queued to continue.'), 2000));
  return true;
end
$$;

-- Queue a site's job if it is due and has none (the `{"site_id": …}` request). Tells why when it does not.
create function public.hosting_enqueue(p_site_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site record;
  v_job record;
begin
  select s.id, s.status_dns, s.status_hosting into v_site from public.sites s where s.id = p_site_id;
  if not found then
    return jsonb_build_object('found', false);
  end if;
  select j.id, j.state into v_job
  from hosting_automator.jobs j
  where j.site_id = p_site_id and j.state in ('queued', 'running');
  if found then
    return jsonb_build_object('found', true, 'queued', false, 'job_id', v_job.id, 'job_state', v_job.state);
  end if;
  if v_site.status_dns = 'active' and v_site.status_hosting = 'pending' then
    select * into v_job from hosting_automator.queue_job(p_site_id);
    return jsonb_build_object('found', true, 'queued', v_job.created, 'job_id', v_job.job_id, 'job_state', 'queued');
  end if;
  return jsonb_build_object('found', true, 'queued', false, 'reason', 'not_due',
    'status_dns', v_site.status_dns, 'status_hosting', v_site.status_hosting);
end
$$;

-- Re-queue failed sites, and active sites missing analytics: one site, or all of them.
create function public.hosting_retry(p_site_id uuid default null, p_all_failed boolean default false)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site record;
  v_job record;
  v_requeued jsonb := '[]'::jsonb;
  v_skipped jsonb := '[]'::jsonb;
begin
  if (p_site_id is null) = (coalesce(p_all_failed, false) = false) then
    raise exception 'give either p_site_id or p_all_failed = true' using errcode = '22023';
  end if;
  for v_site in
    select s.id, s.domain, s.status_dns, s.status_hosting, s.matomo_site_id
    from public.sites s
    where (p_site_id is null or s.id = p_site_id)
      and (p_site_id is not null or s.status_hosting = 'failed'
        or (s.status_hosting = 'active' and s.matomo_site_id is null))
    order by s.id
    for update
  loop
    if v_site.status_hosting = 'failed' then
      -- Back to pending: the row trigger queues the job (when DNS is active) and kicks the function.
      update public.sites s set status_hosting = 'pending', error_message = null where s.id = v_site.id;
      insert into hosting_automator.events (site_id, level, code, message)
      values (v_site.id, 'info', 'retry_requested', 'An operator asked to retry this failed site.');
      v_requeued := v_requeued || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'reason', case when v_site.status_dns = 'active' then 'failed' else 'failed_waiting_for_dns' end);
    elsif v_site.status_hosting = 'active' and v_site.matomo_site_id is null then
      select * into v_job from hosting_automator.queue_job(v_site.id);
      if v_job.created then
        perform hosting_automator.kick(jsonb_build_object('site_id', v_site.id));
      end if;
      v_requeued := v_requeued || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'reason', 'missing_analytics');
    else
      v_skipped := v_skipped || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'status_hosting', v_site.status_hosting);
    end if;
  end loop;
  if p_site_id is not null and jsonb_array_length(v_requeued) + jsonb_array_length(v_skipped) = 0 then
    return jsonb_build_object('found', false, 'requeued', v_requeued, 'skipped', v_skipped);
  end if;
  return jsonb_build_object('found', true, 'requeued', v_requeued, 'skipped', v_skipped);
end
$$;

-- Append an event (warnings from a step that did not fail the job). Messages must already be redacted.
create function public.hosting_log_event(
  p_site_id uuid,
  p_job_id bigint,
  p_step text,
  p_level text,
  p_code text,
  p_message text
)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into hosting_automator.events (site_id, job_id, step, level, code, message)
  values (p_site_id, p_job_id, p_step, p_level::hosting_automator.event_level, p_code, left(p_message, 2000))
$$;

-- The operator's view: counts by state, queue depth and age, running leases, recent failures with their
-- public error, retries waiting, and active sites without analytics (with the last analytics warning).
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
          )) as o
        from public.sites s
        where s.status_hosting = 'active' and s.matomo_site_id is null
        order by s.id
        limit p_limit
      ) x
    ), '[]'::jsonb)
  )
$$;

-- Only service_role, the Edge Function's role, may call these. Named one by one, with their signatures: the
-- Hub may have functions of its own whose names start with `hosting_`, and their grants are not ours to change.
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid)',
    'public.hosting_heartbeat(bigint, uuid, integer, text)',
    'public.hosting_record_step(bigint, uuid, text, text, jsonb, text, text, text)',
    'public.hosting_complete_job(bigint, uuid, text, integer, text)',
    'public.hosting_fail_job(bigint, uuid, text, text, text, boolean)',
    'public.hosting_release_job(bigint, uuid, text)',
    'public.hosting_enqueue(uuid)',
    'public.hosting_retry(uuid, boolean)',
    'public.hosting_log_event(uuid, bigint, text, text, text, text)',
    'public.hosting_status(integer)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
