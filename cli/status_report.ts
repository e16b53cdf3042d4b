/**
 * `deno task provision --status`: the whole of `hosting_status()` (what `GET /status` answers) as lines for a
 * terminal, fitted to its width, with a warning wherever the report shows something an operator must fix.
 * Pure formatting: the caller prints the lines.
 */
import type { StatusReport } from "../supabase/functions/hosting-automator/store.ts";
import { fitParagraph, serverTable, type Style, table, utcSeconds } from "./format.ts";

export interface StatusContext {
  /** Columns to fit (null: no limit). */
  width: number | null;
  style: Style;
  /** Whether this process has CLOUDPANEL_SSH_HOST (it is not checked: a report needs only the store). */
  configuredHost: boolean;
}

/** Why a server's jobs wait, by the code its connection failed with, and what fixes it. */
export const SERVER_TROUBLE: Record<string, { what: string; fix: string }> = {
  ssh_unreachable: {
    what: "could not be reached",
    fix: "check that the server is up and that its host and port are right",
  },
  ssh_timeout: {
    what: "did not answer in time",
    fix: "check that the server is up and that nothing drops the connection",
  },
  ssh_host_key_mismatch: {
    what: "presented a host key other than the pinned one",
    fix:
      "pin the server's key: host_key in hosting_automator.servers (CLOUDPANEL_SSH_HOST_KEY for `default`)",
  },
  ssh_auth_failed: {
    what: "refused the SSH key",
    fix:
      "check CLOUDPANEL_SSH_PRIVATE_KEY (or the server's entry in CLOUDPANEL_SSH_PRIVATE_KEYS) against the server's authorized_keys",
  },
};

/** Why queued jobs wait for a server, as `waiting_for_server.by_reason` names it. */
const WAIT_REASON: Record<string, string> = {
  server_disabled: "on a disabled server",
  no_server_capacity: "for a server with room (no_server_capacity)",
  ...Object.fromEntries(
    Object.entries(SERVER_TROUBLE).map(([code, t]) => [code, `whose server ${t.what} (${code})`]),
  ),
};

/** The sections printed on their own; any other key of the report is printed at the end, as it is. */
const KNOWN = new Set([
  "generated_at",
  "sites",
  "jobs",
  "queue",
  "doorbell",
  "setup",
  "servers",
  "waiting_for_server",
  "waiting_for_capacity",
  "waiting_for_dns",
  "certificates",
  "running",
  "retrying",
  "recent_failures",
  "missing_analytics",
  "removals",
]);

type Row = Record<string, unknown>;

/** A cell: timestamps (`…_at`, `since`) as UTC to the second, objects as compact JSON. */
function cell(column: string, value: unknown): string | number | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value;
  if (typeof value === "string") return /_at$|^since$/.test(column) ? utcSeconds(value) : value;
  return JSON.stringify(value);
}

/** The automatic analytics retry of a site, in a few words. */
function backfillText(job: { state?: string; attempts?: number; next_run_at?: string } | null): string {
  if (!job) return "none (retry it)";
  if (job.state === "queued") return `automatic, next at ${utcSeconds(job.next_run_at) || "?"}`;
  if (job.state === "running") return "running";
  return `${job.state} after ${job.attempts ?? "?"} attempt(s)`;
}

function counted(entries: Record<string, number>, extra: (key: string) => string = () => ""): string {
  return Object.entries(entries).map(([key, n]) => `${key} ${n}${extra(key)}`).join(", ") || "none";
}

