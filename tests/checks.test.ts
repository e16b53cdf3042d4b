/**
 * The checks around the certificate, end to end on the real stack (real Postgres, supabase-js through the
 * PostgREST stand-in, real sshd with the clpctl simulator, the Matomo simulator), with the two parts that
 * cannot run here simulated: the public DNS resolver (a DNS-over-HTTPS simulator whose records the test sets)
 * and the servers' HTTPS side (a TLS simulator serving the certificates the clpctl simulator installed, signed
 * by a CA made in the run, which the app trusts through HOSTING_HTTPS_CA).
 *
 * DNS before the certificate: no certificate command is sent until every name points at the server.
 * No certificate issued twice: a valid certificate already served (an earlier attempt's whose answer was lost,
 * or a worker killed mid-command) is not issued again. HTTPS after it: the site goes active only once it serves
 * a valid certificate, whose expiry is stored and reported.
 */
import assert from "node:assert/strict";
import { setFaults, type SimState } from "../dev/clpctl_sim.ts";
import { LETS_ENCRYPT_DAYS } from "../dev/tls_sim.ts";
import { ROOT } from "./support/env.ts";
import { type Stack, withStack } from "./support/stack.ts";

/** The server's public addresses (documentation ranges, RFC 5737 and RFC 3849). */
const IPV4 = "203.0.113.10";
const IPV6 = "2001:db8::10";
const ELSEWHERE = "198.51.100.7";
const DAY_MS = 86_400_000;

const letsEncryptCalls = (state: SimState, domain: string) =>
  state.calls.filter((c) => c.verb === "lets-encrypt:install:certificate" && c.domainName === domain);

interface Outcome {
  status: string;
  steps: Array<{ step: string; status: string }>;
  error?: { code: string; message: string };
}

/** Runs whatever is due, synchronously (POST {} ?wait=true); the site's outcome. */
async function drain(stack: Stack): Promise<Outcome> {
  const response = await stack.request("", { body: {}, query: "wait=true" });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(body.outcomes.length, 1, "one job ran");
  return body.outcomes[0];
}

/** Fake time for the backoff: the retry becomes due now. */
async function makeDue(stack: Stack, siteId: string) {
  await stack
    .sql`update hosting_automator.jobs set run_at = now() where site_id = ${siteId} and state = 'queued'`;
}

const steps = (outcome: Outcome) => outcome.steps.map((s) => `${s.step}:${s.status}`);

async function journal(stack: Stack, siteId: string, step: string) {
  const [row] = await stack.sql<{ state: string; result: Record<string, unknown> | null }[]>`
    select state::text, result from hosting_automator.steps where site_id = ${siteId} and step = ${step}`;
  return row;
}

async function expiresAt(stack: Stack, siteId: string): Promise<Date | null> {
  const [row] = await stack.sql<{ certificate_expires_at: Date | null }[]>`
    select certificate_expires_at from public.sites where id = ${siteId}`;
  return row.certificate_expires_at;
}

Deno.test("DNS not pointing at the server yet: no certificate is asked for, the job retries with dns_not_ready, and goes active once DNS points", async () => {
  await withStack({ label: "dns_wait", publicIps: [IPV4] }, async (stack) => {
    const domain = "waiting.checks.example";
    const id = await stack.insertSite(domain, { status_dns: "active" });

    const first = await drain(stack);
    assert.equal(first.status, "retrying");
    assert.equal(first.error?.code, "dns_not_ready");
    assert.match(first.error!.message, /waiting\.checks\.example has no A or AAAA record/);
    assert.match(first.error!.message, new RegExp(IPV4.replaceAll(".", "\\.")), "it says what was expected");
    assert.deepEqual(steps(first), ["cloudpanel_site:done", "dns_check:failed"]);
    let state = await stack.simState();
    assert.equal(letsEncryptCalls(state, domain).length, 0, "no certificate command was sent");
    assert.equal((await stack.site(id)).status_hosting, "provisioning", "not failed while waiting for DNS");
    const queried = stack.doh.queries.filter((q) => q.name === domain).map((q) => q.type).sort();
    assert.deepEqual(queried, ["AAAA", "A"].sort(), "both A and AAAA were asked");
    assert.ok((await stack.events(id)).some((e) => e.code === "dns_not_ready"), "the event log says why");

    // Still not pointing: retried again, still no certificate command.
    await makeDue(stack, id);
    assert.equal((await drain(stack)).error?.code, "dns_not_ready");
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 0);

    stack.doh.setRecords(domain, { A: [IPV4] });
    await makeDue(stack, id);
    const last = await drain(stack);
    assert.equal(last.status, "active");
    assert.deepEqual(steps(last), [
      "cloudpanel_site:already_done",
      "dns_check:done",
      "ssl_certificate:done",
      "https_verify:done",
      "matomo_site:done",
    ]);
    state = await stack.simState();
    assert.equal(letsEncryptCalls(state, domain).length, 1, "one certificate command, once DNS pointed");
    assert.equal(Object.keys(state.sites).length, 1, "the site was made once");
    assert.equal((await stack.site(id)).status_hosting, "active");
  });
});

