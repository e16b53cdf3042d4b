/**
 * What each route does once the request is authenticated and routed: read and check the input, ask the store,
 * and run the workflow when there is work.
 *
 *   POST /          runs the site's open job, or whatever is due: 202 and the work in the background
 *                   (200 and the outcome with ?wait=true)
 *   GET  /status    the operator's report
 *   POST /retry     re-queues failed jobs: 200 with what was re-queued (and with ?wait=true, their outcome)
 *   POST /remove    asks for the site's removal and runs it like a kick for that site
 */
import { HostingError } from "./errors.ts";
import { readJson } from "./http_body.ts";
import { parseKick, parseRemove, parseRetry, parseWait } from "./http_input.ts";
import { json } from "./http_response.ts";
import type { RouteName } from "./http_routes.ts";
import { createRuns, type RunDeps } from "./http_runs.ts";
import type { Store } from "./store.ts";

/** The store's operator methods: all a request may ask of the database. */
export type OperatorStore = Pick<Store, "enqueue" | "retry" | "remove" | "status">;

export interface ActionDeps extends RunDeps {
  store: OperatorStore;
}

/** Answers one authenticated request on its route. */
export type Action = (request: Request, url: URL) => Promise<Response>;

function siteNotFound(): HostingError {
  return new HostingError("not_found", "site not found", { publicMessage: "No site has this site_id." });
}

export function createActions(deps: ActionDeps): Record<RouteName, Action> {
  const runs = createRuns(deps);

  /**
   * Runs the site's open job (whatever its kind), or with no site whatever is due: 202 at once and the work
   * in the background (then any other due job), or with ?wait=true 200 and the outcome.
   */
  async function run(wait: boolean, siteId: string | undefined, job: number | undefined): Promise<Response> {
    if (wait) {
      // With a site, only that site's job runs, so the caller gets its answer soon.
      const result = await runs.waitFor({ siteId, drain: !siteId });
      return json(200, { site_id: siteId, ...result });
    }
    await runs.inBackground({ siteId, drain: true });
    return json(202, { accepted: true, site_id: siteId, job_id: job });
  }

  async function kick(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const kick = parseKick(await readJson(request));
    if (kick.kind === "ignored") return json(200, { accepted: false, reason: kick.reason });
    if (kick.kind === "drain") return await run(wait, undefined, undefined);
    const queued = await deps.store.enqueue(kick.siteId);
    if (!queued.found) throw siteNotFound();
    if (queued.job_id === undefined) {
      return json(200, {
        accepted: false,
        site_id: kick.siteId,
        reason: queued.reason,
        status_dns: queued.status_dns,
        status_hosting: queued.status_hosting,
      });
    }
    return await run(wait, kick.siteId, queued.job_id);
  }

  async function status(): Promise<Response> {
    return json(200, await deps.store.status());
  }

  /**
   * A removal already open (asked twice, or the row was deleted) is run, not queued a second time; when none
   * is open the answer is 200 and why.
   */
  async function remove(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const siteId = parseRemove(await readJson(request));
    const removal = await deps.store.remove(siteId);
    if (!removal.found) throw siteNotFound();
    if (removal.job_id !== undefined && (removal.job_state === "queued" || removal.job_state === "running")) {
      return await run(wait, siteId, removal.job_id);
    }
    return json(200, {
      accepted: false,
      site_id: siteId,
      reason: removal.reason ?? "not_queued",
      status_hosting: removal.status_hosting,
      ...(removal.job_id !== undefined ? { job_id: removal.job_id, job_state: removal.job_state } : {}),
    });
  }

  async function retry(request: Request, url: URL): Promise<Response> {
    const wait = parseWait(url);
    const retried = await deps.store.retry(parseRetry(await readJson(request)));
    if (!retried.found) throw siteNotFound();
    const answer = { requeued: retried.requeued, skipped: retried.skipped };
    if (retried.requeued.length === 0) return json(200, answer);
    if (wait) return json(200, { ...answer, ...await runs.waitFor({ drain: true }) });
    // Without waitUntil the requeued jobs wait for the kick the database sends.
    if (deps.waitUntil) await runs.inBackground({ drain: true });
    return json(200, answer);
  }

  return { kick, status, retry, remove };
}
