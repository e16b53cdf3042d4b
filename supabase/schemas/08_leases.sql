-- Leases (docs/architecture.md §5): a running job belongs to the worker holding its current lease. The lease is
-- renewed at every step boundary and while a step runs; a lease that expired is reaped, and its job is queued
-- again (or failed, when its attempts are used up).

-- The lease guard, the one rule every change a worker makes to its job goes through: the job's row, locked, while
-- the caller holds the job's current lease (its token, the job running, the lease not expired). No row: the
-- lease is lost, and the caller changes nothing, so a worker whose lease expired, even before anyone took the job
-- over, can never overwrite the work of the job's next owner. The lock holds until the caller's transaction ends:
-- what the caller writes next applies to the row it checked.
create function hosting_automator.lock_leased_job(p_job_id bigint, p_lease_token uuid)
returns setof hosting_automator.jobs
language sql
set search_path = ''
as $$
  select j.* from hosting_automator.jobs j
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  for update
$$;

-- Renew the lease while a step runs (and say which step runs). False when the lease is lost.
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
  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token);
  if not found then
    return false;
  end if;
  update hosting_automator.jobs j set
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    current_step = coalesce(p_step::hosting_automator.step_name, j.current_step),
    updated_at = now()
  where j.id = p_job_id;
  return true;
end
$$;

-- The step boundary: end the running step (p_done) and/or start the next (p_start), renewing the lease, in one
-- call between two steps. Also:
--   * a build job superseded by a removal stops here: it is cancelled, nothing is started;
--   * with p_domain (a provisioning job's first step) the site takes ownership of its canonical domain; a
--     domain still owned by a site being removed waits (retried with backoff), one owned by another site fails;
--   * with p_password (the step that creates the site) the answer carries the password to use: the one an
--     earlier attempt stored, else p_password, stored in Vault now.
-- Answers {"ok": true[, "credentials": {password, prior, stored}]}; {"ok": false, "reason": "lease_lost"}
-- (nothing written); {"ok": false, "reason": "cancelled"}; {"ok": false, "reason": "domain_taken", "code",
-- "message", "next"} (the job failed, or was queued again: `next` is {"state", "run_at"?, "attempts"}).
create function public.hosting_advance(
  p_job_id bigint,
  p_lease_token uuid,
  p_lease_seconds integer,
  p_done jsonb default null,
  p_start text default null,
  p_domain text default null,
  p_password text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
  v_owner uuid;
  v_owner_domain text;
  v_message text;
  v_code text;
  v_next jsonb;
begin
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception 'p_lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  perform hosting_automator.check_ends(p_done, 'p_done');
  perform 1 from hosting_automator.lock_leased_job(p_job_id, p_lease_token);
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'lease_lost');
  end if;
  update hosting_automator.jobs j set
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    current_step = coalesce(p_start::hosting_automator.step_name, j.current_step),
    updated_at = now()
  where j.id = p_job_id
  returning j.id, j.site_id, j.kind, j.server into v_job;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, p_job_id, p_done);
  end if;

  if v_job.kind <> 'remove' and hosting_automator.superseded(v_job.id, v_job.site_id) then
    update hosting_automator.jobs j set
      state = 'cancelled',
      lease_owner = null,
      lease_token = null,
      lease_expires_at = null,
      last_error_code = 'cancelled',
      public_error = 'Cancelled: the site is being removed.',
      finished_at = now(),
      updated_at = now()
    where j.id = p_job_id;
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    values (v_job.site_id, p_job_id, p_start, 'info', 'job_cancelled',
      format('The %s job stopped%s: the site is being removed.', v_job.kind,
        case when p_start is not null then ' before ' || p_start else '' end));
    perform hosting_automator.ring(1);
    return jsonb_build_object('ok', false, 'reason', 'cancelled');
  end if;

  if p_domain is not null then
    insert into hosting_automator.domain_owners (domain, site_id) values (p_domain, v_job.site_id)
    on conflict (domain) do nothing;
    select o.site_id into v_owner from hosting_automator.domain_owners o where o.domain = p_domain;
    if v_owner is distinct from v_job.site_id then
      select s.domain into v_owner_domain from public.sites s where s.id = v_owner;
      if exists (
        select 1 from hosting_automator.jobs r
        where r.site_id = v_owner and r.kind = 'remove' and r.state in ('queued', 'running'))
      then
        v_code := 'domain_being_removed';
        v_message := left(format(
          'The domain %s is still being removed for another row of public.sites (id %s); this site is provisioned once that removal has finished.',
          p_domain, v_owner), 500);
      elsif v_owner_domain is null then
        v_code := 'domain_taken';
        v_message := left(format(
          'The domain %s belongs to a deleted row of public.sites (id %s) whose removal did not finish; retry that removal (by its site id), then retry this site.',
          p_domain, v_owner), 500);
      else
        v_code := 'domain_taken';
        v_message := left(format(
          'The domain %s is already hosted for another row of public.sites (id %s, domain %s); a domain has one site. Delete or correct one of the two rows, then retry.',
          p_domain, v_owner, v_owner_domain), 500);
      end if;
      v_next := public.hosting_exit(p_job_id, p_lease_token, jsonb_build_object(
        'type', 'fail', 'code', v_code, 'public_message', v_message,
        'internal_message', format('canonical domain %s is owned by site %s', p_domain, v_owner),
        'permanent', v_code = 'domain_taken'));
      return jsonb_build_object('ok', false, 'reason', 'domain_taken', 'code', v_code, 'message', v_message,
        'next', v_next - 'ok');
    end if;
  end if;
  if p_start is not null then
    perform hosting_automator.journal_start(v_job.site_id, p_job_id, p_start::hosting_automator.step_name);
  end if;
  if p_password is not null then
    select s.domain into v_owner_domain from public.sites s where s.id = v_job.site_id;
    return jsonb_build_object('ok', true, 'credentials',
      hosting_automator.site_password(v_job.site_id, p_lease_token, p_password, coalesce(p_domain, v_owner_domain),
        v_job.server));
  end if;
  return jsonb_build_object('ok', true);
