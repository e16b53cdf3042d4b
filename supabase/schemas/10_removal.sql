-- Removal (docs/architecture.md §8): deleting a row of public.sites, or setting its status_hosting to 'removing',
-- queues a `remove` job, which keeps what it needs and so survives the row. A removal cancels the site's build
-- jobs that have not started; one that is running stops at its next step boundary. So a removal never races a
-- half-made site, and provisioning again after a removal starts from nothing. The removal's completion is with
-- the exit (hosting_exit, outcome `removed`).

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

-- A site is to be removed (its row deleted, or its status set to 'removing'). Cancels its build jobs that have
-- not started; then, when anything may exist for it (a step was ever started, or a job is running), queues a
-- removal with what it needs (the site's kept facts: site user, doc root, Matomo id); otherwise the site is
-- removed at once. Answers 'queued', 'open' (a removal was already open), 'nothing_to_remove' or 'no_domain'.
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

create trigger hosting_automator_remove_deleted
  after delete on public.sites
  for each row execute function hosting_automator.on_site_removal();
create trigger hosting_automator_remove
  after update of status_hosting on public.sites
  for each row
  when (new.status_hosting = 'removing' and old.status_hosting is distinct from 'removing')
  execute function hosting_automator.on_site_removal();

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
