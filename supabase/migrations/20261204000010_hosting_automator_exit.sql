-- One guarded exit from `running`, and the steps' policies sent with the transitions instead of named in SQL:
--
--   * public.hosting_exit(job, lease token, outcome) is the one way a worker ends its hold on a job. The outcome
--     is a value: `active`, `removed`, `fail`, `snooze` (wait on a named schedule without spending an attempt),
--     `release` or `server_trouble`, checked field by field (check_outcome). It goes through the one lease guard
--     (hosting_automator.lock_leased_job), decides the job's next state once, writes the job in one UPDATE, then
--     the outcome's effects follow. It replaces hosting_complete_job, hosting_complete_removal, hosting_fail_job,
--     hosting_wait_for_dns, hosting_release_job and hosting_server_trouble.
--   * What a step means to the database travels with the step's end: `settles_password` (its result settles the
--     stored password) and `keeps` (values a later removal or credentials call needs, kept per site in
--     hosting_automator.site_facts). The kind that backfills an optional step travels with the `active` outcome.
--   * A queued job says why it waits (jobs.waiting_for: its server, a snooze schedule, or capacity), so the
--     server trigger, the claim and the operator's report read that instead of error codes.
--
-- No function here names a step or an error code the worker sends. The codes SQL writes itself: interrupted,
-- cancelled, job_cancelled, domain_taken, domain_being_removed, no_server_capacity (and its event codes).
-- The functions are as in supabase/schemas (04_journal, 05_credentials, 06_fleet, 07_claim, 08_leases, 09_exit,
-- 10_removal, 12_reports).

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- ---------------------------------------------------------------------------------------------------------
-- Tables.

-- What later calls need to know about a site, kept from the ends of its steps (`keeps`): e.g. the site user and
-- doc root a removal deletes, the Matomo site id. Merged on each step end; goes with the journal.
create table hosting_automator.site_facts (
  site_id uuid primary key,
  facts jsonb not null default '{}' check (jsonb_typeof(facts) = 'object'),
  updated_at timestamptz not null default now()
);
comment on table hosting_automator.site_facts is
  'Per site, the values its steps kept for later calls (a removal''s target, the credentials'' site user).';
revoke all on hosting_automator.site_facts from public, anon, authenticated, service_role;

-- Why a queued job waits, when it is not its own retry: its server's circuit (`server`), a snooze schedule
-- (`dns`), or a server with room (`capacity`). Set by the exit and the claim, cleared when the job is claimed.
alter table hosting_automator.jobs
  add column waiting_for text constraint jobs_waiting_for_check check (waiting_for in ('server', 'capacity', 'dns'));
-- The module's own jobs table, which only the module writes: the check's scan holds none of the Hub's tables.
-- squawk-ignore constraint-missing-not-valid
alter table hosting_automator.jobs add constraint jobs_waiting_only_queued check (waiting_for is null or state = 'queued');
comment on column hosting_automator.jobs.waiting_for is
  'Why a queued job waits: server (its circuit is open), a snooze schedule (dns), or capacity (no server has room).';

-- ---------------------------------------------------------------------------------------------------------
-- The rules, each named once.

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
create or replace function hosting_automator.journal_end(p_site uuid, p_job bigint, p_done jsonb)
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

-- The schedules a job may wait on without spending an attempt (a snooze), each a group of settings: the first
-- wait (doubling with jitter up to the longest), how long the waiting may last from the first journal entry of
-- the step that waits, and the words the event log and the row use.
create function hosting_automator.snooze_schedule(p_name text)
returns table (backoff_seconds integer, backoff_max_seconds integer, limit_hours integer, label text, gave_up text)
language sql
stable
set search_path = ''
as $$
  select x.backoff_seconds, x.backoff_max_seconds, x.limit_hours, x.label, x.gave_up
  from hosting_automator.settings s
  cross join lateral (values
    ('dns', s.dns_backoff_seconds, s.dns_backoff_max_seconds, s.dns_wait_hours, 'DNS',
      'DNS has not pointed at the server')
  ) as x(name, backoff_seconds, backoff_max_seconds, limit_hours, label, gave_up)
  where x.name = p_name
$$;