export function statusLines(status: StatusReport, context: StatusContext): string[] {
  const { width, style } = context;
  const lines: string[] = [];
  const say = (text = "", paint: (t: string) => string = (t) => t) => {
    for (const line of fitParagraph(text, width).split("\n")) lines.push(line === "" ? line : paint(line));
  };
  const section = (title: string, rows: Row[], columns: string[]) => {
    say();
    say(`${title} (${rows.length})`);
    if (rows.length) {
      lines.push(table(columns, rows.map((r) => columns.map((c) => cell(c, r[c]))), 60, width));
    }
  };

  const waiting = status.waiting_for_server;
  say(
    `Sites by status_hosting: ${
      counted(status.sites, (state) => {
        const n = waiting.sites[state] ?? 0;
        return n > 0 ? ` (${n} of them waiting for a server)` : "";
      })
    }`,
  );
  say(`Jobs by state:           ${counted(status.jobs)}`);
  say(
    `Queue: ${status.queue.depth} queued, ${status.queue.due} due, oldest ${status.queue.oldest_age_seconds} s`,
  );
  if (status.doorbell) {
    const bell = status.doorbell;
    const kicks = bell.kicks as {
      sent_last_hour?: number;
      failing_since_last_success?: number;
      last_failure?: { status?: number | null; at?: string } | null;
    };
    say(
      `Slots: ${bell.slots_taken} of ${bell.slots} taken, ${bell.kicks_on_the_way} kick(s) on their way; ` +
        `${kicks.sent_last_hour ?? 0} kick(s) sent in the last hour`,
    );
    if ((kicks.failing_since_last_success ?? 0) > 0) {
      say(
        `Kicks failing: ${kicks.failing_since_last_success} since the last success, last answered ` +
          `${kicks.last_failure?.status ?? "nothing"} at ${utcSeconds(kicks.last_failure?.at) || "?"}` +
          ` (401: the key in Vault is stale; see README "Rotating the key")`,
        style.bad,
      );
    }
  }
  setupLines(status.setup, style).forEach(([text, paint]) => say(text, paint));

  say();
  say(`Servers (${status.servers.length})`);
  if (status.servers.length) lines.push(serverTable(status.servers, 120, width));
  else if (context.configuredHost) {
    say(
      "  none registered yet: the configured server (CLOUDPANEL_SSH_HOST) is registered as `default` at the first claim",
    );
  } else {
    say(
      "  none registered yet, and CLOUDPANEL_SSH_HOST is not set here: the first claim of a worker that has it " +
        "registers that server as `default`; or add rows to hosting_automator.servers (docs/fleet.md)",
      style.warn,
    );
  }
  for (const server of status.servers) {
    const trouble = SERVER_TROUBLE[server.circuit.last_error_code ?? ""] ?? SERVER_TROUBLE.ssh_unreachable;
    if (server.state === "disabled" && server.waiting + server.placed > 0) {
      say(
        `  ${server.name} is disabled: its sites' jobs wait until it is active or draining again`,
        style.warn,
      );
    } else if (server.circuit.state === "open") {
      const code = server.circuit.last_error_code ?? "ssh_unreachable";
      say(
        `  ${server.name} ${trouble.what}: its jobs wait until its circuit closes; the other servers go on ` +
          `(${code}; to fix: ${trouble.fix})`,
        style.warn,
      );
    }
  }
  const reasons = Object.entries(waiting.by_reason).map(([reason, n]) =>
    `${n} ${WAIT_REASON[reason] ?? reason}`
  );
  say(
    `Waiting for a server: ${waiting.jobs} job(s)${reasons.length ? `: ${reasons.join(", ")}` : ""}`,
    waiting.jobs > 0 ? style.warn : undefined,
  );
  const capacityLine = `Waiting for capacity: ${status.waiting_for_capacity} job(s)`;
  say(
    status.waiting_for_capacity > 0
      ? `${capacityLine}: no active server has room for another site; add a server, raise a capacity, ` +
        "or set a draining server active again"
      : capacityLine,
    status.waiting_for_capacity > 0 ? style.bad : undefined,
  );

  section("Waiting for DNS", status.waiting_for_dns, ["domain", "checks", "since", "next_check_at", "error"]);
  const certificates = status.certificates;
  say();
  say(
    `Certificates: ${certificates.expiring_within_30_days} of active sites expire within 30 days`,
    certificates.expiring_within_30_days > 0 ? style.warn : undefined,
  );
  section("Soonest to expire", certificates.soonest, ["domain", "expires_at"]);

  section("Running", status.running, [
    "domain",
    "kind",
    "server",
    "step",
    "attempt",
    "worker",
    "lease_expires_at",
  ]);
  section("Retrying", status.retrying, ["domain", "kind", "attempts", "next_run_at", "code", "error"]);
  section("Recent failures", status.recent_failures, ["domain", "failed_at", "code", "error_message"]);
  section(
    "Active without analytics",
    status.missing_analytics.map((m) => ({
      ...m,
      warning: (m.warning as { message?: string } | null)?.message ?? "",
      backfill: backfillText(
        m.backfill as { state?: string; attempts?: number; next_run_at?: string } | null,
      ),
    })),
    ["domain", "site_id", "warning", "backfill"],
  );
  const removals = status.removals;
  say();
  say(
    `Removals: ${removals.queued} queued, ${removals.running} running, ` +
      `${removals.removed_last_day} removed in the last day`,
  );
  // A failed removal left something on the servers: its row is kept as 'removing', or was deleted.
  section("Failed removals (--retry-failed queues them again)", removals.failed, [
    "domain",
    "site_id",
    "row",
    "failed_at",
    "code",
    "error",
  ]);

  // Sections this version does not know yet, as the report has them.
  for (const [key, value] of Object.entries(status).filter(([key]) => !KNOWN.has(key))) {
    if (
      Array.isArray(value) && value.every((v) => typeof v === "object" && v !== null && !Array.isArray(v))
    ) {
      section(key, value as Row[], [...new Set(value.flatMap((v) => Object.keys(v as Row)))]);
    } else {
      say();
      say(`${key}: ${JSON.stringify(value)}`);
    }
  }
  say();
  say(`Report generated at ${utcSeconds(status.generated_at)}`, style.dim);
  return lines;
}

