/**
 * Which servers `--dry-run` logs in to, and what it must say about them. The configured server is tested with
 * the settings the dry run prints (what the next claim registers or writes into the `default` row), not with
 * a row stored from an earlier configuration; a stored row that differs is said, with how it gets applied.
 * Every other registered server is tested as stored, and labelled so.
 */
import type { ServerAddress } from "../supabase/functions/hosting-automator/config.ts";
import type { ServerRow } from "../supabase/functions/hosting-automator/store.ts";

export interface ServerCheck {
  label: string;
  server: ServerAddress;
}

export interface ServerPlan {
  checks: ServerCheck[];
  /** What the operator should know: for information, a warning, or a failure of the dry run. */
  notes: Array<{ level: "info" | "warn" | "fail"; text: string }>;
}

const FIELDS = [
  { field: "host", column: "host", label: "host" },
  { field: "port", column: "port", label: "port" },
  { field: "user", column: "ssh_user", label: "user" },
  { field: "hostKey", column: "host_key", label: "host key" },
] as const;

/** SQL that writes the configured values into the `default` row now (every value was validated: no quotes). */
function updateSql(changes: Array<(typeof FIELDS)[number]>, configured: Omit<ServerAddress, "name">): string {
  const sets = changes.map(({ field, column }) =>
    typeof configured[field] === "number"
      ? `${column} = ${configured[field]}`
      : `${column} = '${configured[field]}'`
  );
  return `update hosting_automator.servers set ${sets.join(", ")} where name = 'default';`;
}

export function serverPlan(configured: Omit<ServerAddress, "name"> | null, stored: ServerRow[]): ServerPlan {
  const plan: ServerPlan = { checks: [], notes: [] };
  const storedDefault = stored.find((s) => s.name === "default");
  if (configured) {
    if (stored.length === 0) {
      plan.checks.push({ label: "ssh default (configured)", server: { name: "default", ...configured } });
      plan.notes.push({
        level: "info",
        text: "default: not registered yet; the first claim registers the configured server as `default`",
      });
    } else if (storedDefault) {
      plan.checks.push({ label: "ssh default (configured)", server: { name: "default", ...configured } });
      const changes = FIELDS.filter(({ field }) => storedDefault[field] !== configured[field]);
      if (changes.length > 0) {
        const differences = changes
          .map(({ field, label }) =>
            `${label} ${storedDefault[field]} stored, ${configured[field]} configured`
          )
          .join("; ");
        plan.notes.push({
          level: "warn",
          text:
            `default: the stored row differs from the configuration (${differences}). The next claim of a ` +
            `worker with this configuration writes it into the row (a deployed function: once its secrets ` +
            `match); to apply it now: ${updateSql(changes, configured)}`,
        });
      }
      if (storedDefault.state === "disabled") {
        plan.notes.push({ level: "warn", text: "default: its row is disabled, so nothing runs on it" });
      }
    } else {
      plan.notes.push({
        level: "warn",
        text: "CLOUDPANEL_SSH_HOST is set, but other servers are registered and none is `default`: the " +
          "configured server is not used (sites go to the servers of hosting_automator.servers), so it is " +
          "not tested",
      });
    }
  }
  for (const row of stored) {
    if (row.state === "disabled" || (configured && row.name === "default")) continue;
    const { state: _state, ...server } = row;
    plan.checks.push({ label: `ssh ${row.name} (stored)`, server });
  }
  if (plan.checks.length === 0) {
    plan.notes.push({
      level: "fail",
      text: stored.length === 0
        ? "servers: none registered and CLOUDPANEL_SSH_HOST is not set"
        : "servers: every registered server is disabled",
    });
  }
  // Only the configured server: the plain label the dry run has always printed (its line says "as configured").
  if (plan.checks.length === 1 && plan.checks[0].label === "ssh default (configured)") {
    plan.checks[0] = { ...plan.checks[0], label: "ssh" };
  }
  return plan;
}
