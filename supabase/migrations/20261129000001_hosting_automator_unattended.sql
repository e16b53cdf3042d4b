-- Unattended operation at the platform's limits:
--
--   * short leases, renewed while a step runs (the worker calls hosting_heartbeat), so a dead worker's slot
--     comes back within one lease;
--   * the doorbell rings once per free slot: a statement that makes many sites due, the sweep, a claim that
--     finds slots nobody fills (a dead worker's, one a stopping invocation gives up) all go through ring(),
--     which counts kicks still in flight against the free slots;
--   * a claim takes only a job whose expected remaining time (p90 of recent step durations) fits the time the
--     worker has left;
--   * the journal's step end and the next step's start are one statement (hosting_advance), and the last step
--     ends with the job (hosting_complete_job): five statements per site on the normal path;
--   * a site that went active without analytics gets an `analytics` job, retried by the queue with backoff;
--   * a failure class may carry an attempt limit: the same error that many times in a row fails the job.
--
-- Functions change signature here, so they are dropped and created again; old callers' argument lists still
-- resolve (new parameters have defaults).

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

alter table hosting_automator.settings
  add column analytics_max_attempts integer not null default 8 check (analytics_max_attempts between 1 and 100),
  add column ring_ttl_seconds integer not null default 15 check (ring_ttl_seconds between 2 and 300);
comment on column hosting_automator.settings.analytics_max_attempts is
  'Attempts of the automatic analytics backfill of a site that went active without a Matomo site.';
comment on column hosting_automator.settings.ring_ttl_seconds is
  'How long a kick counts as on its way (reserving a free slot) before another may be sent for that slot.';

-- `provision`: all steps. `analytics`: only the Matomo step of a site that is already active.
alter table hosting_automator.jobs
  add column kind text not null default 'provision' constraint jobs_kind_check check (kind in ('provision', 'analytics')),
  -- Failures in a row with the same code; a failure class with an attempt limit fails the job when it is reached.
  add column error_streak integer not null default 0 check (error_streak >= 0);

alter table hosting_automator.steps
  add column started_at timestamptz,
  add column duration_ms integer check (duration_ms >= 0);
-- The expected duration of a step is read from its most recent successful runs.
-- The module's own journal (one row per site and step), not the Hub's table; CONCURRENTLY cannot run inside
-- the migration's transaction.
-- squawk-ignore require-concurrent-index-creation
create index steps_recent_done on hosting_automator.steps (step, updated_at desc) where state = 'done';

-- The doorbell's requests, for /status to join with pg_net's responses (kept for a day; pg_net keeps 6 hours).
create table hosting_automator.kick_log (
  request_id bigint primary key,
  sent_at timestamptz not null default now()
);
comment on table hosting_automator.kick_log is 'pg_net request ids of the kicks this module sent.';
create index kick_log_sent on hosting_automator.kick_log (sent_at);
revoke all on hosting_automator.kick_log from public, anon, authenticated, service_role;

-- Kicks on their way: each reserves a free slot until a worker's first claim consumes it or it expires.
create table hosting_automator.rings (
  id bigint generated always as identity primary key,
  rung_at timestamptz not null default now()
);
comment on table hosting_automator.rings is
  'Doorbell kicks sent and not yet answered by a claim; they count against free slots for ring_ttl_seconds.';
revoke all on hosting_automator.rings from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------------------
-- The rules, each named once.

-- A job holds a slot while it runs under a live lease (an expired one is about to be reaped).
create function hosting_automator.slots_taken()
returns integer
language sql
stable
set search_path = ''
as $$
  select count(*)::integer from hosting_automator.jobs j where j.state = 'running' and j.lease_expires_at > now()
$$;

-- Ring the doorbell at most p_max times: once per free slot (cap minus running jobs minus kicks on their way),
-- and never more than there are due jobs. Returns the kicks sent. The worker's short transactions serialise
-- (p_serialise), so they cannot spend the same free slot twice; the trigger on public.sites does not, so a Hub's
-- transaction never waits for, or deadlocks with, another (two Hub statements at once may ring a slot twice:
-- the second kick finds nothing to claim).
create function hosting_automator.ring(p_max integer, p_serialise boolean default true)
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
  v_free := v_settings.server_concurrency - hosting_automator.slots_taken();
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

-- Journal the end of a step: `done`, `failed` or `skipped`, with its result, code, duration and an event.
-- p_done: {"step", "state", "result"?, "code"?, "message"?, "level"?, "duration_ms"?}. A done step stays done.
create function hosting_automator.journal_end(p_site uuid, p_job bigint, p_done jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_step hosting_automator.step_name := (p_done ->> 'step')::hosting_automator.step_name;
  v_state hosting_automator.step_state := (p_done ->> 'state')::hosting_automator.step_state;
  v_result jsonb := coalesce(p_done -> 'result', '{}'::jsonb);
begin
  if v_state = 'started' then
    raise exception 'a step ends done, failed or skipped' using errcode = '22023';
  end if;
  if jsonb_typeof(v_result) <> 'object' then
    raise exception 'the step result must be a JSON object' using errcode = '22023';
  end if;
  insert into hosting_automator.steps as st (site_id, step, state, result, last_error_code, last_job_id, duration_ms)
  values (p_site, v_step, v_state, v_result, p_done ->> 'code', p_job, (p_done ->> 'duration_ms')::integer)
  on conflict (site_id, step) do update set
    state = excluded.state,
    result = excluded.result,
    last_error_code = excluded.last_error_code,
    last_job_id = excluded.last_job_id,
    duration_ms = excluded.duration_ms,
    updated_at = now()
  where st.state <> 'done';
  if p_done ? 'message' then
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    values (p_site, p_job, v_step::text, coalesce(p_done ->> 'level', 'info')::hosting_automator.event_level,
      p_done ->> 'code', left(p_done ->> 'message', 2000));
  end if;
end
$$;

-- Journal the ends of several steps at once: p_done is one end (an object) or an array of them.
create function hosting_automator.journal_ends(p_site uuid, p_job bigint, p_done jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_end jsonb;
begin
  for v_end in
    select e from jsonb_array_elements(case when jsonb_typeof(p_done) = 'array' then p_done
      else jsonb_build_array(p_done) end) as a(e)
  loop
    perform hosting_automator.journal_end(p_site, p_job, v_end);
  end loop;
end
$$;

-- Journal the start of a step (before its remote call, so a step cut off mid-way shows as `started`).
create function hosting_automator.journal_start(p_site uuid, p_job bigint, p_step hosting_automator.step_name)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into hosting_automator.steps as st (site_id, step, state, attempts, last_job_id, started_at)
  values (p_site, p_step, 'started', 1, p_job, now())
  on conflict (site_id, step) do update set
    state = 'started',
    attempts = st.attempts + 1,
    last_job_id = excluded.last_job_id,
    started_at = now(),
    updated_at = now()
  where st.state <> 'done'
$$;

-- The worker's time check: p90 of the latest successful runs of each step, in milliseconds (steps with fewer
-- than three runs have no estimate yet).
create function hosting_automator.step_estimates()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(x.step, x.p90), '{}'::jsonb)
  from (
    select n.step, ceil(percentile_cont(0.9) within group (order by r.duration_ms))::integer as p90
    from unnest(enum_range(null::hosting_automator.step_name)) as n(step)
    cross join lateral (
      select st.duration_ms from hosting_automator.steps st
      where st.step = n.step and st.state = 'done' and st.duration_ms is not null
      order by st.updated_at desc
      limit 50
    ) r
    group by n.step
    having count(*) >= 3
  ) x
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Queueing: a job kind, and the row trigger no longer kicks (the statement trigger rings once per free slot).

drop function hosting_automator.queue_job(uuid);
create function hosting_automator.queue_job(
  p_site_id uuid,
  p_kind text default 'provision',
  out job_id bigint,
  out created boolean
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings hosting_automator.settings;
begin
  select * into v_settings from hosting_automator.settings;
  insert into hosting_automator.jobs (site_id, kind, max_attempts)
  values (p_site_id, p_kind,
    case when p_kind = 'analytics' then v_settings.analytics_max_attempts else v_settings.max_attempts end)
  on conflict (site_id) where state in ('queued', 'running') do nothing
  returning id into job_id;
  created := job_id is not null;
  if created then
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (p_site_id, job_id, 'info', 'job_queued',
      case when p_kind = 'analytics' then 'Analytics job queued.' else 'Job queued.' end);
  else
    select j.id into job_id
    from hosting_automator.jobs j
    where j.site_id = p_site_id and j.state in ('queued', 'running');
  end if;
end
$$;

create or replace function hosting_automator.on_site_ready()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Counted for the statement trigger below (a setting local to the transaction): how many jobs it queued.
  if (hosting_automator.queue_job(new.id)).created then
    perform set_config('hosting_automator.queued',
      (coalesce(nullif(current_setting('hosting_automator.queued', true), ''), '0')::integer + 1)::text, true);
  end if;
  return null;
end
$$;

-- After a statement that inserts sites or changes their status columns (row triggers run first): ring for the
-- jobs it queued, once per free slot. A bulk DNS flip of 500 rows sends at most `cap` kicks. The row trigger
-- counts, so a Hub statement over many rows costs no copy of its rows (as a transition table would).
create function hosting_automator.on_sites_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_queued integer := coalesce(nullif(current_setting('hosting_automator.queued', true), ''), '0')::integer;
begin
  if v_queued > 0 then
    perform set_config('hosting_automator.queued', '0', true);
    perform hosting_automator.ring(v_queued, false);
  end if;
  return null;
end
$$;

create trigger hosting_automator_ring
  after insert or update of status_dns, status_hosting on public.sites
  for each statement execute function hosting_automator.on_sites_changed();

-- ---------------------------------------------------------------------------------------------------------
-- The worker's API.

drop function public.hosting_claim_jobs(text, text, integer, integer, uuid);
-- Claim due jobs with a lease, within the per-server cap. With p_time_left_ms, only jobs whose expected
-- remaining steps (p_plan: kind → step names; estimates from step_estimates(), else p_default_step_ms each)
-- fit in it. p_first: the caller's first claim, which answers one kick on its way. Afterwards the doorbell
-- rings for slots that are still free while jobs are due: a slot a dead worker held, or the one this caller
-- gives up when nothing fits its remaining time.
create function public.hosting_claim_jobs(
  p_worker text,
  p_server text,
  p_lease_seconds integer,
  p_limit integer default 1,
  p_site_id uuid default null,
  p_time_left_ms integer default null,
  p_plan jsonb default null,
  p_default_step_ms integer default 15000,
  p_first boolean default false
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
  estimates jsonb
)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cap integer;
  v_running integer;
  v_take integer;
  v_estimates jsonb;
  v_claimed integer := 0;
  v_starved boolean;
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
  if p_time_left_ms is not null and p_time_left_ms < 0 then
    raise exception 'p_time_left_ms must not be negative' using errcode = '22023';
  end if;
  if p_plan is not null and jsonb_typeof(p_plan) <> 'object' then
    raise exception 'p_plan must be a JSON object of step-name arrays' using errcode = '22023';
  end if;
  if p_default_step_ms is null or p_default_step_ms not between 0 and 3600000 then
    raise exception 'p_default_step_ms must be from 0 to 3600000' using errcode = '22023';
  end if;

  perform hosting_automator.reap_expired_leases();
  v_estimates := hosting_automator.step_estimates();

  -- Claims for one server run one at a time, so concurrent claimers cannot both see a free slot.
  perform pg_advisory_xact_lock(hashtextextended('hosting_automator.claim:' || p_server, 0));
  select s.server_concurrency into v_cap from hosting_automator.settings s;
  select count(*)::integer into v_running
  from hosting_automator.jobs j
  where j.state = 'running' and j.server = p_server;
  v_take := least(p_limit, v_cap - v_running);

  if v_take > 0 then
    return query
    with candidates as (
      select j.id, j.site_id, j.kind, j.run_at
      from hosting_automator.jobs j
      where j.state = 'queued' and j.run_at <= now() and (p_site_id is null or j.site_id = p_site_id)
      order by j.run_at, j.id
      for update skip locked
      limit greatest(v_take * 5, 20)
    ), fitting as (
      select c.id
      from candidates c
      where p_time_left_ms is null or (
        select coalesce(sum(coalesce((v_estimates ->> p.step)::integer, p_default_step_ms)), 0)
        from jsonb_array_elements_text(coalesce(p_plan -> c.kind, '[]'::jsonb)) as p(step)
        where not exists (
          select 1 from hosting_automator.steps st
          where st.site_id = c.site_id and st.step::text = p.step and st.state = 'done')
      ) <= p_time_left_ms
      order by c.run_at, c.id
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
      from fitting
      where j.id = fitting.id
      returning j.*
    ), marked as (
      -- An active site with an analytics job stays active.
      update public.sites s set status_hosting = 'provisioning'
      from claimed c
      where s.id = c.site_id and s.status_hosting is distinct from 'active'
      returning s.id
    ), logged as (
      insert into hosting_automator.events (site_id, job_id, level, code, message)
      select c.site_id, c.id, 'info', 'job_claimed',
        format('Attempt %s of %s (%s) started by worker %s.', c.attempts, c.max_attempts, c.kind, p_worker)
      from claimed c
      returning 1
    )
    select c.id, c.lease_token, c.site_id, s.domain, char_length(s.domain), octet_length(s.domain), c.kind,
      c.attempts,
      c.max_attempts, c.lease_expires_at,
      coalesce((
        select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
        from hosting_automator.steps st
        where st.site_id = c.site_id
      ), '{}'::jsonb),
      v_estimates
    from claimed c
    join public.sites s on s.id = c.site_id;
    get diagnostics v_claimed = row_count;
  end if;

  -- Nothing fitted the time left although jobs are due: the caller stops and gives its slot up.
  v_starved := v_take > 0 and v_claimed = 0 and p_time_left_ms is not null and exists (
    select 1 from hosting_automator.jobs j
    where j.state = 'queued' and j.run_at <= now() and (p_site_id is null or j.site_id = p_site_id));
  if p_first and v_starved then
    -- A fresh invocation without time for one job runs on a worker about to stop; a kick now would likely
    -- reach that same worker. Its kick stays counted until it expires; then a claim or the sweep rings again.
    return;
  end if;
  if p_first then
    delete from hosting_automator.rings r where r.id = (select min(r2.id) from hosting_automator.rings r2);
  end if;
  -- Slots still free while jobs are due: a dead worker's, or this caller's when nothing fits its time left.
  perform hosting_automator.ring(v_cap);
end
$$;

-- One canonical domain (lower-case ASCII, IDN as punycode, as the worker computes it) has one hosting owner:
-- two rows whose domains differ only in spelling (case, Unicode or punycode) cannot share one CloudPanel
-- site. The first job to start work for a domain owns it; the primary key decides between concurrent claims.
create table hosting_automator.domain_owners (
  domain text primary key check (domain ~ '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$'),
  site_id uuid not null references public.sites (id) on delete cascade,
  created_at timestamptz not null default now()
);
comment on table hosting_automator.domain_owners is
  'Which site owns each canonical domain; a second row for the same domain fails with domain_taken.';
create index domain_owners_site on hosting_automator.domain_owners (site_id);
revoke all on hosting_automator.domain_owners from public, anon, authenticated, service_role;

-- End the running step (p_done) and/or start the next (p_start), renewing the lease: one statement between
-- two steps. With p_domain (the job's first step), the site takes ownership of that canonical domain, or, when
-- another site owns it, the job fails at once with `domain_taken` and nothing is started.
-- Answers {"ok": true}; {"ok": false, "reason": "lease_lost"} (nothing written);
-- {"ok": false, "reason": "domain_taken", "message": …} (the job failed).
create function public.hosting_advance(
  p_job_id bigint,
  p_lease_token uuid,
  p_lease_seconds integer,
  p_done jsonb default null,
  p_start text default null,
  p_domain text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
  v_owner uuid;
  v_owner_domain text;
  v_message text;
begin
  if p_lease_seconds is null or p_lease_seconds not between 5 and 3600 then
    raise exception 'p_lease_seconds must be from 5 to 3600' using errcode = '22023';
  end if;
  update hosting_automator.jobs j set
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    current_step = coalesce(p_start::hosting_automator.step_name, j.current_step),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.site_id into v_site;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'lease_lost');
  end if;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_site, p_job_id, p_done);
  end if;
  if p_domain is not null then
    insert into hosting_automator.domain_owners (domain, site_id) values (p_domain, v_site)
    on conflict (domain) do nothing;
    select o.site_id into v_owner from hosting_automator.domain_owners o where o.domain = p_domain;
    if v_owner is distinct from v_site then
      select s.domain into v_owner_domain from public.sites s where s.id = v_owner;
      v_message := left(format(
        'The domain %s is already hosted for another row of public.sites (id %s, domain %s); a domain has one site. Delete or correct one of the two rows, then retry.',
        p_domain, v_owner, coalesce(v_owner_domain, '?')), 500);
      perform public.hosting_fail_job(p_job_id, p_lease_token, 'domain_taken', v_message,
        format('canonical domain %s is owned by site %s', p_domain, v_owner), true);
      return jsonb_build_object('ok', false, 'reason', 'domain_taken', 'message', v_message);
    end if;
  end if;
  if p_start is not null then
    perform hosting_automator.journal_start(v_site, p_job_id, p_start::hosting_automator.step_name);
  end if;
  return jsonb_build_object('ok', true);
end
$$;

drop function public.hosting_complete_job(bigint, uuid, text, integer, text);
-- Finish a job, ending its last step (p_done) in the same statement: the job succeeds and the site becomes
-- active with its doc root and Matomo id. A null Matomo id keeps the site's id; with p_backfill_analytics an
-- `analytics` job is queued (after the first backoff) to add the Matomo site later. False when the lease is lost.
create function public.hosting_complete_job(
  p_job_id bigint,
  p_lease_token uuid,
  p_doc_root text,
  p_matomo_site_id integer default null,
  p_message text default null,
  p_done jsonb default null,
  p_backfill_analytics boolean default false
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site uuid;
  v_backfill bigint;
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
    error_streak = 0,
    finished_at = now(),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.site_id into v_site;
  if not found then
    return false;
  end if;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_site, p_job_id, p_done);
  end if;

  update public.sites s set
    status_hosting = 'active',
    hosting_doc_root = p_doc_root,
    matomo_site_id = coalesce(p_matomo_site_id, s.matomo_site_id),
    error_message = null
  where s.id = v_site;

  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'job_succeeded', left(coalesce(p_message, 'Site is active.'), 2000));

  if p_backfill_analytics and p_matomo_site_id is null then
    insert into hosting_automator.jobs (site_id, kind, max_attempts, run_at)
    select v_site, 'analytics', s.analytics_max_attempts, now() + hosting_automator.retry_delay(1)
    from hosting_automator.settings s
    on conflict (site_id) where state in ('queued', 'running') do nothing
    returning id into v_backfill;
    if v_backfill is not null then
      insert into hosting_automator.events (site_id, job_id, level, code, message)
      values (v_site, v_backfill, 'info', 'analytics_backfill_queued',
        'The site is active without analytics; the Matomo step is retried automatically.');
    end if;
  end if;
  return true;
end
$$;

drop function public.hosting_fail_job(bigint, uuid, text, text, text, boolean);
-- Fail an attempt, ending the failed step (p_done) in the same statement. Transient with attempts left: back to
-- queued, next run time from the backoff. Permanent, out of attempts, or the same code p_attempt_limit times in
-- a row: the job fails, and the site (unless already active) gets `failed` with the public message only.
-- Returns {"state": "queued", "run_at", "attempts"} or {"state": "failed", "attempts"}, or null when the lease
-- is lost.
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
  where j.id = d.id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.id, j.site_id, j.state, j.run_at, j.attempts, j.max_attempts, j.current_step, j.kind into v_job;
  if not found then
    return null;
  end if;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, v_job.id, p_done);
  end if;

  if v_job.state = 'failed' then
    -- A live site whose analytics job failed is not taken down.
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

