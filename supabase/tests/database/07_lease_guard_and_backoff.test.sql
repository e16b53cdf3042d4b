-- Two rules every caller shares, each written once: the lease guard (lock_leased_job), which every call a worker
-- makes under a lease goes through, and the backoff (backoff), which the queue's retries, a server's circuit and
-- the waits for DNS all follow.
begin;
select plan(22);

update hosting_automator.settings set backoff_base_seconds = 60, backoff_max_seconds = 600;
insert into hosting_automator.servers (name, host, host_key) values ('cp', 'cp.example', 'SHA256:' || repeat('A', 43));
insert into public.sites (domain, status_dns) values ('lease.example', 'active') returning id \gset s_
create temporary table t_claim as select * from public.hosting_claim_jobs('w', 'cp', 60, 1, :'s_id');
select job_id as j, lease_token as t from t_claim \gset

-- The guard: the job's row while the caller holds its current lease.
select is((select count(*)::int from hosting_automator.lock_leased_job(:j, :'t')), 1, 'the lease holder gets its job''s row');
select is((select count(*)::int from hosting_automator.lock_leased_job(:j, gen_random_uuid())), 0,
  'another token gets nothing');

-- A lease that expired is lost even before the reaper has seen it: every leased call refuses it.
update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where id = :j;
create temporary table t_before as
  select state, attempts, run_at, lease_token, lease_expires_at, current_step, last_error_code, error_streak
  from hosting_automator.jobs where id = :j;
select is((select count(*)::int from hosting_automator.lock_leased_job(:j, :'t')), 0, 'an expired lease gets nothing');
select ok(not public.hosting_heartbeat(:j, :'t', 60, 'cloudpanel_site'), 'hosting_heartbeat refuses it');
select is(public.hosting_advance(:j, :'t', 60, null, 'cloudpanel_site', 'lease.example') ->> 'reason', 'lease_lost',
  'hosting_advance refuses it');
select is(public.hosting_exit(:j, :'t', '{"type": "release", "done": {"step": "cloudpanel_site", "state": "done"}}')
  ->> 'reason', 'lease_lost', 'a step end sent with an exit is refused with it');
select is(public.hosting_exit(:j, :'t', '{"type": "active", "doc_root": "/home/lease-example-abc/htdocs/lease.example",
  "matomo_site_id": 3}') ->> 'reason', 'lease_lost', 'hosting_exit refuses an active outcome');
select is(public.hosting_exit(:j, :'t', '{"type": "removed"}') ->> 'reason', 'lease_lost',
  'hosting_exit refuses a removed outcome');
select is(public.hosting_exit(:j, :'t', '{"type": "fail", "code": "cloudpanel_busy", "public_message": "Busy.",
  "permanent": false}') ->> 'reason', 'lease_lost', 'hosting_exit refuses a fail outcome');
select is(public.hosting_exit(:j, :'t', '{"type": "release"}') ->> 'reason', 'lease_lost',
  'hosting_exit refuses a release outcome');
select is(public.hosting_exit(:j, :'t', '{"type": "snooze", "code": "dns_not_ready", "public_message": "Not yet.",
  "schedule": "dns"}') ->> 'reason', 'lease_lost', 'hosting_exit refuses a snooze outcome');
select is(public.hosting_exit(:j, :'t', '{"type": "server_trouble", "code": "ssh_unreachable", "message": "Down."}')
  ->> 'reason', 'lease_lost', 'hosting_exit refuses a server_trouble outcome');
select results_eq(
  format($$select state, attempts, run_at, lease_token, lease_expires_at, current_step, last_error_code, error_streak
    from hosting_automator.jobs where id = %s$$, :j),
  'select * from t_before',
  'and the job is as it was');
select is((select count(*)::int from hosting_automator.steps where site_id = :'s_id'), 0, 'nothing was journaled');
select is((select count(*)::int from hosting_automator.domain_owners where site_id = :'s_id'), 0, 'nor the domain owned');
select is((select status_hosting from public.sites where id = :'s_id'), 'provisioning', 'nor the row changed');
select ok((select failures = 0 and open_until is null from hosting_automator.servers where name = 'cp'),
  'nor the server''s circuit opened');

-- The backoff: base × 2^(n − 1), capped, with equal jitter (half to all of it).
select ok((select bool_and(d between interval '30 seconds' and interval '60 seconds')
  from (select hosting_automator.backoff(1, 60, 600) as d from generate_series(1, 200)) x), 'the first wait is the base, jittered');
select ok((select bool_and(d between interval '120 seconds' and interval '240 seconds')
  from (select hosting_automator.backoff(3, 60, 600) as d from generate_series(1, 200)) x), 'then it doubles');
select ok((select bool_and(d between interval '300 seconds' and interval '600 seconds')
  from (select hosting_automator.backoff(12, 60, 600) as d from generate_series(1, 200)) x), 'up to the cap');
select ok((select bool_and(d between interval '30 seconds' and interval '60 seconds')
  from (select hosting_automator.backoff(0, 60, 600) as d from generate_series(1, 200)) x), 'a count below 1 counts as 1');
select ok((select bool_and(d between interval '60 seconds' and interval '120 seconds')
  from (select hosting_automator.retry_delay(2) as d from generate_series(1, 200)) x),
  'the queue''s retry delay is the backoff with the queue''s base and cap');

select * from finish();
rollback;
