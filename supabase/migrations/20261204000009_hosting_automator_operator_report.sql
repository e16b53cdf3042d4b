-- The operator's report, whole: whether this database starts jobs by itself (the Vault secrets the kicks need,
-- pg_net, pg_cron and the sweep's schedule), and the jobs that wait for a server, apart from the ones at work.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- What the database needs to start jobs by itself, as booleans: a kick needs pg_net and both Vault secrets, and
-- the sweep (retries, expired leases, a lost kick) needs pg_cron as well. Secrets are looked up by name only:
-- nothing is decrypted. `sweep_scheduled` is null when the schedule cannot be read.
create function hosting_automator.setup_report()
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_vault boolean := hosting_automator.vault_present();
  v_url boolean := false;
  v_key boolean := false;
  v_cron boolean := exists (select 1 from pg_extension e where e.extname = 'pg_cron');
  v_schedule text;
  v_sweep boolean := false;
begin
  if v_vault then
    -- Dynamic SQL: Vault may not exist where this function is created.
    execute $sql$
      select coalesce(bool_or(s.name = 'hosting_automator_url'), false),
        coalesce(bool_or(s.name = 'hosting_automator_key'), false)
      from vault.secrets s
      where s.name in ('hosting_automator_url', 'hosting_automator_key')
    $sql$ into v_url, v_key;
  end if;
  if v_cron and to_regclass('cron.job') is not null then
    begin
      execute $sql$
        select j.schedule from cron.job j where j.jobname = 'hosting-automator-sweep' and j.active limit 1
      $sql$ into v_schedule;
      v_sweep := v_schedule is not null;
    exception when insufficient_privilege then
      v_sweep := null;
    end;
  end if;
  return jsonb_build_object(
    'vault', v_vault,
    'vault_url', v_url,
    'vault_key', v_key,
    'pg_net', to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null,
    'pg_cron', v_cron,
    'sweep_scheduled', v_sweep,
    'sweep_schedule', v_schedule);
end
$$;

-- Queued jobs that wait for a server rather than for their own turn: their server is disabled, could not be
-- reached (by the code it failed with: ssh_unreachable, ssh_timeout, ssh_host_key_mismatch, ssh_auth_failed),
-- or no active server has room (no_server_capacity). `sites` counts their sites by status_hosting, which says
-- `provisioning` for a site whose job waits.
create function hosting_automator.waiting_for_server()
returns jsonb
language sql
stable
set search_path = ''
as $$
  with waiting as (
    select j.site_id, s.status_hosting,
      case
        when sv.state = 'disabled' then 'server_disabled'
        when hosting_automator.waits_for_server(j.last_error_code) then j.last_error_code
        when j.last_error_code = 'no_server_capacity' then 'no_server_capacity'
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

alter function public.hosting_status(integer) rename to status_checks;
alter function public.status_checks(integer) set schema hosting_automator;

-- The operator's report (hosting_automator.status_checks), with the setup and the jobs waiting for a server.
create function public.hosting_status(p_limit integer default 20)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select hosting_automator.status_checks(p_limit) || jsonb_build_object(
    'setup', hosting_automator.setup_report(),
    'waiting_for_server', hosting_automator.waiting_for_server())
$$;

-- The cores are internal: nobody but their owner executes them; the report is for service_role.
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;
revoke all on function public.hosting_status(integer) from public, anon, authenticated;
grant execute on function public.hosting_status(integer) to service_role;
