-- The private schema of hosting-automator: jobs, the step journal, the event log and the queue policy.
--
-- Not exposed by the Data API (only `public` and `graphql_public` are, by default) and not granted to any
-- API role: the `public.hosting_*` functions (security definer) are the only way in.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

create schema if not exists hosting_automator;
comment on schema hosting_automator is 'hosting-automator internals. Private: do not expose through the Data API.';
revoke all on schema hosting_automator from public;

-- Ordered: open states sort before finished ones.
create type hosting_automator.job_state as enum ('queued', 'running', 'succeeded', 'failed');
create type hosting_automator.step_name as enum ('cloudpanel_site', 'ssl_certificate', 'matomo_site');
-- `started` is written before a remote call, so the journal shows a step that was cut off mid-way.
create type hosting_automator.step_state as enum ('started', 'done', 'failed', 'skipped');
create type hosting_automator.event_level as enum ('debug', 'info', 'warn', 'error');

-- One row: the queue policy the SQL applies. Change it with UPDATE; the checks keep it sane.
create table hosting_automator.settings (
  id boolean primary key default true check (id),
  max_attempts integer not null default 10 check (max_attempts between 1 and 100),
  backoff_base_seconds integer not null default 30 check (backoff_base_seconds between 1 and 86400),
  backoff_max_seconds integer not null default 3600 check (backoff_max_seconds between 1 and 604800),
  server_concurrency integer not null default 4 check (server_concurrency between 1 and 100),
  kick_timeout_ms integer not null default 5000 check (kick_timeout_ms between 1000 and 60000),
  check (backoff_max_seconds >= backoff_base_seconds)
);
comment on table hosting_automator.settings is
  'Queue policy: attempts per job, retry backoff (base * 2^(attempt-1), capped, with jitter), jobs per CloudPanel server at once, pg_net kick timeout.';
insert into hosting_automator.settings default values;

-- The foreign keys of jobs and steps lock public.sites (SHARE ROW EXCLUSIVE: writers wait, readers do not)
-- only while they are created; the new tables are empty, so nothing is validated or scanned.
create table hosting_automator.jobs (
  id bigint generated always as identity primary key,
  site_id uuid not null references public.sites (id) on delete cascade,
  state hosting_automator.job_state not null default 'queued',
  attempts integer not null default 0 check (attempts >= 0),
  max_attempts integer not null check (max_attempts > 0),
  run_at timestamptz not null default now(),
  -- The CloudPanel server the job last ran against (the per-server cap counts by it).
  server text,
  lease_owner text,
  lease_token uuid,
  lease_expires_at timestamptz,
  current_step hosting_automator.step_name,
  last_error_code text,
  -- Internal detail, redacted by the worker before it is stored; never copied to public.sites.
  last_error text check (length(last_error) <= 4000),
  public_error text check (length(public_error) <= 500),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  constraint jobs_lease_iff_running check (
    (state = 'running') = (lease_owner is not null and lease_token is not null and lease_expires_at is not null)
  ),
  constraint jobs_finished_iff_done check ((state in ('succeeded', 'failed')) = (finished_at is not null))
);
comment on table hosting_automator.jobs is 'One provisioning job per site run; at most one open (queued or running) per site.';

-- At most one open job per site, enforced by the schema.
create unique index jobs_one_open_per_site on hosting_automator.jobs (site_id) where state in ('queued', 'running');
create index jobs_due on hosting_automator.jobs (run_at, id) where state = 'queued';
create index jobs_leases on hosting_automator.jobs (server, lease_expires_at) where state = 'running';
create index jobs_site on hosting_automator.jobs (site_id, id);

-- What has been done for a site, step by step; survives jobs, so a retry skips finished steps.
create table hosting_automator.steps (
  site_id uuid not null references public.sites (id) on delete cascade,
  step hosting_automator.step_name not null,
  state hosting_automator.step_state not null,
  -- e.g. {"site_user": …, "doc_root": …} or {"matomo_site_id": 7}; never a password.
  result jsonb not null default '{}' check (jsonb_typeof(result) = 'object'),
  attempts integer not null default 0 check (attempts >= 0),
  last_error_code text,
  last_job_id bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (site_id, step)
);
comment on table hosting_automator.steps is 'Step journal per site: a resumed or retried job skips steps that are done.';

-- Append-only: what happened, for operators. No foreign key, so it outlives deleted sites.
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

create function hosting_automator.refuse_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'hosting_automator.events is append-only' using errcode = '42501';
end
$$;

create trigger events_append_only before update or delete on hosting_automator.events
  for each row execute function hosting_automator.refuse_change();
create trigger events_no_truncate before truncate on hosting_automator.events
  for each statement execute function hosting_automator.refuse_change();

-- Nothing here is for the API roles (Supabase grants new objects to them by default in some schemas).
revoke all on all tables in schema hosting_automator from public, anon, authenticated, service_role;
revoke all on all sequences in schema hosting_automator from public, anon, authenticated, service_role;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
alter default privileges in schema hosting_automator revoke all on tables from public, anon, authenticated, service_role;
alter default privileges in schema hosting_automator revoke all on functions from public, anon, authenticated, service_role;
alter default privileges in schema hosting_automator revoke all on sequences from public, anon, authenticated, service_role;