/** Whether the database starts jobs by itself: a line for the kicks and one for the sweep, warnings in red. */
function setupLines(setup: StatusReport["setup"], style: Style): Array<[string, ((t: string) => string)?]> {
  const missing = [
    ...(setup.pg_net ? [] : ["pg_net"]),
    ...(!setup.vault ? ["Vault"] : [
      ...(setup.vault_url ? [] : ["the Vault secret hosting_automator_url"]),
      ...(setup.vault_key ? [] : ["the Vault secret hosting_automator_key"]),
    ]),
  ];
  const out: Array<[string, ((t: string) => string)?]> = [];
  out.push(
    missing.length === 0
      ? [
        "Kicks: the database wakes the function (pg_net; Vault has hosting_automator_url and hosting_automator_key)",
      ]
      : [
        `Kicks: NONE CAN BE SENT: this database lacks ${
          missing.join(" and ")
        }, so neither the trigger nor the ` +
        "sweep can wake the function: jobs start only when something calls it (a POST to the function, or " +
        'deno task provision --pending). Store the secrets as README "Deploy to Supabase" shows (step 2).',
        style.bad,
      ],
  );
  if (!setup.pg_cron) {
    out.push([
      "Sweep: NOT SCHEDULED: pg_cron is not installed in this database, so retries, jobs of a worker that " +
      "stopped and lost kicks are not picked up by themselves. Enable pg_cron, then, as postgres: " +
      "select hosting_automator.schedule_sweep();",
      style.bad,
    ]);
  } else if (setup.sweep_scheduled === false) {
    out.push([
      "Sweep: NOT SCHEDULED: pg_cron has no active job hosting-automator-sweep. As postgres: " +
      "select hosting_automator.schedule_sweep();",
      style.bad,
    ]);
  } else if (setup.sweep_scheduled === null) {
    out.push(["Sweep: its schedule could not be read (cron.job); check it as postgres", style.warn]);
  } else out.push([`Sweep: scheduled, ${setup.sweep_schedule ?? "?"}`]);
  return out;
}
