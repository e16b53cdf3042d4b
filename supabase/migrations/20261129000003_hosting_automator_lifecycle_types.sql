-- The values the lifecycle (removal of a site) adds to the module's types. Alone in their migration: a value
-- added to an enum can be used only once the transaction that added it has committed, and the next migration
-- uses them in constraints and indexes.

-- As in every migration of this module: fail rather than queue the Hub's traffic behind a lock.
set local lock_timeout = '5s';

-- A job that will never run because its site is being removed (it had not started, or stopped between steps).
alter type hosting_automator.job_state add value if not exists 'cancelled' after 'failed';
-- The removal's steps: the CloudPanel site (with its files and site user), and the Matomo site when chosen.
alter type hosting_automator.step_name add value if not exists 'cloudpanel_site_delete' after 'matomo_site';
alter type hosting_automator.step_name add value if not exists 'matomo_site_delete' after 'cloudpanel_site_delete';
