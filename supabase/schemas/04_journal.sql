-- The journal: what has been done for a site, step by step, and the event log operators read
-- (docs/architecture.md §4). A job's steps are journaled as they start and end, so a retried or resumed job skips
-- what is done.

-- One row per site and step; survives jobs (and a deleted row, until its removal has finished). Columns in the
-- order an installed database has them.
create table hosting_automator.steps (
  site_id uuid not null,
  step hosting_automator.step_name not null,
  state hosting_automator.step_state not null,
  -- e.g. {"site_user": …, "doc_root": …} or {"matomo_site_id": 7}; never a password.
  result jsonb not null default '{}' check (jsonb_typeof(result) = 'object'),
  attempts integer not null default 0 check (attempts >= 0),
  last_error_code text,
  last_job_id bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  duration_ms integer check (duration_ms >= 0),
  -- The CloudPanel server the step ran on.
  server text,
  primary key (site_id, step)
);
comment on table hosting_automator.steps is 'Step journal per site: a resumed or retried job skips steps that are done.';
-- The expected duration of a step is read from its most recent successful runs.
create index steps_recent_done on hosting_automator.steps (step, updated_at desc) where state = 'done';

-- Append-only: what happened, for operators. No foreign key, so it outlives deleted sites; only the retention
-- deletes from it (docs/architecture.md §12).
create table hosting_automator.events (
  id bigint generated always as identity primary key,
  site_id uuid,
  job_id bigint,
  step text,
  level hosting_automator.event_level not null,
  code text,
  message text not null check (length(message) <= 2000),
  created_at timestamptz not null default now()
);
comment on table hosting_automator.events is 'Append-only event log (site, job, step, level, message, time). Messages are redacted.';
create index events_site on hosting_automator.events (site_id, id);
create index events_created on hosting_automator.events (created_at);

-- The event log stays append-only for everyone; only the retention may delete, and only in its own transaction
-- (it sets hosting_automator.retention for that transaction).
create function hosting_automator.refuse_change() returns trigger
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

create trigger events_append_only before update or delete on hosting_automator.events
  for each row execute function hosting_automator.refuse_change();
create trigger events_no_truncate before truncate on hosting_automator.events
  for each statement execute function hosting_automator.refuse_change();

-- Journal the start of a step, with the server it runs on (before its remote call, so a step cut off mid-way
-- shows as `started`). A done step stays done.
create function hosting_automator.journal_start(p_site uuid, p_job bigint, p_step hosting_automator.step_name)
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

-- Journal the end of a step: `done`, `failed` or `skipped`, with its result, code, duration and an event, and
-- settle the credentials when the site step is done. p_done: {"step", "state", "result"?, "code"?, "message"?,
-- "level"?, "duration_ms"?}. A done step stays done.
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
  if v_step = 'cloudpanel_site' and v_state = 'done' then
    perform hosting_automator.settle_credentials(p_site, v_result);
  end if;
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

-- Journal a step (started, done, failed or skipped), with an optional event, under the job's lease. False when
-- the lease is lost. A step that is done stays done.
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
