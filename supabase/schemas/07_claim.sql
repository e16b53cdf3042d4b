-- The claim (docs/architecture.md §4, §5, §7, §16): the one way a job starts running.

-- Claim up to p_limit due jobs for worker p_worker, each with a new lease of p_lease_seconds, on its site's server:
--   * p_default_server ({host, port, ssh_user, host_key}: the worker's configured server) is registered as
--     `default` while no server is registered, and kept as configured afterwards;
--   * expired leases are reaped first, so a dead worker's job is due again;
--   * a site's jobs run in the order they were queued (a job waits while an earlier one of its site is open), and
--     a build job a removal superseded is cancelled instead of claimed;
--   * a job runs on the server its site was placed on, placing it first when it has none (the active server with
--     the most room); with no server with room it waits (`no_server_capacity`, not an attempt);
--   * each server has its own cap (`concurrency`), and a server that does not run now (disabled, or its circuit
--     open) keeps its jobs waiting while the others go on;
--   * with p_time_left_ms, only a job whose expected remaining steps fit the time the worker has left (p_plan:
--     kind → step names; estimates from step_estimates(), else p_default_step_ms each);
--   * p_first: the caller's first claim, which answers one kick on its way. Afterwards the doorbell rings for slots
--     that are still free while jobs are due: a slot a dead worker held, or the one this caller gives up when
--     nothing fits its remaining time.
-- Each answer says what to do and where: the domain (a removal's from the job, its row may be gone), the step
-- journal to resume from, the estimates, a removal's `target` (site_user, doc_root, matomo_site_id), and `server`
-- {name, host, port, ssh_user, host_key, failures, public_ips}: where to connect, and the addresses the site's DNS
-- must point to. p_server is not used (the server comes from the placement); it stays for the callers that send it.
create function public.hosting_claim_jobs(
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
      waiting_for = null,
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
    select j.id, j.site_id, j.kind, j.run_at, j.waiting_for
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

    -- The site's server; a site without one is placed when its job starts (placement is sticky). A site with a
    -- journal but no placement was built before there was a fleet: it lives on the configured server, `default`.
    select p.server into v_name from hosting_automator.placements p where p.site_id = v_job.site_id;
    v_new := v_name is null;
    if v_new then
      select sv.name into v_name from hosting_automator.servers sv
      where sv.name = 'default' and exists (select 1 from hosting_automator.steps st where st.site_id = v_job.site_id);
      v_name := coalesce(v_name, hosting_automator.best_server());
    end if;
    if v_name is null then
      -- No server has room: the job waits without spending an attempt, said once per wait.
      update hosting_automator.jobs j set
        run_at = now() + hosting_automator.retry_delay(1),
        last_error_code = 'no_server_capacity',
        public_error = 'No active CloudPanel server has room for another site; add a server or raise a capacity.',
        waiting_for = 'capacity',
        updated_at = now()
      where j.id = v_job.id;
      if v_job.waiting_for is distinct from 'capacity' then
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
      waiting_for = null,
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
