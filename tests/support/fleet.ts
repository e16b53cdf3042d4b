/**
 * Test support: a fleet of CloudPanel servers on one stack. Each server is a real sshd on loopback with a
 * clpctl simulator state of its own (its own panel), registered as a row of `hosting_automator.servers`.
 * The stack's own sshd can be the first server; the others accept the stack's shared key
 * (CLOUDPANEL_SSH_PRIVATE_KEY), or only a key of their own (for CLOUDPANEL_SSH_PRIVATE_KEYS).
 *
 * `drainUntil` plays the platform: rounds of concurrent invocations (as concurrent kicks would start) until
 * a condition holds. An invocation ends when nothing it may claim is due, so several rounds are normal.
 */
import { readSimState, type SimState } from "../../dev/clpctl_sim.ts";
import type { App } from "../../supabase/functions/hosting-automator/app.ts";
import type { RunResult } from "../../supabase/functions/hosting-automator/workflow.ts";
import { artifactDir } from "./env.ts";
import { DEV_BIN } from "./local_shell.ts";
import { type Stack, type StackOptions, startStack } from "./stack.ts";
import { type Sshd, startSshd } from "./sshd.ts";

export interface ServerSpec {
  name: string;
  /** Null or absent: no limit. */
  capacity?: number | null;
  concurrency?: number;
  state?: "active" | "draining" | "disabled";
  /** The only public key this server accepts; default: the stack's shared key. */
  authorizedKey?: string;
  /** Not inserted into `hosting_automator.servers` (the test inserts it later). */
  unregistered?: boolean;
}

export interface FleetServer {
  name: string;
  sshd: Sshd;
  clpctlState: string;
  simState(): Promise<SimState>;
  /** The domains of the CloudPanel sites on this server now. */
  domains(): Promise<string[]>;
  /** Inserts its row (host, port, user and pinned host key of its sshd) with the spec's settings. */
  register(): Promise<void>;
}

export interface Fleet {
  stack: Stack;
  servers: FleetServer[];
  server(name: string): FleetServer;
  /** The public key line of the stack's shared key. */
  sharedPublicKey: string;
  /** Starts and registers (unless `unregistered`) one more server. */
  add(spec: ServerSpec): Promise<FleetServer>;
}

