-- The exit of a running job (docs/architecture.md §4, §9): each ends the worker's lease in one call, under the
-- lease guard (lock_leased_job), ending the job's last step (p_done) in the same transaction. A lost lease
-- changes nothing and answers false or null.

-- Finish a build job: the job succeeds and the site becomes active with its doc root, its Matomo id (a null keeps
-- the row's) and the expiry of the certificate it was seen to serve (a null keeps the row's: an analytics job does
-- not look at the certificate), unless the row is in removal (a removal queued behind this job undoes it next).
-- With p_backfill_analytics and no Matomo id, an `analytics` job is queued (after the first backoff) to add the
-- Matomo site later; none for a job a removal superseded. False when the lease is lost.
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
declare
  v_job record;
  v_backfill bigint;
begin
  if p_doc_root is null or p_doc_root !~ '^/home/[a-z][a-z0-9-]{0,31}/htdocs/[a-z0-9.-]{1,253}$' then
    raise exception 'p_doc_root must look like /home/<site user>/htdocs/<domain>' using errcode = '22023';
  end if;
  if p_matomo_site_id is not null and p_matomo_site_id < 1 then
    raise exception 'p_matomo_site_id must be positive' using errcode = '22023';
  end if;

  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token) j where j.kind <> 'remove';
  if not found then
    return false;
  end if;
  update hosting_automator.jobs j set
    state = 'succeeded',
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    error_streak = 0,
    finished_at = now(),
    updated_at = now()
  where j.id = p_job_id
  returning j.id, j.site_id into v_job;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, p_job_id, p_done);
  end if;

  update public.sites s set
    status_hosting = 'active',
    hosting_doc_root = p_doc_root,
    matomo_site_id = coalesce(p_matomo_site_id, s.matomo_site_id),
    certificate_expires_at = coalesce(p_certificate_expires_at, s.certificate_expires_at),
    error_message = null
  where s.id = v_job.site_id and not hosting_automator.row_in_removal(s.status_hosting);

  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_job.site_id, p_job_id, 'info', 'job_succeeded', left(coalesce(p_message, 'Site is active.'), 2000));

  if p_backfill_analytics and p_matomo_site_id is null
    and not hosting_automator.superseded(p_job_id, v_job.site_id) then
    insert into hosting_automator.jobs (site_id, kind, max_attempts, run_at)
    select v_job.site_id, 'analytics', s.analytics_max_attempts, now() + hosting_automator.retry_delay(1)
    from hosting_automator.settings s
    on conflict (site_id) where state in ('queued', 'running') and kind <> 'remove' do nothing
    returning id into v_backfill;
    if v_backfill is not null then
      insert into hosting_automator.events (site_id, job_id, level, code, message)
      values (v_job.site_id, v_backfill, 'info', 'analytics_backfill_queued',
        'The site is active without analytics; the Matomo step is retried automatically.');
    end if;
  end if;
  return true;
end
$$;

-- Finish a removal: the site's journal, domain ownership, placement and stored credentials are deleted
-- (provisioning again starts from nothing), and a kept row becomes 'removed' without its doc root, Matomo id and
-- server. False when the lease is lost.
create function public.hosting_complete_removal(
  p_job_id bigint,
  p_lease_token uuid,
  p_message text default null,
  p_done jsonb default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
begin
  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token) j where j.kind = 'remove';
  if not found then
    return false;
  end if;
  update hosting_automator.jobs j set
    state = 'succeeded',
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    error_streak = 0,
    finished_at = now(),
    updated_at = now()
  where j.id = p_job_id
  returning j.site_id into v_site;
  if p_done is not null then
    -- For the events they carry; the journal itself goes next.
    perform hosting_automator.journal_ends(v_site, p_job_id, p_done);
  end if;
  delete from hosting_automator.steps st where st.site_id = v_site;
  delete from hosting_automator.domain_owners o where o.site_id = v_site;
  delete from hosting_automator.placements p where p.site_id = v_site;
  perform hosting_automator.forget_credentials(v_site);
  -- Only a row still waiting for this removal: one set back to 'pending' meanwhile is provisioned next.
  update public.sites s set status_hosting = 'removed', hosting_doc_root = null, matomo_site_id = null,
    hosting_server = null, error_message = null
  where s.id = v_site and s.status_hosting = 'removing';
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'site_removed', left(coalesce(p_message, 'Site removed.'), 2000));
  return true;
end
$$;