Deno.test("DNS pointing elsewhere: dns_not_ready says what DNS answered and what was expected; no certificate command", async () => {
  await withStack({ label: "dns_elsewhere", publicIps: [IPV4] }, async (stack) => {
    const domain = "elsewhere.checks.example";
    stack.doh.setRecords(domain, { A: [ELSEWHERE] });
    const id = await stack.insertSite(domain, { status_dns: "active" });
    const first = await drain(stack);
    assert.equal(first.status, "retrying");
    assert.equal(first.error?.code, "dns_not_ready");
    assert.match(
      first.error!.message,
      /elsewhere\.checks\.example → 198\.51\.100\.7 \(expected 203\.0\.113\.10\)/,
    );
    assert.equal(
      letsEncryptCalls(await stack.simState(), domain).length,
      0,
      "no certificate command was sent",
    );

    // One stray record among the right ones still fails: Let's Encrypt may validate over any of them.
    stack.doh.setRecords(domain, { A: [IPV4, ELSEWHERE] });
    await makeDue(stack, id);
    const second = await drain(stack);
    assert.equal(second.error?.code, "dns_not_ready");
    assert.match(second.error!.message, /expected only 203\.0\.113\.10/);
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 0);
    const row = await stack.site(id);
    assert.equal(row.status_hosting, "provisioning");
  });
});

Deno.test("a name with IPv6 only (AAAA records, no A) pointing at the server passes the DNS check; an apex domain's www. is checked too", async () => {
  await withStack({ label: "dns_ipv6", publicIps: [IPV4, IPV6] }, async (stack) => {
    const domain = "ipv6only.example";
    stack.doh.setRecords(domain, { AAAA: [IPV6] });
    const id = await stack.insertSite(domain, { status_dns: "active" });

    // The apex's certificate covers www. as well: until www. points at the server, no certificate.
    const first = await drain(stack);
    assert.equal(first.error?.code, "dns_not_ready");
    assert.match(first.error!.message, /www\.ipv6only\.example has no A or AAAA record/);
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 0);

    stack.doh.setRecords(`www.${domain}`, { AAAA: [IPV6.toUpperCase()] });
    await makeDue(stack, id);
    const last = await drain(stack);
    assert.equal(last.status, "active");
    const dns = await journal(stack, id, "dns_check");
    assert.equal(dns.state, "done");
    assert.deepEqual(dns.result?.answered, { [domain]: [IPV6], [`www.${domain}`]: [IPV6] });
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 1);
  });
});

Deno.test("a certificate installed by an attempt whose answer was lost is not issued again: the retry sees it served and valid", async () => {
  await withStack({ label: "cert_lost_answer" }, async (stack) => {
    const domain = "lost-answer.checks.example";
    // The certificate command installs the certificate, then dies (exit 137): the worker cannot know it worked.
    await setFaults(stack.clpctlState, {
      certificateFailures: 1,
      certificateFailureKind: "killed",
      certificateFailureAfterWork: true,
    });
    const id = await stack.insertSite(domain, { status_dns: "active" });
    const first = await drain(stack);
    assert.equal(first.status, "retrying");
    assert.deepEqual(steps(first).slice(0, 3), [
      "cloudpanel_site:done",
      "dns_check:skipped",
      "ssl_certificate:failed",
    ]);
    let state = await stack.simState();
    assert.equal(letsEncryptCalls(state, domain).length, 1);
    assert.equal(state.certificates[domain]?.type, "lets-encrypt", "the lost attempt did install it");

    await makeDue(stack, id);
    const second = await drain(stack);
    assert.equal(second.status, "active");
    state = await stack.simState();
    assert.equal(letsEncryptCalls(state, domain).length, 1, "no second issuance");
    const certificate = await journal(stack, id, "ssl_certificate");
    assert.equal(certificate.state, "done");
    assert.equal(certificate.result?.reused, true);
    assert.ok(
      (await stack.events(id)).some((e) => /already served .*not issued again/.test(e.message)),
      "the event log says the certificate was not issued again",
    );
  });
});

