-- The private schema of hosting-automator and the values its tables take.
--
-- The files of supabase/schemas declare the module's database as it is now, one concept per file, applied in
-- lexical order (docs/architecture.md §17). supabase/residue.sql adds what a declaration cannot say (the settings
-- row, the platform's extensions, the sweep's schedule); supabase/migrations take an installed database here.

-- Not exposed by the Data API (only `public` and `graphql_public` are, by default) and not granted to any API
-- role: the `public.hosting_*` functions (security definer) are the only way in.
create schema hosting_automator;
comment on schema hosting_automator is 'hosting-automator internals. Private: do not expose through the Data API.';

-- Ordered: open states sort before finished ones. `cancelled`: a build job that will never run because its
-- site is being removed (it had not started, or it stopped between steps).
create type hosting_automator.job_state as enum ('queued', 'running', 'succeeded', 'failed', 'cancelled');

-- The steps of a job, in the order a provisioning job runs them: the CloudPanel site; its names resolve to the
-- server (before a certificate is asked for); the certificate; the site serves it; the Matomo site. Then the
-- removal's: the CloudPanel site (with its files and site user), and the Matomo site when chosen.
create type hosting_automator.step_name as enum (
  'cloudpanel_site',
  'dns_check',
  'ssl_certificate',
  'https_verify',
  'matomo_site',
  'cloudpanel_site_delete',
  'matomo_site_delete'
);

-- `started` is written before a remote call, so the journal shows a step that was cut off mid-way.
create type hosting_automator.step_state as enum ('started', 'done', 'failed', 'skipped');

create type hosting_automator.event_level as enum ('debug', 'info', 'warn', 'error');
