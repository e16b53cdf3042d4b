/** The chaos run's report: one Markdown table of figures against the targets, and the faults injected. */
import type { ChaosResult } from "./engine.ts";
import { FAULT_KINDS, type FaultName } from "./faults.ts";

/** The targets (under 20 % transient faults). */
export const TARGETS = {
  /** Share of sites active with analytics, with no operator action. */
  activeWithAnalytics: 0.995,
};

export interface Verdict {
  name: string;
  ok: boolean;
}

const pct = (n: number, of: number) => `${(100 * n / of).toFixed(1)} %`;
const codes = (c: Record<string, number>) =>
  Object.entries(c).map(([code, n]) => `${code} ×${n}`).join(", ") || "—";

/** Every target, met or not. The removal targets hold trivially when the run had no removal phase. */
export function verdicts(r: ChaosResult): Verdict[] {
  const rm = r.removals;
  return [
    { name: "active with analytics", ok: r.activeWithAnalytics / r.sites >= TARGETS.activeWithAnalytics },
    { name: "no duplicated CloudPanel site", ok: r.duplicates.cloudPanelSites === 0 },
    { name: "no duplicated Matomo site", ok: r.duplicates.matomoSites === 0 },
    { name: "no lost row", ok: r.lost === 0 },
    { name: "no secret in logs or database", ok: r.secrets.found.length === 0 },
    { name: "every site settled before the deadline", ok: r.settled && r.open === 0 },
    { name: "kept rows asked to be removed ended removed", ok: !rm || rm.kept.removed === rm.kept.asked },
    {
      name: "removed sites gone from CloudPanel",
      ok: !rm || rm.kept.siteLeft.length + rm.deleted.siteLeft.length === 0,
    },
    {
      name: "re-created rows active, one new CloudPanel site, the right doc root",
      ok: !rm ||
        [rm.recreated.active, rm.recreated.oneNewSite, rm.recreated.rightDocRoot].every((n) =>
          n === rm.recreated.asked
        ),
    },
    { name: "no Vault secret left for a removed site", ok: !rm || rm.vaultLeft === 0 },
    { name: "stored passwords are the site users'", ok: r.credentials.mismatched.length === 0 },
    { name: "every active site has its password stored", ok: r.credentials.missing.length === 0 },
    { name: "no half-made CloudPanel site", ok: r.halfMade.length === 0 },
  ];
}

/** A count, with up to three of the domains it counts. */
const some = (domains: string[]) =>
  domains.length === 0
    ? "0"
    : `${domains.length} (${domains.slice(0, 3).join(", ")}${domains.length > 3 ? ", …" : ""})`;

