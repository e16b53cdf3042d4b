-- Retention (docs/architecture.md §12): the module keeps its own history for retention_days, and the sweep deletes
-- older rows in bounded batches, so a database that runs for years does not grow without end.

-- Deletes at most p_batch rows of each kind that are past retention_days: events (the last event of each site's
-- latest job stays), finished jobs (each site's latest job stays, unless its row is deleted and nothing is left to
-- wait for), the kick log (a day), and the sweep's own runs in cron.job_run_details. Returns what it deleted.
create function hosting_automator.apply_retention(p_batch integer default 500)
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
