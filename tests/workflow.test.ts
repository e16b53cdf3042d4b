/**
 * The workflow on its own, for paths the end-to-end tests reach slowly or not at all: the store is the real
 * `Store` over a fake SQL caller that answers the `hosting_*` functions as the migrations do (and records every
 * call), CloudPanel is a fake remote shell answering as clpctl does, Matomo a fake client, and time a fake
 * clock (lease renewals use real timers, made short). Each test asserts the exact sequence of store calls.
 */
import assert from "node:assert/strict";
import { UNRECOGNISED_ATTEMPT_LIMIT } from "../supabase/functions/hosting-automator/cloudpanel_outcomes.ts";
import { DEFAULT_STEP_MS } from "../supabase/functions/hosting-automator/defaults.ts";
import {
  docRootFor,
  type Domain,
  parseDomain,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import {
  ERROR_CODES,
  type ErrorCode,
  failureClass,
  HostingError,
} from "../supabase/functions/hosting-automator/errors.ts";
import { Logger, Redactor } from "../supabase/functions/hosting-automator/log.ts";
import type { MatomoClient, MatomoSite } from "../supabase/functions/hosting-automator/matomo.ts";
import type { ExecResult, RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";
import { type Checks, PLANS } from "../supabase/functions/hosting-automator/steps.ts";
import { type SqlCaller, Store } from "../supabase/functions/hosting-automator/store.ts";
import {
  Invocation,
  RESERVE_MS,
  type RunOptions,
  WALL_CLOCK_MARGIN_MS,
  type WorkflowDeps,
} from "../supabase/functions/hosting-automator/workflow.ts";
import { captureSink, registerSecret } from "./support/env.ts";

const RAW_DOMAIN = "Bücher.Example.com";
const DOMAIN = parseDomain(RAW_DOMAIN); // xn--bcher-kva.example.com: what CloudPanel and the owner table see
const USER = siteUserFor(DOMAIN);
const DOC_ROOT = docRootFor(USER, DOMAIN);
const BUDGET_MS = 100_000;
/** Step timeouts for tests where the step must be stopped long before its own timeout would stop it. */
const SHORT = { siteMs: 10_000, certificateMs: 10_000, matomoMs: 10_000, checkMs: 10_000 };
const T0 = 1_000_000;

type Row = Record<string, unknown>;
/** The server claimed jobs run on, as the claim answers it. */
const SERVER = {
  name: "cp-1",
  host: "cloudpanel.test",
  port: 22,
  ssh_user: "root",
  host_key: `SHA256:${"A".repeat(43)}`,
  failures: 0,
};
let nextJobId = 1;

/** A row of `hosting_claim_jobs` (its column names); `domain_chars`/`domain_bytes` measure the text given. */
function claimRow(over: Row = {}): Row {
  const domain = (over.domain ?? RAW_DOMAIN) as string;
  return {
    job_id: nextJobId++,
    lease_token: crypto.randomUUID(),
    site_id: crypto.randomUUID(),
    domain,
    domain_chars: [...domain].length,
    domain_bytes: new TextEncoder().encode(domain).length,
    kind: "provision",
    attempt: 1,
    max_attempts: 10,
    lease_expires_at: new Date(Date.now() + 30_000).toISOString(),
    steps: {},
    estimates: {},
    server: SERVER,
    ...over,
  };
}

const JOURNALED_SITE = { state: "done", result: { site_user: USER, doc_root: DOC_ROOT, created: true } };
const JOURNALED_CERT = { state: "done", result: { installed_at: "2026-01-01T00:00:00.000Z" } };

type Call = { fn: string; args: Row };
/** A step's end as `brief` shows it: step, state, code. */
const ended = (step: string) => `${step}:done:${step}_done`;

/**
 * A Store whose SQL caller answers as the migrations' functions do: one live lease (the last claimed job's);
 * a write with another token, or after the job was completed, failed or released, finds no row (lease lost).
 * `answer` overrides the answer of the n-th call of a function (it may throw, or return undefined for the
 * default). Not modelled: the fail function's error streak (`p_attempt_limit` counts over attempts).
 */
function fakeStore(script: { jobs?: Row[]; answer?: (fn: string, n: number, args: Row) => unknown } = {}) {
  const calls: Call[] = [];
  const queue = [...(script.jobs ?? [])];
  const counts = new Map<string, number>();
  let held: Row | null = null;
  const call: SqlCaller = async (fn, args) => {
    calls.push({ fn, args: structuredClone(args) });
    const n = (counts.get(fn) ?? 0) + 1;
    counts.set(fn, n);
    const live = held !== null && args.p_lease_token === held.lease_token;
    const scripted = live || fn === "hosting_claim_jobs" ? await script.answer?.(fn, n, args) : undefined;
    switch (fn) {
      case "hosting_claim_jobs": {
        held = queue.shift() ?? null;
        return held ? [held] : [];
      }
      case "hosting_advance": {
        if (!live) return { ok: false, reason: "lease_lost" };
        // The site step's start stores the candidate password (Vault) and answers the one to use.
        const stored = args.p_password
          ? { credentials: { password: args.p_password, prior: false, stored: true } }
          : {};
        const answer = (scripted ?? { ok: true, ...stored }) as { ok: boolean };
        if (!answer.ok) held = null; // cancelled, domain_taken: the SQL ended or re-queued the job itself
        return answer;
      }
      case "hosting_heartbeat": {
        const renewed = live && (scripted ?? true) === true;
        if (live && !renewed) held = null;
        return renewed;
      }
      case "hosting_exit": {
        if (!live) return { ok: false, reason: "lease_lost" };
        const job = held!;
        held = null;
        const outcome = args.p_outcome as { type: string; permanent?: boolean };
        const attempts = job.attempt as number;
        const at = (ms: number) => new Date(Date.now() + ms).toISOString();
        switch (outcome.type) {
          case "active":
          case "removed":
            return { ok: true, state: "succeeded", attempts };
          case "snooze":
            return { ok: true, state: "queued", run_at: at(60_000), attempts: attempts - 1 };
          case "fail":
            return outcome.permanent || attempts >= (job.max_attempts as number)
              ? { ok: true, state: "failed", attempts }
              : { ok: true, state: "queued", run_at: at(30_000), attempts };
          default: // release, server_trouble: due again without spending the attempt
            return { ok: true, state: "queued", run_at: at(0), attempts: attempts - 1 };
        }
      }
    }
    throw new Error(`fake store: unexpected call ${fn}`);
  };
  return { store: new Store(call, undefined, { retryDelaysMs: [] }), calls, brief: () => calls.map(brief) };
}

/** The step ends a call journals: an advance's p_done, or the done of an exit's outcome. */
const doneOf = (args: Row) => (args.p_outcome ? (args.p_outcome as Row).done : args.p_done) as Row[] | null;
/** The outcome an exit sent. */
const outcomeOf = (args: Row) => args.p_outcome as Row;

type End = { step: string; state: string; code?: string };
const ends = (done: unknown) =>
  done === null ? null : ([done].flat() as End[]).map((e) => `${e.step}:${e.state}:${e.code}`);

// The calls as the tests expect them (and as `brief` renders the recorded ones).
type V = unknown;
const claim = (first: V, time_left_ms: V = BUDGET_MS - RESERVE_MS, site_id: V = null) => ({
  fn: "claim",
  ...{ first, time_left_ms, site_id },
});
const advance = (done: V, start: V, domain: V = null) => ({ fn: "advance", done, start, domain });
const heartbeat = (step: V = "cloudpanel_site") => ({ fn: "heartbeat", step });
// The job's exit, by its outcome (outcome.ts).
const active = (done: V, matomo_site_id: V, backfill_kind: V, doc_root: V = DOC_ROOT) => ({
  fn: "exit",
  ...{ type: "active", done, doc_root, matomo_site_id, backfill_kind },
});
const fail = (code: V, permanent: V, done: V, attempt_limit: V = null) => ({
  fn: "exit",
  ...{ type: "fail", code, permanent, attempt_limit, done },
});
const snooze = (done: V) => ({ fn: "exit", type: "snooze", schedule: "dns", done });
const release = (done: V) => ({ fn: "exit", type: "release", done });
const removed = (done: V) => ({ fn: "exit", type: "removed", done });
const serverTrouble = (code: V, done: V) => ({ fn: "exit", type: "server_trouble", code, done });

/**
 * A call with what each test checks: the arguments that decide the job's fate, step ends as step:state:code.
 * The exit is shown by its outcome, as hosting_exit takes it.
 */
function brief({ fn, args: a }: Call): Row {
  switch (fn) {
    case "hosting_claim_jobs":
      return claim(a.p_first, a.p_time_left_ms, a.p_site_id);
    case "hosting_advance":
      return advance(ends(a.p_done), a.p_start, a.p_domain);
    case "hosting_heartbeat":
      return heartbeat(a.p_step);
    case "hosting_exit": {
      const o = a.p_outcome as Record<string, V>;
      const done = ends(o.done);
      switch (o.type) {
        case "active":
          return active(done, o.matomo_site_id, o.backfill_kind, o.doc_root);
        case "fail":
          return fail(o.code, o.permanent, done, o.attempt_limit);
        case "snooze":
          return { fn: "exit", type: "snooze", schedule: o.schedule, done };
        case "release":
          return release(done);
        case "removed":
          return removed(done);
        case "server_trouble":
          return serverTrouble(o.code, done);
      }
    }
  }
  return { fn, args: a };
}

type Exec = (command: string, options: { timeoutMs: number; signal?: AbortSignal }) => Promise<ExecResult>;

/** clpctl's answers: the site added (exit 0, its one line), the certificate installed (exit 0, silent). */
const clpctl: Exec = (command) => {
  const domain = /--domainName='([^']+)'/.exec(command)![1];
  return Promise.resolve(
    command.startsWith("clpctl site:add:static")
      ? { stdout: `Site ${domain} has been added.\n`, stderr: "", exitCode: 0 }
      : { stdout: "", stderr: "", exitCode: 0 },
  );
};
/** A command that never answers: rejects when its timeout passes (ssh_timeout) or its signal aborts. */
const hang: Exec = (_command, { timeoutMs, signal }) =>
  new Promise((_, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(new HostingError("interrupted", "fake shell: aborted"));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      reject(new HostingError("ssh_timeout", `fake shell: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
/** A command that exits with this output. */
const answers = (stdout: string, exitCode: number): Exec => () =>
  Promise.resolve({ stdout, stderr: "", exitCode });

/** The remote shell; records each command (its password registered for the secret scan) and how it was run. */
function fakeShell(exec: Exec) {
  const seen: { command: string; password?: string; timeoutMs: number; signal?: AbortSignal }[] = [];
  const shell: RemoteShell = {
    exec(command, options) {
      const password = /--siteUserPassword='([^']+)'/.exec(command)?.[1];
      if (password) registerSecret(password);
      seen.push({ command: command.split(" --")[0], password, ...options });
      return exec(command, options);
    },
    close: () => Promise.resolve(),
  };
  return { shell, seen, commands: () => seen.map((s) => s.command) };
}

/** Matomo's client as the workflow uses it: `ensureSite`, and `deleteSite` (which deletes the id it is given). */
function fakeMatomo(answer: (domain: Domain) => MatomoSite | HostingError | Promise<MatomoSite>) {
  const domains: string[] = [];
  const deletions: { domain: string; idSite: number | null | undefined }[] = [];
  const client = {
    async ensureSite(domain: Domain) {
      domains.push(domain);
      const result = await answer(domain);
      if (result instanceof HostingError) throw result;
      return result;
    },
    deleteSite(domain: Domain, options: { idSite?: number | null }) {
      deletions.push({ domain, idSite: options.idSite });
      return Promise.resolve({ deleted: options.idSite ? [options.idSite] : [] });
    },
  };
  return { client: client as unknown as MatomoClient, domains, deletions };
}

interface Setup {
  store: Store;
  exec?: Exec;
  matomo?: MatomoClient | null;
  clock?: { t: number };
  deps?: Partial<WorkflowDeps>;
  /** The domains whose valid certificate the server serves from the start (a certificate journaled earlier). */
  served?: string[];
}

const PUBLIC_IP = "203.0.113.10";

/**
 * The checks around the certificate: DNS points at the server; the server serves a valid certificate for a
 * domain once the fake shell ran its certificate command (or from the start, for `served`).
 */
function fakeChecks(shell: ReturnType<typeof fakeShell>, served: string[]): Checks {
  const installed = new Set(served);
  return {
    publicIps: [PUBLIC_IP],
    dnsPointsTo: (names) =>
      Promise.resolve({ answered: Object.fromEntries(names.map((n) => [n, [PUBLIC_IP]])) }),
    servedCertificate: (servername) => {
      for (const seen of shell.seen) {
        if (seen.command === "clpctl lets-encrypt:install:certificate") installed.add(servername);
      }
      return Promise.resolve(
        installed.has(servername)
          ? { valid: true, notAfter: new Date("2027-02-27T00:00:00Z"), names: [servername] }
          : { valid: false, reason: "self-signed certificate" },
      );
    },
  };
}

/** An invocation over the fakes (Matomo answers site 7 unless given); `connects` counts SSH connections. */
function setup({ store, exec = clpctl, matomo, clock = { t: T0 }, deps, served = [] }: Setup) {
  if (matomo === undefined) matomo = fakeMatomo(() => ({ idSite: 7, reused: false })).client;
  const shell = fakeShell(exec);
  const state = { connects: 0 };
  const invocation = new Invocation({
    store,
    logger: new Logger(new Redactor(), { sink: captureSink(), level: "debug" }),
    connect: () => {
      state.connects++;
      return Promise.resolve(shell.shell);
    },
    matomo,
    timeouts: { siteMs: 90_000, certificateMs: 120_000, matomoMs: 15_000, checkMs: 40_000 },
    budgetMs: BUDGET_MS,
    clock: () => clock.t,
    checksFor: () => fakeChecks(shell, served),
    ...deps,
  });
  const run = (options: Partial<RunOptions> = {}) => invocation.run({ drain: false, ...options });
  return { invocation, run, shell, state };
}

Deno.test("a provision job runs its five steps in order in seven statements, the certificate's expiry with the completion", async () => {
  const row = claimRow();
  const fake = fakeStore({ jobs: [row] });
  const matomo = fakeMatomo(() => ({ idSite: 7, reused: false }));
  const { run, shell, state } = setup({ store: fake.store, matomo: matomo.client });
  const { outcomes } = await run();

  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    advance([ended("cloudpanel_site")], "dns_check"),
    advance([ended("dns_check")], "ssl_certificate"),
    advance([ended("ssl_certificate")], "https_verify"),
    advance([ended("https_verify")], "matomo_site"),
    active([ended("matomo_site")], 7, null),
  ]);
  assert.equal(outcomeOf(fake.calls.at(-1)!.args).certificate_expires_at, "2027-02-27T00:00:00.000Z");
  for (const { args } of fake.calls.slice(1)) {
    assert.equal(args.p_job_id, row.job_id);
    assert.equal(args.p_lease_token, row.lease_token);
  }
  // The site step's end, whole, as the next transition journals it (the fake clock stood still: 0 ms).
  assert.deepEqual(doneOf(fake.calls[2].args), [{
    step: "cloudpanel_site",
    state: "done",
    result: { site_user: USER, doc_root: DOC_ROOT, created: true, credentials: "known" },
    code: "cloudpanel_site_done",
    message: "Site created on CloudPanel. (0 ms)",
    level: "info",
    duration_ms: 0,
    // The step's policies: its result settles the stored password, and a removal needs its user and doc root.
    settles_password: true,
    keeps: { site_user: USER, doc_root: DOC_ROOT },
  }]);
  // Every done end carries its step's policies as steps.ts declares them; the other steps declare none.
  const policies = fake.calls
    .flatMap(({ args }) => doneOf(args) ?? [])
    .map((end) => [end.step, end.settles_password, end.keeps]);
  assert.deepEqual(policies, [
    ["cloudpanel_site", true, { site_user: USER, doc_root: DOC_ROOT }],
    ["dns_check", undefined, undefined],
    ["ssl_certificate", undefined, undefined],
    ["https_verify", undefined, undefined],
    ["matomo_site", undefined, { matomo_site_id: 7 }],
  ]);
  assert.deepEqual(shell.commands(), ["clpctl site:add:static", "clpctl lets-encrypt:install:certificate"]);
  assert.equal(state.connects, 1, "one SSH connection for both commands");
  assert.deepEqual(matomo.domains, [DOMAIN]);
  assert.equal(outcomes[0].status, "active");
  assert.equal(outcomes[0].doc_root, DOC_ROOT);
  assert.deepEqual(outcomes[0].steps.map((s) => s.status), ["done", "done", "done", "done", "done"]);
});

Deno.test("an analytics job runs only matomo_site: claim, one transition, completion", async () => {
  const fake = fakeStore({ jobs: [claimRow({ kind: "analytics" })] });
  const matomo = fakeMatomo(() => ({ idSite: 12, reused: true }));
  const { run, shell, state } = setup({ store: fake.store, matomo: matomo.client });
  const { outcomes } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "matomo_site"),
    active([ended("matomo_site")], 12, null),
  ]);
  assert.deepEqual(shell.commands(), []);
  assert.equal(state.connects, 0, "no SSH connection for an analytics job");
  assert.equal(outcomes[0].status, "active");
});

Deno.test("steps the journal shows done are skipped without a statement or a command", async () => {
  const doneRoot = "/home/someone-else/htdocs/" + DOMAIN; // the journaled doc root wins over the derived one
  const fake = fakeStore({
    jobs: [
      claimRow({
        attempt: 2,
        steps: { cloudpanel_site: { ...JOURNALED_SITE, result: { doc_root: doneRoot } } },
      }),
    ],
  });
  const { run, shell } = setup({ store: fake.store });
  const { outcomes } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "dns_check"),
    advance([ended("dns_check")], "ssl_certificate"),
    advance([ended("ssl_certificate")], "https_verify"),
    advance([ended("https_verify")], "matomo_site"),
    active([ended("matomo_site")], 7, null, doneRoot),
  ]);
  assert.deepEqual(shell.commands(), ["clpctl lets-encrypt:install:certificate"]);
  assert.equal(outcomes[0].steps[0].status, "already_done");
});

Deno.test("a job whose time runs out before a step is released with the last end, and the step never runs", async () => {
  // Before the first step: the claim itself took long (the clock moves while the database answers).
  const clock = { t: T0 };
  const first = fakeStore({
    jobs: [claimRow({ estimates: { cloudpanel_site: 20_000 } })],
    answer: (fn) => void (fn === "hosting_claim_jobs" && (clock.t += BUDGET_MS - RESERVE_MS - 10_000)),
  });
  const a = setup({ store: first.store, clock });
  const { outcomes: [released] } = await a.run();
  assert.deepEqual(first.brief(), [claim(true), release(null)]);
  assert.match(outcomeOf(first.calls[1].args).reason as string, /Time budget spent before cloudpanel_site/);
  assert.equal(released.status, "released");
  assert.equal(a.state.connects, 0, "nothing reaches the server");

  // Between steps: the site step took the time the certificate step needs; the site's end goes with the release.
  const later = { t: T0 };
  const estimates = { cloudpanel_site: 5_000, dns_check: 10_000, ssl_certificate: 10_000 };
  const second = fakeStore({ jobs: [claimRow({ estimates })] });
  const b = setup({
    store: second.store,
    clock: later,
    exec: (command, options) => (later.t += BUDGET_MS - RESERVE_MS - 9_000, clpctl(command, options)),
  });
  const { outcomes: [cut] } = await b.run();
  assert.deepEqual(second.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    release([ended("cloudpanel_site")]),
  ]);
  assert.deepEqual(b.shell.commands(), ["clpctl site:add:static"], "no certificate command");
  assert.equal(cut.status, "released");
  assert.deepEqual(cut.steps.map((s) => `${s.step}:${s.status}`), ["cloudpanel_site:done"]);
});

Deno.test("a step's timeout is cut to the deadline, and a timeout so cut releases the job instead of failing it", async () => {
  const left = 200; // time left after the reserve: above the step's estimate, far below its own 90 s timeout
  const fake = fakeStore({ jobs: [claimRow({ estimates: { cloudpanel_site: 100 } })] });
  const { run, shell } = setup({ store: fake.store, exec: hang, deps: { budgetMs: RESERVE_MS + left } });
  const { outcomes: [outcome] } = await run();
  assert.equal(shell.seen[0].timeoutMs, left, "the shell was given the time left, not the step's timeout");
  assert.deepEqual(fake.brief(), [
    claim(true, left),
    advance(null, "cloudpanel_site", DOMAIN),
    release(["cloudpanel_site:failed:interrupted"]),
  ]);
  assert.match(outcomeOf(fake.calls[2].args).reason as string, /Time budget spent during cloudpanel_site/);
  assert.equal(outcome.status, "released");

  // The control: the step's own timeout passing is the server's slowness, and spends the attempt.
  const own = fakeStore({ jobs: [claimRow({ estimates: { cloudpanel_site: 100 } })] });
  const slow = setup({
    store: own.store,
    exec: hang,
    deps: { timeouts: { siteMs: left, certificateMs: 120_000, matomoMs: 15_000, checkMs: 40_000 } },
  });
  const { outcomes: [failed] } = await slow.run();
  assert.equal(slow.shell.seen[0].timeoutMs, left);
  assert.deepEqual(own.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    fail("ssh_timeout", false, ["cloudpanel_site:failed:ssh_timeout"]),
  ]);
  assert.equal(failed.status, "retrying");
});

Deno.test("a renewal the database refuses aborts the running step at once, and nothing is written after", async () => {
  const fake = fakeStore({
    jobs: [claimRow()],
    answer: (fn) => fn === "hosting_heartbeat" ? false : undefined,
  });
  const { run, shell } = setup({ store: fake.store, exec: hang, deps: { leaseSeconds: 1, timeouts: SHORT } });
  const started = performance.now();
  const { outcomes: [outcome] } = await run({ drain: true });
  const elapsed = performance.now() - started;
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    heartbeat(),
    claim(false), // draining: the worker goes on to the next due job (there is none)
  ]);
  assert.equal(outcome.status, "lease_lost");
  assert.ok(shell.seen[0].signal?.aborted, "the command's signal was aborted");
  // Renewals every third of the 1 s lease: the first refused one stops the step, not the shell's 10 s timeout.
  assert.ok(elapsed < 3_000, `stopped after ${Math.round(elapsed)} ms`);
});

Deno.test("renewals that cannot reach the database abort the step once the lease would have expired", async () => {
  const clock = { t: T0 };
  const fake = fakeStore({
    jobs: [claimRow()],
    answer: (fn, n) => {
      if (fn !== "hosting_heartbeat") return undefined;
      // The first two fail while the lease (1 s from the step's start, on the fake clock) still holds; by the
      // third, 900 ms have passed: too close to its end to go on.
      if (n === 3) clock.t += 900;
      throw new HostingError("store_failed", "hosting_heartbeat failed: connection refused");
    },
  });
  const deps = { leaseSeconds: 1, timeouts: SHORT };
  const { run, shell } = setup({ store: fake.store, exec: hang, clock, deps });
  const started = performance.now();
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    heartbeat(),
    heartbeat(),
    heartbeat(),
  ]);
  assert.equal(outcome.status, "lease_lost");
  assert.ok(shell.seen[0].signal?.aborted);
  assert.ok(performance.now() - started < 5_000);
});

Deno.test("a shutdown while a step runs releases the job with the step cut short and claims nothing more", async () => {
  const fake = fakeStore({ jobs: [claimRow(), claimRow()] });
  const s = setup({
    store: fake.store,
    exec: (command, options) => {
      queueMicrotask(() => s.invocation.shutdown("wall_clock"));
      return hang(command, options);
    },
  });
  const result = await s.run({ drain: true });
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    release(["cloudpanel_site:failed:interrupted"]),
  ]);
  assert.match((doneOf(fake.calls[2].args) as { message: string }[])[0].message, /shutdown/);
  assert.equal(result.outcomes.length, 1, "the second due job is left for another worker");
  assert.equal(result.outcomes[0].status, "released");
  assert.equal(result.stopped?.code, "interrupted");
});

Deno.test("Matomo failing in a provision job: transient → active with a backfill, permanent → active without", async () => {
  const journaled = {
    cloudpanel_site: JOURNALED_SITE,
    dns_check: { state: "done", result: {} },
    ssl_certificate: JOURNALED_CERT,
    https_verify: { state: "done", result: {} },
  };
  for (
    const [error, backfill] of [
      [
        new HostingError("matomo_unreachable", "Matomo could not be reached: connection refused"),
        "analytics",
      ],
      [new HostingError("matomo_error", "Matomo refused: you can't access this resource"), null],
    ] as const
  ) {
    const fake = fakeStore({ jobs: [claimRow({ steps: journaled })] });
    const { run } = setup({ store: fake.store, matomo: fakeMatomo(() => error).client });
    const { outcomes: [outcome] } = await run();
    assert.deepEqual(fake.brief(), [
      claim(true),
      advance(null, "matomo_site"),
      active([`matomo_site:failed:${error.code}`], null, backfill),
    ], error.code);
    assert.equal(outcome.status, "active");
    assert.equal(outcome.warning?.code, error.code);
  }
});

Deno.test("Matomo not configured: the step is journaled skipped with the completion, with a warning", async () => {
  const fake = fakeStore({ jobs: [claimRow({ steps: { cloudpanel_site: JOURNALED_SITE } })] });
  const { run } = setup({ store: fake.store, matomo: null });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "dns_check"),
    advance([ended("dns_check")], "ssl_certificate"),
    advance([ended("ssl_certificate")], "https_verify"),
    active(
      [ended("https_verify"), "matomo_site:skipped:matomo_not_configured"],
      null,
      null,
    ),
  ]);
  assert.equal(outcome.warning?.code, "matomo_not_configured");
});

Deno.test("Matomo unreachable in an analytics job fails the attempt instead of completing", async () => {
  const fake = fakeStore({ jobs: [claimRow({ kind: "analytics" })] });
  const matomo = fakeMatomo(() => new HostingError("matomo_unreachable", "Matomo could not be reached"));
  const { run } = setup({ store: fake.store, matomo: matomo.client });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "matomo_site"),
    fail("matomo_unreachable", false, ["matomo_site:failed:matomo_unreachable"]),
  ]);
  assert.equal(outcome.status, "retrying");
});

Deno.test("a CloudPanel failure fails the attempt as the outcome table says: permanent, retryable, or limited", async () => {
  const cases = [
    ["domainName: This value is not a valid domain.", "cloudpanel_rejected", true, null],
    [
      "An error has occurred, error message: Connection to the internal database timed out.",
      "cloudpanel_unavailable",
      false,
      null,
    ],
    ["Something went sideways.", "cloudpanel_failed", false, UNRECOGNISED_ATTEMPT_LIMIT],
  ] as const;
  for (const [output, code, permanent, limit] of cases) {
    const fake = fakeStore({ jobs: [claimRow()] });
    const { run } = setup({ store: fake.store, exec: answers(output, 1) });
    const { outcomes: [outcome] } = await run();
    assert.deepEqual(fake.brief(), [
      claim(true),
      advance(null, "cloudpanel_site", DOMAIN),
      fail(code, permanent, [`cloudpanel_site:failed:${code}`], limit),
    ], code);
    assert.equal(outcome.status, permanent ? "failed" : "retrying", code);
    assert.equal(outcome.error?.code, code);
    const [end] = doneOf(fake.calls.at(-1)!.args) as Row[];
    assert.ok(!("settles_password" in end) && !("keeps" in end), "a failed end settles and keeps nothing");
  }
});

Deno.test("a server unreachable at connect is the server's trouble: the job waits for it, the step cut short", async () => {
  const codes = (Object.keys(ERROR_CODES) as ErrorCode[]).filter((code) => failureClass(code).serverTrouble);
  assert.ok(codes.length > 0);
  for (const code of codes) {
    const fake = fakeStore({ jobs: [claimRow()] });
    const refused = new HostingError(code, `cloudpanel.test:22: ${code}`);
    const { run } = setup({ store: fake.store, deps: { connect: () => Promise.reject(refused) } });
    const { outcomes: [outcome] } = await run();
    assert.deepEqual(fake.brief(), [
      claim(true),
      advance(null, "cloudpanel_site", DOMAIN),
      serverTrouble(code, ["cloudpanel_site:failed:interrupted"]),
    ], code);
    assert.equal(outcome.status, "waiting", code);
    assert.equal(outcome.error?.code, code);
    assert.deepEqual(outcome.steps, [], "no step ran");
  }

  // A connection that fails for a cause its failure class does not call the server's fails the step instead.
  const fake = fakeStore({ jobs: [claimRow()] });
  const bug = new HostingError("internal", "the key could not be parsed");
  const { run } = setup({ store: fake.store, deps: { connect: () => Promise.reject(bug) } });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief().at(-1), fail("internal", true, ["cloudpanel_site:failed:internal"]));
  assert.equal(outcome.status, "failed");
});

Deno.test("a connection lost in the middle of a command fails the step, and the next job connects again", async () => {
  const fake = fakeStore({ jobs: [claimRow(), claimRow()] });
  let calls = 0;
  const { run, state } = setup({
    store: fake.store,
    exec: (command, options) =>
      ++calls === 1
        ? Promise.reject(
          new HostingError("ssh_unreachable", "cloudpanel.test:22: the SSH connection is closed"),
        )
        : clpctl(command, options),
  });
  const { outcomes } = await run({ drain: true });
  assert.deepEqual(
    fake.brief().filter((c) => c.fn === "exit")[0],
    fail("ssh_unreachable", false, ["cloudpanel_site:failed:ssh_unreachable"]),
  );
  assert.deepEqual(outcomes.map((o) => o.status), ["retrying", "active"]);
  assert.equal(state.connects, 2, "the broken connection was not reused");
});

Deno.test("an exit the database refuses fails the job instead; one that cannot reach it leaves the job to its lease", async () => {
  const refusing = fakeStore({
    jobs: [claimRow({ kind: "analytics" })],
    answer: (fn, _n, args) => {
      if (fn === "hosting_exit" && (args.p_outcome as Row).type === "active") {
        throw new HostingError("internal", "hosting_exit failed: 22023 outcome.doc_root must be a doc root");
      }
    },
  });
  const refused = await setup({ store: refusing.store }).run();
  assert.deepEqual(refusing.brief().slice(2), [
    active([ended("matomo_site")], 7, null),
    fail("internal", true, null),
  ]);
  assert.equal(refused.outcomes[0].status, "failed");
  assert.equal(refused.outcomes[0].error?.code, "internal");

  const away = fakeStore({
    jobs: [claimRow({ kind: "analytics" }), claimRow({ kind: "analytics" })],
    answer: (fn) => {
      if (fn === "hosting_exit") throw new HostingError("store_failed", "connection refused");
    },
  });
  const result = await setup({ store: away.store }).run({ drain: true });
  assert.deepEqual(away.brief().map((c) => c.fn), ["claim", "advance", "exit"], "no further claim");
  assert.equal(result.outcomes[0].status, "interrupted");
  assert.equal(result.stopped?.code, "store_failed");
});

Deno.test("a domain another site owns fails at the first transition: nothing reaches the server, nothing more is written", async () => {
  const message = `The domain ${DOMAIN} is already hosted for another row of public.sites.`;
  const fake = fakeStore({
    jobs: [claimRow()],
    answer: (fn) => fn === "hosting_advance" ? { ok: false, reason: "domain_taken", message } : undefined,
  });
  const { run, state } = setup({ store: fake.store });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [claim(true), advance(null, "cloudpanel_site", DOMAIN)]);
  assert.equal(outcome.status, "failed");
  assert.deepEqual(outcome.error, { code: "domain_taken", message });
  assert.equal(state.connects, 0);
});

Deno.test("a domain read differently from the stored text fails as invalid_domain before any connection", async () => {
  // The database counts a byte order mark the driver dropped: 12 characters stored, 11 read.
  const fake = fakeStore({ jobs: [claimRow({ domain: "example.com", domain_chars: 12, domain_bytes: 14 })] });
  const { run, state } = setup({ store: fake.store });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    fail("invalid_domain", true, null),
  ]);
  assert.equal(outcome.status, "failed");
  assert.equal(state.connects, 0);
});

Deno.test("claims pass the time left, the plan and `first` only on the invocation's first claim", async () => {
  const clock = { t: T0 };
  const fake = fakeStore({ jobs: [claimRow({ kind: "analytics" }), claimRow({ kind: "analytics" })] });
  const matomo = fakeMatomo(() => (clock.t += 1_500, { idSite: 3, reused: false }));
  const { run } = setup({ store: fake.store, matomo: matomo.client, clock });
  const siteId = crypto.randomUUID();
  const result = await run({ drain: true, siteId });
  assert.equal(result.outcomes.length, 2);
  await run({ drain: false }); // a second request served by the same invocation
  const left = BUDGET_MS - RESERVE_MS;
  assert.deepEqual(fake.brief().filter((c) => c.fn === "claim"), [
    claim(true, left, siteId),
    claim(false, left - 1_500),
    claim(false, left - 3_000),
    claim(false, left - 3_000),
  ]);
  const args = fake.calls[0].args;
  assert.deepEqual(args.p_plan, {
    provision: [...PLANS.provision],
    analytics: [...PLANS.analytics],
    remove: [...PLANS.remove],
  });
  assert.equal(args.p_default_step_ms, DEFAULT_STEP_MS);
  assert.equal(args.p_limit, 1);

  // The worker's own wall-clock limit, less its margin, bounds the time left when it comes first.
  const bounded = fakeStore();
  await setup({ store: bounded.store, deps: { workerDeadline: T0 + 50_000 } }).run();
  assert.deepEqual(bounded.brief(), [claim(true, 50_000 - WALL_CLOCK_MARGIN_MS - RESERVE_MS)]);
});

// A renewal stuck on a stalled connection does not keep the step running past the lease it may have lost.
Deno.test({
  name: "a renewal that hangs does not keep the step running past its lease",
  async fn() {
    const fake = fakeStore({
      jobs: [claimRow()],
      answer: (fn) => fn === "hosting_heartbeat" ? new Promise(() => {}) : undefined,
    });
    const clock = () => performance.now(); // the lease's end must come while the renewal hangs
    const { run } = setup({
      store: fake.store,
      exec: hang,
      deps: { leaseSeconds: 1, timeouts: SHORT, clock },
    });
    const started = performance.now();
    const { outcomes: [outcome] } = await run();
    assert.deepEqual(fake.brief().slice(1), [advance(null, "cloudpanel_site", DOMAIN), heartbeat()]);
    assert.equal(outcome.status, "lease_lost");
    assert.ok(performance.now() - started < 3_000);
  },
});

// Any step started with less time than its timeout is cut at the deadline and gives the job back (attempt kept),
// the Matomo step as much as the SSH steps.
Deno.test({
  name: "the Matomo step is cut to the deadline like the CloudPanel steps",
  async fn() {
    const left = 200;
    const fake = fakeStore({ jobs: [claimRow({ kind: "analytics", estimates: { matomo_site: 100 } })] });
    let timer: number | undefined;
    const slow = fakeMatomo(() =>
      new Promise((resolve) => timer = setTimeout(() => resolve({ idSite: 3, reused: false }), 1_500))
    );
    const { run } = setup({ store: fake.store, matomo: slow.client, deps: { budgetMs: RESERVE_MS + left } });
    const started = performance.now();
    const { outcomes: [outcome] } = await run();
    clearTimeout(timer);
    assert.ok(performance.now() - started < 1_000, "stopped at the deadline");
    assert.deepEqual(fake.brief(), [
      claim(true, left),
      advance(null, "matomo_site"),
      release(["matomo_site:failed:interrupted"]),
    ]);
    assert.equal(outcome.status, "released");
  },
});

// ---------------------------------------------------------------------------------------------------------
// The lifecycle: removal jobs, cancellation by a removal, and the site user's stored password.

/** A removal's claim row: its domain and target come from the job (the row may be gone). */
const removalRow = (over: Row = {}) =>
  claimRow({
    kind: "remove",
    domain: DOMAIN,
    target: { site_user: USER, doc_root: DOC_ROOT, matomo_site_id: 7 },
    ...over,
  });
/** clpctl's answer to site:delete: deleted (exit 0; no success text is known) or absent. */
const deletes = (absent: boolean): Exec => (command) =>
  Promise.resolve(
    command.startsWith("clpctl site:delete")
      ? absent
        ? { stdout: `Site "${DOMAIN}" does not exist.\n`, stderr: "", exitCode: 1 }
        : { stdout: "", stderr: "", exitCode: 0 }
      : { stdout: "", stderr: "", exitCode: 99 },
  );

Deno.test("a remove job deletes the CloudPanel site, keeps the Matomo site by default, and completes the removal", async () => {
  const fake = fakeStore({ jobs: [removalRow()] });
  const matomo = fakeMatomo(() => ({ idSite: 7, reused: false }));
  const { run, shell } = setup({ store: fake.store, exec: deletes(false), matomo: matomo.client });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site_delete"),
    removed([
      "cloudpanel_site_delete:done:cloudpanel_site_delete_done",
      "matomo_site_delete:skipped:matomo_kept",
    ]),
  ]);
  assert.deepEqual(shell.commands(), ["clpctl site:delete"]);
  assert.deepEqual(matomo.deletions, [], "analytics data kept");
  assert.equal(outcome.status, "removed");
  assert.equal(outcome.warning, undefined, "keeping analytics is the setting, not a warning");
});

Deno.test("with MATOMO_ON_REMOVE=delete the removal deletes the recorded Matomo site; a site already gone is done", async () => {
  const fake = fakeStore({ jobs: [removalRow()] });
  const matomo = fakeMatomo(() => ({ idSite: 7, reused: false }));
  const { run, shell } = setup({
    store: fake.store,
    exec: deletes(true),
    matomo: matomo.client,
    deps: { matomoOnRemove: "delete" },
  });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site_delete"),
    advance([ended("cloudpanel_site_delete")], "matomo_site_delete"),
    removed([ended("matomo_site_delete")]),
  ]);
  assert.deepEqual(doneOf(fake.calls[2].args), [{
    step: "cloudpanel_site_delete",
    state: "done",
    result: { deleted: false },
    code: "cloudpanel_site_delete_done",
    message: "CloudPanel has no site for this domain: nothing to delete. (0 ms)",
    level: "info",
    duration_ms: 0,
  }]);
  assert.deepEqual(shell.commands(), ["clpctl site:delete"]);
  assert.deepEqual(matomo.deletions, [{ domain: DOMAIN, idSite: 7 }]);
  assert.equal(outcome.status, "removed");
});

Deno.test("a removal whose CloudPanel step fails for now is retried, and one refused for good fails", async () => {
  const busy = fakeStore({ jobs: [removalRow()] });
  await setup({
    store: busy.store,
    exec: answers("An error has occurred, error message: Connection to the internal database timed out.", 1),
  }).run();
  assert.deepEqual(
    busy.brief().at(-1),
    fail("cloudpanel_unavailable", false, ["cloudpanel_site_delete:failed:cloudpanel_unavailable"]),
  );

  const refused = fakeStore({ jobs: [removalRow()] });
  const { outcomes: [outcome] } = await setup({
    store: refused.store,
    exec: answers("domainName: This value is not valid.", 1),
  }).run();
  assert.deepEqual(
    refused.brief().at(-1),
    fail("cloudpanel_rejected", true, ["cloudpanel_site_delete:failed:cloudpanel_rejected"]),
  );
  assert.equal(outcome.status, "failed");
});

Deno.test("a job the database cancels at a step boundary (a removal was queued) stops without running the step", async () => {
  const fake = fakeStore({
    jobs: [claimRow()],
    answer: (fn, n) => fn === "hosting_advance" && n === 2 ? { ok: false, reason: "cancelled" } : undefined,
  });
  const { run, shell } = setup({ store: fake.store });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [
    claim(true),
    advance(null, "cloudpanel_site", DOMAIN),
    advance([ended("cloudpanel_site")], "dns_check"),
  ]);
  assert.deepEqual(shell.commands(), ["clpctl site:add:static"], "no certificate for a site being removed");
  assert.equal(outcome.status, "cancelled");
});

Deno.test("a domain still being removed for another row queues the job again instead of failing it", async () => {
  const runAt = new Date(Date.now() + 45_000).toISOString();
  const fake = fakeStore({
    jobs: [claimRow()],
    answer: (fn) =>
      fn === "hosting_advance"
        ? {
          ok: false,
          reason: "domain_taken",
          code: "domain_being_removed",
          message: "The domain is still being removed for another row.",
          next: { state: "queued", run_at: runAt, attempts: 1 },
        }
        : undefined,
  });
  const { run, state } = setup({ store: fake.store });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief(), [claim(true), advance(null, "cloudpanel_site", DOMAIN)]);
  assert.equal(outcome.status, "retrying");
  assert.equal(outcome.next_run_at, runAt);
  assert.equal(outcome.error?.code, "domain_being_removed");
  assert.equal(state.connects, 0, "nothing ran on the server");
});

Deno.test("the site step sends the password the database stored, and journals whether it is the site user's", async () => {
  // An earlier claim stored (and may have sent) this password; the site exists: it was that attempt's.
  const stored = registerSecret("Stored0password0from0an0earlier0attempt");
  const exists = answers("domainName: This value already exists.\nsiteUser: This value already exists.", 1);
  const resumed = fakeStore({
    jobs: [claimRow({ attempt: 2 })],
    answer: (fn, n) =>
      fn === "hosting_advance" && n === 1
        ? { ok: true, credentials: { password: stored, prior: true, stored: true } }
        : undefined,
  });
  const first = setup({ store: resumed.store, exec: exists });
  await first.run();
  assert.ok(resumed.calls[1].args.p_password, "a candidate is offered at the step's start");
  assert.notEqual(resumed.calls[1].args.p_password, stored);
  const sent = first.shell.seen[0];
  assert.equal(sent.command, "clpctl site:add:static");
  assert.equal(sent.password, stored, "the retry sends the stored password, not a new one");
  const siteEnd = (doneOf(resumed.calls[2].args) as { result: Row }[])[0].result;
  assert.equal(siteEnd.credentials, "known");

  // The first claim to store a password finds the site already there: made by someone else, password unknown.
  const adopted = fakeStore({ jobs: [claimRow()] });
  await setup({ store: adopted.store, exec: exists }).run();
  assert.equal((doneOf(adopted.calls[2].args) as { result: Row }[])[0].result.credentials, "unknown");

  // Without Vault the password is not kept, and the journal says so.
  const noVault = fakeStore({
    jobs: [claimRow()],
    answer: (fn, n, args) =>
      fn === "hosting_advance" && n === 1
        ? { ok: true, credentials: { password: args.p_password, prior: false, stored: false } }
        : undefined,
  });
  await setup({ store: noVault.store }).run();
  assert.equal((doneOf(noVault.calls[2].args) as { result: Row }[])[0].result.credentials, "not_stored");
});

// ---------------------------------------------------------------------------------------------------------
// The checks around the certificate: DNS first, the served certificate before and after.

/** Checks whose DNS and served certificate a test sets. */
function scriptedChecks(over: Partial<Checks>): Partial<WorkflowDeps> {
  return {
    checksFor: () => ({
      publicIps: [PUBLIC_IP],
      dnsPointsTo: (names) =>
        Promise.resolve({ answered: Object.fromEntries(names.map((n) => [n, [PUBLIC_IP]])) }),
      servedCertificate: () => Promise.resolve({ valid: false, reason: "self-signed certificate" }),
      ...over,
    }),
  };
}

Deno.test("DNS not pointing at the server yet: the job waits for DNS (no attempt spent) and no certificate command is sent", async () => {
  const fake = fakeStore({ jobs: [claimRow()] });
  const notReady = new HostingError("dns_not_ready", "example.com → 198.51.100.7 (expected 203.0.113.10)", {
    publicMessage:
      "DNS does not point at the server yet: example.com → 198.51.100.7 (expected 203.0.113.10).",
  });
  const { run, shell } = setup({
    store: fake.store,
    deps: scriptedChecks({ dnsPointsTo: () => Promise.reject(notReady) }),
  });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(fake.brief().at(-1), snooze(["dns_check:failed:dns_not_ready"]), "its own schedule");
  assert.deepEqual(shell.commands(), ["clpctl site:add:static"], "no certificate command");
  assert.equal(outcome.status, "retrying");
  assert.match(outcome.error!.message, /198\.51\.100\.7 \(expected 203\.0\.113\.10\)/);
});

Deno.test("without public addresses the DNS check is skipped with a warning and the certificate is asked for", async () => {
  const fake = fakeStore({ jobs: [claimRow()] });
  const { run, shell } = setup({
    store: fake.store,
    deps: scriptedChecks({
      publicIps: [],
      servedCertificate: () =>
        Promise.resolve(
          shell.commands().includes("clpctl lets-encrypt:install:certificate")
            ? { valid: true, notAfter: new Date("2027-01-01T00:00:00Z"), names: [DOMAIN] }
            : { valid: false, reason: "self-signed certificate" },
        ),
    }),
  });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(
    fake.brief()[2],
    advance([ended("cloudpanel_site"), "dns_check:skipped:dns_check_skipped"], "ssl_certificate"),
  );
  assert.equal(outcome.status, "active");
});

Deno.test("a valid certificate already served is not issued again, also when an earlier attempt's answer was lost", async () => {
  const fake = fakeStore({
    jobs: [
      claimRow({
        attempt: 2,
        steps: { cloudpanel_site: JOURNALED_SITE, dns_check: { state: "done", result: {} } },
      }),
    ],
  });
  const { run, shell } = setup({ store: fake.store, served: [DOMAIN] });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(shell.commands(), [], "no certificate command: the server already serves a valid one");
  const certificateEnd = (doneOf(fake.calls[2].args) as { step: string; result: Row }[])[0];
  assert.equal(certificateEnd.step, "ssl_certificate");
  assert.equal(certificateEnd.result.reused, true);
  assert.equal(outcome.status, "active");
});

Deno.test("a site that does not serve a valid certificate after issuing is retried with https_not_ready", async () => {
  const fake = fakeStore({ jobs: [claimRow()] });
  const { run, shell } = setup({
    store: fake.store,
    deps: scriptedChecks({
      servedCertificate: () =>
        Promise.resolve({ valid: false, reason: "the certificate is for other.example" }),
    }),
  });
  const { outcomes: [outcome] } = await run();
  assert.deepEqual(shell.commands(), ["clpctl site:add:static", "clpctl lets-encrypt:install:certificate"]);
  assert.deepEqual(
    fake.brief().at(-1),
    fail("https_not_ready", false, ["https_verify:failed:https_not_ready"]),
  );
  assert.equal(outcome.status, "retrying");
  assert.match(outcome.error!.message, /other\.example/);
});
