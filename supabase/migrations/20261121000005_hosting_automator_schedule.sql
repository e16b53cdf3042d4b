-- The platform pieces: pg_net (the kick) and pg_cron (the sweep every minute), where the server offers them.
-- On plain Postgres (tests, self-hosting without them) this logs a notice and jobs wait to be polled.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

do $$
begin
  if exists (select 1 from pg_available_extensions where name = 'pg_net') then
    begin
      -- Where Supabase's docs put it (and not in public, which the security advisor flags).
      if exists (select 1 from pg_namespace where nspname = 'extensions') then
        create extension if not exists pg_net with schema extensions;
      else
        create extension if not exists pg_net;
      end if;
    exception when others then
      raise notice 'hosting-automator: pg_net is available but could not be enabled (%): kicks are off', sqlerrm;
    end;
  end if;
  if exists (select 1 from pg_available_extensions where name = 'pg_cron') then
    begin
      -- As Supabase's docs install it; its objects live in the `cron` schema.
      create extension if not exists pg_cron with schema pg_catalog;
    exception when others then
      raise notice 'hosting-automator: pg_cron is available but could not be enabled (%): no sweep schedule', sqlerrm;
    end;
  end if;
end
$$;

-- (Re)schedules the sweep. Call it by hand after enabling pg_cron later: select hosting_automator.schedule_sweep();
create function hosting_automator.schedule_sweep()
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    return 'pg_cron is not installed: the sweep is not scheduled';
  end if;
  -- Named jobs are replaced, so running this again changes nothing.
  perform cron.schedule('hosting-automator-sweep', '* * * * *', 'select hosting_automator.sweep()');
  return 'scheduled hosting-automator-sweep every minute';
end
$$;

revoke all on function hosting_automator.schedule_sweep() from public, anon, authenticated, service_role;

do $$
begin
  raise notice 'hosting-automator: %', hosting_automator.schedule_sweep();
end
$$;
