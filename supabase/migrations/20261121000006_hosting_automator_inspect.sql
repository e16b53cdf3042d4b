-- Read-only views for operators (the CLI's --site, --dry-run): one site with its job, journal and recent
-- events; and the jobs that are due now. Same rules as the other API functions: service_role only.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- One site by id or by domain: the row, its open (or last) job, its step journal and its latest events.
create function public.hosting_site(p_key text, p_events integer default 20)
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
          'job_id', j.id, 'state', j.state, 'attempts', j.attempts, 'max_attempts', j.max_attempts,
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

-- Jobs due now, oldest first, with the journal a worker would resume from.
create function public.hosting_due(p_limit integer default 100)
returns table (job_id bigint, site_id uuid, domain text, attempts integer, run_at timestamptz, steps jsonb)
language sql
stable
security definer
set search_path = ''
as $$
  select j.id, j.site_id, s.domain, j.attempts, j.run_at,
    coalesce((
      select jsonb_object_agg(st.step, jsonb_build_object('state', st.state, 'result', st.result))
      from hosting_automator.steps st where st.site_id = j.site_id), '{}'::jsonb)
  from hosting_automator.jobs j
  join public.sites s on s.id = j.site_id
  where j.state = 'queued' and j.run_at <= now()
  order by j.run_at, j.id
  limit least(greatest(p_limit, 1), 1000)
$$;

revoke all on function public.hosting_site(text, integer) from public, anon, authenticated;
revoke all on function public.hosting_due(integer) from public, anon, authenticated;
grant execute on function public.hosting_site(text, integer) to service_role;
grant execute on function public.hosting_due(integer) to service_role;
