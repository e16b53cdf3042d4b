-- The lifecycle in SQL: what deleting a row or asking for its removal queues, the order of a site's jobs, the
-- domain held while it is removed, and the site user's password kept in Vault and given to service_role only.
-- (The worker's side, on real sshd and the clpctl simulator, is tested in tests/lifecycle.test.ts.)
begin;
select plan(41);

delete from net.http_request_queue;
delete from vault.secrets;
update hosting_automator.settings set backoff_base_seconds = 60, backoff_max_seconds = 600, server_concurrency = 4;
insert into hosting_automator.servers (name, host, host_key) values ('cp', 'cp.example', 'SHA256:' || repeat('A', 43));

-- A row that never got hosting: nothing to remove, nothing queued.
insert into public.sites (domain) values ('never.example') returning id \gset never_
delete from public.sites where id = :'never_id';
select is((select count(*)::int from hosting_automator.jobs where site_id = :'never_id'), 0,
  'deleting a row that never got hosting queues no removal');
select is((select code from hosting_automator.events where site_id = :'never_id' order by id desc limit 1), 'site_removed',
  'and says it is removed');

-- A queued job that never started: cancelled, and the kept row is removed at once.
insert into public.sites (domain, status_dns) values ('queued.example', 'active') returning id \gset q_
select is((select state::text from hosting_automator.jobs where site_id = :'q_id'), 'queued', 'a ready row has a queued job');
select is(public.hosting_remove(:'q_id') ->> 'reason', 'nothing_to_remove', 'removing it finds nothing made on the servers');
select is((select state::text from hosting_automator.jobs where site_id = :'q_id'), 'cancelled', 'its job that never started is cancelled');
select is((select status_hosting from public.sites where id = :'q_id'), 'removed', 'and the kept row reads removed');
select is((select count(*)::int from hosting_automator.jobs where site_id = :'q_id' and kind = 'remove'), 0, 'without a removal job');

-- Provision a site by the worker's API: claim, the site step (which stores the password), then complete.
insert into public.sites (domain, status_dns) values ('Live.Example', 'active') returning id \gset s_
create temporary table t_job as select * from public.hosting_claim_jobs('w1', 'cp.example:22', 60, 1, :'s_id');
select job_id as s_job, lease_token as s_token from t_job \gset
create temporary table t_adv as
  select public.hosting_advance(:s_job, :'s_token', 60, null, 'cloudpanel_site', 'live.example', 'pw-first-0123456789abcdef') as a;
select is((select a -> 'credentials' ->> 'password' from t_adv), 'pw-first-0123456789abcdef', 'the site step gets its candidate password back');
select is((select a -> 'credentials' ->> 'stored' from t_adv), 'true', 'stored in Vault');
select is((select count(*)::int from vault.decrypted_secrets where decrypted_secret = 'pw-first-0123456789abcdef'), 1,
  'as one Vault secret');
select is((select state from hosting_automator.credentials where site_id = :'s_id'), 'pending', 'pending until the site step ends');
select is((public.hosting_advance(:s_job, :'s_token', 60, null, 'cloudpanel_site', 'live.example', 'pw-second-0123456789abcdef')
  -> 'credentials' ->> 'password'), 'pw-first-0123456789abcdef', 'a repeated start keeps the stored password');
select is(public.hosting_advance(:s_job, :'s_token', 60,
  '{"step": "cloudpanel_site", "state": "done", "result": {"site_user": "live-example-abc", "doc_root": "/home/live-example-abc/htdocs/live.example", "credentials": "known"}, "settles_password": true, "keeps": {"site_user": "live-example-abc", "doc_root": "/home/live-example-abc/htdocs/live.example"}}',
  'ssl_certificate') ->> 'ok', 'true', 'the site step ends');
select is((select state from hosting_automator.credentials where site_id = :'s_id'), 'confirmed',
  'a site created with the stored password confirms it');
select ok((public.hosting_exit(:s_job, :'s_token', '{"type": "active", "done": null, "message": null, "doc_root": "/home/live-example-abc/htdocs/live.example", "matomo_site_id": 7, "certificate_expires_at": null, "backfill_kind": null}')
  ->> 'ok')::boolean, 'the job completes');

-- The credentials: service_role only.
select is(public.hosting_site_credentials(:'s_id') ->> 'password', 'pw-first-0123456789abcdef', 'the credentials give the password');
select is(public.hosting_site_credentials(:'s_id') ->> 'site_user', 'live-example-abc', 'the site user');
select is(public.hosting_site_credentials(:'s_id') ->> 'host', 'cp.example', 'the server''s host');
select is(public.hosting_site_credentials(:'s_id') ->> 'doc_root', '/home/live-example-abc/htdocs/live.example', 'and the doc root');
select ok(not has_function_privilege('anon', 'public.hosting_site_credentials(uuid)', 'execute')
  and not has_function_privilege('authenticated', 'public.hosting_site_credentials(uuid)', 'execute')
  and has_function_privilege('service_role', 'public.hosting_site_credentials(uuid)', 'execute'),
  'only service_role may execute hosting_site_credentials');
select throws_ok(format('select public.hosting_site_credentials(%L)', gen_random_uuid()), 'P0002', null,
  'an unknown site is a clear error');

-- Remove the live site while a provisioning job for it runs: the removal waits, the running job stops.
update public.sites set status_hosting = 'pending' where id = :'s_id';
create temporary table t_job2 as select * from public.hosting_claim_jobs('w1', 'cp.example:22', 60, 1, :'s_id');
select job_id as r_job, lease_token as r_token from t_job2 \gset
select is(public.hosting_remove(:'s_id') ->> 'queued', 'true', 'asking for the removal queues it');
select is((select matomo_site_id from hosting_automator.jobs where site_id = :'s_id' and kind = 'remove'), 7,
  'the removal keeps the Matomo id');
select is((select domain from hosting_automator.jobs where site_id = :'s_id' and kind = 'remove'), 'live.example',
  'and the canonical domain');
select throws_ok(format('select public.hosting_site_credentials(%L)', :'s_id'), 'P0002', null,
  'a site in removal gives no credentials');
select is((select count(*)::int from public.hosting_claim_jobs('w2', 'cp.example:22', 60, 5, :'s_id')), 0,
  'the removal is not claimed while the site''s earlier job runs');
select is(public.hosting_advance(:r_job, :'r_token', 60, null, 'ssl_certificate') ->> 'reason', 'cancelled',
  'the running job stops at its next step');
select is((select state::text from hosting_automator.jobs where id = :r_job), 'cancelled', 'cancelled');

-- The removal runs: its target comes from the job.
create temporary table t_rm as select * from public.hosting_claim_jobs('w2', 'cp.example:22', 60, 1, :'s_id');
select is((select kind from t_rm), 'remove', 'now the removal is claimed');
select is((select target ->> 'site_user' from t_rm), 'live-example-abc', 'with the site user it removes');
select is((select status_hosting from public.sites where id = :'s_id'), 'removing', 'the row stays removing while it runs');
select job_id as m_job, lease_token as m_token from t_rm \gset
select ok((public.hosting_exit(:m_job, :'m_token', '{"type": "removed", "message": "Site removed.",
  "done": {"step": "cloudpanel_site_delete", "state": "done", "result": {"deleted": true}}}') ->> 'ok')::boolean, 'the removal completes');
select is((select status_hosting || ' ' || coalesce(hosting_doc_root, '-') || ' ' || coalesce(matomo_site_id::text, '-')
  from public.sites where id = :'s_id'), 'removed - -', 'the kept row reads removed, without doc root or Matomo id');
select is((select count(*)::int from hosting_automator.steps where site_id = :'s_id'), 0, 'its journal is gone');
select is((select count(*)::int from vault.secrets), 0, 'its password is deleted from Vault');
select is((select count(*)::int from hosting_automator.domain_owners where site_id = :'s_id'), 0, 'and it no longer owns the domain');

-- Deleting a row whose site exists: the removal survives the row and holds the domain until it is done.
insert into public.sites (domain, status_dns) values ('gone.example', 'active') returning id \gset g_
create temporary table t_job3 as select * from public.hosting_claim_jobs('w1', 'cp.example:22', 60, 1, :'g_id');
select job_id as g_job, lease_token as g_token from t_job3 \gset
select ok((public.hosting_advance(:g_job, :'g_token', 60, null, 'cloudpanel_site', 'gone.example') ->> 'ok')::boolean,
  'a site step starts (the site may exist from here on)');
delete from public.sites where id = :'g_id';
select is((select count(*)::int from hosting_automator.jobs where site_id = :'g_id' and kind = 'remove' and state = 'queued'), 1,
  'deleting the row queues a removal that outlives it');
insert into public.sites (domain, status_dns) values ('gone.example', 'active') returning id \gset n_
create temporary table t_job4 as select * from public.hosting_claim_jobs('w3', 'cp.example:22', 60, 1, :'n_id');
select job_id as n_job, lease_token as n_token from t_job4 \gset
create temporary table t_busy as
  select public.hosting_advance(:n_job, :'n_token', 60, null, 'cloudpanel_site', 'gone.example') as a;
select is((select a ->> 'code' from t_busy), 'domain_being_removed', 'a new row for the same domain waits for the removal');
select is((select a -> 'next' ->> 'state' from t_busy), 'queued', 'retried with backoff, not failed');
select is((select status_hosting from public.sites where id = :'n_id'), 'provisioning', 'and the new row is not marked failed');

select * from finish();
rollback;
