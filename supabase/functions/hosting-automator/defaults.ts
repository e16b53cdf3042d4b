/**
 * Defaults that more than one place needs, stated once. The SQL functions take these values from the worker
 * on every call; where a SQL function also states one (a parameter's default), tests/boundary.test.ts reads it
 * from a migrated database and checks that it is the same.
 */

/**
 * A step with no history (fewer than three runs of it in the journal) is expected to take this long: the claim
 * sends it as `p_default_step_ms` to fit a job into the time left, and the workflow starts no step with less
 * time left than it expects the step to take.
 */
export const DEFAULT_STEP_MS = 5_000;

/** A claimed job's lease (HOSTING_LEASE_SECONDS): its default, and the range configuration accepts. */
export const LEASE_SECONDS = { default: 30, min: 5, max: 600 } as const;

/** Each Matomo API call (HOSTING_MATOMO_TIMEOUT_SECONDS). */
export const MATOMO_TIMEOUT_SECONDS = 15;
