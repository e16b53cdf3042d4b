/**
 * The clpctl of the chaos run's simulated CloudPanel server: runs on the server side (sshd → bash → this), in
 * front of the clpctl simulator (imported, so one process per command as before), and injects the per-call
 * faults the plan picks for this call. A call is identified by its verb, its domain and how many times that
 * verb was run for that domain (a counter kept as files in the chaos directory), so the same seed faults the
 * same calls whatever the order of concurrent calls. The verbs faulted: site:add:static,
 * lets-encrypt:install:certificate and site:delete. What it does:
 *
 *   clpctl_error        the simulator's own transient failure text, produced on a copy of the panel's state (so the
 *                       real state is untouched and concurrent calls are not affected)
 *   clpctl_exit137      exit 137 with no output, before any work
 *   clpctl_signal       dies of SIGKILL: sshd reports a signal, no exit status
 *   clpctl_answer_lost  the work is done on the real state, then exit 137 with no output
 *   clpctl_hang         sleeps past the step timeout, then does the work (a late finish the client never sees)
 *   ssh_drop_before     kills the SSH session serving this command before any work: the connection drops
 *   ssh_drop_after      does the work, then kills the session: the connection drops
 *
 * Every call's site-user password is appended to `passwords.txt` (the secret scan looks for it) and every
 * injected fault to `injected.jsonl`. Environment: CLPCTL_SIM_STATE (the panel), CHAOS_DIR (plan, counters).
 */
import * as sim from "../../dev/clpctl_sim.ts";
import { runClpctl } from "../../dev/clpctl_sim.ts";
import { type FaultName, type FaultPlan, pickFault } from "./faults.ts";
import { unit } from "./rng.ts";

const VERBS = new Set(["site:add:static", "lets-encrypt:install:certificate", "site:delete"]);

/**
 * The simulator's transient failure texts per verb. Its common kinds (CloudPanel's internal database timing
 * out, its database locked) are used where this version of the simulator has them.
 */
const common = ((sim as Record<string, unknown>).COMMON_FAULT_KINDS ?? []) as readonly string[];
const sharedTexts = ["database", "locked"].filter((k) => common.includes(k));
const TEXTS: Record<string, { counter: string; kind: string; kinds: string[] }> = {
  "site:add:static": {
    counter: "siteFailures",
    kind: "siteFailureKind",
    kinds: ["timeout", "network", ...sharedTexts],
  },
  "lets-encrypt:install:certificate": {
    counter: "certificateFailures",
    kind: "certificateFailureKind",
    kinds: ["dns", "account", ...(common.includes("timeout") ? ["timeout"] : []), ...sharedTexts],
  },
  // A delete meets only the common kinds; `timeout` is CloudPanel's step timeout (removing the site user).
  "site:delete": {
    counter: "deleteFailures",
    kind: "deleteFailureKind",
    kinds: [...(common.includes("timeout") ? ["timeout"] : []), ...sharedTexts],
  },
};

const stateDir = Deno.env.get("CLPCTL_SIM_STATE");
const chaosDir = Deno.env.get("CHAOS_DIR");
if (!stateDir || !chaosDir) {
  await write(Deno.stderr, "clpctl (chaos): CLPCTL_SIM_STATE and CHAOS_DIR must be set\n");
  Deno.exit(2);
}

async function write(stream: { write(p: Uint8Array): Promise<number> }, text: string) {
  let bytes = new TextEncoder().encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(await stream.write(bytes));
}

function option(name: string): string | undefined {
  const token = Deno.args.find((a) => a.startsWith(`--${name}=`));
  return token?.slice(name.length + 3);
}

/** 1 for the first call of this verb for this domain, 2 for the next…: O_EXCL file creation, no lock. */
async function callNumber(verb: string, domain: string): Promise<number> {
  const dir = `${chaosDir}/calls`;
  await Deno.mkdir(dir, { recursive: true });
  const key = `${verb.replaceAll(":", "_")}__${domain.replace(/[^a-z0-9.-]/g, "_")}`;
  for (let n = 1;; n++) {
    try {
      (await Deno.open(`${dir}/${key}.${n}`, { write: true, createNew: true })).close();
      return n;
    } catch (error) {
      if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    }
  }
}

