-- Jobs and domain ownership: the durable queue's rows, how a job gets queued (the row trigger, a request, an
-- operator's retry), and which site owns each canonical domain (docs/architecture.md §4, §10).

-- One row per job. The job row is the truth; the HTTP kick is only a doorbell. `provision`: all steps;
-- `analytics`: only the Matomo step of a site that is already active; `remove`: the removal, which keeps what it
-- works from (domain, site user, doc root, Matomo id) because it outlives a deleted row. No foreign key to
-- public.sites for the same reason: the module deletes what it keeps (the removal's completion, the retention).
-- Columns in the order an installed database has them.
create table hosting_automator.jobs (
  id bigint generated always as identity primary key,
  site_id uuid not null,
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
  kind text not null default 'provision' constraint jobs_kind_check check (kind in ('provision', 'analytics', 'remove')),
  -- Failures in a row with the same code; a failure class with an attempt limit fails the job when it is reached.
  error_streak integer not null default 0 check (error_streak >= 0),
  -- What a removal works from, copied when it is queued (the row may be gone by the time it runs).
  domain text,
  site_user text,
  doc_root text,
  matomo_site_id integer,
  -- Why a queued job waits, when it is not its own retry: its server's circuit (`server`), a snooze schedule
  -- (`dns`), or a server with room (`capacity`). Set by the exit and the claim, cleared when the job is claimed.
  waiting_for text constraint jobs_waiting_for_check check (waiting_for in ('server', 'capacity', 'dns')),
  constraint jobs_lease_iff_running check (
    (state = 'running') = (lease_owner is not null and lease_token is not null and lease_expires_at is not null)
  ),
  constraint jobs_finished_iff_done check ((state in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null)),
  constraint jobs_removal_target check (
    (kind <> 'remove' or domain is not null)
    and length(domain) <= 253 and length(site_user) <= 32 and length(doc_root) <= 400 and matomo_site_id > 0),
  constraint jobs_waiting_only_queued check (waiting_for is null or state = 'queued')
);
comment on table hosting_automator.jobs is
  'One job per run of work for a site; at most one open (queued or running) build job and one open removal per site.';
comment on column hosting_automator.jobs.domain is 'A removal''s domain (canonical where the site was built).';
comment on column hosting_automator.jobs.waiting_for is
  'Why a queued job waits: server (its circuit is open), a snooze schedule (dns), or capacity (no server has room).';

-- One open build job (provision, analytics) and one open removal per site, enforced by the schema; the claim
-- runs a site's jobs in the order they were queued.
create unique index jobs_one_open_per_site on hosting_automator.jobs (site_id)
  where state in ('queued', 'running') and kind <> 'remove';
create unique index jobs_one_open_removal_per_site on hosting_automator.jobs (site_id)
  where state in ('queued', 'running') and kind = 'remove';
create index jobs_due on hosting_automator.jobs (run_at, id) where state = 'queued';
create index jobs_leases on hosting_automator.jobs (server, lease_expires_at) where state = 'running';
create index jobs_site on hosting_automator.jobs (site_id, id);

-- One canonical domain (lower-case ASCII, IDN as punycode, as the worker computes it) has one hosting owner:
-- two rows whose domains differ only in spelling (case, Unicode or punycode) cannot share one CloudPanel
-- site. The first job to start work for a domain owns it; the primary key decides between concurrent claims.
-- Ownership outlives a deleted row until its removal has finished.
create table hosting_automator.domain_owners (
  domain text primary key check (domain ~ '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$'),
  site_id uuid not null,
  created_at timestamptz not null default now()
);
comment on table hosting_automator.domain_owners is
  'Which site owns each canonical domain; a second row for the same domain fails with domain_taken.';
create index domain_owners_site on hosting_automator.domain_owners (site_id);

-- Queue a build job (provision, analytics) for a site unless one is open. Idempotent and safe under
-- concurrency: the partial unique index decides, so two transactions racing here end with one open job.
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

-- Add to the count of jobs this transaction queued, for the statement trigger that rings the doorbell
-- (hosting_automator_ring, in the doorbell's file).
create function hosting_automator.count_queued()
returns void
language sql
set search_path = ''
as $$
  select set_config('hosting_automator.queued',
    (coalesce(nullif(current_setting('hosting_automator.queued', true), ''), '0')::integer + 1)::text, true)
$$;

-- The row trigger: a site whose DNS is active and whose hosting is pending gets a job in the same transaction.
-- Fires on insert, and on updates of the two status columns only; flipping DNS again, or any other update,
-- finds the open job and adds nothing.
create function hosting_automator.on_site_ready()
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

create trigger hosting_automator_queue
  after insert or update of status_dns, status_hosting on public.sites
  for each row
  when (new.status_dns = 'active' and new.status_hosting = 'pending')
  execute function hosting_automator.on_site_ready();

-- Queue a site's job if it is due and has none (the `{"site_id": …}` request). Tells why when it does not.
create function public.hosting_enqueue(p_site_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_site record;
  v_job record;
begin
  select s.id, s.status_dns, s.status_hosting into v_site from public.sites s where s.id = p_site_id;
  if not found then
    return jsonb_build_object('found', false);
  end if;
  select j.id, j.state into v_job
  from hosting_automator.jobs j
  where j.site_id = p_site_id and j.state in ('queued', 'running');
  if found then
    return jsonb_build_object('found', true, 'queued', false, 'job_id', v_job.id, 'job_state', v_job.state);
  end if;
  if v_site.status_dns = 'active' and v_site.status_hosting = 'pending' then
    select * into v_job from hosting_automator.queue_job(p_site_id);
    return jsonb_build_object('found', true, 'queued', v_job.created, 'job_id', v_job.job_id, 'job_state', 'queued');
  end if;
  return jsonb_build_object('found', true, 'queued', false, 'reason', 'not_due',
    'status_dns', v_site.status_dns, 'status_hosting', v_site.status_hosting);
end
$$;

-- Re-queue failed work: failed sites (back to pending, so the row trigger queues them), active sites missing
-- analytics (an `analytics` job that runs now), and failed removals: of a kept row ('removing' with no open
-- removal), and of a deleted row (by its site id; with p_all_failed, every deleted row whose latest job is a
-- failed removal). One site, or all of them.
create function public.hosting_retry(p_site_id uuid default null, p_all_failed boolean default false)
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
