/**
 * A step's end as the journal takes it. Ends are never written alone: they travel with the next transition
 * (the start of the next step, or the job's exit), under the same lease guard. A done end also carries what
 * the step means to the database, as the step declares it (steps.ts), so no SQL body names a step.
 */
import type { EventLevel, KeptKey, StepName, StepState } from "./store.ts";

/** How a step ended. Messages are redacted by the store; results and kept values are written as given. */
export interface StepEnd {
  step: StepName;
  state: Exclude<StepState, "started">;
  result?: Record<string, unknown>;
  code?: string;
  message?: string;
  level?: EventLevel;
  durationMs?: number;
  /** Its result settles the site's stored password: `credentials` says whether it is the site user's. */
  settlesPassword?: true;
  /** Result values a later removal needs, kept with the site (its user, doc root, Matomo site). */
  keeps?: Partial<Record<KeptKey, unknown>>;
}

/** The ends as the SQL takes them (`p_done`, or an outcome's `done`): a JSON array, or null for none. */
export function endsJson(ends: readonly StepEnd[], redact: (text: string) => string): EndJson[] | null {
  if (ends.length === 0) return null;
  return ends.map((e) => ({
    step: e.step,
    state: e.state,
    result: e.result ?? {},
    ...(e.code !== undefined ? { code: e.code } : {}),
    ...(e.message !== undefined ? { message: redact(e.message) } : {}),
    level: e.level ?? "info",
    ...(e.durationMs !== undefined ? { duration_ms: Math.round(e.durationMs) } : {}),
    ...(e.settlesPassword ? { settles_password: true as const } : {}),
    ...(e.keeps !== undefined ? { keeps: e.keeps } : {}),
  }));
}

export interface EndJson {
  step: StepName;
  state: Exclude<StepState, "started">;
  result: Record<string, unknown>;
  code?: string;
  message?: string;
  level: EventLevel;
  duration_ms?: number;
  settles_password?: true;
  keeps?: Partial<Record<KeptKey, unknown>>;
}
