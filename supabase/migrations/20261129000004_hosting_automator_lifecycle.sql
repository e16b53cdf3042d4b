-- The lifecycle of a site: removal, and the site user's credentials kept in Vault.
--
--   * Removal: deleting a row of public.sites, or setting its status_hosting to 'removing', queues a `remove`
--     job. The job keeps what it needs (domain, site user, doc root, Matomo id, server), so it survives the
--     row: jobs, the journal and domain ownership no longer cascade away with it. A kept row ends 'removed'.
--   * A site's jobs run one at a time, in the order they were queued. A removal cancels the site's build jobs
--     that have not started; one that is running stops at its next step boundary. So a removal never races a
--     half-made site, and provisioning again after a removal starts from nothing.
--   * The first step of a provisioning job stores the generated site-user password in Vault (one secret per
--     site) before the command that uses it, and every retry uses that same password; the removal deletes it.
--     public.hosting_site_credentials(site_id) gives it (with the site user, server and doc root) to
--     service_role only.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- ---------------------------------------------------------------------------------------------------------
-- Tables.

-- The module's own check on public.sites (present only where this module created the table) grows the two
-- removal states. NOT VALID: every row already passed the narrower check, and validating would scan the Hub's
-- table under this ALTER's exclusive lock; new writes are checked all the same.
do $$
begin
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.sites'::regclass and conname = 'sites_status_hosting_check'
  ) then
    alter table public.sites drop constraint sites_status_hosting_check;
    alter table public.sites add constraint sites_status_hosting_check
      check (status_hosting in ('pending', 'provisioning', 'active', 'failed', 'removing', 'removed')) not valid;
  elsif exists (
    select 1 from pg_constraint
    where conrelid = 'public.sites'::regclass and contype = 'c'
      and pg_get_constraintdef(oid) like '%status_hosting%'
  ) then
    raise warning 'hosting-automator: public.sites has its own check on status_hosting; allow ''removing'' and ''removed'' in it, or removals cannot finish';
  end if;
end
$$;

alter table hosting_automator.settings
  add column remove_max_attempts integer not null default 10 check (remove_max_attempts between 1 and 100);
comment on column hosting_automator.settings.remove_max_attempts is
  'Attempts of a removal job before it fails and waits for an operator.';

