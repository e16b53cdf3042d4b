-- What the files of supabase/schemas cannot declare, applied after them to build the module's database from
-- nothing (tests/schema.test.ts does; the migrations did the same, once, on every installed database): the
-- settings row, the platform's optional extensions, and the sweep's schedule. Data and jobs are not part of a
-- schema diff, so a change here goes into a migration by hand, and into this file.

-- The queue policy's one row, with its defaults.
insert into hosting_automator.settings default values;

-- pg_net (the kick) and pg_cron (the sweep), where the server offers them. On plain Postgres (tests, self-hosting
-- without them) this logs a notice and jobs wait to be polled.
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

do $$
begin
  raise notice 'hosting-automator: %', hosting_automator.schedule_sweep();
end
$$;
