-- The fleet in SQL: the configured server registered as `default`, placement by room and its stickiness, the
-- per-server cap, draining and disabled servers, no room, the circuit, and a corrected host key.
-- (Several real sshd servers: tests/fleet.test.ts.)
begin;
select plan(29);

delete from net.http_request_queue;
update hosting_automator.settings set backoff_base_seconds = 60, backoff_max_seconds = 600, server_concurrency = 3;

-- The exit's `fail` outcome, as the worker sends it.
create function pg_temp.fail(p_code text, p_public text, p_permanent boolean) returns jsonb language sql as $$
  select jsonb_build_object('type', 'fail', 'done', null, 'code', p_code, 'public_message', p_public,
    'internal_message', null, 'permanent', p_permanent, 'attempt_limit', null)
$$;

create function pg_temp.claim(p_site uuid default null, p_limit integer default 1)
returns setof record language sql as $$
  select job_id, site_id, kind, server from public.hosting_claim_jobs('w', 'x', 60, p_limit, p_site,
    p_default_server => '{"host": "cp.example", "host_key": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}')
$$;

-- With no server registered, the configured one becomes `default`.
insert into public.sites (domain, status_dns) values ('one.example', 'active') returning id \gset one_
create temporary table t1 as select * from pg_temp.claim(:'one_id') as (job_id bigint, site_id uuid, kind text, server jsonb);
select is((select server ->> 'name' from t1), 'default', 'the configured server is registered as default');
select is((select concurrency from hosting_automator.servers where name = 'default'), 3,
  'with the configured concurrency');
select is((select hosting_server from public.sites where id = :'one_id'), 'default', 'the row says where the site lives');
select is((select server from hosting_automator.placements where site_id = :'one_id'), 'default', 'the placement is kept');

-- Two more servers with capacities; new sites go where there is the most room.
insert into hosting_automator.servers (name, host, host_key, capacity, concurrency) values
  ('cp-a', 'a.example', 'SHA256:' || repeat('B', 43), 2, 5),
  ('cp-b', 'b.example', 'SHA256:' || repeat('C', 43), 4, 5);
update hosting_automator.servers set state = 'draining' where name = 'default';
insert into public.sites (domain, status_dns)
select 'fill-' || i || '.example', 'active' from generate_series(1, 6) i;
create temporary table t_fill as
  select * from pg_temp.claim(null, 10) as (job_id bigint, site_id uuid, kind text, server jsonb);
select is((select count(*)::int from t_fill), 6, 'six sites placed and started');
select is((select count(*)::int from hosting_automator.placements where server = 'cp-a'), 2, 'capacity 2: two sites');
select is((select count(*)::int from hosting_automator.placements where server = 'cp-b'), 4, 'capacity 4: four sites');
select is((select count(*)::int from hosting_automator.placements where server = 'default'), 1,
  'a draining server takes no new site');

-- No room left: the next site waits, without spending an attempt, and says why.
insert into public.sites (domain, status_dns) values ('late.example', 'active') returning id \gset late_
select is((select count(*)::int from pg_temp.claim(:'late_id') as (job_id bigint, site_id uuid, kind text, server jsonb)), 0,
  'no server has room: nothing is claimed');
select is((select last_error_code || ' ' || attempts from hosting_automator.jobs where site_id = :'late_id'),
  'no_server_capacity 0', 'the job waits with no_server_capacity, attempts untouched');
select ok((select run_at > now() from hosting_automator.jobs where site_id = :'late_id'), 'due again after a backoff');
select is((public.hosting_status() ->> 'waiting_for_capacity')::int, 1, '/status counts it');
update hosting_automator.servers set capacity = 5 where name = 'cp-b';
update hosting_automator.jobs set run_at = now() where site_id = :'late_id';
select is((select server ->> 'name' from pg_temp.claim(:'late_id') as (job_id bigint, site_id uuid, kind text, server jsonb)),
  'cp-b', 'a raised capacity lets it through');

-- Sticky: a retried job returns to its server even when another has more room.
select job_id as fj, site_id as fs from t_fill where server ->> 'name' = 'cp-a' limit 1 \gset
select lease_token as ft from hosting_automator.jobs where id = :fj \gset
select is(public.hosting_exit(:fj, :'ft', pg_temp.fail('cloudpanel_busy', 'busy', false)) ->> 'state', 'queued', 'a job fails for now');
update hosting_automator.servers set capacity = 100 where name = 'cp-b';
update hosting_automator.jobs set run_at = now() where id = :fj;
select is((select server ->> 'name' from pg_temp.claim(:'fs') as (job_id bigint, site_id uuid, kind text, server jsonb)),
  'cp-a', 'its retry runs on the same server');

