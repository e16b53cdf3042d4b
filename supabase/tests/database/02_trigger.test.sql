-- The row trigger: DNS becoming active (with hosting pending) queues exactly one job in the same transaction,
-- and rings the doorbell through pg_net when Vault holds the function's URL and key.
begin;
select plan(17);

create temporary table t_ids (name text primary key, id uuid);
create function pg_temp.open_jobs(p_site uuid) returns int language sql as
  $$ select count(*)::int from hosting_automator.jobs where site_id = p_site and state in ('queued', 'running') $$;
create function pg_temp.kicks() returns int language sql as $$ select count(*)::int from net.http_request_queue $$;

delete from net.http_request_queue;
select vault.create_secret('https://project.example/functions/v1/hosting-automator', 'hosting_automator_url');
select vault.create_secret('sb_secret_test_key_0123456789', 'hosting_automator_key');

-- a site waiting for DNS
insert into public.sites (domain) values ('waiting.example') returning id \gset waiting_
insert into t_ids values ('waiting', :'waiting_id');
select is(pg_temp.open_jobs(:'waiting_id'), 0, 'a site whose DNS is not active gets no job');
select is(pg_temp.kicks(), 0, 'and no kick');

-- DNS becomes active
update public.sites set status_dns = 'active' where id = :'waiting_id';
select is(pg_temp.open_jobs(:'waiting_id'), 1, 'flipping DNS to active queues exactly one job');
select is(pg_temp.kicks(), 1, 'and requests one kick');
select is(
  (select body from net.http_request_queue order by id desc limit 1),
  jsonb_build_object('site_id', :'waiting_id'::uuid),
  'the kick names the site');
select is(
  (select headers ->> 'apikey' from net.http_request_queue order by id desc limit 1),
  'sb_secret_test_key_0123456789', 'the kick carries the key from Vault in the apikey header');
select is(
  (select url from net.http_request_queue order by id desc limit 1),
  'https://project.example/functions/v1/hosting-automator', 'the kick goes to the URL from Vault');
select is(
  (select timeout_milliseconds from net.http_request_queue order by id desc limit 1), 5000,
  'the kick has an explicit timeout (settings.kick_timeout_ms)');

-- flipping again, or touching other columns, adds nothing
update public.sites set status_dns = 'active' where id = :'waiting_id';
update public.sites set domain = 'waiting.example' where id = :'waiting_id';
update public.sites set status_dns = 'active', status_hosting = 'pending' where id = :'waiting_id';
select is(pg_temp.open_jobs(:'waiting_id'), 1, 'flipping DNS again or updating other columns creates no second open job');
select is(pg_temp.kicks(), 1, 'and no second kick');

-- inserted already active and pending
insert into public.sites (domain, status_dns, status_hosting) values ('ready.example', 'active', 'pending') returning id \gset ready_
select is(pg_temp.open_jobs(:'ready_id'), 1, 'a row inserted already active and pending gets a job');
insert into public.sites (domain, status_dns, status_hosting) values ('live.example', 'active', 'active') returning id \gset live_
select is(pg_temp.open_jobs(:'live_id'), 0, 'a row inserted active with hosting already active gets none');

-- a rolled-back update requests nothing
delete from net.http_request_queue;
insert into public.sites (domain) values ('rollback.example') returning id \gset rb_
savepoint before_flip;
update public.sites set status_dns = 'active' where id = :'rb_id';
select is(pg_temp.kicks(), 1, 'inside the transaction the kick is queued with the job');
rollback to savepoint before_flip;
select is(pg_temp.kicks(), 0, 'a rolled-back update leaves no kick');
select is(pg_temp.open_jobs(:'rb_id'), 0, 'and no job');

-- without the Vault secrets the job is queued all the same, without a kick
delete from vault.secrets;
insert into public.sites (domain, status_dns) values ('novault.example', 'active') returning id \gset nv_
select is(pg_temp.open_jobs(:'nv_id'), 1, 'without Vault secrets the job is still queued');
select is(pg_temp.kicks(), 0, 'and nothing is sent: it waits for the sweep or a poll');

select * from finish();
rollback;