Deno.test({
  name:
    "a worker killed mid certificate command: the next attempt finds the certificate served and does not issue it again",
  // The killed process's SSH session ends on the server side on its own.
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await withStack({ label: "cert_killed" }, async (stack) => {
      const domain = "killed.checks.example";
      // The certificate command does its work, then hangs: the worker is killed while it waits for the answer.
      await setFaults(stack.clpctlState, {
        certificateFailures: 1,
        certificateFailureKind: "hang",
        hangMs: 6_000,
      });
      const id = await stack.insertSite(domain, { status_dns: "active" });
      await stack.sql`delete from net.http_request_queue`;
      const env = Object.fromEntries(
        Object.entries(stack.env).filter((e): e is [string, string] => e[1] !== undefined),
      );
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}tests/support/worker_process.ts`],
        env: { ...env, HOSTING_LOG_LEVEL: "warn" },
        stdout: "null",
        stderr: "null",
      }).spawn();
      let killed = false;
      try {
        const deadline = performance.now() + 30_000;
        for (;;) {
          const state = await stack.simState();
          if (state.certificates[domain]?.type === "lets-encrypt") break;
          if (performance.now() > deadline) throw new Error("the certificate was never installed");
          await new Promise((r) => setTimeout(r, 50));
        }
        const [running] = await stack.sql<{ state: string; current_step: string | null }[]>`
          select state::text, current_step::text from hosting_automator.jobs where site_id = ${id}`;
        assert.deepEqual(
          [running.state, running.current_step],
          ["running", "ssl_certificate"],
          "killed inside the certificate step",
        );
        child.kill("SIGKILL");
        killed = true;
      } finally {
        if (!killed) child.kill("SIGKILL");
        await child.status;
      }

      // The dead worker's lease runs out (time warp instead of 30 s), and the sweep queues the job again.
      await stack.sql`update hosting_automator.jobs set lease_expires_at = now() where site_id = ${id}`;
      await stack.sql`select hosting_automator.sweep()`;
      await makeDue(stack, id);
      const resumed = await drain(stack);
      assert.equal(resumed.status, "active");
      assert.ok(steps(resumed).includes("ssl_certificate:done"), "the certificate step ran again");
      const state = await stack.simState();
      assert.equal(letsEncryptCalls(state, domain).length, 1, "no second issuance");
      assert.equal((await journal(stack, id, "ssl_certificate")).result?.reused, true);
    });
  },
});

for (const override of ["expired", "wrong-name"] as const) {
  Deno.test(`a site served a certificate ${override === "expired" ? "that has expired" : "for another name"} is not active: https_not_ready, retried, active once it serves a valid one`, async () => {
    await withStack({ label: `https_${override.replace("-", "_")}` }, async (stack) => {
      const domain = `${override}.checks.example`;
      stack.tls.override(domain, override);
      const id = await stack.insertSite(domain, { status_dns: "active" });
      const first = await drain(stack);
      assert.equal(first.status, "retrying");
      assert.equal(first.error?.code, "https_not_ready");
      assert.match(first.error!.message, /does not serve a valid certificate yet/);
      assert.deepEqual(steps(first), [
        "cloudpanel_site:done",
        "dns_check:skipped",
        "ssl_certificate:done",
        "https_verify:failed",
      ]);
      // What was served before issuing was not valid either: the certificate was asked for, once.
      assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 1);
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "provisioning", "not active while the certificate is not valid");
      assert.equal(await expiresAt(stack, id), null);

      // Still served: retried again.
      await makeDue(stack, id);
      assert.equal((await drain(stack)).error?.code, "https_not_ready");

      // The server serves the issued certificate now (a reload on a real server).
      stack.tls.override(domain, undefined);
      await makeDue(stack, id);
      const last = await drain(stack);
      assert.equal(last.status, "active");
      assert.deepEqual(steps(last).slice(2, 4), ["ssl_certificate:already_done", "https_verify:done"]);
      assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 1, "not issued again");
    });
  });
}

Deno.test("the DNS resolver down: a retryable dns_resolver_unavailable that says so, no certificate command, active once it answers", async () => {
  await withStack({ label: "dns_resolver_down", publicIps: [IPV4] }, async (stack) => {
    const domain = "resolver.checks.example";
    stack.doh.setRecords(domain, { A: [IPV4] });
    await stack.doh.down();
    const id = await stack.insertSite(domain, { status_dns: "active" });
    const first = await drain(stack);
    assert.equal(first.status, "retrying");
    assert.equal(first.error?.code, "dns_resolver_unavailable");
    assert.match(
      first.error!.message,
      /^The DNS resolver 127\.0\.0\.1:\d+ could not be reached; will retry\.$/,
    );
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 0);

    // Answering HTTP 503 (a failing load balancer) is the same.
    stack.doh.up();
    await stack.doh.down("503");
    await makeDue(stack, id);
    const second = await drain(stack);
    assert.equal(second.error?.code, "dns_resolver_unavailable");
    assert.match(second.error!.message, /DNS resolver/);
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 0);

    stack.doh.up();
    await makeDue(stack, id);
    const last = await drain(stack);
    assert.equal(last.status, "active");
    assert.equal(letsEncryptCalls(await stack.simState(), domain).length, 1);
  });
});

/** Two active sites: one issued here (90 days), one already serving a certificate with 20 days left. */
async function twoCertificates(stack: Stack) {
  const issuedDomain = "issued.checks.example";
  const issuedId = await stack.insertSite(issuedDomain, { status_dns: "active" });
  assert.equal((await drain(stack)).status, "active");
  const installed = Date.parse((await stack.simState()).certificates[issuedDomain].installedAt);
  const issuedAfter = new Date(installed + LETS_ENCRYPT_DAYS * DAY_MS);

  // More than the 14 days HOSTING_CERTIFICATE_MIN_DAYS asks by default: valid, so nothing is issued.
  const soonDomain = "renew-soon.checks.example";
  const soonAfter = new Date(Date.now() + 20 * DAY_MS);
  stack.tls.override(soonDomain, { notAfter: soonAfter });
  const soonId = await stack.insertSite(soonDomain, { status_dns: "active" });
  assert.equal((await drain(stack)).status, "active");
  assert.equal(letsEncryptCalls(await stack.simState(), soonDomain).length, 0, "nothing was issued");
  return {
    issued: { id: issuedId, domain: issuedDomain, notAfter: issuedAfter },
    soon: { id: soonId, domain: soonDomain, notAfter: soonAfter },
  };
}

interface CertificatesReport {
  expiring_within_30_days: number;
  soonest: Array<{ site_id: string; domain: string; expires_at: string }>;
}

function assertReport(
  report: CertificatesReport | undefined,
  sites: Awaited<ReturnType<typeof twoCertificates>>,
) {
  assert.ok(report, "the report has a certificates section");
  assert.equal(report.expiring_within_30_days, 1);
  assert.deepEqual(report.soonest.map((c) => [c.site_id, c.domain]), [
    [sites.soon.id, sites.soon.domain],
    [sites.issued.id, sites.issued.domain],
  ]);
  // Certificates carry whole seconds.
  assert.ok(Math.abs(Date.parse(report.soonest[0].expires_at) - sites.soon.notAfter.getTime()) < 1_000);
  assert.ok(Math.abs(Date.parse(report.soonest[1].expires_at) - sites.issued.notAfter.getTime()) < 1_000);
}

Deno.test("the served certificate's expiry is stored in public.sites and the status report lists the certificates that expire soonest", async () => {
  await withStack({ label: "cert_expiry" }, async (stack) => {
    const sites = await twoCertificates(stack);
    for (const site of [sites.issued, sites.soon]) {
      const stored = await expiresAt(stack, site.id);
      assert.ok(stored, `${site.domain}: the expiry is stored`);
      assert.ok(
        Math.abs(stored.getTime() - site.notAfter.getTime()) < 1_000,
        `${site.domain}: the served one`,
      );
    }
    const [{ report }] = await stack.sql<{ report: { certificates?: CertificatesReport } }[]>`
      select public.hosting_status() as report`;
    assertReport(report.certificates, sites);
  });
});

Deno.test("/status shows the certificates that expire soonest", async () => {
  await withStack({ label: "cert_status" }, async (stack) => {
    const sites = await twoCertificates(stack);
    const response = await stack.request("/status");
    assert.equal(response.status, 200);
    const status = await response.json();
    assertReport(status.certificates, sites);
  });
});
