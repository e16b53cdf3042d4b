// deno-lint-ignore-file no-console
/**
 * `deno task chaos [flags]`: the chaos run (engine.ts) on the test command's throwaway PostgreSQL (tests/run.ts
 * starts it, applies the migrations, and runs this file as a test; the run copies the migrated template into a
 * cluster of its own, which it may restart). Prints the report and fails when a target is missed.
 */
import { parseArgs } from "node:util";
import { DEFAULTS, runChaos } from "./engine.ts";
import { FAULT_KINDS, parseKinds } from "./faults.ts";
import { formatReport, TARGETS, verdicts } from "./report.ts";

const HELP = `deno task chaos [flags]

N sites through the real function, real sshd and the simulators, with transient faults from a seeded RNG.
Ends by itself (all settled, or the deadline); exit status non-zero when a target is missed:
≥ ${TARGETS.activeWithAnalytics * 100} % active with analytics and no human action, 0 duplicated sites or
Matomo sites, 0 lost rows, 0 secrets in logs or the database. Then (unless --removals 0) a share of the
active sites is removed (half by deleting the row, half kept and set removing; half of the deleted domains
inserted again at once) under the same faults, with one of each event counted twice or more: every kept row
removed, every removed site gone from CloudPanel, every re-created row active on one new site, 0 Vault
secrets left for removed sites, every active site's stored password the site user's, 0 half-made sites.

  --sites N              sites (default ${DEFAULTS.sites})
  --seed S               seed of every random decision (default ${DEFAULTS.seed})
  --fault-rate R         probability that one clpctl call or Matomo request is faulted (default ${DEFAULTS.faultRate})
  --kinds LIST           fault kinds, comma separated; "-a,-b" leaves kinds out (default all)
  --cap N, --concurrency N
                         server_concurrency (default ${DEFAULTS.cap})
  --deadline SECONDS     stop and report (default ${DEFAULTS.deadlineSeconds})
  --sweep SECONDS        the sweep's period; pg_cron's minute, compressed (default ${DEFAULTS.sweepSeconds})
  --arrival SECONDS      DNS turns active in batches over this long; 0: one UPDATE (default ${DEFAULTS.arrivalSeconds})
  --worker-kills N       worker processes SIGKILLed mid-step (default ${DEFAULTS.workerKills})
  --sshd-outages N       sshd down for 2-4 s (default ${DEFAULTS.sshdOutages})
  --pg-restarts N        PostgreSQL restarts (default ${DEFAULTS.pgRestarts})
  --matomo-slow N        windows of slow Matomo answers (default ${DEFAULTS.matomoSlowWindows})
  --removals SHARE       share of the active sites removed after all settled; 0: none (default ${DEFAULTS.removals})
  --fast-lease-expiry    expire a killed worker's leases at once instead of waiting for them
  --help                 this text

Fault kinds:
${Object.entries(FAULT_KINDS).map(([k, v]) => `  ${k.padEnd(20)} ${v.target.padEnd(7)} ${v.what}`).join("\n")}
`;

// `deno task chaos -- --sites 200` hands the task's own `--` on: flags follow it, not positional arguments.
const args = Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args;
const { values } = parseArgs({
  args,
  options: {
    sites: { type: "string" },
    seed: { type: "string" },
    "fault-rate": { type: "string" },
    kinds: { type: "string" },
    cap: { type: "string" },
    concurrency: { type: "string" },
    deadline: { type: "string" },
    sweep: { type: "string" },
    arrival: { type: "string" },
    "worker-kills": { type: "string" },
    "sshd-outages": { type: "string" },
    "pg-restarts": { type: "string" },
    "matomo-slow": { type: "string" },
    removals: { type: "string" },
    "fast-lease-expiry": { type: "boolean" },
    help: { type: "boolean" },
  },
});

function number(name: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name}: expected ${min} to ${max}`);
  return n;
}

if (values.help) {
  console.log(HELP);
} else {
  const sites = number("sites", values.sites, DEFAULTS.sites, 1, 100_000);
  const options = {
    sites,
    seed: number("seed", values.seed, DEFAULTS.seed, 0, 2 ** 32 - 1),
    faultRate: number("fault-rate", values["fault-rate"], DEFAULTS.faultRate, 0, 1),
    kinds: parseKinds(values.kinds),
    cap: number("cap", values.cap ?? values.concurrency, DEFAULTS.cap, 1, 100),
    // Generous by default: 15 minutes for 1000 sites, and at least 3.
    deadlineSeconds: number("deadline", values.deadline, Math.max(180, sites * 0.9), 10, 86_400),
    sweepSeconds: number("sweep", values.sweep, DEFAULTS.sweepSeconds, 0.2, 60),
    arrivalSeconds: number("arrival", values.arrival, DEFAULTS.arrivalSeconds, 0, 3600),
    workerKills: number("worker-kills", values["worker-kills"], DEFAULTS.workerKills, 0, 100),
    sshdOutages: number("sshd-outages", values["sshd-outages"], DEFAULTS.sshdOutages, 0, 100),
    pgRestarts: number("pg-restarts", values["pg-restarts"], DEFAULTS.pgRestarts, 0, 100),
    matomoSlowWindows: number("matomo-slow", values["matomo-slow"], DEFAULTS.matomoSlowWindows, 0, 100),
    removals: number("removals", values.removals, DEFAULTS.removals, 0, 1),
    fastLeaseExpiry: values["fast-lease-expiry"] ?? false,
  };
  const command = `deno task chaos ${args.join(" ")}`.trim();
  Deno.test({
    name: `chaos: ${sites} sites, seed ${options.seed}, fault rate ${options.faultRate}`,
    // The run leaves nothing behind, but the sanitizers cannot tell its background work from a leak.
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      console.log(`\n${command}`);
      const result = await runChaos({ ...options, progress: (line) => console.log(line) });
      console.log(formatReport(result, command));
      const missed = verdicts(result).filter((v) => !v.ok);
      if (missed.length > 0) throw new Error(`targets missed: ${missed.map((m) => m.name).join(", ")}`);
    },
  });
}
