// deno-lint-ignore-file no-console
/**
 * The chaos run, small: 60 sites through the real function, real sshd and the simulators, with 20 % of clpctl
 * calls and Matomo requests faulted (fixed seed), every kick delivered twice, a worker process SIGKILLed
 * mid-step, sshd down for seconds, and a PostgreSQL restart (on a cluster of the run's own). Then 30 % of
 * the active sites are removed under the same faults (rows deleted, rows kept and set removing, deleted
 * domains inserted again at once), with a second worker killed during a removal step and a second sshd
 * outage. The same code as `deno task chaos` (tests/chaos/).
 */
import assert from "node:assert/strict";
import { runChaos } from "./chaos/engine.ts";
import { formatReport, TARGETS } from "./chaos/report.ts";

Deno.test({
  name:
    "60 sites under 20 % transient faults, duplicate kicks, killed workers and a PostgreSQL restart, then 30 % removed",
  // Background work of the function and the platform stand-ins ends before the run returns, but the
  // sanitizers cannot tell the simulators' and the killed processes' handles from a leak.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const result = await runChaos({
      sites: 60,
      seed: 20261121,
      faultRate: 0.2,
      arrivalSeconds: 4,
      // The second of each happens in the removal phase.
      workerKills: 2,
      sshdOutages: 2,
      pgRestarts: 1,
      matomoSlowWindows: 1,
      // The killed worker's lease (a minute and more) is expired at once: the takeover itself is what counts.
      fastLeaseExpiry: true,
      // 18 removals: with this seed, some of their site:delete calls are faulted too.
      removals: 0.3,
      deadlineSeconds: 300,
    });
    console.log(formatReport(result, "tests/chaos.test.ts (60 sites, seed 20261121)"));

    await t.step("every site settled: active or failed, no job left open, in both phases", () => {
      assert.ok(result.settled, "the run settled before its deadline");
      assert.equal(result.open, 0);
      assert.equal(result.activeWithAnalytics + result.activeWithoutAnalytics + result.failed, result.sites);
    });
    await t.step("no lost rows", () => assert.equal(result.lost, 0));
    await t.step("no site created twice on CloudPanel, no Matomo site twice", () => {
      assert.equal(result.duplicates.cloudPanelSites, 0);
      assert.equal(result.duplicates.matomoSites, 0);
    });
    await t.step("no secret in the logs, the worker processes' output or the database", () => {
      assert.ok(result.secrets.needles >= 60, "the scan had the site passwords to look for");
      assert.deepEqual(result.secrets.found, []);
    });
    await t.step("the faults were injected", () => {
      for (const kind of ["worker_kill", "pg_restart", "sshd_down"]) {
        assert.ok(result.injected[kind] >= 1, kind);
      }
      const killed = result.events.filter((e) =>
        e.kind === "worker_kill" && / killed \(SIGKILL\)/.test(e.detail)
      );
      assert.ok(killed.some((e) => e.phase === "provision"), "a worker killed while sites were provisioned");
      assert.ok(
        killed.some((e) => e.phase === "removal" && /during cloudpanel_site_delete/.test(e.detail)),
        "a worker killed during a removal step",
      );
      assert.ok(result.events.some((e) => e.kind === "sshd_down" && e.phase === "removal"), "sshd down");
      assert.ok((result.injectedByVerb["site:delete"] ?? 0) >= 1, "per-call faults on site:delete");
      assert.ok(result.kicks.requests >= 2 * result.kicks.delivered, "every kick was delivered twice");
      const perCall = Object.entries(result.injected).filter(([k]) =>
        /^(clpctl|ssh_drop|matomo_(5xx|html|timeout))/.test(k)
      );
      assert.ok(perCall.reduce((n, [, c]) => n + c, 0) >= 20, "per-call faults at about 20 %");
    });
    const rm = result.removals;
    await t.step("the removal phase asked for removals both ways, and inserted deleted domains again", () => {
      assert.ok(rm, "the removal phase ran");
      assert.ok(rm.kept.asked >= 3 && rm.deleted.asked >= 1 && rm.recreated.asked >= 1, JSON.stringify(rm));
    });
    await t.step("TARGET: every kept row asked to be removed ended removed, its CloudPanel site gone", () => {
      assert.equal(rm!.kept.removed, rm!.kept.asked, JSON.stringify(rm!.problems));
      assert.deepEqual(rm!.kept.siteLeft, []);
    });
    await t.step(
      "TARGET: deleted rows' sites gone; re-created rows active on one new site, right doc root",
      () => {
        assert.deepEqual(rm!.deleted.siteLeft, [], JSON.stringify(rm!.problems));
        assert.deepEqual(rm!.recreated, {
          asked: rm!.recreated.asked,
          active: rm!.recreated.asked,
          oneNewSite: rm!.recreated.asked,
          rightDocRoot: rm!.recreated.asked,
        }, JSON.stringify(rm!.problems));
      },
    );
    await t.step("TARGET: no Vault secret left for a removed site, no half-made CloudPanel site", () => {
      assert.equal(rm!.vaultLeft, 0);
      assert.deepEqual(result.halfMade, []);
    });
    await t.step("TARGET: every active site's stored password is its CloudPanel site user's", () => {
      assert.ok(result.credentials.known >= 1, "the journal says credentials known for the active sites");
      assert.deepEqual(result.credentials.mismatched, []);
      assert.deepEqual(result.credentials.missing, [], "no site pre-existed: each has its password stored");
    });
    // THE TARGET, not weakened: every site meant to be active (the 60 less the removed, plus the re-created)
    // active WITH analytics and no human action (≥ 99.5 % rounds to all of them). It fails while transient clpctl and Matomo failures still end a site
    // `failed` or active without analytics; the report above names the codes.
    await t.step(
      `TARGET: ≥ ${TARGETS.activeWithAnalytics * 100} % active with analytics, no human action`,
      () => {
        assert.ok(
          result.activeWithAnalytics / result.sites >= TARGETS.activeWithAnalytics,
          `${result.activeWithAnalytics} of ${result.sites} active with analytics; failed: ${
            JSON.stringify(result.failedCodes)
          }; without analytics: ${JSON.stringify(result.withoutAnalyticsCodes)}`,
        );
      },
    );
  },
});
