-- The doorbell and the sweep (docs/architecture.md §6): a kick is a pg_net POST that wakes the Edge Function; it
-- rings once per free slot while jobs are due, and the sweep (pg_cron) catches what a kick missed. pg_net and
-- Vault are optional: without them jobs are queued all the same and wait for a worker to poll.

-- Kicks on their way: each reserves a free slot until a worker's first claim consumes it or it expires.
create table hosting_automator.rings (
  id bigint generated always as identity primary key,
  rung_at timestamptz not null default now()
);
comment on table hosting_automator.rings is
  'Doorbell kicks sent and not yet answered by a claim; they count against free slots for ring_ttl_seconds.';

-- The doorbell's requests, for /status to join with pg_net's responses (kept for a day; pg_net keeps 6 hours).
create table hosting_automator.kick_log (
  request_id bigint primary key,
  sent_at timestamptz not null default now()
);
comment on table hosting_automator.kick_log is 'pg_net request ids of the kicks this module sent.';
create index kick_log_sent on hosting_automator.kick_log (sent_at);

-- POST a kick to the Edge Function through pg_net, with the URL and key from Vault
-- (secrets `hosting_automator_url` and `hosting_automator_key`). Returns the pg_net request id, or null when
-- pg_net or the secrets are missing or the request could not be queued. Never raises: a lost kick only
-- delays a job until the next sweep. pg_net sends the request after commit; a rollback sends nothing.
create function hosting_automator.kick(p_body jsonb)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_key text;
  v_timeout integer;
  v_request bigint;
begin
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null
    or to_regclass('vault.decrypted_secrets') is null then
    return null;
  end if;
  -- Dynamic SQL: these schemas may not exist when the function is created.
  execute $sql$
    select max(decrypted_secret) filter (where name = 'hosting_automator_url'),
           max(decrypted_secret) filter (where name = 'hosting_automator_key')
    from vault.decrypted_secrets
    where name in ('hosting_automator_url', 'hosting_automator_key')
  $sql$ into v_url, v_key;
  if v_url is null or v_key is null then
    return null;
  end if;
  select s.kick_timeout_ms into v_timeout from hosting_automator.settings s;
  execute 'select net.http_post(url => $1, body => $2, headers => $3, timeout_milliseconds => $4)'
    into v_request
    using v_url, p_body, jsonb_build_object('Content-Type', 'application/json', 'apikey', v_key), v_timeout;
  return v_request;
exception when others then
  raise warning 'hosting-automator: kick not sent (%); the sweep will pick the job up', sqlstate;
  return null;
end
$$;

-- A job holds a slot while it runs under a live lease (an expired one is about to be reaped).
create function hosting_automator.slots_taken()
returns integer
language sql
stable
set search_path = ''
as $$
  select count(*)::integer from hosting_automator.jobs j where j.state = 'running' and j.lease_expires_at > now()
$$;

-- Ring the doorbell at most p_max times: once per free slot of the fleet (its slots minus running jobs minus
-- kicks on their way), and never more than there are due jobs. Returns the kicks sent. The worker's short
-- transactions serialise (p_serialise), so they cannot spend the same free slot twice; the trigger on
-- public.sites does not, so a Hub's transaction never waits for, or deadlocks with, another (two Hub statements
-- at once may ring a slot twice: the second kick finds nothing to claim).
create function hosting_automator.ring(p_max integer, p_serialise boolean default true)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings hosting_automator.settings;
  v_free integer;
  v_due integer;
  v_on_the_way integer;
  v_kicks integer := 0;
  v_request bigint;
begin
  if coalesce(p_max, 0) <= 0 then
    return 0;
  end if;
  if p_serialise then
    perform pg_advisory_xact_lock(hashtextextended('hosting_automator.ring', 0));
  end if;
  select * into v_settings from hosting_automator.settings;
  delete from hosting_automator.rings r where r.rung_at <= now() - make_interval(secs => v_settings.ring_ttl_seconds);
  select count(*)::integer into v_on_the_way from hosting_automator.rings;
  v_free := hosting_automator.slots() - hosting_automator.slots_taken();
  select count(*)::integer into v_due from hosting_automator.jobs j where j.state = 'queued' and j.run_at <= now();
  -- Each kick on its way will take a free slot and a due job.
  for i in 1 .. least(p_max, v_free - v_on_the_way, v_due - v_on_the_way) loop
    v_request := hosting_automator.kick('{}'::jsonb);
    exit when v_request is null;
    insert into hosting_automator.rings default values;
    insert into hosting_automator.kick_log (request_id) values (v_request) on conflict do nothing;
    v_kicks := v_kicks + 1;
  end loop;
  return v_kicks;
end
$$;

-- After a statement that inserts or deletes sites or changes their status columns (row triggers run first): ring
-- for the jobs it queued, once per free slot. A bulk DNS flip of 500 rows sends at most one kick per slot. The
-- row triggers count (count_queued), so a Hub statement over many rows costs no copy of its rows (as a
-- transition table would).
create function hosting_automator.on_sites_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_queued integer := coalesce(nullif(current_setting('hosting_automator.queued', true), ''), '0')::integer;
begin
  if v_queued > 0 then
    perform set_config('hosting_automator.queued', '0', true);
    perform hosting_automator.ring(v_queued, false);
  end if;
  return null;
end
$$;

create trigger hosting_automator_ring
  after insert or delete or update of status_dns, status_hosting on public.sites
  for each statement execute function hosting_automator.on_sites_changed();

-- The sweep, run by pg_cron: reap expired leases, ring once per free slot while jobs are due (the doorbell's
-- rules), apply the retention (a bounded batch per run).
create function hosting_automator.sweep()
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reaped integer;
  v_due integer;
  v_kicks integer;
begin
  v_reaped := hosting_automator.reap_expired_leases();
  select count(*)::integer into v_due from hosting_automator.jobs j where j.state = 'queued' and j.run_at <= now();
  v_kicks := hosting_automator.ring(v_due);
  return jsonb_build_object('reaped', v_reaped, 'due', v_due, 'running', hosting_automator.slots_taken(),
    'kicks', v_kicks, 'deleted', hosting_automator.apply_retention(500));
end
$$;

-- (Re)schedules the sweep; supabase/residue.sql calls it. Hosted pg_cron (1.5 and later) runs jobs every few
-- seconds: a sweep every 20 s brings a dead worker's slot back sooner. Older pg_cron takes only minutes: then
-- every minute. After enabling pg_cron later: select hosting_automator.schedule_sweep();
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
  begin
    perform cron.schedule('hosting-automator-sweep', '20 seconds', 'select hosting_automator.sweep()');
    return 'scheduled hosting-automator-sweep every 20 seconds';
  exception when others then
    perform cron.schedule('hosting-automator-sweep', '* * * * *', 'select hosting_automator.sweep()');
    return 'scheduled hosting-automator-sweep every minute (this pg_cron has no seconds schedules)';
  end;
end
$$;
