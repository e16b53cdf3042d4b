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

-- What later calls need to know about a site, kept from the ends of its steps (`keeps`): e.g. the site user and
-- doc root a removal deletes, the Matomo site id. Merged on each step end; goes with the journal.
create table hosting_automator.site_facts (
  site_id uuid primary key,
  facts jsonb not null default '{}' check (jsonb_typeof(facts) = 'object'),
  updated_at timestamptz not null default now()
);
comment on table hosting_automator.site_facts is
  'Per site, the values its steps kept for later calls (a removal''s target, the credentials'' site user).';

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

-- A JSON number that is a whole number from p_min to p_max.
create function hosting_automator.is_whole_number(p_value jsonb, p_min numeric, p_max numeric)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_number numeric;
begin
  if jsonb_typeof(p_value) is distinct from 'number' then
    return false;
  end if;
  v_number := (p_value #>> '{}')::numeric;
  return v_number between p_min and p_max and v_number = trunc(v_number);
end
$$;

-- Refuses (22023, naming the field and the rule) step ends that are not what the journal takes: one end (an
-- object) or an array of them, each {"step", "state": done|failed|skipped, "result"?: object, "code"?, "message"?,
-- "level"?, "duration_ms"?, "settles_password"?: bool, "keeps"?: object}; a null counts as left out. p_field
-- names them in the error.
create function hosting_automator.check_ends(p_done jsonb, p_field text)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  v_end jsonb;
  v_index bigint;
  v_name text;
  v_key text;
begin
  if p_done is null or jsonb_typeof(p_done) = 'null' then
    return;
  end if;
  if jsonb_typeof(p_done) not in ('object', 'array') then
    raise exception '% must be a step end (an object) or an array of them', p_field using errcode = '22023';
  end if;
  for v_end, v_index in
    select e, i from jsonb_array_elements(case when jsonb_typeof(p_done) = 'array' then p_done
      else jsonb_build_array(p_done) end) with ordinality as a(e, i)
  loop
    v_name := case when jsonb_typeof(p_done) = 'array' then format('%s[%s]', p_field, v_index - 1) else p_field end;
    if jsonb_typeof(v_end) <> 'object' then
      raise exception '% must be a step end (an object)', v_name using errcode = '22023';
    end if;
    select k into v_key from jsonb_object_keys(v_end) k
    where k not in ('step', 'state', 'result', 'code', 'message', 'level', 'duration_ms', 'settles_password', 'keeps')
    order by k limit 1;
    if v_key is not null then
      raise exception '%.% is not a field of a step end', v_name, v_key using errcode = '22023';
    end if;
    -- Only what is there is checked below (nulls inside result and keeps do not matter here).
    v_end := jsonb_strip_nulls(v_end);
    if not coalesce(v_end ->> 'step' in (select s::text from unnest(enum_range(null::hosting_automator.step_name)) s)
      and jsonb_typeof(v_end -> 'step') = 'string', false)
    then
      raise exception '%.step must be a step name (hosting_automator.step_name)', v_name using errcode = '22023';
    end if;
    if not coalesce(v_end ->> 'state' in ('done', 'failed', 'skipped') and jsonb_typeof(v_end -> 'state') = 'string',
      false)
    then
      raise exception '%.state must be done, failed or skipped (a step ends)', v_name using errcode = '22023';
    end if;
    if v_end ? 'result' and jsonb_typeof(v_end -> 'result') <> 'object' then
      raise exception '%.result must be a JSON object', v_name using errcode = '22023';
    end if;
    if v_end ? 'code' and not coalesce(jsonb_typeof(v_end -> 'code') = 'string'
      and v_end ->> 'code' ~ '^[a-z][a-z0-9_]{0,63}$', false)
    then
      raise exception '%.code must be a lower-case code (a-z, 0-9 and _, up to 64)', v_name using errcode = '22023';
    end if;
    if v_end ? 'message' and jsonb_typeof(v_end -> 'message') <> 'string' then
      raise exception '%.message must be a string', v_name using errcode = '22023';
    end if;
    if v_end ? 'level' and not coalesce(jsonb_typeof(v_end -> 'level') = 'string' and v_end ->> 'level' in (
      select l::text from unnest(enum_range(null::hosting_automator.event_level)) l), false)
    then
      raise exception '%.level must be debug, info, warn or error', v_name using errcode = '22023';
    end if;
    if v_end ? 'duration_ms' and not hosting_automator.is_whole_number(v_end -> 'duration_ms', 0, 2147483647) then
      raise exception '%.duration_ms must be a whole number of milliseconds, not negative', v_name
        using errcode = '22023';
    end if;
    if v_end ? 'settles_password' and jsonb_typeof(v_end -> 'settles_password') <> 'boolean' then
      raise exception '%.settles_password must be true or false', v_name using errcode = '22023';
    end if;
    if v_end ? 'keeps' and jsonb_typeof(v_end -> 'keeps') <> 'object' then
      raise exception '%.keeps must be a JSON object (the values to keep for the site)', v_name using errcode = '22023';
    end if;
  end loop;
end
$$;

-- Journal the end of a step: `done`, `failed` or `skipped`, with its result, code, duration and an event (p_done
-- was checked by check_ends). A done step stays done. What the step means to the database comes with its end:
-- `settles_password` (its result's `credentials` says whether the stored password is the site user's) and
-- `keeps` (values kept for the site when the journal takes the done end).
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
  v_taken integer;
begin
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
  get diagnostics v_taken = row_count;
  if v_state = 'done' and coalesce((p_done ->> 'settles_password')::boolean, false) then
    perform hosting_automator.settle_credentials(p_site, v_result);
  end if;
  if v_state = 'done' and v_taken > 0 and jsonb_typeof(p_done -> 'keeps') = 'object' then
    insert into hosting_automator.site_facts as f (site_id, facts) values (p_site, p_done -> 'keeps')
    on conflict (site_id) do update set facts = f.facts || excluded.facts, updated_at = now();
  end if;
  if p_done ->> 'message' is not null then
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
