/**
 * Running the workflow for a request: in the background (`waitUntil`), or for `?wait=true` until the answer
 * is due, then with what finished so far while the rest goes on in the background. How a run ended is logged.
 */
import { toHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { StepName } from "./store.ts";
import type { Invocation, JobOutcome, Progress, RunOptions, RunResult } from "./workflow.ts";

/**
 * `?wait=true` answers by then, finished or not: Supabase ends a request that sends nothing for 150 s, and
 * the run may take the whole time budget (130 s by default). What is still running goes on in the background.
 */
export const WAIT_ANSWER_MS = 120_000;

/** What the handler needs of an invocation. */
export type Runner = Pick<Invocation, "run">;

export interface RunDeps {
  logger: Logger;
  newInvocation: () => Runner;
  /**
   * `EdgeRuntime.waitUntil` on Supabase. Without it a 202's work is awaited before answering; work that
   * outlives a `?wait=true` answer keeps running on its own (the local server and the CLI are long-lived).
   */
  waitUntil?: (work: Promise<unknown>) => void;
  /** How long `?wait=true` waits for the run before answering with what finished so far (tests shorten). */
  waitAnswerMs?: number;
}

/** A job a `?wait=true` answer left running, and the step it was at (null before its first step). */
export interface RunningJob {
  job_id: number;
  site_id: string;
  domain: string | null;
  step: StepName | null;
}

/** A `?wait=true` answer: the whole result (complete), or the jobs finished and running when it was due. */
export type WaitedRun = RunResult & { running: RunningJob[]; complete: boolean };

export type RunRequest = Omit<RunOptions, "onProgress">;

export interface Runs {
  /** Runs and answers with the result, or with what finished and what is running when the answer is due. */
  waitFor(options: RunRequest): Promise<WaitedRun>;
  /** Runs in the background (waitUntil), else awaits the run. */
  inBackground(options: RunRequest): Promise<void>;
}

export function createRuns(deps: RunDeps): Runs {
  /** Logs how a run ended, and hands it to waitUntil when there is one. */
  function background(run: Promise<RunResult>): Promise<void> {
    const logged = run.then(
      (result) => deps.logger.info("invocation finished", summary(result)),
      (error) => deps.logger.error("invocation failed", { error: toHostingError(error) }),
    );
    if (deps.waitUntil) deps.waitUntil(logged);
    return logged;
  }

  async function waitFor(options: RunRequest): Promise<WaitedRun> {
    const finished: JobOutcome[] = [];
    const running = new Map<number, RunningJob>();
    const onProgress = (event: Progress) => {
      const { job } = event;
      if (event.kind === "job_started") {
        running.set(job.jobId, { job_id: job.jobId, site_id: job.siteId, domain: job.domain, step: null });
      } else if (event.kind === "step_started") {
        const entry = running.get(job.jobId);
        if (entry) entry.step = event.step;
      } else if (event.kind === "job_finished") {
        running.delete(job.jobId);
        finished.push(event.outcome);
      }
    };
    const run = deps.newInvocation().run({ ...options, onProgress });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const answerBy = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), deps.waitAnswerMs ?? WAIT_ANSWER_MS);
    });
    let result: RunResult | null;
    try {
      result = await Promise.race([run, answerBy]);
    } finally {
      clearTimeout(timer);
    }
    if (result) return { ...result, running: [], complete: true };
    // Without waitUntil the run is not awaited here: answering in time is the point.
    background(run);
    return {
      outcomes: [...finished],
      running: [...running.values()].map((entry) => ({ ...entry })),
      complete: false,
    };
  }

  async function inBackground(options: RunRequest): Promise<void> {
    const logged = background(deps.newInvocation().run(options));
    if (!deps.waitUntil) await logged;
  }

  return { waitFor, inBackground };
}

function summary(result: RunResult): Record<string, unknown> {
  const counts: Record<string, number> = {};
  for (const outcome of result.outcomes) counts[outcome.status] = (counts[outcome.status] ?? 0) + 1;
  return { jobs: result.outcomes.length, ...counts, stopped: result.stopped?.code };
}
