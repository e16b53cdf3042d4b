// deno-lint-ignore-file no-console
/**
 * The chaos run, small: 60 sites through the real function, real sshd and the simulators, with 20 % of clpctl
 * calls and Matomo requests faulted (fixed seed), every kick delivered twice, a worker process SIGKILLed
 * mid-step, sshd down for seconds, and a PostgreSQL restart (on a cluster of the run's own). The same code as
 * `deno task chaos` (tests/chaos/).
 */
import assert from "node:assert/strict";
import { runChaos } from "./chaos/engine.ts";
import { formatReport, TARGETS } from "./chaos/report.ts";

Deno.test({
  name: "60 sites under 20 % transient faults, duplicate kicks, a killed worker and a PostgreSQL restart",
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
      workerKills: 1,
      sshdOutages: 1,
      pgRestarts: 1,
      matomoSlowWindows: 1,
      // The killed worker's lease (a minute and more) is expired at once: the takeover itself is what counts.
      fastLeaseExpiry: true,
      deadlineSeconds: 240,
    });
    console.log(formatReport(result, "tests/chaos.test.ts (60 sites, seed 20261121)"));

    await t.step("every site settled: active or failed, no job left open", () => {
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
      assert.ok(result.kicks.requests >= 2 * result.kicks.delivered, "every kick was delivered twice");
      const perCall = Object.entries(result.injected).filter(([k]) =>
        /^(clpctl|ssh_drop|matomo_(5xx|html|timeout))/.test(k)
      );
      assert.ok(perCall.reduce((n, [, c]) => n + c, 0) >= 20, "per-call faults at about 20 %");
    });
    // THE TARGET, not weakened: every one of the 60 sites active WITH analytics and no human action
    // (≥ 99.5 % rounds to all 60). It fails while transient clpctl and Matomo failures still end a site
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