-- Jobs, the journal and domain ownership outlive the row: a removal needs them after the row is deleted. The
-- module removes what it keeps (the removal's completion, and the retention for old finished jobs).
alter table hosting_automator.jobs drop constraint jobs_site_id_fkey;
alter table hosting_automator.steps drop constraint steps_site_id_fkey;
alter table hosting_automator.domain_owners drop constraint domain_owners_site_id_fkey;

-- What a removal works from, copied when it is queued (the row may be gone by the time it runs).
alter table hosting_automator.jobs
  add column domain text,
  add column site_user text,
  add column doc_root text,
  add column matomo_site_id integer;
-- The checks below are on the module's own jobs table, which only the module writes: a short scan of it holds
-- none of the Hub's tables.
-- squawk-ignore constraint-missing-not-valid
alter table hosting_automator.jobs drop constraint jobs_kind_check, add constraint jobs_kind_check
  check (kind in ('provision', 'analytics', 'remove'));
-- squawk-ignore constraint-missing-not-valid
alter table hosting_automator.jobs drop constraint jobs_finished_iff_done, add constraint jobs_finished_iff_done
  check ((state in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null));
-- squawk-ignore constraint-missing-not-valid
alter table hosting_automator.jobs add constraint jobs_removal_target check (
  (kind <> 'remove' or domain is not null)
  and length(domain) <= 253 and length(site_user) <= 32 and length(doc_root) <= 400 and matomo_site_id > 0);
comment on column hosting_automator.jobs.domain is 'A removal''s domain (canonical where the site was built).';

-- One open build job (provision, analytics) and one open removal per site; the claim runs them in order.
-- squawk-ignore require-concurrent-index-deletion
drop index hosting_automator.jobs_one_open_per_site;
-- The module's own table, inside the migration's transaction (CONCURRENTLY cannot run there).
-- squawk-ignore require-concurrent-index-creation
create unique index jobs_one_open_per_site on hosting_automator.jobs (site_id)
  where state in ('queued', 'running') and kind <> 'remove';
-- squawk-ignore require-concurrent-index-creation
create unique index jobs_one_open_removal_per_site on hosting_automator.jobs (site_id)
  where state in ('queued', 'running') and kind = 'remove';

-- The site user's password: one Vault secret per site, never a column in clear.
--   pending: stored before the command that creates the site; confirmed: that command (or a retry with the same
--   password) created it; adopted: the site was there before, made with a password this module never knew;
--   not_stored: this database has no Vault.
create table hosting_automator.credentials (
  site_id uuid primary key,
  state text not null check (state in ('pending', 'confirmed', 'adopted', 'not_stored')),
  -- vault.secrets(id); null unless a secret is stored (pending or confirmed).
  secret_id uuid,
  -- The claim that stored it: a retry under another claim knows the password was sent before.
  lease_token uuid,
  server text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint credentials_secret_iff_kept check ((secret_id is not null) = (state in ('pending', 'confirmed')))
);
comment on table hosting_automator.credentials is
  'Where each site''s site-user password is kept (a Vault secret) and whether it is known to be right.';
revoke all on hosting_automator.credentials from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------------------
-- The rules, each named once.

-- A build job is superseded when a removal was queued for its site after it: it must not start another step.
create function hosting_automator.superseded(p_job_id bigint, p_site uuid)
returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (
    select 1 from hosting_automator.jobs r
    where r.site_id = p_site and r.kind = 'remove' and r.state in ('queued', 'running') and r.id > p_job_id)
$$;

-- A build job may set the row's hosting state only while nobody asked to remove the site.
create function hosting_automator.row_in_removal(p_status text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(p_status in ('removing', 'removed'), false)
$$;

-- Vault is present (Supabase projects have it; plain Postgres does not).
create function hosting_automator.vault_present()
returns boolean
language sql
stable
set search_path = ''
as $$
  select to_regclass('vault.secrets') is not null and to_regclass('vault.decrypted_secrets') is not null
$$;

-- Forget a site's stored password: its Vault secret and the record of it.
create function hosting_automator.forget_credentials(p_site uuid)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_secret uuid;
begin
  delete from hosting_automator.credentials c where c.site_id = p_site returning c.secret_id into v_secret;
  if v_secret is not null and hosting_automator.vault_present() then
    -- Dynamic SQL: the vault schema may not exist when this function is created.
    execute 'delete from vault.secrets where id = $1' using v_secret;
  end if;
end
$$;

-- The password the site step must use: the one stored by an earlier attempt, else p_candidate, stored now
-- (before the command is sent, so a lost answer cannot lose the password). Answers {password, prior, stored}:
-- prior = an earlier claim stored it (and so may have sent it); stored = false where there is no Vault.
create function hosting_automator.site_password(
  p_site uuid,
  p_lease_token uuid,
  p_candidate text,
  p_domain text,
  p_server text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cred hosting_automator.credentials;
  v_password text;
  v_secret uuid;
  v_name text := 'hosting_automator_site_' || p_site::text;
begin
  if p_candidate is null or length(p_candidate) not between 16 and 128 then
    raise exception 'the site password candidate must be 16 to 128 characters' using errcode = '22023';
  end if;
  select * into v_cred from hosting_automator.credentials c where c.site_id = p_site for update;
  if not hosting_automator.vault_present() then
    insert into hosting_automator.credentials as c (site_id, state, lease_token, server)
    values (p_site, 'not_stored', p_lease_token, p_server)
    on conflict (site_id) do update set state = 'not_stored', secret_id = null, lease_token = excluded.lease_token,
      server = excluded.server, updated_at = now();
    return jsonb_build_object('password', p_candidate, 'prior', false, 'stored', false);
  end if;
  if v_cred.secret_id is not null then
    execute 'select decrypted_secret from vault.decrypted_secrets where id = $1' into v_password using v_cred.secret_id;
    if v_password is not null then
      return jsonb_build_object('password', v_password,
        'prior', v_cred.lease_token is distinct from p_lease_token, 'stored', true);
    end if;
  end if;
  -- A secret of this name without a record is a leftover of this module's (the name is its own): replace it.
  execute 'delete from vault.secrets where name = $1' using v_name;
  execute 'select vault.create_secret($1, $2, $3)' into v_secret
    using p_candidate, v_name, left('hosting-automator: site user password of ' || coalesce(p_domain, '?'), 300);
  insert into hosting_automator.credentials as c (site_id, state, secret_id, lease_token, server)
  values (p_site, 'pending', v_secret, p_lease_token, p_server)
  on conflict (site_id) do update set state = 'pending', secret_id = excluded.secret_id,
    lease_token = excluded.lease_token, server = excluded.server, updated_at = now();
  return jsonb_build_object('password', p_candidate, 'prior', false, 'stored', true);
end
$$;

-- The site step ended: its result says whether the stored password is the site user's ("credentials": "known",
-- the site was created with it) or not ("unknown": the site was there before; the secret is deleted).
create function hosting_automator.settle_credentials(p_site uuid, p_result jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_result ->> 'credentials' = 'known' then
    update hosting_automator.credentials c set state = 'confirmed', updated_at = now()
    where c.site_id = p_site and c.state = 'pending';
  elsif p_result ->> 'credentials' = 'unknown' then
    perform hosting_automator.forget_credentials(p_site);
    insert into hosting_automator.credentials (site_id, state) values (p_site, 'adopted')
    on conflict (site_id) do nothing;
  end if;
end
$$;

-- Journal the end of a step (as before), and settle the credentials when the site step is done.
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

-- Add to the count of jobs this transaction queued, for the statement trigger that rings the doorbell.
create function hosting_automator.count_queued()
returns void
language sql
set search_path = ''
as $$
  select set_config('hosting_automator.queued',
    (coalesce(nullif(current_setting('hosting_automator.queued', true), ''), '0')::integer + 1)::text, true)
$$;

-- ---------------------------------------------------------------------------------------------------------
-- Queueing.

drop function hosting_automator.queue_job(uuid, text);
-- Queue a build job (provision, analytics) for a site unless one is open.
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
  if p_kind not in ('provision', 'analytics') then
    raise exception 'queue_job queues provision and analytics jobs (a removal: request_removal)' using errcode = '22023';
  end if;
  select * into v_settings from hosting_automator.settings;
  insert into hosting_automator.jobs (site_id, kind, max_attempts)
  values (p_site_id, p_kind,
    case when p_kind = 'analytics' then v_settings.analytics_max_attempts else v_settings.max_attempts end)
  on conflict (site_id) where state in ('queued', 'running') and kind <> 'remove' do nothing
  returning id into job_id;
  created := job_id is not null;
  if created then
    insert into hosting_automator.events (site_id, job_id, level, code, message)
    values (p_site_id, job_id, 'info', 'job_queued',
      case when p_kind = 'analytics' then 'Analytics job queued.' else 'Job queued.' end);
  else
    select j.id into job_id
    from hosting_automator.jobs j
    where j.site_id = p_site_id and j.state in ('queued', 'running') and j.kind <> 'remove';
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
  if (hosting_automator.queue_job(new.id)).created then
    perform hosting_automator.count_queued();
  end if;
  return null;
end
$$;

-- A site is to be removed (its row deleted, or its status set to 'removing'). Cancels its build jobs that have
-- not started; then, when anything may exist for it (a step was ever started, or a job is running), queues a
-- removal with what it needs; otherwise the site is removed at once. Answers 'queued', 'open' (a removal was
-- already open) or 'nothing_to_remove'.
create function hosting_automator.request_removal(
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
  v_site_user text;
  v_doc_root text;
  v_matomo integer;
  v_server text;
begin
  with cancelled as (
    update hosting_automator.jobs j set
      state = 'cancelled',
      last_error_code = 'cancelled',
      public_error = 'Cancelled: the site is being removed.',
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
  select st.result ->> 'site_user', st.result ->> 'doc_root' into v_site_user, v_doc_root
  from hosting_automator.steps st where st.site_id = p_site and st.step = 'cloudpanel_site';
  select (st.result ->> 'matomo_site_id')::integer into v_matomo
  from hosting_automator.steps st where st.site_id = p_site and st.step = 'matomo_site' and st.state = 'done';
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
  select p_site, 'remove', s.remove_max_attempts, coalesce(v_domain, lower(p_domain)), v_site_user,
    coalesce(v_doc_root, p_doc_root), coalesce(p_matomo_site_id, v_matomo), v_server
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

-- The row triggers of a removal: a deleted row (OLD), or a row set to 'removing' (NEW).
create function hosting_automator.on_site_removal()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.sites%rowtype := case when tg_op = 'DELETE' then old else new end;
begin
  perform hosting_automator.request_removal(v_row.id, v_row.domain, v_row.hosting_doc_root, v_row.matomo_site_id,
    tg_op = 'DELETE');
  return null;
end
$$;

-- Creating triggers locks public.sites (SHARE ROW EXCLUSIVE) for a catalog change only: no scan.
create trigger hosting_automator_remove_deleted
  after delete on public.sites
  for each row execute function hosting_automator.on_site_removal();
create trigger hosting_automator_remove
  after update of status_hosting on public.sites
  for each row
  when (new.status_hosting = 'removing' and old.status_hosting is distinct from 'removing')
  execute function hosting_automator.on_site_removal();

-- The doorbell rings after deletes too (a removal queued by deleting rows).
drop trigger hosting_automator_ring on public.sites;
create trigger hosting_automator_ring
  after insert or delete or update of status_dns, status_hosting on public.sites
  for each statement execute function hosting_automator.on_sites_changed();

-- ---------------------------------------------------------------------------------------------------------
-- The worker's API.

drop function public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean);
-- Claim due jobs with a lease, within the per-server cap (as before), now also:
--   * a site's jobs run in the order they were queued (a job waits while an earlier one of its site is open);
--   * a build job superseded by a removal is cancelled instead of claimed;
--   * a removal's domain and target come from the job (its row may be gone): `target` holds site_user,
--     doc_root and matomo_site_id for a `remove` job.
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
  estimates jsonb,
  target jsonb
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
    select c.site_id, c.id, 'info', 'job_cancelled',
      format('The %s job was cancelled: the site is being removed.', c.kind)
    from superseded c;

    return query
    with candidates as (
      select j.id, j.site_id, j.kind, j.run_at
      from hosting_automator.jobs j
      where j.state = 'queued' and j.run_at <= now() and (p_site_id is null or j.site_id = p_site_id)
        -- A site's jobs run in the order they were queued.
        and not exists (
          select 1 from hosting_automator.jobs e
          where e.site_id = j.site_id and e.state in ('queued', 'running') and e.id < j.id)
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
      -- An active site with an analytics job stays active; a row in removal keeps its state.
      update public.sites s set status_hosting = 'provisioning'
      from claimed c
      where s.id = c.site_id and c.kind <> 'remove' and s.status_hosting is distinct from 'active'
        and not hosting_automator.row_in_removal(s.status_hosting)
      returning s.id
    ), logged as (
      insert into hosting_automator.events (site_id, job_id, level, code, message)
      select c.site_id, c.id, 'info', 'job_claimed',
        format('Attempt %s of %s (%s) started by worker %s.', c.attempts, c.max_attempts, c.kind, p_worker)
      from claimed c
      returning 1
    )
    select c.id, c.lease_token, c.site_id, x.domain, char_length(x.domain), octet_length(x.domain), c.kind,
      c.attempts,
      c.max_attempts, c.lease_expires_at,
      coalesce((
        select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
        from hosting_automator.steps st
        where st.site_id = c.site_id
      ), '{}'::jsonb),
      v_estimates,
      case when c.kind = 'remove' then jsonb_build_object('site_user', c.site_user, 'doc_root', c.doc_root,
        'matomo_site_id', c.matomo_site_id) end
    from claimed c
    left join public.sites s on s.id = c.site_id
    cross join lateral (select case when c.kind = 'remove' then c.domain else s.domain end as domain) x;
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

drop function public.hosting_advance(bigint, uuid, integer, jsonb, text, text);
-- End the running step (p_done) and/or start the next (p_start), renewing the lease: one statement between
-- two steps (as before). Also:
--   * a build job superseded by a removal stops here: it is cancelled, nothing is started;
--   * with p_domain (a provisioning job's first step) the site takes ownership of its canonical domain; a
--     domain still owned by a site being removed waits (retried with backoff), one owned by another site fails;
--   * with p_password (the step that creates the site) the answer carries the password to use: the one an
--     earlier attempt stored, else p_password, stored in Vault now.
-- Answers {"ok": true[, "credentials": {password, prior, stored}]}; {"ok": false, "reason": "lease_lost"}
-- (nothing written); {"ok": false, "reason": "cancelled"}; {"ok": false, "reason": "domain_taken", "code",
-- "message", "next"} (the job failed, or was queued again: `next` is hosting_fail_job's answer).
create function public.hosting_advance(
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
  update hosting_automator.jobs j set
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    current_step = coalesce(p_start::hosting_automator.step_name, j.current_step),
    updated_at = now()
  where j.id = p_job_id and j.lease_token = p_lease_token and j.state = 'running' and j.lease_expires_at > now()
  returning j.id, j.site_id, j.kind, j.server into v_job;
  if not found then
    return jsonb_build_object('ok', false, 'reason', 'lease_lost');
  end if;
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

drop function public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean);
-- Finish a build job (as before): the site becomes active with its doc root and Matomo id, unless the row is in
-- removal (a removal queued behind this job undoes it next); no analytics backfill for a superseded job.
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
  v_job record;
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
    and j.kind <> 'remove'
  returning j.id, j.site_id into v_job;
  if not found then
    return false;
  end if;
  if p_done is not null then
    perform hosting_automator.journal_ends(v_job.site_id, p_job_id, p_done);
  end if;

  update public.sites s set
    status_hosting = 'active',
    hosting_doc_root = p_doc_root,
    matomo_site_id = coalesce(p_matomo_site_id, s.matomo_site_id),
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

-- Finish a removal, ending its last step (p_done): the site's journal, domain ownership and stored credentials
-- are deleted (provisioning again starts from nothing), and a kept row becomes 'removed' without its doc root and
-- Matomo id. False when the lease is lost.
create function public.hosting_complete_removal(
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
  perform hosting_automator.forget_credentials(v_site);
  -- Only a row still waiting for this removal: one set back to 'pending' meanwhile is provisioned next.
  update public.sites s set status_hosting = 'removed', hosting_doc_root = null, matomo_site_id = null,
    error_message = null
  where s.id = v_site and s.status_hosting = 'removing';
  insert into hosting_automator.events (site_id, job_id, level, code, message)
  values (v_site, p_job_id, 'info', 'site_removed', left(coalesce(p_message, 'Site removed.'), 2000));
  return true;
end
$$;

-- Fail an attempt (as before). A build job's final failure marks the row failed unless it is active or in
-- removal; a removal's final failure leaves its row 'removing' with the message (a retry queues it again).
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

-- Reap expired leases (as before); a final failure marks the row as hosting_fail_job does.
create or replace function hosting_automator.reap_expired_leases()
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
        then case when j.kind = 'remove' then 'The removal was interrupted too many times; an operator can retry it.'
          else 'Provisioning was interrupted too many times; an operator can retry it.' end
        else j.public_error end,
      finished_at = case when j.attempts >= j.max_attempts then now() end,
      updated_at = now()
    from expired
    where j.id = expired.id
    returning j.id, j.site_id, j.state, j.kind, j.current_step, j.public_error
  ), failed_sites as (
    update public.sites s set
      status_hosting = case when r.kind = 'remove' then s.status_hosting else 'failed' end,
      error_message = case when r.kind = 'remove' then left('Removal failed: ' || r.public_error, 500)
        else r.public_error end
    from reaped r
    where s.id = r.site_id and r.state = 'failed'
      and case when r.kind = 'remove' then s.status_hosting = 'removing'
        else s.status_hosting is distinct from 'active' and not hosting_automator.row_in_removal(s.status_hosting) end
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

-- ---------------------------------------------------------------------------------------------------------
-- Operators' API.

-- Remove a site whose row is kept: sets status_hosting to 'removing' (the trigger queues the removal, or
-- removes at once what was never made). Answers {"found": false} or {"found": true, "status_hosting",
-- "job_id"?, "job_state"?, "queued": bool, "reason"?}.
create function public.hosting_remove(p_site_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
  v_job record;
  v_queued boolean;
begin
  if p_site_id is null then
    raise exception 'p_site_id is required' using errcode = '22023';
  end if;
  update public.sites s set status_hosting = 'removing', error_message = null
  where s.id = p_site_id and s.status_hosting is distinct from 'removing';
  v_queued := found;
  select s.status_hosting into v_status from public.sites s where s.id = p_site_id;
  if not found then
    -- A deleted row: its removal (if any) is the latest remove job of that id.
    select j.id, j.state into v_job from hosting_automator.jobs j
    where j.site_id = p_site_id and j.kind = 'remove' order by j.id desc limit 1;
    if not found then
      return jsonb_build_object('found', false);
    end if;
    return jsonb_build_object('found', true, 'status_hosting', null, 'queued', false, 'job_id', v_job.id,
      'job_state', v_job.state, 'reason', 'row_deleted');
  end if;
  select j.id, j.state into v_job from hosting_automator.jobs j
  where j.site_id = p_site_id and j.kind = 'remove' and j.state in ('queued', 'running');
  if found then
    return jsonb_build_object('found', true, 'status_hosting', v_status, 'queued', v_queued, 'job_id', v_job.id,
      'job_state', v_job.state);
  end if;
  return jsonb_build_object('found', true, 'status_hosting', v_status, 'queued', false,
    'reason', case when v_status = 'removed' then 'nothing_to_remove' else 'not_queued' end);
end
$$;

-- The site user's credentials, for the module that uploads a site's files over SFTP: site user, password,
-- server and doc root. Raises a clear error when there is nothing to give: no such site, not provisioned yet,
-- being removed, no Vault, or adopted from an earlier run (its password was never known here).
create function public.hosting_site_credentials(p_site_id uuid)
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
  -- The server is recorded as host:port (the worker's server identity).
  v_host := coalesce(substring(v_cred.server from '^(.*):[0-9]+$'), v_cred.server);
  v_port := substring(v_cred.server from ':([0-9]+)$')::integer;
  return jsonb_build_object(
    'site_id', v_site.id,
    'domain', v_site.domain,
    'site_user', v_step.result ->> 'site_user',
    'password', v_password,
    'host', v_host,
    'port', v_port,
    'doc_root', coalesce(v_site.hosting_doc_root, v_step.result ->> 'doc_root'));
end
$$;

-- Re-queue failed work (as before: failed sites, active sites missing analytics) and failed removals: of a kept
-- row ('removing' with no open removal), and of a deleted row (by its site id; with p_all_failed, every deleted
-- row whose latest job is a failed removal).
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
    select s.id, s.domain, s.status_dns, s.status_hosting, s.matomo_site_id, s.hosting_doc_root
    from public.sites s
    where (p_site_id is null or s.id = p_site_id)
      and (p_site_id is not null or s.status_hosting = 'failed'
        or (s.status_hosting = 'active' and s.matomo_site_id is null)
        or (s.status_hosting = 'removing' and not exists (
          select 1 from hosting_automator.jobs r
          where r.site_id = s.id and r.kind = 'remove' and r.state in ('queued', 'running'))))
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
    elsif v_site.status_hosting = 'removing' and not exists (
      select 1 from hosting_automator.jobs r
      where r.site_id = v_site.id and r.kind = 'remove' and r.state in ('queued', 'running'))
    then
      update public.sites s set error_message = null where s.id = v_site.id;
      perform hosting_automator.request_removal(v_site.id, v_site.domain, v_site.hosting_doc_root,
        v_site.matomo_site_id, false);
      insert into hosting_automator.events (site_id, level, code, message)
      values (v_site.id, 'info', 'retry_requested', 'An operator asked to retry this site''s removal.');
      v_requeued := v_requeued || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'reason', 'removal_failed');
    else
      v_skipped := v_skipped || jsonb_build_object('site_id', v_site.id, 'domain', v_site.domain,
        'status_hosting', v_site.status_hosting);
    end if;
  end loop;

  -- Deleted rows whose removal failed: a copy of that removal job, queued now.
  for v_job in
    select r.* from hosting_automator.jobs r
    where r.kind = 'remove' and r.state = 'failed'
      and (p_site_id is null or r.site_id = p_site_id)
      and not exists (select 1 from public.sites s where s.id = r.site_id)
      and r.id = (select max(j2.id) from hosting_automator.jobs j2 where j2.site_id = r.site_id)
    order by r.id
  loop
    insert into hosting_automator.jobs (site_id, kind, max_attempts, domain, site_user, doc_root, matomo_site_id, server)
    select v_job.site_id, 'remove', s.remove_max_attempts, v_job.domain, v_job.site_user, v_job.doc_root,
      v_job.matomo_site_id, v_job.server
    from hosting_automator.settings s
    on conflict (site_id) where state in ('queued', 'running') and kind = 'remove' do nothing;
    insert into hosting_automator.events (site_id, level, code, message)
    values (v_job.site_id, 'info', 'retry_requested', 'An operator asked to retry the removal of a deleted row.');
    v_requeued := v_requeued || jsonb_build_object('site_id', v_job.site_id, 'domain', v_job.domain,
      'reason', 'removal_failed');
  end loop;

  perform hosting_automator.ring(jsonb_array_length(v_requeued));
  if p_site_id is not null and jsonb_array_length(v_requeued) + jsonb_array_length(v_skipped) = 0 then
    return jsonb_build_object('found', false, 'requeued', v_requeued, 'skipped', v_skipped);
  end if;
  return jsonb_build_object('found', true, 'requeued', v_requeued, 'skipped', v_skipped);
end
$$;

-- Jobs due now (as before), with their kind; removals of deleted rows included.
drop function public.hosting_due(integer);
create function public.hosting_due(p_limit integer default 100)
returns table (job_id bigint, site_id uuid, domain text, kind text, attempts integer, run_at timestamptz, steps jsonb)
language sql
stable
security definer
set search_path = ''
as $$
  select j.id, j.site_id, case when j.kind = 'remove' then j.domain else s.domain end, j.kind, j.attempts, j.run_at,
    coalesce((
      select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
      from hosting_automator.steps st where st.site_id = j.site_id), '{}'::jsonb)
  from hosting_automator.jobs j
  left join public.sites s on s.id = j.site_id
  where j.state = 'queued' and j.run_at <= now()
  order by j.run_at, j.id
  limit least(greatest(p_limit, 1), 1000)
$$;

-- One site (as before); its job names its kind.
create or replace function public.hosting_site(p_key text, p_events integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  with site as (
    select s.* from public.sites s
    -- CASE, not AND: Postgres may evaluate AND's operands in any order, and the cast fails on a domain.
    where s.id = case when p_key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then p_key::uuid end
       or s.domain = p_key
    order by s.id
    limit 1
  )
  select case when not exists (select 1 from site) then jsonb_build_object('found', false) else (
    select jsonb_build_object(
      'found', true,
      'site', jsonb_build_object(
        'id', s.id, 'domain', s.domain, 'status_dns', s.status_dns, 'status_hosting', s.status_hosting,
        'hosting_doc_root', s.hosting_doc_root, 'matomo_site_id', s.matomo_site_id, 'error_message', s.error_message),
      'job', (
        select jsonb_build_object(
          'job_id', j.id, 'kind', j.kind, 'state', j.state, 'attempts', j.attempts, 'max_attempts', j.max_attempts,
          'run_at', j.run_at, 'current_step', j.current_step, 'worker', j.lease_owner,
          'lease_expires_at', j.lease_expires_at, 'last_error_code', j.last_error_code, 'error', j.public_error)
        from hosting_automator.jobs j where j.site_id = s.id order by j.id desc limit 1),
      'steps', coalesce((
        select jsonb_object_agg(st.step, jsonb_build_object(
          'state', st.state, 'attempts', st.attempts, 'result', st.result, 'code', st.last_error_code,
          'updated_at', st.updated_at))
        from hosting_automator.steps st where st.site_id = s.id), '{}'::jsonb),
      'events', coalesce((
        select jsonb_agg(e.o order by e.id)
        from (
          select ev.id, jsonb_build_object('at', ev.created_at, 'level', ev.level, 'step', ev.step,
            'code', ev.code, 'message', ev.message) as o
          from hosting_automator.events ev where ev.site_id = s.id order by ev.id desc limit greatest(p_events, 0)
        ) e), '[]'::jsonb))
    from site s)
  end
$$;

-- The retention (as before), and the finished jobs of deleted rows go entirely once past retention.
create or replace function hosting_automator.apply_retention(p_batch integer default 500)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz;
  v_events integer;
  v_jobs integer;
  v_kicks integer;
  v_cron integer := 0;
begin
  select now() - make_interval(days => s.retention_days) into v_cutoff from hosting_automator.settings s;
  perform set_config('hosting_automator.retention', 'on', true);
  with doomed as (
    select e.id from hosting_automator.events e
    where e.created_at < v_cutoff
      -- The last event of a site's latest job says how the site got where it is: it stays.
      and not (
        e.job_id is not null
        and e.job_id = (select max(j.id) from hosting_automator.jobs j where j.site_id = e.site_id)
        and not exists (
          select 1 from hosting_automator.events e2
          where e2.site_id = e.site_id and e2.job_id = e.job_id and e2.id > e.id)
      )
    order by e.id
    limit p_batch
  )
  delete from hosting_automator.events e using doomed where e.id = doomed.id;
  get diagnostics v_events = row_count;
  perform set_config('hosting_automator.retention', 'off', true);

  with doomed as (
    select j.id from hosting_automator.jobs j
    where j.state in ('succeeded', 'failed', 'cancelled') and j.finished_at < v_cutoff
      and (exists (select 1 from hosting_automator.jobs j2 where j2.site_id = j.site_id and j2.id > j.id)
        -- A deleted row's last job: a finished removal, or one that had nothing left to wait for.
        or (not exists (select 1 from public.sites s where s.id = j.site_id)
          and (j.kind <> 'remove' or j.state = 'succeeded')))
    order by j.id
    limit p_batch
  )
  delete from hosting_automator.jobs j using doomed where j.id = doomed.id;
  get diagnostics v_jobs = row_count;

  delete from hosting_automator.kick_log k
  where k.request_id in (
    select k2.request_id from hosting_automator.kick_log k2
    where k2.sent_at < now() - interval '1 day' order by k2.sent_at limit p_batch);
  get diagnostics v_kicks = row_count;

  -- pg_cron keeps every run; only the sweep's own runs are this module's to delete.
  if to_regclass('cron.job_run_details') is not null then
    begin
      execute $sql$
        delete from cron.job_run_details d
        where d.runid in (
          select d2.runid from cron.job_run_details d2
          join cron.job c on c.jobid = d2.jobid
          where c.jobname = 'hosting-automator-sweep' and d2.end_time < $1
          order by d2.runid
          limit $2)
      $sql$ using v_cutoff, p_batch;
      get diagnostics v_cron = row_count;
    exception when others then
      raise warning 'hosting-automator: cron history not trimmed (%)', sqlstate;
    end;
  end if;
  return jsonb_build_object('events', v_events, 'jobs', v_jobs, 'kicks', v_kicks, 'cron_runs', v_cron);
end
$$;

-- The operator's report (as before): running and retrying jobs name their kind (a removal's domain comes
-- from the job, its row may be gone), and the removals have their own section.
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
      'slots', (select s.server_concurrency from hosting_automator.settings s),
      'kicks', hosting_automator.kick_health()
    ),
    'queue', (
      select jsonb_build_object(
        'depth', count(*),
        'due', count(*) filter (where j.run_at <= now()),
        'oldest_age_seconds', coalesce(floor(extract(epoch from now() - min(j.created_at))), 0)
      )
      from hosting_automator.jobs j
      where j.state = 'queued'
    ),
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
    ), '[]'::jsonb)
  )
$$;

-- Grants: the worker's and the operators' API for service_role only; nothing internal for API roles.
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean)',
    'public.hosting_advance(bigint, uuid, integer, jsonb, text, text, text)',
    'public.hosting_complete_job(bigint, uuid, text, integer, text, jsonb, boolean)',
    'public.hosting_complete_removal(bigint, uuid, text, jsonb)',
    'public.hosting_fail_job(bigint, uuid, text, text, text, boolean, integer, jsonb)',
    'public.hosting_remove(uuid)',
    'public.hosting_site_credentials(uuid)',
    'public.hosting_retry(uuid, boolean)',
    'public.hosting_due(integer)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