/** The per-connection sshd processes above this one (not the listener): killing them drops the connection. */
async function killSession(): Promise<void> {
  const chain: Array<{ pid: number; name: string }> = [];
  let pid = Deno.pid;
  while (pid > 1) {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
    if (!stat) break;
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    chain.push({ pid, name });
    pid = ppid;
  }
  // The listener must stay up. It is the sshd whose title says `[listener]` (OpenSSH 9 retitles it): not
  // simply the topmost one, since a session that outlived its listener (sshd restarted) hangs under init.
  const sessions: typeof chain = [];
  for (const p of chain.filter((p) => p.name === "sshd")) {
    const title = await Deno.readTextFile(`/proc/${p.pid}/cmdline`).catch(() => "");
    if (!title.includes("[listener]")) sessions.push(p);
  }
  for (const p of sessions) {
    try {
      Deno.kill(p.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

/** The simulator's own failure text for this verb, made on a throwaway copy of the panel's state. */
async function simulatedFailure(verb: string, domain: string, n: number) {
  const scratch = await Deno.makeTempDir({ dir: chaosDir, prefix: "scratch-" });
  try {
    const state = await Deno.readTextFile(`${stateDir}/state.json`).catch(() => null);
    if (state !== null) await Deno.writeTextFile(`${scratch}/state.json`, state);
    const base = JSON.parse(await Deno.readTextFile(`${stateDir}/faults.json`).catch(() => "{}"));
    const texts = TEXTS[verb];
    const kind = texts.kinds[Math.floor(unit(plan.seed, "text", verb, domain, n) * texts.kinds.length)];
    const faults = {
      ...base,
      [texts.counter]: 1,
      [texts.kind]: kind,
      siteFailureLeavesUser: false,
      deleteFailureAfterWork: false,
    };
    await Deno.writeTextFile(`${scratch}/faults.json`, JSON.stringify(faults));
    return await runClpctl(Deno.args, scratch);
  } finally {
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

const plan: FaultPlan = JSON.parse(await Deno.readTextFile(`${chaosDir}/plan.json`));
const verb = Deno.args.find((a) => !a.startsWith("-")) ?? "";
const domain = option("domainName")?.toLowerCase();
const password = option("siteUserPassword");
if (password) {
  await Deno.writeTextFile(`${chaosDir}/passwords.txt`, JSON.stringify(password) + "\n", { append: true });
}

let fault: FaultName | null = null;
let n = 0;
if (domain && VERBS.has(verb)) {
  n = await callNumber(verb, domain);
  fault = pickFault(plan, "clpctl", verb, domain, n);
}
if (fault) {
  const line = JSON.stringify({ at: new Date().toISOString(), fault, verb, domain, n });
  await Deno.writeTextFile(`${chaosDir}/injected.jsonl`, line + "\n", { append: true });
}

switch (fault) {
  case "clpctl_exit137":
    Deno.exit(137);
    break;
  case "clpctl_signal":
    Deno.kill(Deno.pid, "SIGKILL");
    break;
  case "ssh_drop_before":
    await killSession();
    Deno.exit(255);
    break;
  case "clpctl_answer_lost":
    await runClpctl(Deno.args, stateDir);
    Deno.exit(137);
    break;
  case "ssh_drop_after":
    await runClpctl(Deno.args, stateDir);
    await killSession();
    Deno.exit(255);
    break;
  case "clpctl_hang":
    await new Promise((resolve) => setTimeout(resolve, plan.hangMs));
    break;
}
const result = fault === "clpctl_error"
  ? await simulatedFailure(verb, domain!, n)
  : await runClpctl(Deno.args, stateDir);
// The client may be gone (a hang outlived its timeout): writing then fails, as it would on the server.
await write(Deno.stdout, result.stdout).catch(() => {});
await write(Deno.stderr, result.stderr).catch(() => {});
// The simulator reports a signal in-process; over SSH the process itself must die of it.
if (result.exitCode === null) Deno.kill(Deno.pid, "SIGKILL");
Deno.exit(result.exitCode ?? 137);
