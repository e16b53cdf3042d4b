-- The one exit from `running` (hosting_exit) and the policies the step ends carry: each outcome's effects, a lost
-- lease and a malformed outcome writing nothing, settles_password and keeps, the snooze schedule and its limit,
-- why queued jobs wait, the advance's taken-domain path, and no function naming a step.
begin;
select plan(99);

delete from net.http_request_queue;
delete from vault.secrets;
update hosting_automator.settings set max_attempts = 3, backoff_base_seconds = 60, backoff_max_seconds = 600,
  analytics_max_attempts = 5, dns_backoff_seconds = 60, dns_backoff_max_seconds = 240, dns_wait_hours = 2;
insert into hosting_automator.servers (name, host, host_key, concurrency)
values ('cp', 'cp.example', 'SHA256:' || repeat('A', 43), 10);

create function pg_temp.claim(p_site uuid) returns table (job_id bigint, lease_token uuid) language sql as $$
  select c.job_id, c.lease_token from public.hosting_claim_jobs('w', 'x', 60, 1, p_site) c
$$;
create function pg_temp.job(p_id bigint) returns jsonb language sql as $$
  select to_jsonb(j) from hosting_automator.jobs j where j.id = p_id
$$;
create function pg_temp.active(p_doc_root text) returns jsonb language sql as $$
  select jsonb_build_object('type', 'active', 'done', null, 'message', null, 'doc_root', p_doc_root,
    'matomo_site_id', null, 'certificate_expires_at', null, 'backfill_kind', null)
$$;
create function pg_temp.fail(p_code text, p_permanent boolean, p_attempt_limit integer default null) returns jsonb
language sql as $$
  select jsonb_build_object('type', 'fail', 'done', null, 'code', p_code, 'public_message', 'It failed: ' || p_code,
    'internal_message', 'detail of ' || p_code, 'permanent', p_permanent, 'attempt_limit', p_attempt_limit)
$$;

-- ---------------------------------------------------------------------------------------------------------
-- active: the row goes active with doc root and certificate expiry; the backfill kind is queued without Matomo.
insert into public.sites (domain, status_dns) values ('active.example', 'active') returning id \gset a_
select job_id as aj, lease_token as at from pg_temp.claim(:'a_id') \gset
select is(public.hosting_exit(:aj, :'at', '{"type": "active", "message": "Site is active without analytics (matomo_unreachable).",
    "doc_root": "/home/active-example-abc/htdocs/active.example", "matomo_site_id": null,
    "certificate_expires_at": "2027-03-01T00:00:00.000Z", "backfill_kind": "analytics",
    "done": [{"step": "matomo_site", "state": "failed", "code": "matomo_unreachable", "message": "Matomo could not be reached.", "level": "warn", "duration_ms": 12}]}'),
  '{"ok": true, "state": "succeeded", "attempts": 1}'::jsonb, 'active: the answer is the job''s new state');
select results_eq(
  format($$select status_hosting, hosting_doc_root, matomo_site_id, certificate_expires_at from public.sites where id = %L$$, :'a_id'),
  $$values ('active'::text, '/home/active-example-abc/htdocs/active.example'::text, null::integer, '2027-03-01 00:00:00+00'::timestamptz)$$,
  'the row is active with its doc root and certificate expiry');
select is((select state::text || ' ' || last_error_code from hosting_automator.steps where site_id = :'a_id' and step = 'matomo_site'),
  'failed matomo_unreachable', 'the step end is journaled with the exit');
select is((select message from hosting_automator.events where site_id = :'a_id' and code = 'job_succeeded'),
  'Site is active without analytics (matomo_unreachable).', 'the event says how it ended');
select is((select kind || ' ' || state || ' ' || max_attempts from hosting_automator.jobs where site_id = :'a_id' and id <> :aj),
  'analytics queued 5', 'a job of the backfill kind is queued, with the backfill''s attempts');
select ok((select run_at > now() from hosting_automator.jobs where site_id = :'a_id' and id <> :aj), 'after the first backoff');
select is((select count(*)::int from hosting_automator.events where site_id = :'a_id' and code = 'analytics_backfill_queued'), 1,
  'and the event log says so');