end
$$;

-- Jobs whose worker stopped renewing its lease (crash, wall-clock limit): queue them again to resume, or fail
-- them when they have used all their attempts (a job that kills its worker must not loop forever). A final
-- failure marks the row as a failing exit does.
create function hosting_automator.reap_expired_leases()
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    select j.id
    from hosting_automator.jobs j
    where j.state = 'running' and j.lease_expires_at <= now()
    for update skip locked
  ), reaped as (
    update hosting_automator.jobs j set
      state = (case when j.attempts >= j.max_attempts then 'failed' else 'queued' end)::hosting_automator.job_state,
      run_at = now(),
      lease_owner = null,
      lease_token = null,
      lease_expires_at = null,
      last_error_code = 'interrupted',
      last_error = 'lease of worker ' || j.lease_owner || ' expired during step ' || coalesce(j.current_step::text, '-'),
      public_error = case when j.attempts >= j.max_attempts
        then case when j.kind = 'remove' then 'The removal was interrupted too many times; an operator can retry it.'
          else 'Provisioning was interrupted too many times; an operator can retry it.' end
        else j.public_error end,
      finished_at = case when j.attempts >= j.max_attempts then now() end,
      updated_at = now()
    from expired
    where j.id = expired.id
    returning j.id, j.site_id, j.state, j.kind, j.current_step, j.public_error
  ), failed_sites as (
    update public.sites s set
      status_hosting = case when r.kind = 'remove' then s.status_hosting else 'failed' end,
      error_message = case when r.kind = 'remove' then left('Removal failed: ' || r.public_error, 500)
        else r.public_error end
    from reaped r
    where s.id = r.site_id and r.state = 'failed'
      and case when r.kind = 'remove' then s.status_hosting = 'removing'
        else s.status_hosting is distinct from 'active' and not hosting_automator.row_in_removal(s.status_hosting) end
    returning s.id
  ), logged as (
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    select r.site_id, r.id, r.current_step::text,
      (case when r.state = 'failed' then 'error' else 'warn' end)::hosting_automator.event_level,
      'interrupted',
      case when r.state = 'failed'
        then 'The worker stopped during the last attempt (lease expired); the job failed.'
        else 'The worker stopped (lease expired); the job is queued again and resumes after its finished steps.'
      end
    from reaped r
    returning 1
  )
  select count(*) into v_count from reaped;
  return v_count;
end
$$;