drop function public.hosting_release_job(bigint, uuid, text);
-- Give a job back unfinished without spending an attempt (the worker's time ran out, or it is shutting down),
-- ending a step cut short (p_done) in the same statement, and ring for the slot it frees.
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

-- Re-queue failed sites, and active sites missing analytics (an `analytics` job): one site, or all of them.
create or replace function public.hosting_retry(p_site_id uuid default null, p_all_failed boolean default false)
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
      -- Back to pending: the row trigger queues the job (when DNS is active), the statement trigger rings.
      update public.sites s set status_hosting = 'pending', error_message = null where s.id = v_site.id;
      insert into hosting_automator.events (site_id, level, code, message)
      values (v_site.id, 'info', 'retry_requested', 'An operator asked to retry this failed site.');
      v_requeued := v_requeued || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'reason', case when v_site.status_dns = 'active' then 'failed' else 'failed_waiting_for_dns' end);
    elsif v_site.status_hosting = 'active' and v_site.matomo_site_id is null then
      select * into v_job from hosting_automator.queue_job(v_site.id, 'analytics');
      -- An analytics job waiting for its backoff runs now.
      update hosting_automator.jobs j set run_at = now() where j.id = v_job.job_id and j.state = 'queued';
      v_requeued := v_requeued || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'reason', 'missing_analytics');
    else
      v_skipped := v_skipped || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'status_hosting', v_site.status_hosting);
    end if;
  end loop;
  perform hosting_automator.ring(jsonb_array_length(v_requeued));
  if p_site_id is not null and jsonb_array_length(v_requeued) + jsonb_array_length(v_skipped) = 0 then
    return jsonb_build_object('found', false, 'requeued', v_requeued, 'skipped', v_skipped);
  end if;
  return jsonb_build_object('found', true, 'requeued', v_requeued, 'skipped', v_skipped);
