-- Waiting for DNS: its own schedule, no attempt spent, bounded by dns_wait_hours; and the claim tells the server's
-- public addresses. (End to end with the DNS-over-HTTPS and TLS simulators: tests/checks.test.ts.)
begin;
select plan(9);

update hosting_automator.settings set dns_backoff_seconds = 60, dns_backoff_max_seconds = 240, dns_wait_hours = 2;
insert into hosting_automator.servers (name, host, host_key, public_ips)
values ('cp', 'cp.example', 'SHA256:' || repeat('A', 43), '{203.0.113.10, 2001:db8::10}');
insert into public.sites (domain, status_dns) values ('wait.example', 'active') returning id \gset w_

-- The exit's `snooze` outcome on the DNS schedule, as the worker sends it for `dns_not_ready`.
create function pg_temp.wait_for_dns(p_public text) returns jsonb language sql as $$
  select jsonb_build_object('type', 'snooze', 'done', null, 'code', 'dns_not_ready', 'public_message', p_public,
    'internal_message', null, 'schedule', 'dns')
$$;

create temporary table t1 as select * from public.hosting_claim_jobs('w', 'x', 60, 1, :'w_id');
select is((select server -> 'public_ips' from t1), '["203.0.113.10", "2001:db8::10"]'::jsonb,
  'the claim tells the server''s public addresses');
select job_id as j, lease_token as t from t1 \gset
select ok((public.hosting_advance(:j, :'t', 60, null, 'dns_check') ->> 'ok')::boolean, 'the DNS check starts');
select is(public.hosting_exit(:j, :'t', pg_temp.wait_for_dns('DNS does not point at the server yet.')) ->> 'state', 'queued',
  'DNS not ready: queued again');
select is((select attempts from hosting_automator.jobs where id = :j), 0, 'without spending the attempt');
select ok((select run_at between now() + interval '30 seconds' and now() + interval '60 seconds'
  from hosting_automator.jobs where id = :j), 'after dns_backoff_seconds, with jitter');

update hosting_automator.jobs set run_at = now() where id = :j;
select lease_token as t2 from public.hosting_claim_jobs('w', 'x', 60, 1, :'w_id') \gset
select public.hosting_advance(:j, :'t2', 60, null, 'dns_check') ->> 'ok' as started \gset
select is(public.hosting_exit(:j, :'t2', pg_temp.wait_for_dns('still not')) ->> 'state', 'queued', 'still not ready: queued again');
select ok((select run_at between now() + interval '60 seconds' and now() + interval '120 seconds'
  from hosting_automator.jobs where id = :j), 'the second wait is twice as long');

-- Waiting longer than dns_wait_hours since the first DNS check fails the job, with the reason.
update hosting_automator.steps set created_at = now() - interval '3 hours' where site_id = :'w_id' and step = 'dns_check';
update hosting_automator.jobs set run_at = now() where id = :j;
select lease_token as t3 from public.hosting_claim_jobs('w', 'x', 60, 1, :'w_id') \gset
select public.hosting_advance(:j, :'t3', 60, null, 'dns_check') ->> 'ok' as started \gset
select is(public.hosting_exit(:j, :'t3', pg_temp.wait_for_dns('DNS does not point at the server yet.')) ->> 'state', 'failed',
  'after dns_wait_hours the job fails');
select alike((select error_message from public.sites where id = :'w_id'), 'DNS has not pointed at the server for 2 hours:%',
  'and the row says why');

select * from finish();
rollback;
