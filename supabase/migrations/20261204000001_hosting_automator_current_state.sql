-- The database as a current state: supabase/schemas now declares the module's database, one concept per file,
-- and this migration takes a database installed from the migrations before it to exactly that state
-- (tests/schema.test.ts builds both and compares their catalogs). Nothing changes for a caller: every
-- public.hosting_* function keeps its name, arguments and answers; what goes are the layers earlier migrations
-- left:
--
--   * the claim, the completion and the operator's report each were a public function wrapping the previous
--     one renamed into the private schema (claim_jobs_core, complete_job_core, status_fleet wrapping
--     status_sites); each is one function again, and the renamed bodies are dropped;
--   * the lease guard ("this job is still the caller's": its token, running, lease not expired) was written out
--     in every function a worker calls with a lease; it is one function now, lock_leased_job, which each of them
--     calls first;
--   * the backoff formula (base × 2^(n − 1), capped, equal jitter) was written twice, for the queue's retries and
--     for the waits for DNS; both use one function now, backoff.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

create function hosting_automator.backoff(p_n integer, p_base_seconds integer, p_max_seconds integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select make_interval(secs => d.delay / 2 + random() * d.delay / 2)
  from (
    select least(
      p_max_seconds::double precision,
      p_base_seconds * power(2::double precision, greatest(p_n, 1) - 1)
    ) as delay
  ) d
$$;

create or replace function hosting_automator.retry_delay(p_attempts integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select hosting_automator.backoff(p_attempts, s.backoff_base_seconds, s.backoff_max_seconds)
  from hosting_automator.settings s
$$;

create function hosting_automator.lock_leased_job(p_job_id bigint, p_lease_token uuid)
returns setof hosting_automator.jobs
language sql
set search_path = ''
as $$
  select j.* from hosting_automator.jobs j
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  for update
$$;

create or replace function public.hosting_heartbeat(
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

create or replace function public.hosting_record_step(
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
  select j.site_id into v_site from hosting_automator.lock_leased_job(p_job_id, p_lease_token) j;
  if not found then
    return false;
  end if;
  update hosting_automator.jobs j set current_step = v_step, updated_at = now() where j.id = p_job_id;

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

create or replace function public.hosting_advance(
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
      v_next := public.hosting_fail_job(p_job_id, p_lease_token, v_code, v_message,
        format('canonical domain %s is owned by site %s', p_domain, v_owner), v_code = 'domain_taken');
      return jsonb_build_object('ok', false, 'reason', 'domain_taken', 'code', v_code, 'message', v_message,
        'next', v_next);
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

create or replace function public.hosting_claim_jobs(
  p_worker text,
  p_server text,
  p_lease_seconds integer,
  p_limit integer default 1,
  p_site_id uuid default null,
  p_time_left_ms integer default null,
  p_plan jsonb default null,
  p_default_step_ms integer default 5000,
  p_first boolean default false,
  p_default_server jsonb default null
)
returns table (
  job_id bigint,
  lease_token uuid,
  site_id uuid,
  domain text,
  -- The stored text's length in characters and in UTF-8 bytes: the worker checks that it read exactly that
  -- text (a driver may drop a character, such as a leading byte order mark).
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
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_estimates jsonb;
  v_claimed integer := 0;
  v_starved boolean := false;
  v_job record;
  v_name text;
  v_new boolean;
  v_new_ok boolean;
  v_server hosting_automator.servers;
  v_running integer;
  v_needed integer;
  v_row record;
begin
  if p_worker is null or length(p_worker) not between 1 and 200 then
    raise exception 'p_worker must be 1 to 200 characters' using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception 'p_lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  if p_limit is null or p_limit not between 1 and 100 then
    raise exception 'p_limit must be from 1 to 100' using errcode = '22023';
  end if;
  if p_time_left_ms is not null and p_time_left_ms < 0 then
    raise exception 'p_time_left_ms must not be negative' using errcode = '22023';
  end if;
  if p_plan is not null and jsonb_typeof(p_plan) <> 'object' then
    raise exception 'p_plan must be a JSON object of step-name arrays' using errcode = '22023';
  end if;
  if p_default_step_ms is null or p_default_step_ms not between 0 and 3600000 then
    raise exception 'p_default_step_ms must be from 0 to 3600000' using errcode = '22023';
  end if;
  if p_default_server is not null and jsonb_typeof(p_default_server) <> 'object' then
    raise exception 'p_default_server must be a JSON object' using errcode = '22023';
  end if;

  -- The configured server: registered as `default` while no server is registered, and kept as configured
  -- afterwards (a corrected CLOUDPANEL_SSH_HOST_KEY reaches the row at the next claim).
  if p_default_server is not null then
    if not exists (select 1 from hosting_automator.servers) then
      insert into hosting_automator.servers (name, host, port, ssh_user, host_key, concurrency)
      select 'default', p_default_server ->> 'host', coalesce((p_default_server ->> 'port')::integer, 22),
        coalesce(p_default_server ->> 'ssh_user', 'root'), p_default_server ->> 'host_key', st.server_concurrency
      from hosting_automator.settings st
      on conflict (name) do nothing;
    else
      update hosting_automator.servers s set
        host = p_default_server ->> 'host',
        port = coalesce((p_default_server ->> 'port')::integer, 22),
        ssh_user = coalesce(p_default_server ->> 'ssh_user', 'root'),
        host_key = p_default_server ->> 'host_key'
      where s.name = 'default'
        and (s.host, s.port, s.ssh_user, s.host_key) is distinct from (p_default_server ->> 'host',
          coalesce((p_default_server ->> 'port')::integer, 22), coalesce(p_default_server ->> 'ssh_user', 'root'),
          p_default_server ->> 'host_key');
    end if;
  end if;

  perform hosting_automator.reap_expired_leases();
  v_estimates := hosting_automator.step_estimates();
  -- Claims run one at a time: a claim may place sites and start jobs on several servers, and each server's
  -- capacity and cap must hold against the others (one lock, so no two claims can wait on each other).
  perform pg_advisory_xact_lock(hashtextextended('hosting_automator.claim', 0));

  -- Build jobs a removal superseded (a retry or a resume queued after the removal was asked for).
  with superseded as (
    update hosting_automator.jobs j set
      state = 'cancelled',
      last_error_code = 'cancelled',
      public_error = 'Cancelled: the site is being removed.',
      finished_at = now(),
      updated_at = now()
    where j.id in (
      select q.id from hosting_automator.jobs q
      where q.state = 'queued' and q.run_at <= now() and q.kind <> 'remove'
        and (p_site_id is null or q.site_id = p_site_id)
        and hosting_automator.superseded(q.id, q.site_id)
      order by q.run_at, q.id
      limit 20
      for update skip locked)
    returning j.id, j.site_id, j.kind
  )
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  select c.site_id, c.id, 'info', 'job_cancelled', format('The %s job was cancelled: the site is being removed.', c.kind)
  from superseded c;

  -- New sites can start now unless every server with room is paused (they would all be passed over).
  v_new_ok := exists (
      select 1 from hosting_automator.servers s
      where s.state = 'active' and hosting_automator.server_runs(s) and hosting_automator.server_fill(s) < 1)
    or not exists (
      select 1 from hosting_automator.servers s where s.state = 'active' and hosting_automator.server_fill(s) < 1);

  for v_job in
    select j.id, j.site_id, j.kind, j.run_at, j.last_error_code
    from hosting_automator.jobs j
    left join hosting_automator.placements pl on pl.site_id = j.site_id
    left join hosting_automator.servers sv on sv.name = pl.server
    where j.state = 'queued' and j.run_at <= now() and (p_site_id is null or j.site_id = p_site_id)
      -- A site's jobs run in the order they were queued.
      and not exists (
        select 1 from hosting_automator.jobs e
        where e.site_id = j.site_id and e.state in ('queued', 'running') and e.id < j.id)
      -- Only jobs that can start now: however many wait for a paused or full server, they do not hold up the
      -- others (the candidates are a bounded window).
      and case when pl.server is null then v_new_ok
        else hosting_automator.server_runs(sv) and (
          select count(*) from hosting_automator.jobs r where r.state = 'running' and r.server = sv.name) < sv.concurrency
      end
    order by j.run_at, j.id
    limit greatest(p_limit * 5, 20)
    for update of j skip locked
  loop
    exit when v_claimed >= p_limit;
    -- Only a job whose expected remaining steps fit the time left.
    if p_time_left_ms is not null then
      select coalesce(sum(coalesce((v_estimates ->> p.step)::integer, p_default_step_ms)), 0) into v_needed
      from jsonb_array_elements_text(coalesce(p_plan -> v_job.kind, '[]'::jsonb)) as p(step)
      where not exists (
        select 1 from hosting_automator.steps st
        where st.site_id = v_job.site_id and st.step::text = p.step and st.state = 'done');
      if v_needed > p_time_left_ms then
        v_starved := true;
        continue;
      end if;
    end if;

    -- The site's server; a site without one is placed when its job starts (placement is sticky). A site built
    -- before there was a fleet (its site step is journaled) lives on the configured server, `default`.
    select p.server into v_name from hosting_automator.placements p where p.site_id = v_job.site_id;
    v_new := v_name is null;
    if v_new then
      select sv.name into v_name from hosting_automator.servers sv
      where sv.name = 'default' and exists (
        select 1 from hosting_automator.steps st where st.site_id = v_job.site_id and st.step = 'cloudpanel_site');
      v_name := coalesce(v_name, hosting_automator.best_server());
    end if;
    if v_name is null then
      -- No server has room: the job waits without spending an attempt, said once per wait.
      update hosting_automator.jobs j set
        run_at = now() + hosting_automator.retry_delay(1),
        last_error_code = 'no_server_capacity',
        public_error = 'No active CloudPanel server has room for another site; add a server or raise a capacity.',
        updated_at = now()
      where j.id = v_job.id;
      if v_job.last_error_code is distinct from 'no_server_capacity' then
        insert into hosting_automator.events (site_id, job_id, level, code, message)
        values (v_job.site_id, v_job.id, 'warn', 'no_server_capacity',
          'No active CloudPanel server has room for another site (capacity reached, or none active); the job waits.');
      end if;
      continue;
    end if;

    select * into v_server from hosting_automator.servers s where s.name = v_name;
    if not hosting_automator.server_runs(v_server) then
      continue;
    end if;
    select count(*)::integer into v_running
    from hosting_automator.jobs j where j.state = 'running' and j.server = v_name;
    if v_running >= v_server.concurrency then
      continue;
    end if;

    if v_new then
      insert into hosting_automator.placements (site_id, server) values (v_job.site_id, v_name);
      update public.sites s set hosting_server = v_name where s.id = v_job.site_id;
      insert into hosting_automator.events (site_id, job_id, level, code, message)
      values (v_job.site_id, v_job.id, 'info', 'site_placed', format('Placed on CloudPanel server %s.', v_name));
    end if;
    update hosting_automator.jobs j set
      state = 'running',
      attempts = j.attempts + 1,
      lease_owner = p_worker,
      lease_token = gen_random_uuid(),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      server = v_name,
      current_step = null,
      started_at = coalesce(j.started_at, now()),
      updated_at = now()
    where j.id = v_job.id
    returning j.* into v_row;
    v_claimed := v_claimed + 1;

    -- An active site with an analytics job stays active; a row in removal keeps its state.
    update public.sites s set status_hosting = 'provisioning'
    where s.id = v_row.site_id and v_row.kind <> 'remove' and s.status_hosting is distinct from 'active'
      and not hosting_automator.row_in_removal(s.status_hosting);
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (v_row.site_id, v_row.id, 'info', 'job_claimed',
      format('Attempt %s of %s (%s) started by worker %s on server %s.', v_row.attempts, v_row.max_attempts,
        v_row.kind, p_worker, v_name));

    return query
    select v_row.id, v_row.lease_token, v_row.site_id, x.domain, char_length(x.domain), octet_length(x.domain),
      v_row.kind, v_row.attempts, v_row.max_attempts, v_row.lease_expires_at,
      coalesce((
        select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
        from hosting_automator.steps st
        where st.site_id = v_row.site_id
      ), '{}'::jsonb),
      v_estimates,
      case when v_row.kind = 'remove' then jsonb_build_object('site_user', v_row.site_user,
        'doc_root', v_row.doc_root, 'matomo_site_id', v_row.matomo_site_id) end,
      jsonb_build_object('name', v_server.name, 'host', v_server.host, 'port', v_server.port,
        'ssh_user', v_server.ssh_user, 'host_key', v_server.host_key, 'failures', v_server.failures,
        'public_ips', coalesce((select jsonb_agg(host(ip) order by ip) from unnest(v_server.public_ips) ip),
          '[]'::jsonb))
    from (select case when v_row.kind = 'remove' then v_row.domain
      else (select s.domain from public.sites s where s.id = v_row.site_id) end as domain) x;
  end loop;

  -- Nothing fitted the time left although jobs are due: the caller stops and gives its slot up.
  if p_first and v_starved and v_claimed = 0 then
    -- A fresh invocation without time for one job runs on a worker about to stop; a kick now would likely
    -- reach that same worker. Its kick stays counted until it expires; then a claim or the sweep rings again.
    return;
  end if;
  if p_first then
    delete from hosting_automator.rings r where r.id = (select min(r2.id) from hosting_automator.rings r2);
  end if;
  -- Slots still free while jobs are due: a dead worker's, or this caller's when nothing fits its time left.
  perform hosting_automator.ring(hosting_automator.slots());
end
$$;

create or replace function public.hosting_complete_job(
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

create or replace function public.hosting_complete_removal(
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

create or replace function public.hosting_fail_job(
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

create or replace function public.hosting_release_job(
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

create or replace function public.hosting_wait_for_dns(
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

create or replace function public.hosting_server_trouble(
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
          and hosting_automator.waits_for_server(j.last_error_code)),
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
      select count(*) from hosting_automator.jobs j where j.state = 'queued' and j.last_error_code = 'no_server_capacity'),
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
      ), '[]'::jsonb))
  )
$$;

-- The layers the public functions no longer call.
drop function hosting_automator.claim_jobs_core(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb);
drop function hosting_automator.complete_job_core(bigint, uuid, text, integer, text, jsonb, boolean);
drop function hosting_automator.status_fleet(integer);
drop function hosting_automator.status_sites(integer);

comment on table hosting_automator.jobs is
  'One job per run of work for a site; at most one open (queued or running) build job and one open removal per site.';

-- The new helpers are their owner's alone, as everything in the private schema; the replaced public functions
-- keep their grants (service_role only).
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