/** The public key line of a private key, as `ssh-keygen -y` derives it. */
async function publicKeyOf(privateKey: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "hosting-automator-fleet-key-" });
  try {
    await Deno.writeTextFile(`${dir}/key`, privateKey, { mode: 0o600 });
    const out = await new Deno.Command("ssh-keygen", { args: ["-y", "-f", `${dir}/key`], stdin: "null" })
      .output();
    if (!out.success) throw new Error(`ssh-keygen -y failed: ${new TextDecoder().decode(out.stderr)}`);
    return new TextDecoder().decode(out.stdout).trim();
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function fleetServer(stack: Stack, spec: ServerSpec, sshd: Sshd, clpctlState: string): FleetServer {
  return {
    name: spec.name,
    sshd,
    clpctlState,
    simState: () => readSimState(clpctlState),
    domains: async () => Object.keys((await readSimState(clpctlState)).sites).sort(),
    async register() {
      await stack.sql`
        insert into hosting_automator.servers (name, host, port, ssh_user, host_key, capacity, concurrency, state)
        values (${spec.name}, ${sshd.host}, ${sshd.port}, ${sshd.user}, ${sshd.hostKeyFingerprint},
          ${spec.capacity ?? null}, ${spec.concurrency ?? 4}, ${spec.state ?? "active"})`;
    },
  };
}

/**
 * A stack whose servers are `specs`: the first on the stack's own sshd (unless it needs a key of its own),
 * each other on an sshd of its own. No `default` server is registered, since rows exist before any claim.
 */
export async function withFleet(
  options: StackOptions,
  specs: ServerSpec[],
  body: (fleet: Fleet) => Promise<void>,
): Promise<void> {
  const stack = await startStack(options);
  const own: Sshd[] = [];
  try {
    const sharedPublicKey = await publicKeyOf(stack.env.CLOUDPANEL_SSH_PRIVATE_KEY!);
    const servers: FleetServer[] = [];
    const add = async (spec: ServerSpec) => {
      let server: FleetServer;
      if (servers.length === 0 && !spec.authorizedKey) {
        server = fleetServer(stack, spec, stack.sshd, stack.clpctlState);
      } else {
        const clpctlState = await artifactDir("clpctl");
        const sshd = await startSshd({
          authorizedKey: spec.authorizedKey ?? sharedPublicKey,
          env: { PATH: `${DEV_BIN}:/usr/local/bin:/usr/bin:/bin`, CLPCTL_SIM_STATE: clpctlState },
        });
        own.push(sshd);
        // Every server's HTTPS side is the stack's TLS simulator on 127.0.0.1: it serves this panel's too.
        stack.tls.addStateDir(clpctlState);
        server = fleetServer(stack, spec, sshd, clpctlState);
      }
      servers.push(server);
      if (!spec.unregistered) await server.register();
      return server;
    };
    for (const spec of specs) await add(spec);
    await body({
      stack,
      servers,
      server(name) {
        const found = servers.find((s) => s.name === name);
        if (!found) throw new Error(`no server ${name} in this fleet`);
        return found;
      },
      sharedPublicKey,
      add,
    });
  } finally {
    await stack.close();
    for (const sshd of own) await sshd.stop();
  }
}

export interface DrainOptions {
  /** Invocations started at once in each round. Default 4. */
  invocations?: number;
  /** Jobs each invocation runs at once. Default 3. */
  concurrency?: number;
  /** Give up after this long. Default 120 s. */
  timeoutMs?: number;
  /** Pause between rounds (jobs waiting for a backoff or a circuit). Default 200 ms. */
  pauseMs?: number;
}

/**
 * Rounds of concurrent drains on `app` until `done()` holds; the outcomes of every round. Throws with the
 * queue's state when the time is up.
 */
export async function drainUntil(
  stack: Stack,
  app: App,
  done: () => Promise<boolean>,
  options: DrainOptions = {},
): Promise<RunResult["outcomes"]> {
  const deadline = performance.now() + (options.timeoutMs ?? 120_000);
  const outcomes: RunResult["outcomes"] = [];
  while (!await done()) {
    if (performance.now() > deadline) {
      const jobs = await stack.sql`
        select state, server, last_error_code, count(*)::int as n from hosting_automator.jobs
        group by 1, 2, 3 order by 1, 2, 3`;
      throw new Error(`drainUntil: timed out; jobs: ${JSON.stringify(jobs)}`);
    }
    const results = await Promise.all(
      Array.from(
        { length: options.invocations ?? 4 },
        () => app.newInvocation!().run({ drain: true, concurrency: options.concurrency ?? 3 }),
      ),
    );
    for (const result of results) outcomes.push(...result.outcomes);
    if (results.every((r) => r.outcomes.length === 0)) {
      await new Promise((resolve) => setTimeout(resolve, options.pauseMs ?? 200));
    }
  }
  return outcomes;
}

/** Sites by status_hosting among `ids`. */
export async function statusCounts(stack: Stack, ids: string[]): Promise<Record<string, number>> {
  const rows = await stack.sql<{ status: string; n: number }[]>`
    select coalesce(status_hosting, 'null') as status, count(*)::int as n from public.sites
    where id = any(${ids}::uuid[]) group by 1`;
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** Inserts `count` sites `<prefix>-<i>.fleet.example` with DNS pending; their ids in order. */
export async function insertSites(stack: Stack, prefix: string, count: number): Promise<string[]> {
  const rows = await stack.sql<{ id: string }[]>`
    insert into public.sites (domain, status_dns, status_hosting)
    select ${prefix} || '-' || i || '.fleet.example', 'pending', 'pending' from generate_series(1, ${count}) i
    order by i
    returning id`;
  return rows.map((r) => r.id);
}

/** Makes DNS active for `ids` in one UPDATE (the trigger queues their jobs). */
export async function activate(stack: Stack, ids: string[]): Promise<void> {
  await stack.sql`update public.sites set status_dns = 'active' where id = any(${ids}::uuid[])`;
}

/** The server a site's row names (`public.sites.hosting_server`). */
export async function serverOf(stack: Stack, siteId: string): Promise<string | null> {
  const [row] = await stack.sql<{ hosting_server: string | null }[]>`
    select hosting_server from public.sites where id = ${siteId}`;
  return row.hosting_server;
}