select is((select jsonb_build_object('warning', e -> 'warning' ->> 'code', 'backfill', e -> 'backfill' ->> 'state')
  from jsonb_array_elements(public.hosting_status() -> 'missing_analytics') e where e ->> 'site_id' = :'a_id'),
  '{"warning": "matomo_unreachable", "backfill": "queued"}'::jsonb,
  '/status lists it missing analytics, with the warning of the step it has not done and its backfill');
-- The backfill runs: a Matomo id, no certificate (the row keeps its expiry), no second backfill.
update hosting_automator.jobs set run_at = now() where site_id = :'a_id' and state = 'queued';
select job_id as bj, lease_token as bt from pg_temp.claim(:'a_id') \gset
select is(public.hosting_exit(:bj, :'bt', '{"type": "active", "doc_root": "/home/active-example-abc/htdocs/active.example",
    "matomo_site_id": 12, "backfill_kind": "analytics",
    "done": {"step": "matomo_site", "state": "done", "result": {"matomo_site_id": 12}}}') ->> 'state', 'succeeded',
  'the backfill completes');
select results_eq(
  format($$select matomo_site_id, certificate_expires_at from public.sites where id = %L$$, :'a_id'),
  $$values (12, '2027-03-01 00:00:00+00'::timestamptz)$$, 'with the Matomo id; a null certificate expiry keeps the row''s');
select is((select count(*)::int from hosting_automator.jobs where site_id = :'a_id'), 2, 'with a Matomo id nothing is backfilled');

-- ---------------------------------------------------------------------------------------------------------
-- fail: a transient failure is retried; the same code attempt_limit times in a row fails the job.
insert into public.sites (domain, status_dns) values ('fail.example', 'active') returning id \gset f_
select job_id as fj, lease_token as ft from pg_temp.claim(:'f_id') \gset
select public.hosting_advance(:fj, :'ft', 60, null, 'cloudpanel_site') ->> 'ok' as started \gset
create temporary table t_fail as select public.hosting_exit(:fj, :'ft', pg_temp.fail('cloudpanel_busy', false, 2)) as a;
select is((select a - 'run_at' from t_fail), '{"ok": true, "state": "queued", "attempts": 1}'::jsonb,
  'fail, transient: queued, the attempt spent');
select is((select (a ->> 'run_at')::timestamptz from t_fail), (select run_at from hosting_automator.jobs where id = :fj),
  'the answer says when it runs again');
select is((select last_error_code || ' ' || error_streak || ' ' || public_error || ' ' || last_error from hosting_automator.jobs where id = :fj),
  'cloudpanel_busy 1 It failed: cloudpanel_busy detail of cloudpanel_busy', 'the job keeps the code, its streak and both texts');
select is((select step || ' ' || level || ' ' || code from hosting_automator.events where job_id = :fj order by id desc limit 1),
  'cloudpanel_site warn cloudpanel_busy', 'the event names the job''s step');
update hosting_automator.jobs set run_at = now() where id = :fj;
select lease_token as ft2 from pg_temp.claim(:'f_id') \gset
select is(public.hosting_exit(:fj, :'ft2', pg_temp.fail('cloudpanel_busy', false, 2)),
  '{"ok": true, "state": "failed", "attempts": 2}'::jsonb, 'the same code twice with attempt_limit 2: failed');
select results_eq(format($$select status_hosting, error_message from public.sites where id = %L$$, :'f_id'),
  $$values ('failed'::text, 'It failed: cloudpanel_busy'::text)$$, 'the row is failed with the public text');

-- ---------------------------------------------------------------------------------------------------------
-- snooze: waits on its schedule without spending the attempt; the limit counts from the current step's journal.
insert into public.sites (domain, status_dns) values ('snooze.example', 'active') returning id \gset s_
-- Another step journaled long ago does not count: only the step that waits.
insert into hosting_automator.steps (site_id, step, state, created_at) values (:'s_id', 'dns_check', 'done', now() - interval '3 hours');
select job_id as sj, lease_token as st from pg_temp.claim(:'s_id') \gset
select public.hosting_advance(:sj, :'st', 60, null, 'https_verify') ->> 'ok' as started \gset
create temporary table t_snooze as select public.hosting_exit(:sj, :'st', '{"type": "snooze", "code": "https_not_ready",
  "public_message": "The site does not serve a valid certificate yet.", "internal_message": "expired", "schedule": "dns"}') as a;