-- The per-server cap: cp-a (concurrency 5) runs 2; set it to 2 and a new site placed there waits.
update hosting_automator.servers set concurrency = 2, capacity = 3 where name = 'cp-a';
update hosting_automator.servers set state = 'disabled' where name = 'cp-b';
insert into public.sites (domain, status_dns) values ('capped.example', 'active') returning id \gset capped_
select is((select count(*)::int from pg_temp.claim(:'capped_id') as (job_id bigint, site_id uuid, kind text, server jsonb)), 0,
  'a server at its cap runs nothing more');
select is((select count(*)::int from hosting_automator.placements where site_id = :'capped_id'), 0,
  'and a site is placed only when its job starts');

-- A disabled server runs nothing: a job of a site placed there waits.
select id as bj, site_id as bs, lease_token as bt from hosting_automator.jobs
where server = 'cp-b' and state = 'running' order by id limit 1 \gset
select is(public.hosting_exit(:bj, :'bt', pg_temp.fail('cloudpanel_busy', 'busy', false)) ->> 'state', 'queued', 'a cp-b job fails for now');
update hosting_automator.jobs set run_at = now() where id = :bj;
select is((select count(*)::int from pg_temp.claim(:'bs') as (job_id bigint, site_id uuid, kind text, server jsonb)), 0,
  'its retry waits while cp-b is disabled');

-- The circuit: a server that cannot be reached gives the job back, attempt kept, and pauses its other jobs.
update hosting_automator.servers set state = 'active', capacity = 100 where name = 'cp-b';
create temporary table t_b as select * from pg_temp.claim(:'bs') as (job_id bigint, site_id uuid, kind text, server jsonb);
select lease_token as bt2, attempts as ba from hosting_automator.jobs where id = :bj \gset
select ok((public.hosting_exit(:bj, :'bt2', '{"type": "server_trouble", "done": null, "code": "ssh_unreachable", "message": "The server could not be reached."}')
  ->> 'ok')::boolean, 'the worker reports the server unreachable');
select is((select attempts from hosting_automator.jobs where id = :bj), :ba - 1, 'the attempt is given back');
select ok((select open_until > now() and failures = 1 from hosting_automator.servers where name = 'cp-b'), 'the circuit opens');
select is((select e -> 'circuit' ->> 'state' from jsonb_array_elements(public.hosting_status() -> 'servers') e
  where e ->> 'name' = 'cp-b'), 'open', '/status shows it open');

-- Fixing the server (here its host key) closes the circuit and makes its waiting jobs due.
update hosting_automator.servers set host_key = 'SHA256:' || repeat('D', 43) where name = 'cp-b';
select ok((select failures = 0 and open_until is null from hosting_automator.servers where name = 'cp-b'), 'the circuit closes');
select ok((select run_at <= now() from hosting_automator.jobs where id = :bj), 'and the job that waited for it is due now');

-- A placement that never held anything is given back when the site's job ends (e.g. its domain was refused).
insert into public.sites (domain, status_dns) values ('refused.example', 'active') returning id \gset r_
create temporary table t_r as select * from pg_temp.claim(:'r_id') as (job_id bigint, site_id uuid, kind text, server jsonb);
select job_id as rj from t_r \gset
select lease_token as rt from hosting_automator.jobs where id = :rj \gset
select is(public.hosting_exit(:rj, :'rt', pg_temp.fail('invalid_domain', 'The domain is invalid.', true)) ->> 'state', 'failed',
  'a job fails before any step');
select is((select count(*)::int from hosting_automator.placements where site_id = :'r_id'), 0, 'its placement is given back');
select is((select hosting_server from public.sites where id = :'r_id'), null, 'and the row no longer names a server');

-- A site built before there was a fleet (journaled, never placed) lives on `default`, whatever has more room.
insert into public.sites (domain, status_dns, status_hosting) values ('old.example', 'active', 'active') returning id \gset old_
insert into hosting_automator.steps (site_id, step, state, result)
values (:'old_id', 'cloudpanel_site', 'done', '{"site_user": "old-example-abc", "doc_root": "/home/old-example-abc/htdocs/old.example"}');
select hosting_automator.queue_job(:'old_id', 'analytics');
select is((select server ->> 'name' from pg_temp.claim(:'old_id') as (job_id bigint, site_id uuid, kind text, server jsonb)),
  'default', 'its next job runs on default');

select * from finish();
rollback;
