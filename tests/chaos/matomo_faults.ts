/**
 * Per-request Matomo faults for the chaos run, as `failWhen` rules on the Matomo simulator. A request is
 * identified by its API method, the site's host and how many times that method was asked about that host, so
 * the same seed faults the same requests whatever the order of concurrent ones.
 */
import type { MatomoSim, SimFault, SimRequestInfo } from "../../dev/matomo_sim.ts";
import { type FaultName, type FaultPlan, pickFault } from "./faults.ts";

const RESPONSES: Partial<Record<FaultName, SimFault>> = {
  matomo_5xx: { kind: "html", status: 503 },
  matomo_html: { kind: "html", status: 200 },
  matomo_timeout: { kind: "hang" },
};

/** The host a request is about: lookups send `url`, addSite sends `urls[0]` and `siteName`. */
function hostOf(params: Record<string, string>): string | null {
  const value = params.url ?? params["urls[0]"] ?? params.siteName;
  const match = value ? /^(?:[a-z]+:\/\/)?(?:www\.)?([^/:?#]+)/i.exec(value) : null;
  return match ? match[1].toLowerCase() : null;
}

/** Installs the rules; `injected` counts the faults by kind as they are served. */
export function injectMatomoFaults(sim: MatomoSim, plan: FaultPlan, injected: Map<string, number>): void {
  const decided = new WeakMap<SimRequestInfo, FaultName | null>();
  const asked = new Map<string, number>();
  // Every rule sees the same request object, in order: the first decides, the rest read the decision.
  const decide = (info: SimRequestInfo): FaultName | null => {
    if (decided.has(info)) return decided.get(info)!;
    const host = hostOf(info.params);
    let fault: FaultName | null = null;
    if (host) {
      const key = `${info.apiMethod} ${host}`;
      const n = (asked.get(key) ?? 0) + 1;
      asked.set(key, n);
      fault = pickFault(plan, "matomo", info.apiMethod ?? "", host, n);
      if (fault && !RESPONSES[fault]) fault = null;
    }
    if (fault) injected.set(fault, (injected.get(fault) ?? 0) + 1);
    decided.set(info, fault);
    return fault;
  };
  for (const [name, response] of Object.entries(RESPONSES)) {
    sim.failWhen((info) => decide(info) === name, response);
  }
}
