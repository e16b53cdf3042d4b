-- The queue functions the Edge Function calls: claim with lease and cap, guarded step records, and the exit
-- (complete, fail with backoff, release), retry, status. (Concurrency across connections is tested in tests/queue.test.ts.)
begin;
select plan(47);

delete from net.http_request_queue;
delete from vault.secrets;
update hosting_automator.settings set max_attempts = 3, backoff_base_seconds = 60, backoff_max_seconds = 600,
  server_concurrency = 2;

-- The exit's `fail` outcome, as the worker sends it.
create function pg_temp.fail(p_code text, p_public text, p_internal text, p_permanent boolean) returns jsonb
language sql as $$
  select jsonb_build_object('type', 'fail', 'done', null, 'code', p_code, 'public_message', p_public,
    'internal_message', p_internal, 'permanent', p_permanent, 'attempt_limit', null)
$$;
create function pg_temp.active(p_doc_root text, p_matomo integer) returns jsonb language sql as $$
  select jsonb_build_object('type', 'active', 'done', null, 'message', null, 'doc_root', p_doc_root,
    'matomo_site_id', p_matomo, 'certificate_expires_at', null, 'backfill_kind', null)
$$;

-- One server to start with; sites are placed on it.
insert into hosting_automator.servers (name, host, host_key, concurrency)
values ('srv', 'srv.example', 'SHA256:' || repeat('A', 43), 2);

insert into public.sites (domain, status_dns) values ('a.example', 'active') returning id \gset a_
insert into public.sites (domain, status_dns) values ('b.example', 'active') returning id \gset b_
insert into public.sites (domain, status_dns) values ('c.example', 'active') returning id \gset c_

-- claim
create temporary table t_claim as select * from public.hosting_claim_jobs('w1', 'srv', 120, 1, :'a_id');
select is((select count(*)::int from t_claim), 1, 'claiming a site''s due job returns it');
select is((select domain from t_claim), 'a.example', 'with its domain');
select is((select attempt from t_claim), 1, 'as attempt 1');
select is((select steps from t_claim), '{}'::jsonb, 'and an empty journal');
select is((select status_hosting from public.sites where id = :'a_id'), 'provisioning', 'status_hosting reads provisioning while the job runs');
select ok((select lease_expires_at > now() + interval '119 seconds' from hosting_automator.jobs where site_id = :'a_id' and state = 'running'),
  'the lease lasts the requested seconds');
select is((select count(*)::int from public.hosting_claim_jobs('w2', 'srv', 120, 5, :'a_id')), 0,
  'a running job is not claimed again');

select job_id as a_job, lease_token as a_token from t_claim \gset

-- the per-server cap (2): one running, three asked for, one more granted
create temporary table t_cap as select * from public.hosting_claim_jobs('w2', 'srv', 120, 3);
select is((select count(*)::int from t_cap), 1, 'with cap 2 and one running, a claim for 3 gets 1');
select is((select count(*)::int from public.hosting_claim_jobs('w3', 'srv', 120, 3)), 0, 'a full server gets nothing more');
-- A second server: the next site is placed there (fewer sites), under its own cap.
insert into hosting_automator.servers (name, host, host_key, concurrency)
values ('other', 'other.example', 'SHA256:' || repeat('B', 43), 2);
create temporary table t_other as select * from public.hosting_claim_jobs('w3', 'other', 120, 3);
select is((select count(*)::int from t_other), 1, 'another server has its own cap');
select job_id as b_job, lease_token as b_token from t_cap \gset
select job_id as c_job, lease_token as c_token, attempt as c_attempt from t_other \gset
select is((select count(*)::int from hosting_automator.jobs where state = 'running' and server = 'srv'), 2,
  'never more than the cap run on one server');

-- steps: guarded by the lease
select ok((public.hosting_advance(:a_job, :'a_token', 120, null, 'cloudpanel_site') ->> 'ok')::boolean,
  'the lease owner journals a step start');
select ok((public.hosting_advance(:a_job, :'a_token', 120,
  '{"step": "cloudpanel_site", "state": "done", "result": {"site_user": "a-example-123456", "doc_root": "/home/a-example-123456/htdocs/a.example"}, "code": "cloudpanel_site_done", "message": "Site created."}')
  ->> 'ok')::boolean, 'and its result');
select is((select state::text from hosting_automator.steps where site_id = :'a_id' and step = 'cloudpanel_site'), 'done', 'the journal says done');
select is((select attempts from hosting_automator.steps where site_id = :'a_id' and step = 'cloudpanel_site'), 1, 'after one attempt');
select is(public.hosting_advance(:a_job, gen_random_uuid(), 120, null, 'ssl_certificate') ->> 'reason', 'lease_lost',
  'a wrong lease token records nothing');
select ok((public.hosting_advance(:a_job, :'a_token', 120, '{"step": "cloudpanel_site", "state": "failed"}') ->> 'ok')::boolean,
  'a later write to a done step is accepted');
select is((select state::text from hosting_automator.steps where site_id = :'a_id' and step = 'cloudpanel_site'), 'done', 'but a done step stays done');
select throws_ok(format($$select public.hosting_advance(%s, %L, 120, null, 'ssh_site')$$, :a_job, :'a_token'),
  '22P02', null, 'an unknown step name is refused');
