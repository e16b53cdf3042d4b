-- A fleet of CloudPanel servers:
--
--   * servers are rows of hosting_automator.servers, edited with SQL (no key, token or password in them: the
--     SSH keys stay the function's secrets);
--   * a site is placed once, when its first job runs, on the active server with the most room (placed sites
--     relative to capacity; ties by name), and stays there: retries, resumes, the analytics backfill and the
--     removal run on the same server; public.sites.hosting_server tells the Hub where a site lives;
--   * each server has its own concurrency, and its own circuit: a server that cannot be reached pauses its own
--     jobs (given back without spending an attempt) with backoff, while the others go on;
--   * with no server rows, the worker's configured server (CLOUDPANEL_SSH_HOST) is registered as `default`.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

create table hosting_automator.servers (
  name text primary key check (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  -- A host name, an IPv4 address or an IPv6 address (without brackets).
  host text not null check (host ~ '^[A-Za-z0-9:]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9:])?$'),
  port integer not null default 22 check (port between 1 and 65535),
  ssh_user text not null default 'root' check (ssh_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
  -- The server's host key fingerprint to pin, as `ssh-keygen -lf` prints it.
  host_key text not null check (host_key ~ '^SHA256:[A-Za-z0-9+/]{43}$'),
  -- The addresses the sites' DNS must point to.
  public_ips inet[] not null default '{}',
  -- The most sites it may hold; null: no limit.
  capacity integer check (capacity >= 0),
  -- Jobs at once on it.
  concurrency integer not null default 4 check (concurrency between 1 and 100),
  -- active: takes new sites; draining: keeps and serves its sites, takes no new ones; disabled: runs nothing.
  state text not null default 'active' check (state in ('active', 'draining', 'disabled')),
  -- The circuit: connection failures in a row, and until when its jobs wait.
  failures integer not null default 0 check (failures >= 0),
  open_until timestamptz,
  last_error_code text,
  last_error text check (length(last_error) <= 500),
  last_error_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table hosting_automator.servers is
  'The CloudPanel servers: where sites are placed, how many jobs run on each, and each one''s circuit.';
revoke all on hosting_automator.servers from public, anon, authenticated, service_role;

-- Which server each site lives on; kept until its removal completes.
create table hosting_automator.placements (
  site_id uuid primary key,
  -- A server with sites cannot be deleted (set it to draining, then disabled, instead).
  server text not null references hosting_automator.servers (name) on update cascade,
  placed_at timestamptz not null default now()
);
comment on table hosting_automator.placements is 'The server each site was placed on; placement is sticky.';
-- squawk-ignore require-concurrent-index-creation
create index placements_server on hosting_automator.placements (server);
revoke all on hosting_automator.placements from public, anon, authenticated, service_role;

-- The journal records the server each step ran on.
alter table hosting_automator.steps add column server text;

-- Where the Hub reads a site's server (empty on rows provisioned before the fleet). Added without a default:
-- a catalog change, no rewrite of the Hub's table.
do $$
begin
  if not exists (
    select 1 from pg_attribute
    where attrelid = 'public.sites'::regclass and attname = 'hosting_server' and not attisdropped
  ) then
    alter table public.sites add column hosting_server text;
  end if;
end
$$;

comment on column hosting_automator.settings.server_concurrency is
  'Jobs at once on a server registered from the worker''s configuration (the `default` server).';

-- A job given back with this code waits for its server (it could not be reached), not for its own retry.
create function hosting_automator.waits_for_server(p_code text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(p_code in ('ssh_unreachable', 'ssh_timeout', 'ssh_host_key_mismatch', 'ssh_auth_failed'), false)
$$;

-- An operator changed a server. Its address or state (a fixed host key, a server enabled): its circuit closes
-- and the jobs that waited for it are due now. Its room (capacity, state): the sites waiting for room are due now.
create function hosting_automator.on_server_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  new.updated_at := now();
  if (old.host, old.port, old.ssh_user, old.host_key, old.state)
    is distinct from (new.host, new.port, new.ssh_user, new.host_key, new.state)
  then
    new.failures := 0;
    new.open_until := null;
    update hosting_automator.jobs j set run_at = now()
    where j.state = 'queued' and j.server = new.name and j.run_at > now()
      and hosting_automator.waits_for_server(j.last_error_code);
  end if;
  if (old.capacity, old.state) is distinct from (new.capacity, new.state) then
    update hosting_automator.jobs j set run_at = now()
    where j.state = 'queued' and j.run_at > now() and j.last_error_code = 'no_server_capacity';
  end if;
  return new;
end
$$;

create trigger servers_changed
  before update of host, port, ssh_user, host_key, state, capacity on hosting_automator.servers
  for each row
  when ((old.host, old.port, old.ssh_user, old.host_key, old.state, old.capacity)
    is distinct from (new.host, new.port, new.ssh_user, new.host_key, new.state, new.capacity))
  execute function hosting_automator.on_server_changed();

-- ---------------------------------------------------------------------------------------------------------
-- The rules, each named once.

-- A server runs jobs now: not disabled, and its circuit is not open.
create function hosting_automator.server_runs(p_server hosting_automator.servers)
returns boolean
language sql
stable
set search_path = ''
as $$
  select p_server.state <> 'disabled' and (p_server.open_until is null or p_server.open_until <= now())
$$;

-- How full a server is, for placement: placed sites relative to capacity (0 without a limit; 1 or more: full).
create function hosting_automator.server_fill(p_server hosting_automator.servers)
returns double precision
language sql
stable
set search_path = ''
as $$
  select case
    when p_server.capacity is null then 0
    when p_server.capacity = 0 then 1
    else (select count(*) from hosting_automator.placements p where p.server = p_server.name)::double precision
      / p_server.capacity
  end
$$;

-- Slots of the fleet: the concurrency of the servers that run jobs now (the configured cap before any server is
-- registered).
create function hosting_automator.slots()
returns integer
language sql
stable
set search_path = ''
as $$
  select coalesce(
    (select sum(s.concurrency)::integer from hosting_automator.servers s where hosting_automator.server_runs(s)),
    (select st.server_concurrency from hosting_automator.settings st))
$$;

-- The doorbell (as before), counting the fleet's slots.
create or replace function hosting_automator.ring(p_max integer, p_serialise boolean default true)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings hosting_automator.settings;
  v_free integer;
  v_due integer;
  v_on_the_way integer;
  v_kicks integer := 0;
  v_request bigint;
begin
  if coalesce(p_max, 0) <= 0 then
    return 0;
  end if;
  if p_serialise then
    perform pg_advisory_xact_lock(hashtextextended('hosting_automator.ring', 0));
  end if;
  select * into v_settings from hosting_automator.settings;
  delete from hosting_automator.rings r where r.rung_at <= now() - make_interval(secs => v_settings.ring_ttl_seconds);
  select count(*)::integer into v_on_the_way from hosting_automator.rings;
  v_free := hosting_automator.slots() - hosting_automator.slots_taken();
  select count(*)::integer into v_due from hosting_automator.jobs j where j.state = 'queued' and j.run_at <= now();
  -- Each kick on its way will take a free slot and a due job.
  for i in 1 .. least(p_max, v_free - v_on_the_way, v_due - v_on_the_way) loop
    v_request := hosting_automator.kick('{}'::jsonb);
    exit when v_request is null;
    insert into hosting_automator.rings default values;
    insert into hosting_automator.kick_log (request_id) values (v_request) on conflict do nothing;
    v_kicks := v_kicks + 1;
  end loop;
  return v_kicks;
end
$$;

-- Journal the start of a step (as before), with the server it runs on.
create or replace function hosting_automator.journal_start(p_site uuid, p_job bigint, p_step hosting_automator.step_name)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into hosting_automator.steps as st (site_id, step, state, attempts, last_job_id, started_at, server)
  values (p_site, p_step, 'started', 1, p_job, now(), (select j.server from hosting_automator.jobs j where j.id = p_job))
  on conflict (site_id, step) do update set
    state = 'started',
    attempts = st.attempts + 1,
    last_job_id = excluded.last_job_id,
    started_at = now(),
    server = excluded.server,
    updated_at = now()
  where st.state <> 'done'
$$;

-- Where a new site goes: the active server with the most room (the lowest share of its
-- capacity taken; then the fewest sites), ties by name; null when none has room. Read under the claim's lock,
-- which is also where the placement is written, so concurrent claims never overfill a server.
create function hosting_automator.best_server()
returns text
language sql
stable
set search_path = ''
as $$
  select s.name
  from hosting_automator.servers s
  where s.state = 'active' and hosting_automator.server_fill(s) < 1
  -- A server that runs now first (when none does, the site waits for one whose circuit closes); servers without
  -- a limit count as empty by fill; among equals, the one with fewer sites goes first.
  order by hosting_automator.server_runs(s) desc, hosting_automator.server_fill(s),
    (select count(*) from hosting_automator.placements p where p.server = s.name), s.name
  limit 1
$$;

-- A placement that never held anything is given back when its site's jobs end: a site whose domain was refused
-- before any step (or whose job was cancelled first) must not hold a place on a server for good.
create function hosting_automator.on_job_ended()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select 1 from hosting_automator.steps st where st.site_id = new.site_id)
    and not exists (
      select 1 from hosting_automator.jobs j where j.site_id = new.site_id and j.state in ('queued', 'running'))
  then
    delete from hosting_automator.placements p where p.site_id = new.site_id;
    update public.sites s set hosting_server = null where s.id = new.site_id and s.hosting_server is not null;
  end if;
  return null;
end
$$;

create trigger jobs_ended
  after update of state on hosting_automator.jobs
  for each row
  when (new.state in ('failed', 'cancelled') and old.state is distinct from new.state)
  execute function hosting_automator.on_job_ended();

-- ---------------------------------------------------------------------------------------------------------
-- The worker's API.

drop function public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean);
-- Claim due jobs with a lease (as before), each on its site's server:
--   * p_default_server ({host, port, ssh_user, host_key}: the worker's configured server) is registered as
--     `default` while no server is registered;
--   * a job runs on the server its site was placed on, placing it first when it has none; with no server with
--     room it waits (`no_server_capacity`, not an attempt);
--   * each server has its own cap (`concurrency`), and a server that does not run now (disabled, or its
--     circuit open) keeps its jobs waiting while the others go on;
--   * `server` in the answer says where to connect: {name, host, port, ssh_user, host_key, failures}.
-- p_server is kept for older callers and no longer used.
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
        'ssh_user', v_server.ssh_user, 'host_key', v_server.host_key, 'failures', v_server.failures)
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

-- A server could not be reached (refused, timed out, its host key did not match, the key was refused): its
-- circuit opens with backoff (base × 2^(failures − 1), capped), and the job is given back without spending an
-- attempt, due when the circuit closes. The server's other jobs wait as well; the other servers go on.
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
  select j.id, j.site_id, j.server into v_job from hosting_automator.jobs j
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  for update;
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

-- A server that had failures answered again: its circuit closes.
create function public.hosting_server_ok(p_name text)
returns boolean
language sql
security definer
set search_path = ''
as $$
  update hosting_automator.servers s set failures = 0, open_until = null, updated_at = now()
  where s.name = p_name and (s.failures > 0 or s.open_until is not null)
  returning true
$$;

-- Every server for the worker's dry run: what to connect to.
create function public.hosting_servers()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('name', s.name, 'host', s.host, 'port', s.port,
    'ssh_user', s.ssh_user, 'host_key', s.host_key, 'state', s.state) order by s.name), '[]'::jsonb)
  from hosting_automator.servers s
$$;

-- Finish a removal (as before): the site's placement goes with it, and so does the row's server.
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
  update hosting_automator.jobs j set
    state = 'succeeded',
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    error_streak = 0,
    finished_at = now(),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
    and j.kind = 'remove'
  returning j.site_id into v_site;
  if not found then
    return false;
  end if;
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

-- The operator's report: the previous one (renamed into the private schema, hosting_automator.status_sites), with
-- the fleet's slots in the doorbell, each server, and the jobs waiting for room.
alter function public.hosting_status(integer) rename to status_sites;
alter function public.status_sites(integer) set schema hosting_automator;

create function public.hosting_status(p_limit integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select r.report || jsonb_build_object(
    'doorbell', (r.report -> 'doorbell') || jsonb_build_object('slots', hosting_automator.slots()),
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
    'waiting_for_capacity', (
      select count(*) from hosting_automator.jobs j where j.state = 'queued' and j.last_error_code = 'no_server_capacity'))
  from (select hosting_automator.status_sites(p_limit) as report) r
$$;

-- The credentials (as before), with the server's name, host and port from the fleet.
create or replace function public.hosting_site_credentials(p_site_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_site record;
  v_cred hosting_automator.credentials;
  v_step record;
  v_password text;
  v_host text;
  v_port integer;
begin
  select s.id, s.domain, s.status_hosting, s.hosting_doc_root into v_site from public.sites s where s.id = p_site_id;
  if not found then
    raise exception 'no site with id %', p_site_id using errcode = 'P0002';
  end if;
  if hosting_automator.row_in_removal(v_site.status_hosting) or exists (
    select 1 from hosting_automator.jobs r
    where r.site_id = p_site_id and r.kind = 'remove' and r.state in ('queued', 'running'))
  then
    raise exception 'site % (%) is removed or being removed: its credentials are deleted', p_site_id, v_site.domain
      using errcode = 'P0002';
  end if;
  select st.state, st.result into v_step from hosting_automator.steps st
  where st.site_id = p_site_id and st.step = 'cloudpanel_site';
  select * into v_cred from hosting_automator.credentials c where c.site_id = p_site_id;
  if v_step.state is distinct from 'done' then
    raise exception 'site % (%) has no CloudPanel site yet: its credentials exist once the site step is done',
      p_site_id, v_site.domain using errcode = 'P0002';
  end if;
  if v_cred.state is null then
    raise exception 'site % (%) was provisioned before hosting-automator kept credentials: its password is not stored; set a new one in CloudPanel',
      p_site_id, v_site.domain using errcode = 'P0002';
  elsif v_cred.state = 'not_stored' then
    raise exception 'site %: the password was not stored because this database has no Vault (supabase_vault)', p_site_id
      using errcode = '55000', hint = 'Supabase projects have Vault; on plain Postgres the password is not kept.';
  elsif v_cred.state = 'adopted' then
    raise exception 'site % (%) was adopted from an earlier run: its site already existed on CloudPanel, so its password was never known to hosting-automator; set a new one in CloudPanel',
      p_site_id, v_site.domain using errcode = 'P0002';
  end if;
  if hosting_automator.vault_present() then
    execute 'select decrypted_secret from vault.decrypted_secrets where id = $1' into v_password using v_cred.secret_id;
  end if;
  if v_password is null then
    raise exception 'site % (%): its password secret is missing from Vault (deleted by hand?)', p_site_id, v_site.domain
      using errcode = 'P0002';
  end if;
  -- The server by its name; before the fleet a server was recorded as host:port.
  select sv.host, sv.port into v_host, v_port from hosting_automator.servers sv where sv.name = v_cred.server;
  if not found then
    v_host := coalesce(substring(v_cred.server from '^(.*):[0-9]+$'), v_cred.server);
    v_port := substring(v_cred.server from ':([0-9]+)$')::integer;
  end if;
  return jsonb_build_object(
    'site_id', v_site.id,
    'domain', v_site.domain,
    'site_user', v_step.result ->> 'site_user',
    'password', v_password,
    'server', v_cred.server,
    'host', v_host,
    'port', v_port,
    'doc_root', coalesce(v_site.hosting_doc_root, v_step.result ->> 'doc_root'));
end
$$;

-- Grants: the worker's API for service_role only; nothing internal for API roles.
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb)',
    'public.hosting_server_trouble(bigint, uuid, text, text, jsonb)',
    'public.hosting_server_ok(text)',
    'public.hosting_servers()',
    'public.hosting_status(integer)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
