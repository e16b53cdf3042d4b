-- The row trigger: DNS becoming active (with hosting pending) queues exactly one job in the same transaction;
-- the statement trigger rings the doorbell through pg_net when Vault holds the function's URL and key, once
-- per free slot however many rows the statement made ready.
begin;
select plan(22);

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
  (select body from net.http_request_queue order by id desc limit 1), '{}'::jsonb,
  'the kick is a doorbell: the function drains what is due');
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
select is(pg_temp.kicks(), 1, 'and no second kick while the first is on its way (it holds the only due job)');

-- inserted already active and pending
insert into public.sites (domain, status_dns, status_hosting) values ('ready.example', 'active', 'pending') returning id \gset ready_
select is(pg_temp.open_jobs(:'ready_id'), 1, 'a row inserted already active and pending gets a job');
insert into public.sites (domain, status_dns, status_hosting) values ('live.example', 'active', 'active') returning id \gset live_
select is(pg_temp.open_jobs(:'live_id'), 0, 'a row inserted active with hosting already active gets none');

-- a rolled-back update requests nothing (kicks answered: nothing on its way)
delete from net.http_request_queue;
delete from hosting_automator.rings;
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

-- a bulk flip: one statement makes 20 sites ready; kicks go out once per free slot, not once per row
delete from net.http_request_queue;
delete from hosting_automator.rings;
update hosting_automator.jobs set state = 'succeeded', finished_at = now() where state = 'queued';
update hosting_automator.settings set server_concurrency = 4;
select vault.create_secret('https://project.example/functions/v1/hosting-automator', 'hosting_automator_url');
select vault.create_secret('sb_secret_test_key_0123456789', 'hosting_automator_key');
insert into public.sites (domain) select format('bulk-%s.example', i) from generate_series(1, 20) i;
select is(pg_temp.kicks(), 0, 'sites inserted without DNS ring nothing');
update public.sites set status_dns = 'active' where domain like 'bulk-%';
select is((select count(*)::int from hosting_automator.jobs where state = 'queued'), 20, 'one UPDATE of 20 rows queues 20 jobs');
select is(pg_temp.kicks(), 4, 'and sends 4 kicks: one per free slot (cap 4)');
update public.sites set status_dns = 'active', status_hosting = 'pending' where domain like 'bulk-%';
select is(pg_temp.kicks(), 4, 'a second statement sends none while those 4 are on their way');
delete from hosting_automator.rings where id in (select id from hosting_automator.rings order by id limit 2);
select is(hosting_automator.sweep() ->> 'kicks', '2', 'when two kicks were answered, the sweep rings for the two slots they freed');

select * from finish();
rollback;
