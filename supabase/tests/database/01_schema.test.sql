-- The schema's contract: tables, the one-open-job rule, RLS, and who may touch what.
begin;
select plan(34);

-- public.sites (docs/architecture.md §3)
select has_table('public', 'sites', 'public.sites exists');
select columns_are('public', 'sites',
  array['id', 'domain', 'status_dns', 'status_hosting', 'hosting_doc_root', 'matomo_site_id', 'error_message', 'created_at', 'hosting_server', 'certificate_expires_at'],
  'public.sites has the columns this module reads and writes');
select col_type_is('public', 'sites', 'matomo_site_id', 'integer', 'matomo_site_id is an integer');
select col_default_is('public', 'sites', 'status_hosting', 'pending', 'status_hosting defaults to pending');
select ok((select relrowsecurity from pg_class where oid = 'public.sites'::regclass), 'RLS is enabled on public.sites (created by this module)');

-- the private schema
select has_schema('hosting_automator', 'the private schema exists');
select tables_are('hosting_automator', array['settings', 'jobs', 'steps', 'events', 'rings', 'domain_owners', 'kick_log', 'credentials', 'servers', 'placements', 'site_facts'], 'the private schema holds jobs, steps, events, settings, kicks on their way and sent, domain owners, where credentials are kept, the servers, where each site is placed and what its steps kept');
select has_index('hosting_automator', 'jobs', 'jobs_one_open_per_site', 'a partial unique index enforces one open job per site');
select ok(
  (select indisunique and pg_get_expr(indpred, indrelid) like '%queued%running%'
   from pg_index where indexrelid = 'hosting_automator.jobs_one_open_per_site'::regclass),
  'the one-open-job index is unique over queued and running jobs only');
select ok(
  (select indisunique and pg_get_expr(indpred, indrelid) like '%queued%running%remove%'
   from pg_index where indexrelid = 'hosting_automator.jobs_one_open_removal_per_site'::regclass),
  'a second partial unique index allows one open removal per site');
select is((select count(*)::int from hosting_automator.settings), 1, 'settings has exactly one row');
select throws_ok($$insert into hosting_automator.settings (id) values (false)$$, '23514', null, 'a second settings row is refused');
select throws_ok($$update hosting_automator.settings set max_attempts = 0$$, '23514', null, 'settings are range-checked');

-- the schema itself refuses impossible job states
insert into public.sites (id, domain) values ('00000000-0000-4000-8000-000000000001', 'schema-test.example');
select throws_ok(
  $$insert into hosting_automator.jobs (site_id, max_attempts, state) values ('00000000-0000-4000-8000-000000000001', 3, 'running')$$,
  '23514', null, 'a running job without a lease is refused by a check constraint');
insert into hosting_automator.jobs (site_id, max_attempts) values ('00000000-0000-4000-8000-000000000001', 3);
select throws_ok(
  $$insert into hosting_automator.jobs (site_id, max_attempts) values ('00000000-0000-4000-8000-000000000001', 3)$$,
  '23505', null, 'a second open job for the same site is refused by the schema');
select throws_ok(
  $$insert into hosting_automator.jobs (site_id, kind, max_attempts) values ('00000000-0000-4000-8000-000000000001', 'remove', 3)$$,
  '23514', null, 'a removal without the domain it works from is refused by a check constraint');

-- the event log is append-only
insert into hosting_automator.events (level, message) values ('info', 'x');
select throws_ok($$update hosting_automator.events set message = 'y'$$, '42501', null, 'events cannot be updated');
select throws_ok($$delete from hosting_automator.events$$, '42501', null, 'events cannot be deleted');

-- every function: security definer where it runs for the API, and a fixed empty search_path
select is(
  (select count(*)::int from pg_proc p
   where p.pronamespace in ('hosting_automator'::regnamespace, 'public'::regnamespace)
     and (p.proname like 'hosting\_%' or p.pronamespace = 'hosting_automator'::regnamespace)
     and not coalesce(p.proconfig @> array['search_path=""'], false)),
  0, 'every function of the module sets search_path to empty');
select is(
  (select count(*)::int from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%' and not p.prosecdef),
  0, 'every public.hosting_* function is security definer');

-- who may do what
select ok(not has_schema_privilege('anon', 'hosting_automator', 'usage'), 'anon has no usage on the private schema');
select ok(not has_schema_privilege('authenticated', 'hosting_automator', 'usage'), 'authenticated has no usage on the private schema');
select ok(not has_table_privilege('service_role', 'hosting_automator.jobs', 'select'), 'not even service_role reads the jobs table directly');
select is(
  (select count(*)::int from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%'
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))),
  0, 'anon and authenticated cannot execute any hosting_* function');
select is(
  (select count(*)::int from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%'
     and not has_function_privilege('service_role', p.oid, 'execute')),
  0, 'service_role can execute every hosting_* function');
select ok(
  (select count(*) from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname like 'hosting\_%') >= 10,
  'the API functions exist');

set local role anon;
select throws_ok($$select * from hosting_automator.jobs$$, '42501', null, 'anon cannot read the jobs table');
select throws_ok($$select public.hosting_status()$$, '42501', null, 'anon cannot call hosting_status');
select is((select count(*)::int from public.sites), 0, 'anon sees no sites (RLS without policies)');
reset role;

set local role authenticated;
select throws_ok($$select * from hosting_automator.events$$, '42501', null, 'authenticated cannot read the event log');
select throws_ok($$select * from public.hosting_claim_jobs('w', 's', 60)$$, '42501', null, 'authenticated cannot claim jobs');
reset role;

set local role service_role;
select lives_ok($$select public.hosting_status()$$, 'service_role can call hosting_status');
select throws_ok($$select * from hosting_automator.jobs$$, '42501', null, 'service_role cannot read the private tables directly either');
reset role;

-- the sweep is scheduled where pg_cron is installed (this database has it)
select is(
  (select schedule from cron.job where jobname = 'hosting-automator-sweep'), '* * * * *',
  'pg_cron runs the sweep every minute');

select * from finish();
rollback;
