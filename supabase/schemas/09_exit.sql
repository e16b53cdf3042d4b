-- The exit of a running job (docs/architecture.md §4, §9): public.hosting_exit ends the worker's hold on a job in
-- one call, fed by an outcome value, under the lease guard (lock_leased_job), journaling the job's last step ends
-- in the same transaction. A lost lease changes nothing. No function here names a step or a code the worker sends.

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