select ok(public.hosting_heartbeat(:a_job, :'a_token', 300, 'ssl_certificate'), 'the owner renews its lease');
select ok((select lease_expires_at > now() + interval '299 seconds' and current_step = 'ssl_certificate'
  from hosting_automator.jobs where id = :a_job), 'the renewal moves the expiry and names the step');

-- transient failure: back to queued with backoff
select is(public.hosting_exit(:a_job, :'a_token', pg_temp.fail('certificate_not_validated', 'Let''s Encrypt could not validate the domain yet.',
  'detail with /home/a-example-123456 path', false)) ->> 'state', 'queued', 'a transient failure re-queues the job');
select ok((select run_at between now() + interval '30 seconds' and now() + interval '60 seconds'
  from hosting_automator.jobs where id = :a_job), 'the first retry waits base * 2^0 with jitter (30 to 60 s)');
select is((select status_hosting from public.sites where id = :'a_id'), 'provisioning', 'status_hosting stays out of failed while retrying');
select ok((select error_message is null from public.sites where id = :'a_id'), 'and error_message stays empty');
select is(public.hosting_advance(:a_job, :'a_token', 120, null, 'ssl_certificate') ->> 'reason', 'lease_lost',
  'the old lease is void after the failure');
select is(public.hosting_exit(:a_job, :'a_token', pg_temp.fail('x', 'y', null, false)) ->> 'reason', 'lease_lost',
  'a second fail with the void lease does nothing');

-- retry #2 then #3 (last): the job fails and only the public text reaches the row
update hosting_automator.jobs set run_at = now() where id = :a_job;
select lease_token as t2 from public.hosting_claim_jobs('w1', 'other', 120, 1, :'a_id') \gset
select is((select steps -> 'cloudpanel_site' ->> 'state' from public.hosting_claim_jobs('w9', 'none', 60, 1, :'a_id')), null,
  'nothing more to claim for the site while it runs');
select is(public.hosting_exit(:a_job, :'t2', pg_temp.fail('certificate_not_validated', 'public text 2', 'internal 2', false)) ->> 'state', 'queued', 'attempt 2 fails, retried');
select ok((select run_at between now() + interval '60 seconds' and now() + interval '120 seconds'
  from hosting_automator.jobs where id = :a_job), 'the second retry waits base * 2^1 with jitter (60 to 120 s)');
update hosting_automator.jobs set run_at = now() where id = :a_job;
select lease_token as t3 from public.hosting_claim_jobs('w1', 'other', 120, 1, :'a_id') \gset
select is(public.hosting_exit(:a_job, :'t3', pg_temp.fail('certificate_not_validated', 'Let''s Encrypt could not validate the domain yet.',
  'internal: /home/a-example-123456 token=abc', false)) ->> 'state', 'failed', 'after the last attempt the job fails');
select is((select status_hosting from public.sites where id = :'a_id'), 'failed', 'the site becomes failed');
select is((select error_message from public.sites where id = :'a_id'), 'Let''s Encrypt could not validate the domain yet.',
  'error_message holds the public text');
select ok((select count(*) = 0 from public.sites where error_message like '%internal%' or error_message like '%/home/%'),
  'and never the internal one');
select ok((select count(*) = 0 from hosting_automator.events where message like '%token=abc%'), 'the internal text is not in the event log either');

-- retry puts failed sites back in the queue, keeping the journal
select is((public.hosting_retry(:'a_id') -> 'requeued' -> 0 ->> 'reason'), 'failed', 'retry re-queues a failed site');
select is((select status_hosting from public.sites where id = :'a_id'), 'pending', 'the site is pending again');
select is((select count(*)::int from hosting_automator.jobs where site_id = :'a_id' and state = 'queued'), 1, 'with a new queued job');
select is((select steps -> 'cloudpanel_site' ->> 'state' from public.hosting_claim_jobs('w1', 'other', 120, 1, :'a_id')), 'done',
  'whose claim carries the journal: the finished site step');

-- complete: active, doc root and Matomo id in one go
select ok((public.hosting_exit(:b_job, :'b_token', pg_temp.active('/home/b-example-abcdef/htdocs/b.example', 7)) ->> 'ok')::boolean,
  'the owner completes the job');
select results_eq(
  format($$select status_hosting, hosting_doc_root, matomo_site_id from public.sites where id = %L$$, :'b_id'),
  $$values ('active'::text, '/home/b-example-abcdef/htdocs/b.example'::text, 7)$$,
  'the row is active with its doc root and Matomo id');
select is(public.hosting_exit(:b_job, :'b_token', pg_temp.active('/home/b-example-abcdef/htdocs/b.example', 8)) ->> 'reason',
  'lease_lost', 'completing twice changes nothing');
select throws_ok(format($$select public.hosting_exit(%s, %L, pg_temp.active('rm -rf /', 1))$$, :b_job, :'b_token'), '22023', null,
  'a doc root of the wrong shape is refused');

-- release: time ran out; the attempt is given back
select ok((public.hosting_exit(:c_job, :'c_token', '{"type": "release", "done": null, "reason": "out of time"}') ->> 'ok')::boolean,
  'a worker can give a job back');
select is((select attempts from hosting_automator.jobs where id = :c_job), :c_attempt - 1, 'without spending the attempt');

-- the status report
select ok((public.hosting_status() -> 'sites' ->> 'active')::int >= 1, 'status counts sites by state');
select ok((public.hosting_status() -> 'queue' ->> 'depth')::int >= 1, 'status reports the queue depth');

select * from finish();
rollback;