export function formatReport(r: ChaosResult, command: string): string {
  const o = r.options;
  const mark = (ok: boolean) => ok ? "✓" : "✗ missed";
  const v = Object.fromEntries(verdicts(r).map((x) => [x.name, x.ok]));
  const rows: string[][] = [
    ["sites meant to end active (every row nobody asked to remove)", String(r.sites), "", ""],
    [
      "active WITH analytics, no human action",
      `${r.activeWithAnalytics} (${pct(r.activeWithAnalytics, r.sites)})`,
      `≥ ${(TARGETS.activeWithAnalytics * 100).toFixed(1)} %`,
      mark(v["active with analytics"]),
    ],
    [
      "active without analytics (analytics step's code)",
      `${r.activeWithoutAnalytics} (${codes(r.withoutAnalyticsCodes)})`,
      "",
      "",
    ],
    ["failed (last job error code)", `${r.failed} (${codes(r.failedCodes)})`, "", ""],
    ["jobs still open at the end", String(r.open), "0", mark(v["every site settled before the deadline"])],
    ["lost rows (not active/failed, no open job)", String(r.lost), "0", mark(v["no lost row"])],
    ...removalRows(r, mark, v),
    [
      "active sites whose journal says credentials known",
      `${r.credentials.known} of ${r.activeWithAnalytics + r.activeWithoutAnalytics}`,
      "",
      "",
    ],
    [
      "… whose Vault secret is not the CloudPanel site user's password",
      some(r.credentials.mismatched),
      "0",
      mark(v["stored passwords are the site users'"]),
    ],
    [
      "active sites with no stored password",
      some(r.credentials.missing),
      "0",
      mark(v["every active site has its password stored"]),
    ],
    [
      "half-made sites (CloudPanel site, no active row for its domain)",
      some(r.halfMade),
      "0",
      mark(v["no half-made CloudPanel site"]),
    ],
    [
      "duplicated CloudPanel sites (site:add:static created more than its rows asked for)",
      String(r.duplicates.cloudPanelSites),
      "0",
      mark(v["no duplicated CloudPanel site"]),
    ],
    [
      "duplicated Matomo sites (URL held by > 1 site)",
      String(r.duplicates.matomoSites),
      "0",
      mark(v["no duplicated Matomo site"]),
    ],
    [
      "domains with more certificates issued than rows",
      String(r.duplicates.certificates),
      "(reported)",
      "",
    ],
    [
      "secrets found in logs and database",
      r.secrets.found.length === 0
        ? `0 (${r.secrets.needles} secrets over ${(r.secrets.scannedChars / 1e6).toFixed(1)} MB)`
        : r.secrets.found.join("; "),
      "0",
      mark(v["no secret in logs or database"]),
    ],
    [
      "store calls per site (PostgREST stand-in requests)",
      `${r.storeCalls.perSite.toFixed(1)} (${r.storeCalls.total} in all)`,
      "",
      "",
    ],
    ["attempts (claims) per site", r.attemptsPerSite.toFixed(2), "", ""],
    [
      "kicks (pg_net) delivered / handler requests",
      `${r.kicks.delivered} / ${r.kicks.requests} (${codes(r.kicks.byStatus)})`,
      "",
      "",
    ],
    ["sweeps", `${r.sweeps} (every ${o.sweepSeconds} s)`, "", ""],
    [
      "uncaught errors (drivers of the harness and stand-ins)",
      r.uncaught.length ? `${r.uncaught.length}: ${[...new Set(r.uncaught)].slice(0, 3).join("; ")}` : "0",
      "",
      "",
    ],
    [
      "wall time",
      `${r.wallSeconds.toFixed(1)} s${
        r.removalSeconds === null ? "" : ` (removal phase ${r.removalSeconds.toFixed(1)} s)`
      }`,
      `deadline ${o.deadlineSeconds} s`,
      "",
    ],
  ];
  const table = (head: string[], body: string[][]) =>
    [
      `| ${head.join(" | ")} |`,
      `| ${head.map(() => "---").join(" | ")} |`,
      ...body.map((r) => `| ${r.join(" | ")} |`),
    ]
      .join("\n");
  const faults = Object.entries(r.injected).map(([kind, n]) => [
    kind,
    String(n),
    FAULT_KINDS[kind as FaultName]?.what ?? "",
  ]);
  const events = r.events.map((e) => [`${e.at} s`, e.phase, e.kind, `${e.seconds} s`, e.detail]);
  return [
    `\n\`${command}\` — seed ${o.seed}, fault rate ${o.faultRate}, cap ${o.cap}, step timeouts ${o.stepTimeoutSeconds} s, ` +
    `kinds: ${o.kinds.join(", ")}${o.fastLeaseExpiry ? ", killed workers' leases expired at once" : ""}\n`,
    table(["figure", "value", "target", ""], rows),
    "\nFaults injected",
    table(["kind", "count", "what"], faults),
    `clpctl faults by verb: ${codes(r.injectedByVerb)}`,
    ...(events.length ? ["\nEvents", table(["at", "phase", "kind", "took", "detail"], events)] : []),
    ...(r.failedSamples.length
      ? [
        "\nFailed sites (first 5), their events",
        table(["domain", "events"], r.failedSamples.map((f) => [f.domain, f.codes])),
      ]
      : []),
    ...(r.removals?.problems.length
      ? [
        "\nRemoval targets missed (first 10), their events",
        table(["domain", "what", "events"], r.removals.problems.map((p) => [p.domain, p.what, p.codes])),
      ]
      : []),
    `\nstore calls by function: ${codes(r.storeCalls.byFunction)}`,
    `targets: ${verdicts(r).filter((x) => !x.ok).map((x) => `missed: ${x.name}`).join("; ") || "all met"}\n`,
  ].join("\n");
}

/** The removal phase's rows of the table (none without one). */
function removalRows(r: ChaosResult, mark: (ok: boolean) => string, v: Record<string, boolean>): string[][] {
  const rm = r.removals;
  if (!rm) return [];
  return [
    [
      "removal phase: removals asked (kept rows / deleted / deleted and inserted again)",
      `${
        rm.kept.asked + rm.deleted.asked + rm.recreated.asked
      } (${rm.kept.asked} / ${rm.deleted.asked} / ${rm.recreated.asked}); jobs: ${codes(rm.jobStates)}${
        Object.keys(rm.failedCodes).length ? `; failed: ${codes(rm.failedCodes)}` : ""
      }`,
      "",
      "",
    ],
    [
      "kept rows asked to be removed that ended removed",
      `${rm.kept.removed} of ${rm.kept.asked}`,
      "all",
      mark(v["kept rows asked to be removed ended removed"]),
    ],
    [
      "removed sites (kept / deleted rows) still on CloudPanel",
      `${some(rm.kept.siteLeft)} / ${some(rm.deleted.siteLeft)}`,
      "0",
      mark(v["removed sites gone from CloudPanel"]),
    ],
    [
      "re-created rows: active / one new CloudPanel site (add, delete, add) / the right doc root",
      `${rm.recreated.active} / ${rm.recreated.oneNewSite} / ${rm.recreated.rightDocRoot} of ${rm.recreated.asked}`,
      "all",
      mark(v["re-created rows active, one new CloudPanel site, the right doc root"]),
    ],
    [
      "Vault secrets left for removed sites",
      String(rm.vaultLeft),
      "0",
      mark(v["no Vault secret left for a removed site"]),
    ],
  ];
}