end
$$;

-- Only service_role, the Edge Function's role, may call the worker's API; nothing internal is for API roles.
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean)',
    'public.hosting_advance(bigint, uuid, integer, jsonb, text, text)',
    'public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean)',
    'public.hosting_fail_job(bigint, uuid, text, text, text, boolean, integer, jsonb)',
    'public.hosting_release_job(bigint, uuid, text, jsonb)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;

-- Hosted pg_cron (1.5 and later) runs jobs every few seconds; a sweep every 20 s brings a dead worker's slot
-- back sooner. Older pg_cron takes only minutes: then every minute.
create or replace function hosting_automator.schedule_sweep()
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    return 'pg_cron is not installed: the sweep is not scheduled';
  end if;
  begin
    perform cron.schedule('hosting-automator-sweep', '20 seconds', 'select hosting_automator.sweep()');
    return 'scheduled hosting-automator-sweep every 20 seconds';
  exception when others then
    perform cron.schedule('hosting-automator-sweep', '* * * * *', 'select hosting_automator.sweep()');
    return 'scheduled hosting-automator-sweep every minute (this pg_cron has no seconds schedules)';
  end;
end
$$;
revoke all on function hosting_automator.schedule_sweep() from public, anon, authenticated, service_role;

do $$
begin
  raise notice 'hosting-automator: %', hosting_automator.schedule_sweep();
end
$$;