select is((select a - 'run_at' from t_snooze), '{"ok": true, "state": "queued", "attempts": 0}'::jsonb,
  'snooze: queued, the attempt given back');
select ok((select run_at between now() + interval '30 seconds' and now() + interval '60 seconds' and run_at = (a ->> 'run_at')::timestamptz
  from hosting_automator.jobs, t_snooze where id = :sj), 'after the schedule''s first wait, with jitter');
select is((select waiting_for || ' ' || last_error_code from hosting_automator.jobs where id = :sj), 'dns https_not_ready',
  'the job waits on the schedule, with the outcome''s code');
select alike((select step || ' ' || code || ' ' || message from hosting_automator.events where job_id = :sj order by id desc limit 1),
  'https_verify https_not_ready Waiting for DNS (check 1); next check at %', 'the event names the step that waits');
select is((select e ->> 'since' from jsonb_array_elements(public.hosting_status() -> 'waiting_for_dns') e where e ->> 'site_id' = :'s_id'),
  (select to_jsonb(created_at) #>> '{}' from hosting_automator.steps where site_id = :'s_id' and step = 'https_verify'),
  '/status lists it waiting, since the waiting step was first journaled');
update hosting_automator.jobs set run_at = now() where id = :sj;
select lease_token as st2 from pg_temp.claim(:'s_id') \gset
select is((select waiting_for from hosting_automator.jobs where id = :sj), null, 'a claimed job no longer waits');
select public.hosting_advance(:sj, :'st2', 60, null, 'https_verify') ->> 'ok' as started \gset
update hosting_automator.steps set created_at = now() - interval '3 hours' where site_id = :'s_id' and step = 'https_verify';
select is(public.hosting_exit(:sj, :'st2', '{"type": "snooze", "code": "https_not_ready",
  "public_message": "The site does not serve a valid certificate yet.", "schedule": "dns"}'),
  '{"ok": true, "state": "failed", "attempts": 1}'::jsonb, 'past the schedule''s limit: failed');
select is((select last_error_code || ' ' || coalesce(waiting_for, '-') from hosting_automator.jobs where id = :sj),
  'https_not_ready -', 'with the outcome''s code, waiting for nothing');
select is((select error_message from public.sites where id = :'s_id'),
  'DNS has not pointed at the server for 2 hours: The site does not serve a valid certificate yet.', 'the row says why');

-- ---------------------------------------------------------------------------------------------------------
-- release: given back, due now, attempt kept; the step cut short is journaled; one kick for the freed slot.
insert into public.sites (domain, status_dns) values ('release.example', 'active') returning id \gset r_
select job_id as rj, lease_token as rt from pg_temp.claim(:'r_id') \gset
select public.hosting_advance(:rj, :'rt', 60, null, 'cloudpanel_site') ->> 'ok' as started \gset
select vault.create_secret('https://project.example/functions/v1/hosting-automator', 'hosting_automator_url') is not null
  as url_stored \gset
select vault.create_secret('sb_secret_test_key_0123456789', 'hosting_automator_key') is not null as key_stored \gset
delete from hosting_automator.rings;
delete from net.http_request_queue;
create temporary table t_release as select public.hosting_exit(:rj, :'rt', '{"type": "release",
  "reason": "Time budget spent during cloudpanel_site; queued to continue.",
  "done": [{"step": "cloudpanel_site", "state": "failed", "code": "interrupted", "message": "cloudpanel_site stopped after 5 ms: time budget", "level": "warn", "duration_ms": 5}]}') as a;
select is((select a - 'run_at' from t_release), '{"ok": true, "state": "queued", "attempts": 0}'::jsonb,
  'release: queued, the attempt given back');
select ok((select run_at <= now() from hosting_automator.jobs where id = :rj), 'due now');
select is((select state::text || ' ' || last_error_code from hosting_automator.steps where site_id = :'r_id' and step = 'cloudpanel_site'),
  'failed interrupted', 'the step cut short is journaled');
select is((select message from hosting_automator.events where job_id = :rj and code = 'job_released'),
  'Time budget spent during cloudpanel_site; queued to continue.', 'the event gives the reason');
select is((select count(*)::int from net.http_request_queue), 1, 'and the doorbell rings once for the freed slot');
delete from vault.secrets;

-- ---------------------------------------------------------------------------------------------------------
-- server_trouble: the circuit opens once for the jobs that met the outage; they wait for the server.
insert into public.sites (domain, status_dns) values ('t1.example', 'active'), ('t2.example', 'active'), ('t3.example', 'active');
select id as t1_id from public.sites where domain = 't1.example' \gset
select id as t2_id from public.sites where domain = 't2.example' \gset
select id as t3_id from public.sites where domain = 't3.example' \gset
select job_id as t1j, lease_token as t1t from pg_temp.claim(:'t1_id') \gset
select job_id as t2j, lease_token as t2t from pg_temp.claim(:'t2_id') \gset
select job_id as t3j, lease_token as t3t from pg_temp.claim(:'t3_id') \gset
select is(public.hosting_exit(:t1j, :'t1t', '{"type": "server_trouble", "code": "ssh_timeout",
  "message": "The CloudPanel server did not answer in time; will retry."}') - 'run_at',
  '{"ok": true, "state": "queued", "attempts": 0}'::jsonb, 'server_trouble: queued, the attempt given back');
select is(public.hosting_exit(:t2j, :'t2t', '{"type": "server_trouble", "code": "ssh_timeout", "message": null}') ->> 'state',
  'queued', 'a second job meets the same outage');
select is((select failures || ' ' || last_error_code from hosting_automator.servers where name = 'cp'), '1 ssh_timeout',
  'the circuit opened once');
select is((select count(distinct run_at)::int || ' ' || bool_and(run_at = (select open_until from hosting_automator.servers where name = 'cp'))
  || ' ' || string_agg(distinct waiting_for, ',') from hosting_automator.jobs where id in (:t1j, :t2j)),
  '1 true server', 'both wait for the server, due when its circuit closes');
select is((select public_error from hosting_automator.jobs where id = :t2j), 'ssh_timeout', 'a missing message is the code');
select alike((select message from hosting_automator.events where job_id = :t1j order by id desc limit 1),
  'CloudPanel server cp: The CloudPanel server did not answer in time; will retry. Its jobs wait until %', 'the event names the server');
select is((select (e ->> 'waiting')::int from jsonb_array_elements(public.hosting_status() -> 'servers') e where e ->> 'name' = 'cp'), 2,
  '/status counts the jobs waiting for the server');
-- A retry that only carries a server's code does not wait for the server.
select is(public.hosting_exit(:t3j, :'t3t', pg_temp.fail('ssh_unreachable', false)) ->> 'state', 'queued', 'a job fails for now');
update hosting_automator.servers set host_key = 'SHA256:' || repeat('B', 43) where name = 'cp';
select is((select count(*)::int from hosting_automator.jobs where id in (:t1j, :t2j) and run_at <= now()), 2,
  'fixing the server makes the jobs that waited for it due now');
select ok((select run_at > now() from hosting_automator.jobs where id = :t3j), 'not the job retried on its own schedule');

-- ---------------------------------------------------------------------------------------------------------
-- capacity: a job no server has room for waits for capacity; room makes it due; the claim clears the wait.
update hosting_automator.servers set capacity = (select count(*) from hosting_automator.placements where server = 'cp') where name = 'cp';
insert into public.sites (domain, status_dns) values ('room.example', 'active') returning id \gset c_
select is((select count(*)::int from pg_temp.claim(:'c_id')), 0, 'no server has room: nothing is claimed');
select is((select waiting_for || ' ' || last_error_code || ' ' || attempts from hosting_automator.jobs where site_id = :'c_id'),
  'capacity no_server_capacity 0', 'the job waits for capacity');
select is((public.hosting_status() ->> 'waiting_for_capacity')::int, 1, '/status counts it');
update hosting_automator.servers set capacity = null where name = 'cp';
select ok((select run_at <= now() from hosting_automator.jobs where site_id = :'c_id'), 'room makes it due now');
select is((select count(*)::int from pg_temp.claim(:'c_id')), 1, 'it is claimed');
select is((select waiting_for from hosting_automator.jobs where site_id = :'c_id'), null, 'and waits for nothing any more');
select throws_ok(format($$update hosting_automator.jobs set waiting_for = 'dns' where site_id = %L$$, :'c_id'), '23514', null,
  'only a queued job may wait');

-- ---------------------------------------------------------------------------------------------------------
-- A lost lease writes nothing, whatever the outcome.
insert into public.sites (domain, status_dns) values ('lost.example', 'active') returning id \gset l_
select job_id as lj, lease_token as lt from pg_temp.claim(:'l_id') \gset
select public.hosting_advance(:lj, :'lt', 60, null, 'cloudpanel_site') ->> 'ok' as started \gset
create temporary table t_before as select pg_temp.job(:lj) as job,
  (select count(*) from hosting_automator.events where site_id = :'l_id') as events,
  (select jsonb_agg(to_jsonb(st)) from hosting_automator.steps st where site_id = :'l_id') as steps;
create temporary table t_outcomes (o jsonb);
insert into t_outcomes values
  ('{"type": "active", "doc_root": "/home/lost-example-abc/htdocs/lost.example", "done": {"step": "cloudpanel_site", "state": "done"}}'),
  ('{"type": "fail", "code": "cloudpanel_busy", "public_message": "busy", "permanent": true, "done": {"step": "cloudpanel_site", "state": "failed"}}'),
  ('{"type": "snooze", "code": "dns_not_ready", "public_message": "not yet", "schedule": "dns", "done": {"step": "cloudpanel_site", "state": "failed"}}'),
  ('{"type": "release", "reason": "out of time", "done": {"step": "cloudpanel_site", "state": "failed"}}'),
  ('{"type": "server_trouble", "code": "ssh_timeout", "message": "slow", "done": {"step": "cloudpanel_site", "state": "failed"}}');
select is((select count(*)::int from t_outcomes where public.hosting_exit(:lj, gen_random_uuid(), o) ->> 'reason' = 'lease_lost'), 5,
  'with another lease token every outcome answers lease_lost');
update hosting_automator.jobs set lease_expires_at = now() - interval '1 second' where id = :lj;
select is((select count(*)::int from t_outcomes where public.hosting_exit(:lj, :'lt', o) = '{"ok": false, "reason": "lease_lost"}'), 5,
  'with an expired lease too');
update hosting_automator.jobs set lease_expires_at = (t_before.job ->> 'lease_expires_at')::timestamptz from t_before where id = :lj;
select is(pg_temp.job(:lj), (select job from t_before), 'the job is untouched');
select is((select count(*) from hosting_automator.events where site_id = :'l_id'), (select events from t_before), 'no event is written');
select is((select jsonb_agg(to_jsonb(st)) from hosting_automator.steps st where site_id = :'l_id'), (select steps from t_before),
  'and no step end is journaled');
select is((select count(*)::int from hosting_automator.servers where name = 'cp' and open_until > now()), 0,
  'nor does a server''s circuit open');

-- ---------------------------------------------------------------------------------------------------------
-- A malformed outcome is refused (22023, naming the field and the rule) and changes nothing.
create function pg_temp.exit(p_outcome text) returns text language sql as $$
  select format('select public.hosting_exit(%s, %L, %L)', j.id, j.lease_token, p_outcome)
  from hosting_automator.jobs j join public.sites s on s.id = j.site_id where s.domain = 'lost.example'
$$;
select throws_ok(pg_temp.exit('[]'), '22023', 'the outcome must be a JSON object with a type', 'an outcome that is not an object');
select throws_ok(pg_temp.exit('{"type": "done"}'), '22023',
  'outcome.type must be active, removed, fail, snooze, release or server_trouble', 'an unknown type');
select throws_ok(pg_temp.exit('{"type": "active", "matomo_site_id": 3}'), '22023',
  'outcome.doc_root is required (type active): a doc root like /home/<site user>/htdocs/<domain>', 'a missing field');
select throws_ok(pg_temp.exit('{"type": "active", "doc_root": "/home/lost-example-abc/htdocs/lost.example", "matomoSiteId": 3}'), '22023',
  'outcome.matomoSiteId is not a field of type active (its fields: done, message, doc_root, matomo_site_id, certificate_expires_at, backfill_kind)',
  'a field the type does not have');
select throws_ok(pg_temp.exit('{"type": "active", "doc_root": "/home/lost-example-abc/htdocs/lost.example", "matomo_site_id": 0}'), '22023',
  'outcome.matomo_site_id must be a positive integer', 'a Matomo id that is not positive');
select throws_ok(pg_temp.exit('{"type": "active", "doc_root": "/home/lost-example-abc/htdocs/lost.example", "certificate_expires_at": "tomorrow"}'),
  '22023', 'outcome.certificate_expires_at must be an ISO 8601 timestamp with a time zone', 'an expiry that is not a timestamp');
select throws_ok(pg_temp.exit('{"type": "active", "doc_root": "/home/lost-example-abc/htdocs/lost.example", "backfill_kind": "remove"}'),
  '22023', 'outcome.backfill_kind must be a build job kind (provision, analytics)', 'a backfill that is a removal');
select throws_ok(pg_temp.exit('{"type": "removed"}'), '22023', null, 'a removal''s outcome for a build job');
select throws_ok(pg_temp.exit('{"type": "fail", "code": "busy", "public_message": "busy", "permanent": "yes"}'), '22023',
  'outcome.permanent must be true or false', 'a permanence that is not a boolean');
select throws_ok(pg_temp.exit('{"type": "fail", "code": "Busy!", "public_message": "busy", "permanent": false}'), '22023',
  'outcome.code must be a lower-case code (a-z, 0-9 and _, up to 64)', 'a code of the wrong shape');
select throws_ok(pg_temp.exit('{"type": "fail", "code": "busy", "public_message": "busy", "permanent": false, "attempt_limit": 1.5}'), '22023',
  'outcome.attempt_limit must be a positive integer', 'an attempt limit that is not a whole number');
select throws_ok(pg_temp.exit('{"type": "snooze", "code": "dns_not_ready", "public_message": "not yet", "schedule": "weekly"}'), '22023',
  'outcome.schedule must be a snooze schedule (hosting_automator.snooze_schedule: dns)', 'an unknown schedule');
select throws_ok(pg_temp.exit('{"type": "release", "done": [{"step": "cloudpanel_site", "state": "done"}, {"step": "ssh_site", "state": "done"}]}'),
  '22023', 'outcome.done[1].step must be a step name (hosting_automator.step_name)', 'a step end of an unknown step');
select throws_ok(pg_temp.exit('{"type": "release", "done": {"step": "cloudpanel_site", "state": "started"}}'), '22023',
  'outcome.done.state must be done, failed or skipped (a step ends)', 'a step end that starts');
select throws_ok(pg_temp.exit('{"type": "release", "done": {"step": "cloudpanel_site", "state": "done", "keeps": ["site_user"]}}'), '22023',
  'outcome.done.keeps must be a JSON object (the values to keep for the site)', 'keeps that are not an object');
select throws_ok(format($$select public.hosting_advance(%s, %L, 60, '{"step": "cloudpanel_site", "state": "done", "settles_password": "yes"}')$$,
  :lj, :'lt'), '22023', 'p_done.settles_password must be true or false', 'the advance checks its step ends the same way');
select is(pg_temp.job(:lj), (select job from t_before), 'the job is untouched by every refused outcome');

-- ---------------------------------------------------------------------------------------------------------
-- settles_password and keeps: the policies come with the step end, whichever step sends them.
insert into public.sites (domain, status_dns) values ('keep.example', 'active') returning id \gset k_
select job_id as kj, lease_token as kt from pg_temp.claim(:'k_id') \gset
select public.hosting_advance(:kj, :'kt', 60, null, 'cloudpanel_site', 'keep.example', 'pw-keep-0123456789abcdef') ->> 'ok' as started \gset
select is(public.hosting_advance(:kj, :'kt', 60,
  '{"step": "cloudpanel_site", "state": "done", "result": {"site_user": "keep-example-abc", "credentials": "known"}}', 'dns_check') ->> 'ok',
  'true', 'the site step ends without policies');
select is((select state from hosting_automator.credentials where site_id = :'k_id'), 'pending',
  'without settles_password the stored password stays pending, whatever the step');
select is((select count(*)::int from hosting_automator.site_facts where site_id = :'k_id'), 0, 'and without keeps nothing is kept');
select is(public.hosting_advance(:kj, :'kt', 60,
  '{"step": "dns_check", "state": "done", "result": {"credentials": "known"}, "settles_password": true,
    "keeps": {"site_user": "keep-example-abc", "doc_root": "/home/keep-example-abc/htdocs/keep.example"}}', 'ssl_certificate') ->> 'ok',
  'true', 'another step ends with both policies');
select is((select state from hosting_automator.credentials where site_id = :'k_id'), 'confirmed',
  'settles_password settles the password from the end''s result');
select is((select facts from hosting_automator.site_facts where site_id = :'k_id'),
  '{"site_user": "keep-example-abc", "doc_root": "/home/keep-example-abc/htdocs/keep.example"}'::jsonb, 'keeps are kept for the site');
select public.hosting_advance(:kj, :'kt', 60, '[{"step": "ssl_certificate", "state": "done", "keeps": {"matomo_site_id": 9}},
  {"step": "dns_check", "state": "done", "keeps": {"site_user": "someone-else"}}]', 'https_verify') ->> 'ok' as started \gset
select is((select facts from hosting_automator.site_facts where site_id = :'k_id'),
  '{"site_user": "keep-example-abc", "doc_root": "/home/keep-example-abc/htdocs/keep.example", "matomo_site_id": 9}'::jsonb,
  'merged on each step end; a step that is done stays done, and so does what it kept');
select is(public.hosting_exit(:kj, :'kt', '{"type": "active", "doc_root": "/home/keep-example-abc/htdocs/keep.example",
  "done": {"step": "https_verify", "state": "failed", "code": "https_not_ready", "keeps": {"doc_root": "/elsewhere"}}}') ->> 'state',
  'succeeded', 'the job completes with a failed end that keeps');
select is((select facts ->> 'doc_root' from hosting_automator.site_facts where site_id = :'k_id'),
  '/home/keep-example-abc/htdocs/keep.example', 'a failed end keeps nothing');
select is(public.hosting_site_credentials(:'k_id') ->> 'site_user', 'keep-example-abc', 'the credentials read the kept site user');
-- The removal works from what was kept (the row has no Matomo id).
select is(public.hosting_remove(:'k_id') ->> 'queued', 'true', 'a removal is queued');
select is((select site_user || ' ' || doc_root || ' ' || matomo_site_id from hosting_automator.jobs where site_id = :'k_id' and kind = 'remove'),
  'keep-example-abc /home/keep-example-abc/htdocs/keep.example 9', 'its target is what the steps kept');
select job_id as mj, lease_token as mt from pg_temp.claim(:'k_id') \gset
select throws_ok(format('select public.hosting_exit(%s, %L, pg_temp.active(%L))', :mj, :'mt', '/home/keep-example-abc/htdocs/keep.example'),
  '22023', null, 'a build job''s outcome for a removal is refused');
select is(public.hosting_exit(:mj, :'mt', pg_temp.fail('cloudpanel_delete_failed', true)) ->> 'state', 'failed', 'the removal fails');
select results_eq(format($$select status_hosting, error_message from public.sites where id = %L$$, :'k_id'),
  $$values ('removing'::text, 'Removal failed: It failed: cloudpanel_delete_failed'::text)$$, 'the row stays removing, with the reason');
select is(public.hosting_retry(:'k_id') -> 'requeued' -> 0 ->> 'reason', 'removal_failed', 'an operator retries it');
select job_id as mj2, lease_token as mt2 from pg_temp.claim(:'k_id') \gset
select is((select site_user from hosting_automator.jobs where id = :mj2), 'keep-example-abc', 'from the same kept facts');
select is(public.hosting_exit(:mj2, :'mt2', '{"type": "removed", "message": "Site removed.",
  "done": {"step": "cloudpanel_site_delete", "state": "done", "result": {"deleted": true}}}'),
  '{"ok": true, "state": "succeeded", "attempts": 1}'::jsonb, 'removed: the removal succeeds');
select is((select count(*)::int from hosting_automator.site_facts where site_id = :'k_id')
  + (select count(*)::int from hosting_automator.steps where site_id = :'k_id')
  + (select count(*)::int from hosting_automator.placements where site_id = :'k_id')
  + (select count(*)::int from hosting_automator.credentials where site_id = :'k_id'), 0,
  'the kept facts go with the journal, the placement and the password');
select results_eq(format($$select status_hosting, hosting_server from public.sites where id = %L$$, :'k_id'),
  $$values ('removed'::text, null::text)$$, 'the kept row reads removed, on no server');

-- ---------------------------------------------------------------------------------------------------------
-- The advance's taken domain leaves through the same exit, as a `fail` outcome.
insert into public.sites (domain, status_dns) values ('taken.example', 'active') returning id \gset d1_
insert into public.sites (domain, status_dns) values ('TAKEN.example', 'active') returning id \gset d2_
select job_id as d1j, lease_token as d1t from pg_temp.claim(:'d1_id') \gset
select public.hosting_advance(:d1j, :'d1t', 60, null, 'cloudpanel_site', 'taken.example') ->> 'ok' as started \gset
select job_id as d2j, lease_token as d2t from pg_temp.claim(:'d2_id') \gset
create temporary table t_taken as select public.hosting_advance(:d2j, :'d2t', 60, null, 'cloudpanel_site', 'taken.example') as a;
select is((select a - 'message' from t_taken),
  '{"ok": false, "reason": "domain_taken", "code": "domain_taken", "next": {"state": "failed", "attempts": 1}}'::jsonb,
  'a domain another row owns: the answer says so, with the job''s next state');
select is((select state || ' ' || last_error_code from hosting_automator.jobs where id = :d2j), 'failed domain_taken', 'the job failed');
select alike((select error_message from public.sites where id = :'d2_id'),
  'The domain taken.example is already hosted for another row of public.sites%', 'the row says why');
select is((select step || ' ' || level from hosting_automator.events where job_id = :d2j and code = 'domain_taken'),
  'cloudpanel_site error', 'the failure''s event names the step it stopped before');
select is((select count(*)::int from hosting_automator.placements where site_id = :'d2_id'), 0,
  'and its placement is given back, as for any failure before a step');

-- ---------------------------------------------------------------------------------------------------------
-- The schema names no step and no code of the worker's; the old exits are gone.
select is(
  (select string_agg(distinct p.oid::regprocedure::text || ' names ' || s::text, '; ')
   from pg_proc p cross join unnest(enum_range(null::hosting_automator.step_name)) s
   where (p.pronamespace = 'hosting_automator'::regnamespace or (p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%'))
     and p.prosrc like '%''' || s::text || '''%'),
  null, 'no function of the module names a step');
select is(
  (select string_agg(distinct p.oid::regprocedure::text || ' names ' || c, '; ')
   from pg_proc p cross join unnest(array['dns_not_ready', 'ssh_unreachable', 'ssh_timeout', 'ssh_host_key_mismatch',
     'ssh_auth_failed', 'https_not_ready', 'matomo_unreachable']) c
   where (p.pronamespace = 'hosting_automator'::regnamespace or (p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%'))
     and p.prosrc like '%''' || c || '''%'),
  null, 'nor the codes that said why a job waits');
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
   where p.proname in ('hosting_complete_job', 'hosting_complete_removal', 'hosting_fail_job', 'hosting_wait_for_dns',
     'hosting_release_job', 'hosting_server_trouble', 'hosting_record_step', 'hosting_log_event', 'complete_job_core',
     'waits_for_server', 'leased_job')),
  null, 'the six old exits, a second lease guard, and the functions nobody calls any more, are gone');

select * from finish();
rollback;
