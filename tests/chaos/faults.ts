/**
 * The faults the chaos run injects: one table, read by the harness (events, Matomo rules, the report) and by
 * the clpctl wrapper that runs on the simulated server (per-call faults). No npm imports: the wrapper runs
 * without the project's configuration.
 */
import { unit } from "./rng.ts";

/**
 * Where a fault is decided: `clpctl` and `matomo` per call, with probability `rate`, from the seed and the
 * call's identity; `event` at points of the run's progress; `mode` for the whole run.
 */
export type FaultTarget = "clpctl" | "matomo" | "event" | "mode";

export interface FaultKind {
  target: FaultTarget;
  what: string;
}

export const FAULT_KINDS = {
  clpctl_error: {
    target: "clpctl",
    what:
      "CloudPanel's transient failure text (the simulator's own): site step timed out on the server or a cURL " +
      "timeout; certificate not validated yet or the ACME account timed out; delete timed out removing the " +
      "site user; or CloudPanel's database timing out or locked",
  },
  clpctl_exit137: {
    target: "clpctl",
    what: "the command is killed (OOM) before it works: exit 137, no output",
  },
  clpctl_signal: { target: "clpctl", what: "the command dies of SIGKILL: no exit status" },
  clpctl_answer_lost: { target: "clpctl", what: "the work is done, then the command is killed: exit 137" },
  clpctl_hang: { target: "clpctl", what: "the command hangs past the step timeout, then does its work" },
  ssh_drop_before: { target: "clpctl", what: "the SSH connection drops before the command works" },
  ssh_drop_after: { target: "clpctl", what: "the command's work is done, then the SSH connection drops" },
  matomo_5xx: { target: "matomo", what: "Matomo answers an HTML error page with 502 or 503" },
  matomo_html: { target: "matomo", what: "Matomo answers an HTML page with 200 instead of its API" },
  matomo_timeout: { target: "matomo", what: "Matomo does not answer until the client gives up" },
  matomo_slow: { target: "event", what: "Matomo answers slowly (near the timeout) for a few seconds" },
  sshd_down: {
    target: "event",
    what: "sshd is down for 2 to 4 s: open connections drop, new ones are refused",
  },
  worker_kill: { target: "event", what: "a worker process is killed (SIGKILL) mid-step" },
  pg_restart: { target: "event", what: "PostgreSQL restarts (pg_ctl restart, fast shutdown)" },
  duplicate_kicks: { target: "mode", what: "every kick is delivered twice, concurrently" },
} as const satisfies Record<string, FaultKind>;

export type FaultName = keyof typeof FAULT_KINDS;
export const FAULT_NAMES = Object.keys(FAULT_KINDS) as FaultName[];

/** What the per-call injectors need; written by the harness as `plan.json` in the chaos directory. */
export interface FaultPlan {
  seed: number;
  /** Probability that one clpctl call or one Matomo request gets a fault. */
  rate: number;
  kinds: FaultName[];
  /** How long a hanging clpctl command sleeps before it works (longer than the step timeout). */
  hangMs: number;
}

/** The fault for one call, or null: a pure function of the plan and the call's identity. */
export function pickFault(
  plan: FaultPlan,
  target: "clpctl" | "matomo",
  ...identity: Array<string | number>
): FaultName | null {
  const kinds = plan.kinds.filter((k) => FAULT_KINDS[k]?.target === target);
  if (kinds.length === 0 || unit(plan.seed, "fault", ...identity) >= plan.rate) return null;
  return kinds[Math.floor(unit(plan.seed, "kind", ...identity) * kinds.length)];
}

/** `--kinds a,b` (or `all`, or `-x` to leave kind x out of all): the kinds, or an error naming the bad one. */
export function parseKinds(text: string | undefined): FaultName[] {
  if (!text || text === "all") return [...FAULT_NAMES];
  const parts = text.split(",").map((p) => p.trim()).filter(Boolean);
  const exclude = parts.every((p) => p.startsWith("-"));
  const named = parts.map((p) => p.replace(/^-/, ""));
  for (const name of named) {
    if (!(name in FAULT_KINDS)) {
      throw new Error(`unknown fault kind ${name}; known: ${FAULT_NAMES.join(", ")}`);
    }
  }
  return exclude ? FAULT_NAMES.filter((n) => !named.includes(n)) : named as FaultName[];
}
