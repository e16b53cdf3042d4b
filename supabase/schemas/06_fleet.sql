-- The fleet of CloudPanel servers and where each site is placed (docs/architecture.md §16). Servers are rows,
-- edited with SQL; no key, token or password is in them (the SSH keys stay the function's secrets). A site is
-- placed once, when its first job runs, and stays there: retries, resumes, the analytics backfill and the removal
-- run on the same server. Each server has its own concurrency and its own circuit.

create table hosting_automator.servers (
  name text primary key check (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  -- A host name, an IPv4 address or an IPv6 address (without brackets).
  host text not null check (host ~ '^[A-Za-z0-9:]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9:])?$'),
  port integer not null default 22 check (port between 1 and 65535),
  ssh_user text not null default 'root' check (ssh_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
  -- The server's host key fingerprint to pin, as `ssh-keygen -lf` prints it.
  host_key text not null check (host_key ~ '^SHA256:[A-Za-z0-9+/]{43}$'),
  -- The addresses the sites' DNS must point to.
  public_ips inet[] not null default '{}',
  -- The most sites it may hold; null: no limit.
  capacity integer check (capacity >= 0),
  -- Jobs at once on it.
  concurrency integer not null default 4 check (concurrency between 1 and 100),
  -- active: takes new sites; draining: keeps and serves its sites, takes no new ones; disabled: runs nothing.
  state text not null default 'active' check (state in ('active', 'draining', 'disabled')),
  -- The circuit: connection failures in a row, and until when its jobs wait.
  failures integer not null default 0 check (failures >= 0),
  open_until timestamptz,
  last_error_code text,
  last_error text check (length(last_error) <= 500),
  last_error_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table hosting_automator.servers is
  'The CloudPanel servers: where sites are placed, how many jobs run on each, and each one''s circuit.';

-- Which server each site lives on; kept until its removal completes (public.sites.hosting_server tells the Hub).
create table hosting_automator.placements (
  site_id uuid primary key,
  -- A server with sites cannot be deleted (set it to draining, then disabled, instead).
  server text not null references hosting_automator.servers (name) on update cascade,
  placed_at timestamptz not null default now()
);
comment on table hosting_automator.placements is 'The server each site was placed on; placement is sticky.';
create index placements_server on hosting_automator.placements (server);

-- A server runs jobs now: not disabled, and its circuit is not open.
create function hosting_automator.server_runs(p_server hosting_automator.servers)
returns boolean
language sql
stable
set search_path = ''
as $$
  select p_server.state <> 'disabled' and (p_server.open_until is null or p_server.open_until <= now())
$$;

-- How full a server is, for placement: placed sites relative to capacity (0 without a limit; 1 or more: full).
create function hosting_automator.server_fill(p_server hosting_automator.servers)
returns double precision
language sql
stable
set search_path = ''
as $$
  select case
    when p_server.capacity is null then 0
    when p_server.capacity = 0 then 1
    else (select count(*) from hosting_automator.placements p where p.server = p_server.name)::double precision
      / p_server.capacity
  end
$$;

-- Slots of the fleet: the concurrency of the servers that run jobs now (the configured cap before any server is
-- registered).
create function hosting_automator.slots()
returns integer
language sql
stable
set search_path = ''
as $$
  select coalesce(
    (select sum(s.concurrency)::integer from hosting_automator.servers s where hosting_automator.server_runs(s)),
    (select st.server_concurrency from hosting_automator.settings st))
$$;

-- Where a new site goes: the active server with the most room (the lowest share of its
-- capacity taken; then the fewest sites), ties by name; null when none has room. Read under the claim's lock,
-- which is also where the placement is written, so concurrent claims never overfill a server.
create function hosting_automator.best_server()
returns text
language sql
stable
set search_path = ''
as $$
  select s.name
  from hosting_automator.servers s
  where s.state = 'active' and hosting_automator.server_fill(s) < 1
  -- A server that runs now first (when none does, the site waits for one whose circuit closes); servers without
  -- a limit count as empty by fill; among equals, the one with fewer sites goes first.
  order by hosting_automator.server_runs(s) desc, hosting_automator.server_fill(s),
    (select count(*) from hosting_automator.placements p where p.server = s.name), s.name
  limit 1
$$;

-- An operator changed a server. Its address or state (a fixed host key, a server enabled): its circuit closes
-- and the jobs that waited for it are due now. Its room (capacity, state): the jobs waiting for room are due now.
create function hosting_automator.on_server_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  new.updated_at := now();
  if (old.host, old.port, old.ssh_user, old.host_key, old.state)
    is distinct from (new.host, new.port, new.ssh_user, new.host_key, new.state)
  then
    new.failures := 0;
    new.open_until := null;
    update hosting_automator.jobs j set run_at = now()
    where j.state = 'queued' and j.server = new.name and j.run_at > now() and j.waiting_for = 'server';
  end if;
  if (old.capacity, old.state) is distinct from (new.capacity, new.state) then
    update hosting_automator.jobs j set run_at = now()
    where j.state = 'queued' and j.run_at > now() and j.waiting_for = 'capacity';
  end if;
  return new;
end
$$;

create trigger servers_changed
  before update of host, port, ssh_user, host_key, state, capacity on hosting_automator.servers
  for each row
  when ((old.host, old.port, old.ssh_user, old.host_key, old.state, old.capacity)
    is distinct from (new.host, new.port, new.ssh_user, new.host_key, new.state, new.capacity))
  execute function hosting_automator.on_server_changed();

-- A placement that never held anything is given back when its site's jobs end: a site whose domain was refused
-- before any step (or whose job was cancelled first) must not hold a place on a server for good.
create function hosting_automator.on_job_ended()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select 1 from hosting_automator.steps st where st.site_id = new.site_id)
    and not exists (
      select 1 from hosting_automator.jobs j where j.site_id = new.site_id and j.state in ('queued', 'running'))
  then
    delete from hosting_automator.placements p where p.site_id = new.site_id;
    update public.sites s set hosting_server = null where s.id = new.site_id and s.hosting_server is not null;
  end if;
  return null;
end
$$;

create trigger jobs_ended
  after update of state on hosting_automator.jobs
  for each row
  when (new.state in ('failed', 'cancelled') and old.state is distinct from new.state)
  execute function hosting_automator.on_job_ended();

-- A server that had failures answered again: its circuit closes.
create function public.hosting_server_ok(p_name text)
returns boolean
language sql
security definer
set search_path = ''
as $$
  update hosting_automator.servers s set failures = 0, open_until = null, updated_at = now()
  where s.name = p_name and (s.failures > 0 or s.open_until is not null)
  returning true
$$;

-- Every server for the worker's dry run: what to connect to.
create function public.hosting_servers()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('name', s.name, 'host', s.host, 'port', s.port,
    'ssh_user', s.ssh_user, 'host_key', s.host_key, 'state', s.state) order by s.name), '[]'::jsonb)
  from hosting_automator.servers s
$$;
