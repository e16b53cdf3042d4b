-- The operator's report says whether the database starts jobs by itself (Vault secrets, pg_net, pg_cron and the
-- sweep), never a secret's value, and counts the jobs waiting for a server by cause.
-- (The CLI's rendering of it: tests/operator_report.test.ts.)
begin;
select plan(12);

delete from vault.secrets where name in ('hosting_automator_url', 'hosting_automator_key');
select is(public.hosting_status() -> 'setup' -> 'vault_url', 'false'::jsonb, 'no URL in Vault: said');
select is(public.hosting_status() -> 'setup' -> 'vault_key', 'false'::jsonb, 'no key in Vault: said');
select is(public.hosting_status() -> 'setup' -> 'pg_net', 'true'::jsonb, 'pg_net is there');

select vault.create_secret('https://functions.test/functions/v1/hosting-automator', 'hosting_automator_url');
select vault.create_secret('sb_secret_operator_report_never_shown', 'hosting_automator_key');
select is(public.hosting_status() -> 'setup' ->> 'vault_url', 'true', 'the URL is in Vault');
select is(public.hosting_status() -> 'setup' ->> 'vault_key', 'true', 'the key is in Vault');
select ok(position('sb_secret_operator_report_never_shown' in public.hosting_status()::text) = 0,
  'the report holds no secret value');
select is((public.hosting_status() -> 'setup' ->> 'pg_cron')::boolean,
  exists (select 1 from pg_extension where extname = 'pg_cron'), 'pg_cron: as installed');
select is((public.hosting_status() -> 'setup' ->> 'sweep_scheduled')::boolean,
  exists (select 1 from cron.job where jobname = 'hosting-automator-sweep' and active), 'the sweep: as scheduled');

-- A site placed on `cp`, whose key the server refused: its job waits for that server.
insert into hosting_automator.servers (name, host, host_key) values ('cp', 'cp.example', 'SHA256:' || repeat('A', 43));
insert into public.sites (domain, status_dns) values ('refused.example', 'active') returning id \gset r_
create temporary table t1 as select * from public.hosting_claim_jobs('w', 'x', 60, 1, :'r_id');
select is(public.hosting_exit((select job_id from t1), (select lease_token from t1), jsonb_build_object(
  'type', 'server_trouble', 'code', 'ssh_auth_failed', 'message', 'The CloudPanel server refused the SSH key.'))
  ->> 'state', 'queued', 'the server refused the key');
-- No room for a new site on it: that one waits for capacity.
update hosting_automator.servers set capacity = 1 where name = 'cp';
insert into public.sites (domain, status_dns) values ('no-room.example', 'active') returning id \gset n_
select is((select count(*)::int from public.hosting_claim_jobs('w', 'x', 60, 1, :'n_id')), 0, 'no room: not claimed');

select is(public.hosting_status() -> 'waiting_for_server',
  '{"jobs": 2, "by_reason": {"ssh_auth_failed": 1, "no_server_capacity": 1},
    "sites": {"provisioning": 1, "pending": 1}}'::jsonb,
  'the waiting jobs by cause, and their sites by status_hosting');

-- Disabled, its server is what the placed job waits for.
update hosting_automator.servers set state = 'disabled' where name = 'cp';
select is(public.hosting_status() -> 'waiting_for_server' -> 'by_reason',
  '{"server_disabled": 1, "no_server_capacity": 1}'::jsonb, 'a disabled server is named as the cause');

select * from finish();
rollback;
