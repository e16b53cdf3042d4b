-- The durable queue: queueing, the doorbell (pg_net kick), retry delays, lease reaping, the sweep, and the
-- row trigger on public.sites (docs/architecture.md §2, §6).
--
-- pg_net and Vault are optional: without them (plain Postgres, tests) jobs are queued all the same and wait
-- for a worker to poll. The job row is the truth; the kick is only a doorbell.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- Queue a job for a site unless one is open. Idempotent and safe under concurrency: the partial unique
-- index decides, so two transactions racing here end with one open job.
create function hosting_automator.queue_job(p_site_id uuid, out job_id bigint, out created boolean)
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into hosting_automator.jobs (site_id, max_attempts)
  select p_site_id, s.max_attempts from hosting_automator.settings s
  on conflict (site_id) where state in ('queued', 'running') do nothing
  returning id into job_id;
  created := job_id is not null;
  if created then
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (p_site_id, job_id, 'info', 'job_queued', 'Job queued.');
  else
    select j.id into job_id
    from hosting_automator.jobs j
    where j.site_id = p_site_id and j.state in ('queued', 'running');
  end if;
end
$$;

-- POST a kick to the Edge Function through pg_net, with the URL and key from Vault
-- (secrets `hosting_automator_url` and `hosting_automator_key`). Returns the pg_net request id, or null when
-- pg_net or the secrets are missing or the request could not be queued. Never raises: a lost kick only
-- delays a job until the next sweep. pg_net sends the request after commit; a rollback sends nothing.
create function hosting_automator.kick(p_body jsonb)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_key text;
  v_timeout integer;
  v_request bigint;
begin
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null
    or to_regclass('vault.decrypted_secrets') is null then
    return null;
  end if;
  -- Dynamic SQL: these schemas may not exist when the function is created.
  execute $sql$
    select max(decrypted_secret) filter (where name = 'hosting_automator_url'),
           max(decrypted_secret) filter (where name = 'hosting_automator_key')
    from vault.decrypted_secrets
    where name in ('hosting_automator_url', 'hosting_automator_key')
  $sql$ into v_url, v_key;
  if v_url is null or v_key is null then
    return null;
  end if;
  select s.kick_timeout_ms into v_timeout from hosting_automator.settings s;
  execute 'select net.http_post(url => $1, body => $2, headers => $3, timeout_milliseconds => $4)'
    into v_request
    using v_url, p_body, jsonb_build_object('Content-Type', 'application/json', 'apikey', v_key), v_timeout;
  return v_request;
exception when others then
  raise warning 'hosting-automator: kick not sent (%); the sweep will pick the job up', sqlstate;
  return null;
end
$$;

-- Delay before the next attempt: base * 2^(attempts-1), capped, then "equal jitter" (between half and all
-- of it) so jobs that failed together do not retry together.
create function hosting_automator.retry_delay(p_attempts integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select make_interval(secs => d.delay / 2 + random() * d.delay / 2)
  from (
    select least(
      s.backoff_max_seconds::double precision,
      s.backoff_base_seconds * power(2::double precision, greatest(p_attempts, 1) - 1)
    ) as delay
    from hosting_automator.settings s
  ) d
$$;

-- Jobs whose worker stopped renewing its lease (crash, wall-clock limit): re-queue them to resume, or fail
-- them when they have used all their attempts (a job that kills its worker must not loop forever).
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
        then 'Provisioning was interrupted too many times; an operator can retry it.' else j.public_error end,
      finished_at = case when j.attempts >= j.max_attempts then now() end,
      updated_at = now()
    from expired
    where j.id = expired.id
    returning j.id, j.site_id, j.state, j.current_step, j.public_error
  ), failed_sites as (
    update public.sites s set status_hosting = 'failed', error_message = r.public_error
    from reaped r
    where s.id = r.site_id and r.state = 'failed' and s.status_hosting is distinct from 'active'
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

-- Every minute (pg_cron): reap expired leases, then ring the doorbell once per free slot while jobs are due.
create function hosting_automator.sweep()
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reaped integer;
  v_due integer;
  v_running integer;
  v_cap integer;
  v_kicks integer := 0;
begin
  v_reaped := hosting_automator.reap_expired_leases();
  select count(*) into v_due from hosting_automator.jobs j where j.state = 'queued' and j.run_at <= now();
  select count(*) into v_running from hosting_automator.jobs j where j.state = 'running';
  select s.server_concurrency into v_cap from hosting_automator.settings s;
  for i in 1 .. least(v_due, greatest(v_cap - v_running, 0)) loop
    if hosting_automator.kick('{}'::jsonb) is not null then
      v_kicks := v_kicks + 1;
    end if;
  end loop;
  return jsonb_build_object('reaped', v_reaped, 'due', v_due, 'running', v_running, 'kicks', v_kicks);
end
$$;

-- The row trigger: a site whose DNS is active and whose hosting is pending gets a job in the same
-- transaction, then a kick. Fires on insert, and on updates of the two status columns only; flipping DNS
-- again, or any other update, finds the open job and adds nothing.
create function hosting_automator.on_site_ready()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job record;
begin
  select * into v_job from hosting_automator.queue_job(new.id);
  if v_job.created then
    perform hosting_automator.kick(jsonb_build_object('site_id', new.id));
  end if;
  return null;
end
$$;

-- Creating the trigger locks public.sites (SHARE ROW EXCLUSIVE) for a catalog change only: no scan.
create trigger hosting_automator_queue
  after insert or update of status_dns, status_hosting on public.sites
  for each row
  when (new.status_dns = 'active' and new.status_hosting = 'pending')
  execute function hosting_automator.on_site_ready();

-- Sites that were already waiting when the module was installed (a Hub table with rows) are due too.
-- One read of public.sites (it takes no lock that blocks the Hub's writers); rows go to the module's table.
insert into hosting_automator.jobs (site_id, max_attempts)
select s.id, st.max_attempts
from public.sites s cross join hosting_automator.settings st
where s.status_dns = 'active' and s.status_hosting = 'pending'
on conflict (site_id) where state in ('queued', 'running') do nothing;

revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