-- A text Postgres reads as a timestamp with its time zone (ISO 8601, as JSON carries one).
create function hosting_automator.is_timestamp(p_text text)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_text !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$' then
    return false;
  end if;
  perform p_text::timestamptz;
  return true;
exception when others then
  return false;
end
$$;

-- Refuses (22023, naming the field and the rule) an outcome of hosting_exit that is not one of its types with
-- that type's fields. A field that may be null may also be left out; any other field is refused.
create function hosting_automator.check_outcome(p_outcome jsonb)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  v_type text := p_outcome ->> 'type';
  v_field record;
  v_value jsonb;
  v_known text[] := array['type'];
  v_key text;
begin
  if p_outcome is null or jsonb_typeof(p_outcome) <> 'object' then
    raise exception 'the outcome must be a JSON object with a type' using errcode = '22023';
  end if;
  if jsonb_typeof(p_outcome -> 'type') is distinct from 'string'
    or v_type not in ('active', 'removed', 'fail', 'snooze', 'release', 'server_trouble')
  then
    raise exception 'outcome.type must be active, removed, fail, snooze, release or server_trouble'
      using errcode = '22023';
  end if;
  -- Each type's fields: the rule its value keeps, and whether it is required (else it may be null or absent).
  for v_field in
    select f.name, f.rule, f.required
    from (values
      ('active', 'done', 'step ends', false),
      ('active', 'message', 'a string', false),
      ('active', 'doc_root', 'a doc root like /home/<site user>/htdocs/<domain>', true),
      ('active', 'matomo_site_id', 'a positive integer', false),
      ('active', 'certificate_expires_at', 'an ISO 8601 timestamp with a time zone', false),
      ('active', 'backfill_kind', 'a build job kind (provision, analytics)', false),
      ('removed', 'done', 'step ends', false),
      ('removed', 'message', 'a string', false),
      ('fail', 'done', 'step ends', false),
      ('fail', 'code', 'a lower-case code (a-z, 0-9 and _, up to 64)', true),
      ('fail', 'public_message', 'a string of 1 to 500 characters', true),
      ('fail', 'internal_message', 'a string', false),
      ('fail', 'permanent', 'true or false', true),
      ('fail', 'attempt_limit', 'a positive integer', false),
      ('snooze', 'done', 'step ends', false),
      ('snooze', 'code', 'a lower-case code (a-z, 0-9 and _, up to 64)', true),
      ('snooze', 'public_message', 'a string of 1 to 500 characters', true),
      ('snooze', 'internal_message', 'a string', false),
      ('snooze', 'schedule', 'a snooze schedule (hosting_automator.snooze_schedule: dns)', true),
      ('release', 'done', 'step ends', false),
      ('release', 'reason', 'a string', false),
      ('server_trouble', 'done', 'step ends', false),
      ('server_trouble', 'code', 'a lower-case code (a-z, 0-9 and _, up to 64)', true),
      ('server_trouble', 'message', 'a string', false)
    ) as f(type, name, rule, required)
    where f.type = v_type
  loop
    v_known := v_known || v_field.name;
    v_value := p_outcome -> v_field.name;
    if v_value is null or jsonb_typeof(v_value) = 'null' then
      if v_field.required then
        raise exception 'outcome.% is required (type %): %', v_field.name, v_type, v_field.rule
          using errcode = '22023';
      end if;
      continue;
    end if;
    if v_field.rule = 'step ends' then
      perform hosting_automator.check_ends(v_value, 'outcome.' || v_field.name);
      continue;
    end if;
    if not (case
      when v_field.rule = 'true or false' then jsonb_typeof(v_value) = 'boolean'
      when v_field.rule = 'a positive integer' then hosting_automator.is_whole_number(v_value, 1, 2147483647)
      when jsonb_typeof(v_value) <> 'string' then false
      when v_field.rule = 'a string' then true
      when v_field.rule like 'a string of 1 to 500%' then length(v_value #>> '{}') between 1 and 500
      when v_field.rule like 'a lower-case code%' then (v_value #>> '{}') ~ '^[a-z][a-z0-9_]{0,63}$'
      when v_field.rule like 'a doc root%' then
        (v_value #>> '{}') ~ '^/home/[a-z][a-z0-9-]{0,31}/htdocs/[a-z0-9.-]{1,253}$'
      when v_field.rule like 'an ISO 8601 timestamp%' then hosting_automator.is_timestamp(v_value #>> '{}')
      when v_field.rule like 'a build job kind%' then (v_value #>> '{}') in ('provision', 'analytics')
      when v_field.rule like 'a snooze schedule%' then
        exists (select 1 from hosting_automator.snooze_schedule(v_value #>> '{}'))
      else false
    end) then
      raise exception 'outcome.% must be %', v_field.name, v_field.rule using errcode = '22023';
    end if;
  end loop;
  select k into v_key from jsonb_object_keys(p_outcome) k where k <> all (v_known) order by k limit 1;
  if v_key is not null then
    raise exception 'outcome.% is not a field of type % (its fields: %)', v_key, v_type,
      array_to_string(v_known[2:], ', ') using errcode = '22023';
  end if;
end
$$;

-- ---------------------------------------------------------------------------------------------------------
-- The worker's API.

-- The one way a worker ends its hold on a running job, by an outcome value (docs/architecture.md §4):
--   {"type": "active", "done", "message", "doc_root", "matomo_site_id", "certificate_expires_at", "backfill_kind"}
--       a build job succeeds; the row becomes active with its doc root, Matomo id (null keeps the row's) and
--       certificate expiry (null keeps the row's), unless it is in removal; with backfill_kind and no Matomo id,
--       a job of that kind is queued after the first backoff (not for a job a removal superseded);
--   {"type": "removed", "done", "message"}
--       a removal succeeds; the site's journal, facts, domain ownership, placement and password go, and a kept
--       row becomes 'removed';
--   {"type": "fail", "done", "code", "public_message", "internal_message", "permanent", "attempt_limit"}
--       transient with attempts left: queued after the backoff; permanent, out of attempts, or the same code
--       attempt_limit times in a row: failed, and a build job's row (unless active or in removal) gets `failed`
--       with the public message; a removal's row keeps 'removing' with the message;
--   {"type": "snooze", "done", "code", "public_message", "internal_message", "schedule"}
--       not ready yet: queued again on the schedule's backoff without spending the attempt; once the job's current
--       step has waited the schedule's limit since it was first journaled, a permanent `fail` with that code;
--   {"type": "release", "done", "reason"}
--       given back unfinished (time ran out, shutdown), attempt kept, due now; rings for the slot it frees;
--   {"type": "server_trouble", "done", "code", "message"}
--       the job's server could not be reached: its circuit opens with backoff (failures while it is open count
--       once) and the job waits for it, attempt kept.
-- `done` is the step ends journaled with the exit (see check_ends). Answers {"ok": false, "reason": "lease_lost"}
-- (nothing written) or {"ok": true, "state", "run_at" (when queued), "attempts"}. A malformed outcome raises 22023
-- and changes nothing.
create function public.hosting_exit(p_job_id bigint, p_lease_token uuid, p_outcome jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_type text := p_outcome ->> 'type';
  v_job hosting_automator.jobs;
  v_next hosting_automator.jobs;
  v_code text := p_outcome ->> 'code';
  v_public text := p_outcome ->> 'public_message';
  v_permanent boolean;
  v_attempt_limit integer;
  v_schedule record;
  v_since timestamptz;
  v_server hosting_automator.servers;
  v_until timestamptz;
  v_backfill bigint;
begin
  perform hosting_automator.check_outcome(p_outcome);
  v_permanent := coalesce((p_outcome ->> 'permanent')::boolean, false);
  v_attempt_limit := (p_outcome ->> 'attempt_limit')::integer;
  select * into v_job from hosting_automator.lock_leased_job(p_job_id, p_lease_token);
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'lease_lost');
  end if;
  if v_type = 'active' and v_job.kind = 'remove' then
    raise exception 'outcome.type active finishes a build job; job % is a removal (its outcome is removed)', p_job_id
      using errcode = '22023';
  elsif v_type = 'removed' and v_job.kind <> 'remove' then
    raise exception 'outcome.type removed finishes a removal; job % is a % job (its outcome is active)', p_job_id,
      v_job.kind using errcode = '22023';
  end if;

  -- A snooze past its schedule's limit, counted from the first journal entry of the step that waits, fails.
  if v_type = 'snooze' then
    select * into v_schedule from hosting_automator.snooze_schedule(p_outcome ->> 'schedule');
    select st.created_at into v_since from hosting_automator.steps st
    where st.site_id = v_job.site_id and st.step = v_job.current_step;
    if v_since < now() - make_interval(hours => v_schedule.limit_hours) then
      v_type := 'fail';
      v_public := left(format('%s for %s hours: %s', v_schedule.gave_up, v_schedule.limit_hours, v_public), 500);
      v_permanent := true;
    end if;
  end if;

  -- The job's next state, decided once.
  v_next := v_job;
  v_next.lease_owner := null;
  v_next.lease_token := null;
  v_next.lease_expires_at := null;
  v_next.waiting_for := null;
  if v_type in ('active', 'removed') then
    v_next.state := 'succeeded';
    v_next.error_streak := 0;
    v_next.finished_at := now();
  elsif v_type = 'fail' then
    v_next.error_streak := case when v_job.last_error_code = v_code then v_job.error_streak + 1 else 1 end;
    if v_permanent or v_job.attempts >= v_job.max_attempts
      or (v_attempt_limit is not null and v_next.error_streak >= v_attempt_limit)
    then
      v_next.state := 'failed';
      v_next.finished_at := now();
    else
      v_next.state := 'queued';
      v_next.run_at := now() + hosting_automator.retry_delay(v_job.attempts);
    end if;
    v_next.last_error_code := v_code;
    v_next.last_error := left(p_outcome ->> 'internal_message', 4000);
    v_next.public_error := v_public;
  elsif v_type = 'snooze' then
    v_next.error_streak := case when v_job.last_error_code = v_code then v_job.error_streak + 1 else 1 end;
    v_next.state := 'queued';
    v_next.attempts := greatest(v_job.attempts - 1, 0);
    v_next.run_at := now() + hosting_automator.backoff(v_next.error_streak, v_schedule.backoff_seconds,
      v_schedule.backoff_max_seconds);
    v_next.last_error_code := v_code;
    v_next.last_error := left(p_outcome ->> 'internal_message', 4000);
    v_next.public_error := v_public;
    v_next.waiting_for := p_outcome ->> 'schedule';
  elsif v_type = 'release' then
    v_next.state := 'queued';
    v_next.attempts := greatest(v_job.attempts - 1, 0);
    v_next.run_at := now();
  elsif v_type = 'server_trouble' then
    -- Due when the server's circuit closes; failures seen while it is already open do not push it further.
    select * into v_server from hosting_automator.servers s where s.name = v_job.server for update;
    if found then
      v_until := case when v_server.open_until > now() then v_server.open_until
        else now() + hosting_automator.retry_delay(v_server.failures + 1) end;
    end if;
    v_next.state := 'queued';
    v_next.attempts := greatest(v_job.attempts - 1, 0);
    v_next.run_at := coalesce(v_until, now() + hosting_automator.retry_delay(1));
    v_next.last_error_code := v_code;
    v_next.public_error := left(coalesce(p_outcome ->> 'message', v_code), 500);
    v_next.waiting_for := 'server';
  end if;

  update hosting_automator.jobs j set
    state = v_next.state,
    attempts = v_next.attempts,
    run_at = v_next.run_at,
    lease_owner = null,
    lease_token = null,
    lease_expires_at = null,
    last_error_code = v_next.last_error_code,
    last_error = v_next.last_error,
    public_error = v_next.public_error,
    error_streak = v_next.error_streak,
    waiting_for = v_next.waiting_for,
    finished_at = v_next.finished_at,
    updated_at = now()
  where j.id = v_job.id;
  if jsonb_typeof(p_outcome -> 'done') in ('object', 'array') then
    perform hosting_automator.journal_ends(v_job.site_id, v_job.id, p_outcome -> 'done');
  end if;

  -- The outcome's effects.
  if v_type = 'active' then
    update public.sites s set
      status_hosting = 'active',
      hosting_doc_root = p_outcome ->> 'doc_root',
      matomo_site_id = coalesce((p_outcome ->> 'matomo_site_id')::integer, s.matomo_site_id),
      certificate_expires_at = coalesce((p_outcome ->> 'certificate_expires_at')::timestamptz, s.certificate_expires_at),
      error_message = null
    where s.id = v_job.site_id and not hosting_automator.row_in_removal(s.status_hosting);
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (v_job.site_id, v_job.id, 'info', 'job_succeeded',
      left(coalesce(p_outcome ->> 'message', 'Site is active.'), 2000));
    if p_outcome ->> 'backfill_kind' is not null and p_outcome ->> 'matomo_site_id' is null
      and not hosting_automator.superseded(v_job.id, v_job.site_id)
    then
      insert into hosting_automator.jobs (site_id, kind, max_attempts, run_at)
      select v_job.site_id, p_outcome ->> 'backfill_kind', s.analytics_max_attempts, now() + hosting_automator.retry_delay(1)
      from hosting_automator.settings s
      on conflict (site_id) where state in ('queued', 'running') and kind <> 'remove' do nothing
      returning id into v_backfill;
      if v_backfill is not null then
        insert into hosting_automator.events (site_id, job_id, level, code, message)
        values (v_job.site_id, v_backfill, 'info', 'analytics_backfill_queued',
          'The site is active without analytics; the Matomo step is retried automatically.');
      end if;
    end if;

  elsif v_type = 'removed' then
    -- The step ends above were journaled for the events they carry; the journal itself goes now.
    delete from hosting_automator.steps st where st.site_id = v_job.site_id;
    delete from hosting_automator.site_facts f where f.site_id = v_job.site_id;
    delete from hosting_automator.domain_owners o where o.site_id = v_job.site_id;
    delete from hosting_automator.placements p where p.site_id = v_job.site_id;
    perform hosting_automator.forget_credentials(v_job.site_id);
    -- Only a row still waiting for this removal: one set back to 'pending' meanwhile is provisioned next.
    update public.sites s set status_hosting = 'removed', hosting_doc_root = null, matomo_site_id = null,
      hosting_server = null, error_message = null
    where s.id = v_job.site_id and s.status_hosting = 'removing';
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (v_job.site_id, v_job.id, 'info', 'site_removed', left(coalesce(p_outcome ->> 'message', 'Site removed.'), 2000));

  elsif v_type = 'fail' then
    if v_next.state = 'failed' and v_job.kind = 'remove' then
      update public.sites s set error_message = left('Removal failed: ' || v_public, 500)
      where s.id = v_job.site_id and s.status_hosting = 'removing';
    elsif v_next.state = 'failed' then
      -- A live site whose analytics job failed is not taken down.
      update public.sites s set status_hosting = 'failed', error_message = v_public
      where s.id = v_job.site_id and s.status_hosting is distinct from 'active'
        and not hosting_automator.row_in_removal(s.status_hosting);
    end if;
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    values (
      v_job.site_id, v_job.id, v_job.current_step::text,
      (case when v_next.state = 'failed' then 'error' else 'warn' end)::hosting_automator.event_level,
      v_code,
      left(
        -- The public text here; the step's own event carries the (redacted) detail.
        case when v_next.state = 'failed'
          then format('Attempt %s of %s failed; the %s job failed: %s', v_job.attempts, v_job.max_attempts,
            v_job.kind, v_public)
          else format('Attempt %s of %s failed; retry at %s: %s', v_job.attempts, v_job.max_attempts,
            to_char(v_next.run_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), v_public)
        end,
        2000)
    );

  elsif v_type = 'snooze' then
    insert into hosting_automator.events (site_id, job_id, step, level, code, message)
    values (v_job.site_id, v_job.id, v_job.current_step::text, 'warn', v_code,
      left(format('Waiting for %s (check %s); next check at %s: %s', v_schedule.label, v_next.error_streak,
        to_char(v_next.run_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), v_public), 2000));

  elsif v_type = 'release' then
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (v_job.site_id, v_job.id, 'info', 'job_released',
      left(coalesce(p_outcome ->> 'reason', 'The worker ran out of time; the job is queued to continue.'), 2000));
    perform hosting_automator.ring(1);

  elsif v_type = 'server_trouble' then
    update hosting_automator.servers s set
      failures = case when s.open_until > now() then s.failures else s.failures + 1 end,
      open_until = v_until,
      last_error_code = v_code,
      last_error = left(coalesce(p_outcome ->> 'message', v_code), 500),
      last_error_at = now(),
      updated_at = now()
    where s.name = v_job.server;
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (v_job.site_id, v_job.id, 'warn', v_code,
      left(format('CloudPanel server %s: %s Its jobs wait until %s.', v_job.server,
        coalesce(p_outcome ->> 'message', v_code), to_char(v_until at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
        2000));
  end if;

  return jsonb_build_object('ok', true, 'state', v_next.state, 'attempts', v_next.attempts)
    || case when v_next.state = 'queued' then jsonb_build_object('run_at', v_next.run_at) else '{}'::jsonb end;
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

-- ---------------------------------------------------------------------------------------------------------
-- What reads the journal's facts and the jobs' waiting_for.

-- A site is to be removed (its row deleted, or its status set to 'removing'). Cancels its build jobs that have
-- not started; then, when anything may exist for it (a step was ever started, or a job is running), queues a
-- removal with what it needs (the site's kept facts: site user, doc root, Matomo id); otherwise the site is
-- removed at once. Answers 'queued', 'open' (a removal was already open), 'nothing_to_remove' or 'no_domain'.
create or replace function hosting_automator.request_removal(
  p_site uuid,
  p_domain text,
  p_doc_root text,
  p_matomo_site_id integer,
  p_row_deleted boolean
)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job bigint;
  v_domain text;
  v_facts jsonb;
  v_server text;
begin
  with cancelled as (
    update hosting_automator.jobs j set
      state = 'cancelled',
      last_error_code = 'cancelled',
      public_error = 'Cancelled: the site is being removed.',
      waiting_for = null,
      finished_at = now(),
      updated_at = now()
    where j.site_id = p_site and j.state = 'queued' and j.kind <> 'remove'
    returning j.id, j.kind
  )
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  select p_site, c.id, 'info', 'job_cancelled',
    format('The %s job was cancelled before it started: the site is being removed.', c.kind)
  from cancelled c;

  -- Nothing was ever started for it (no journal) and no job is open (the running one could start a step).
  if not exists (select 1 from hosting_automator.steps st where st.site_id = p_site)
    and not exists (
      select 1 from hosting_automator.jobs j where j.site_id = p_site and j.state in ('queued', 'running'))
  then
    delete from hosting_automator.domain_owners o where o.site_id = p_site;
    delete from hosting_automator.site_facts f where f.site_id = p_site;
    perform hosting_automator.forget_credentials(p_site);
    if not p_row_deleted then
      update public.sites s set status_hosting = 'removed', hosting_doc_root = null, matomo_site_id = null,
        error_message = null
      where s.id = p_site and s.status_hosting = 'removing';
    end if;
    insert into hosting_automator.events (site_id, level, code, message)
    values (p_site, 'info', 'site_removed', 'Nothing was made for this site on the servers; it is removed.');
    return 'nothing_to_remove';
  end if;

  select o.domain into v_domain from hosting_automator.domain_owners o where o.site_id = p_site;
  select f.facts into v_facts from hosting_automator.site_facts f where f.site_id = p_site;
  select j.server into v_server from hosting_automator.jobs j
  where j.site_id = p_site and j.kind <> 'remove' and j.server is not null order by j.id desc limit 1;
  if coalesce(v_domain, p_domain) is null then
    -- Never expected (a step starts only for a valid domain); the Hub's delete must not fail for it.
    insert into hosting_automator.events (site_id, level, code, message)
    values (p_site, 'error', 'removal_impossible',
      'The site cannot be removed automatically: its domain is unknown. Remove it on the servers by hand.');
    return 'no_domain';
  end if;

  insert into hosting_automator.jobs (site_id, kind, max_attempts, domain, site_user, doc_root, matomo_site_id, server)
  select p_site, 'remove', s.remove_max_attempts, coalesce(v_domain, lower(p_domain)), v_facts ->> 'site_user',
    coalesce(v_facts ->> 'doc_root', p_doc_root),
    coalesce(p_matomo_site_id,
      case when v_facts ->> 'matomo_site_id' ~ '^[1-9][0-9]{0,8}$' then (v_facts ->> 'matomo_site_id')::integer end),
    v_server
  from hosting_automator.settings s
  on conflict (site_id) where state in ('queued', 'running') and kind = 'remove' do nothing
  returning id into v_job;
  if v_job is null then
    return 'open';
  end if;
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (p_site, v_job, 'info', 'removal_queued',
    case when p_row_deleted then 'The row was deleted; removal queued.' else 'Removal queued.' end);
  perform hosting_automator.count_queued();
  return 'queued';
end
$$;

-- The site user's credentials, for the module that uploads a site's files over SFTP: site user (kept by the step
-- that made the site), password, server and doc root. Raises a clear error when there is nothing to give: no such
-- site, not provisioned yet, being removed, no Vault, or adopted from an earlier run (its password was never
-- known here).
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
  v_facts jsonb;
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
  select f.facts into v_facts from hosting_automator.site_facts f where f.site_id = p_site_id;
  select * into v_cred from hosting_automator.credentials c where c.site_id = p_site_id;
  if v_facts ->> 'site_user' is null then
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
    'site_user', v_facts ->> 'site_user',
    'password', v_password,
    'server', v_cred.server,
    'host', v_host,
    'port', v_port,
    'doc_root', coalesce(v_site.hosting_doc_root, v_facts ->> 'doc_root'));
end
$$;

-- An operator changed a server. Its address or state (a fixed host key, a server enabled): its circuit closes
-- and the jobs that waited for it are due now. Its room (capacity, state): the jobs waiting for room are due now.
create or replace function hosting_automator.on_server_changed()
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
    where j.state = 'queued' and j.server = new.name and j.run_at > now() and j.waiting_for = 'server';
  end if;
  if (old.capacity, old.state) is distinct from (new.capacity, new.state) then
    update hosting_automator.jobs j set run_at = now()
    where j.state = 'queued' and j.run_at > now() and j.waiting_for = 'capacity';
  end if;
  return new;
end
$$;

-- Queued jobs that wait for a server rather than for their own turn: their server is disabled, could not be
-- reached (waiting_for = 'server', by the code the worker gave back with), or no active server has room
-- (waiting_for = 'capacity': no_server_capacity). `sites` counts their sites by status_hosting, which says
-- `provisioning` for a site whose job waits.
create or replace function hosting_automator.waiting_for_server()
returns jsonb
language sql
stable
set search_path = ''
as $$
  with waiting as (
    select j.site_id, s.status_hosting,
      case
        when sv.state = 'disabled' then 'server_disabled'
        when j.waiting_for = 'server' then coalesce(j.last_error_code, 'server_unreachable')
        when j.waiting_for = 'capacity' then 'no_server_capacity'
      end as reason
    from hosting_automator.jobs j
    left join hosting_automator.placements pl on pl.site_id = j.site_id
    left join hosting_automator.servers sv on sv.name = pl.server
    left join public.sites s on s.id = j.site_id
    where j.state = 'queued'
  )
  select jsonb_build_object(
    'jobs', (select count(*) from waiting w where w.reason is not null),
    'by_reason', coalesce((
      select jsonb_object_agg(x.reason, x.n)
      from (select w.reason, count(*) as n from waiting w where w.reason is not null group by w.reason) x
    ), '{}'::jsonb),
    'sites', coalesce((
      select jsonb_object_agg(x.status, x.n)
      from (
        select coalesce(w.status_hosting, 'null') as status, count(distinct w.site_id) as n
        from waiting w where w.reason is not null and w.site_id is not null
        group by coalesce(w.status_hosting, 'null')
      ) x
    ), '{}'::jsonb))
$$;

-- The operator's report, one section per key: counts of sites and jobs by state; the doorbell (kicks on their
-- way, the fleet's slots, and the kicks' answers: a rotated key shows as failing kicks with status 401); each
-- server; the queue and the jobs waiting for room or for DNS; running and retrying jobs (a removal's domain comes
-- from the job, its row may be gone); recent failures; removals; active sites without analytics, with their
-- backfill; the certificates that expire soonest; whether the database starts jobs by itself (setup); and the
-- jobs that wait for a server.
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
          and j.waiting_for = 'server'),
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
      select count(*) from hosting_automator.jobs j where j.state = 'queued' and j.waiting_for = 'capacity'),
    -- Sites whose job waits on the DNS schedule: how many checks, since the waiting step was first journaled.
    'waiting_for_dns', coalesce((
      select jsonb_agg(x.o order by x.run_at)
      from (
        select j.run_at, jsonb_build_object('site_id', j.site_id, 'domain', s.domain, 'checks', j.error_streak,
          'since', (select st.created_at from hosting_automator.steps st
            where st.site_id = j.site_id and st.step = j.current_step),
          'next_check_at', j.run_at, 'error', j.public_error) as o
        from hosting_automator.jobs j join public.sites s on s.id = j.site_id
        where j.state = 'queued' and j.waiting_for = 'dns'
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
          -- An active site has done its required steps; the warning is the last one of a step it has not done.
          'warning', (
            select jsonb_build_object('code', e.code, 'message', e.message, 'at', e.created_at)
            from hosting_automator.events e
            join hosting_automator.steps st on st.site_id = e.site_id and st.step::text = e.step and st.state <> 'done'
            where e.site_id = s.id and e.level in ('warn', 'error')
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
      ), '[]'::jsonb)),
    'setup', hosting_automator.setup_report(),
    'waiting_for_server', hosting_automator.waiting_for_server()
  )
$$;

-- ---------------------------------------------------------------------------------------------------------
-- One-time: what today's journal and jobs already say, in the new shapes (this DML alone names today's steps
-- and codes).

-- The facts later calls read: the site step's site user and doc root, the Matomo step's site id.
insert into hosting_automator.site_facts (site_id, facts)
select st.site_id, jsonb_strip_nulls(jsonb_build_object('site_user', st.result -> 'site_user',
  'doc_root', st.result -> 'doc_root'))
from hosting_automator.steps st
where st.step = 'cloudpanel_site' and st.state = 'done' and st.result ?| array['site_user', 'doc_root']
on conflict (site_id) do nothing;
insert into hosting_automator.site_facts as f (site_id, facts)
select st.site_id, jsonb_build_object('matomo_site_id', st.result -> 'matomo_site_id')
from hosting_automator.steps st
where st.step = 'matomo_site' and st.state = 'done' and jsonb_typeof(st.result -> 'matomo_site_id') = 'number'
on conflict (site_id) do update set facts = f.facts || excluded.facts, updated_at = now();

-- Why queued jobs wait, from the codes that said it until now.
update hosting_automator.jobs j set waiting_for = case
    when hosting_automator.waits_for_server(j.last_error_code) then 'server'
    when j.last_error_code = 'dns_not_ready' then 'dns'
    else 'capacity'
  end
where j.state = 'queued' and (hosting_automator.waits_for_server(j.last_error_code)
  or j.last_error_code in ('dns_not_ready', 'no_server_capacity'));

-- ---------------------------------------------------------------------------------------------------------
-- The exits hosting_exit replaces, the step and event writers the worker no longer calls, and the code list
-- waiting_for replaces.
drop function public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean, timestamptz);
drop function public.hosting_complete_removal(bigint, uuid, text, jsonb);
drop function public.hosting_fail_job(bigint, uuid, text, text, text, boolean, integer, jsonb);
drop function public.hosting_wait_for_dns(bigint, uuid, text, text, jsonb);
drop function public.hosting_release_job(bigint, uuid, text, jsonb);
drop function public.hosting_server_trouble(bigint, uuid, text, text, jsonb);
drop function public.hosting_record_step(bigint, uuid, text, text, jsonb, text, text, text);
drop function public.hosting_log_event(uuid, bigint, text, text, text, text);
drop function hosting_automator.waits_for_server(text);

-- Grants: the worker's API for service_role only; nothing internal for API roles.
revoke all on function public.hosting_exit(bigint, uuid, jsonb) from public, anon, authenticated;
grant execute on function public.hosting_exit(bigint, uuid, jsonb) to service_role;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
