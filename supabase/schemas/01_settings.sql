-- The queue policy: one row, applied by the SQL (the trigger and the sweep apply it too, so it lives in the
-- database, not in the function). Change it with UPDATE; the checks keep it sane. The row itself is inserted by
-- supabase/residue.sql.

-- Columns in the order an installed database has them (each migration appended its own).
create table hosting_automator.settings (
  id boolean primary key default true check (id),
  max_attempts integer not null default 10 check (max_attempts between 1 and 100),
  backoff_base_seconds integer not null default 30 check (backoff_base_seconds between 1 and 86400),
  backoff_max_seconds integer not null default 3600 check (backoff_max_seconds between 1 and 604800),
  server_concurrency integer not null default 4 check (server_concurrency between 1 and 100),
  kick_timeout_ms integer not null default 5000 check (kick_timeout_ms between 1000 and 60000),
  analytics_max_attempts integer not null default 8 check (analytics_max_attempts between 1 and 100),
  ring_ttl_seconds integer not null default 15 check (ring_ttl_seconds between 2 and 300),
  retention_days integer not null default 90 check (retention_days between 1 and 3650),
  remove_max_attempts integer not null default 10 check (remove_max_attempts between 1 and 100),
  dns_backoff_seconds integer not null default 60 check (dns_backoff_seconds between 1 and 3600),
  dns_backoff_max_seconds integer not null default 900 check (dns_backoff_max_seconds between 1 and 86400),
  -- Waiting for DNS is not a failure of the work: it has its own, gentler schedule and spends no attempt, but it
  -- is bounded, so a domain whose DNS never points ends `failed` for a person to fix.
  dns_wait_hours integer not null default 48 check (dns_wait_hours between 1 and 720),
  check (backoff_max_seconds >= backoff_base_seconds),
  constraint settings_dns_backoff_order check (dns_backoff_max_seconds >= dns_backoff_seconds)
);
comment on table hosting_automator.settings is
  'Queue policy: attempts per job, retry backoff (base * 2^(attempt-1), capped, with jitter), jobs per CloudPanel server at once, pg_net kick timeout.';
comment on column hosting_automator.settings.server_concurrency is
  'Jobs at once on a server registered from the worker''s configuration (the `default` server).';
comment on column hosting_automator.settings.analytics_max_attempts is
  'Attempts of the automatic analytics backfill of a site that went active without a Matomo site.';
comment on column hosting_automator.settings.ring_ttl_seconds is
  'How long a kick counts as on its way (reserving a free slot) before another may be sent for that slot.';
comment on column hosting_automator.settings.retention_days is
  'Days the event log, finished jobs and the sweep''s cron history are kept; the sweep deletes older rows in batches.';
comment on column hosting_automator.settings.remove_max_attempts is
  'Attempts of a removal job before it fails and waits for an operator.';
comment on column hosting_automator.settings.dns_backoff_seconds is
  'First wait before DNS is checked again (doubling, with jitter, up to dns_backoff_max_seconds).';
comment on column hosting_automator.settings.dns_wait_hours is
  'How long a site may wait for its DNS (from its first DNS check) before its job fails.';

-- The backoff every wait of the module follows: base × 2^(n − 1), capped, then "equal jitter" (between half and
-- all of it) so that what failed together does not come back together. The queue's retries and a server's
-- circuit use the queue's base and cap (retry_delay); the waits for DNS their own (dns_backoff_*).
create function hosting_automator.backoff(p_n integer, p_base_seconds integer, p_max_seconds integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select make_interval(secs => d.delay / 2 + random() * d.delay / 2)
  from (
    select least(
      p_max_seconds::double precision,
      p_base_seconds * power(2::double precision, greatest(p_n, 1) - 1)
    ) as delay
  ) d
$$;

-- The queue's delay before its n-th retry.
create function hosting_automator.retry_delay(p_attempts integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select hosting_automator.backoff(p_attempts, s.backoff_base_seconds, s.backoff_max_seconds)
  from hosting_automator.settings s
$$;