-- Fail an attempt. Transient with attempts left: back to queued, next run time from the backoff. Permanent, out
-- of attempts, or the same code p_attempt_limit times in a row: the job fails. A build job's final failure marks
-- the row `failed` with the public message only, unless it is active (a live site whose analytics job failed is
-- not taken down) or in removal; a removal's final failure leaves its row 'removing' with the message (a retry
-- queues it again). Returns {"state": "queued", "run_at", "attempts"} or {"state": "failed", "attempts"}, or null
-- when the lease is lost.
create function public.hosting_fail_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_code text,
  p_public_message text,
  p_internal_message text default null,
  p_permanent boolean default false,
  p_attempt_limit integer default null,
  p_done jsonb default null
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
  if p_attempt_limit is not null and p_attempt_limit < 1 then
    raise exception 'p_attempt_limit must be positive' using errcode = '22023';
  end if;

  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token);
  if not found then
    return null;
  end if;
  update hosting_automator.jobs j set
    state = (case when d.final then 'failed' else 'queued' end)::hosting_automator.job_state,
    run_at = case when d.final then j.run_at else now() + hosting_automator.retry_delay(j.attempts) end,
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    last_error_code = p_code,
    last_error = left(p_internal_message, 4000),
    public_error = p_public_message,
    error_streak = d.streak,
    finished_at = case when d.final then now() end,
    updated_at = now()
  from (
    select j2.id,
      case when j2.last_error_code = p_code then j2.error_streak + 1 else 1 end as streak,
      p_permanent or j2.attempts >= j2.max_attempts
        or (p_attempt_limit is not null
          and (case when j2.last_error_code = p_code then j2.error_streak + 1 else 1 end) >= p_attempt_limit)
        as final
    from hosting_automator.jobs j2
    where j2.id = p_job_id
  ) d
  where j.id = d.id
  returning j.id, j.site_id, j.state, j.run_at, j.attempts, j.max_attempts, j.current_step, j.kind into v_job;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, v_job.id, p_done);
  end if;

  if v_job.state = 'failed' and v_job.kind = 'remove' then
    update public.sites s set error_message = left('Removal failed: ' || p_public_message, 500)
    where s.id = v_job.site_id and s.status_hosting = 'removing';
  elsif v_job.state = 'failed' then
    -- A live site whose analytics job failed is not taken down.
    update public.sites s set status_hosting = 'failed', error_message = p_public_message
    where s.id = v_job.site_id and s.status_hosting is distinct from 'active'
      and not hosting_automator.row_in_removal(s.status_hosting);
  end if;

  insert into hosting_automator.events (site_id, job_id, step, level, code, message)
  values (
    v_job.site_id, v_job.id, v_job.current_step::text,
    (case when v_job.state = 'failed' then 'error' else 'warn' end)::hosting_automator.event_level,
    p_code,
    left(
      -- The public text here; the step's own event carries the (redacted) detail.
      case when v_job.state = 'failed'
        then format('Attempt %s of %s failed; the %s job failed: %s', v_job.attempts, v_job.max_attempts,
          v_job.kind, p_public_message)
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

-- Give a job back unfinished without spending an attempt (the worker's time ran out, or it is shutting down),
-- and ring for the slot it frees. False when the lease is lost.
create function public.hosting_release_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_reason text default null,
  p_done jsonb default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
begin
  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token);
  if not found then
    return false;
  end if;
  update hosting_automator.jobs j set
    state = 'queued',
    attempts = greatest(j.attempts - 1, 0),
    run_at = now(),
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    updated_at = now()
  where j.id = p_job_id
  returning j.site_id into v_site;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_site, p_job_id, p_done);
  end if;
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'job_released',
    left(coalesce(p_reason, 'The worker ran out of time; the job is queued to continue.'), 2000));
  perform hosting_automator.ring(1);
  return true;
end
$$;

-- DNS does not point at the server yet (`dns_not_ready`): the job is queued again without spending its attempt,
-- after the DNS backoff (dns_backoff_seconds doubling per wait in a row, up to dns_backoff_max_seconds); once the
-- site has waited dns_wait_hours since its first DNS check, the job fails instead. Answers as hosting_fail_job
-- does ({"state": "queued", "run_at", "attempts"} or {"state": "failed", …}), null when the lease is lost.
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
begin
  if p_public_message is null or length(p_public_message) not between 1 and 500 then
    raise exception 'p_public_message must be 1 to 500 characters' using errcode = '22023';
  end if;
  select * into v_settings from hosting_automator.settings;
  select j.id, j.site_id, j.last_error_code, j.error_streak into v_job
  from hosting_automator.lock_leased_job(p_job_id, p_lease_token) j;
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
  update hosting_automator.jobs j set
    state = 'queued',
    attempts = greatest(j.attempts - 1, 0),
    run_at = now() + hosting_automator.backoff(v_streak, v_settings.dns_backoff_seconds,
      v_settings.dns_backoff_max_seconds),
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

-- A server could not be reached (refused, timed out, its host key did not match, the key was refused): its
-- circuit opens with the queue's backoff over its failures in a row, and the job is given back without spending
-- an attempt, due when the circuit closes. The server's other jobs wait as well; the other servers go on.
-- False when the lease is lost.
create function public.hosting_server_trouble(
  p_job_id bigint,
  p_lease_token uuid,
  p_code text,
  p_message text,
  p_done jsonb default null
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
  v_until timestamptz;
begin
  if p_code is null or p_code !~ '^[a-z][a-z0-9_]{0,63}$' then
    raise exception 'p_code must be a lower-case error code' using errcode = '22023';
  end if;
  select j.id, j.site_id, j.server into v_job from hosting_automator.lock_leased_job(p_job_id, p_lease_token) j;
  if not found then
    return false;
  end if;
  -- Failures seen while the circuit is already open (other jobs that met the same outage) count once.
  update hosting_automator.servers s set
    failures = case when s.open_until > now() then s.failures else s.failures + 1 end,
    open_until = case when s.open_until > now() then s.open_until
      else now() + hosting_automator.retry_delay(s.failures + 1) end,
    last_error_code = p_code,
    last_error = left(coalesce(p_message, p_code), 500),
    last_error_at = now(),
    updated_at = now()
  where s.name = v_job.server
  returning s.open_until into v_until;
  update hosting_automator.jobs j set
    state = 'queued',
    attempts = greatest(j.attempts - 1, 0),
    run_at = coalesce(v_until, now() + hosting_automator.retry_delay(1)),
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    last_error_code = p_code,
    public_error = left(coalesce(p_message, p_code), 500),
    updated_at = now()
  where j.id = p_job_id;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, p_job_id, p_done);
  end if;
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_job.site_id, p_job_id, 'warn', p_code,
    left(format('CloudPanel server %s: %s Its jobs wait until %s.', v_job.server, coalesce(p_message, p_code),
      to_char(v_until at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')), 2000));
  return true;
end
$$;
