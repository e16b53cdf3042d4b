/**
 * The ways a running job ends (outcome.ts): each outcome's JSON, exactly as the database's exit takes it, and
 * what the workflow reports once it was taken; and the policies steps and kinds declare (steps.ts), which
 * travel with the transitions so that no SQL body has to name a step.
 */
import assert from "node:assert/strict";
import {
  ERROR_CODES,
  type ErrorCode,
  failureClass,
  HostingError,
} from "../supabase/functions/hosting-automator/errors.ts";
import type { StepEnd } from "../supabase/functions/hosting-automator/journal.ts";
import { Redactor } from "../supabase/functions/hosting-automator/log.ts";
import {
  Outcome,
  outcomeJson,
  OUTCOMES,
  settledBy,
} from "../supabase/functions/hosting-automator/outcome.ts";
import { KINDS, policiesOf, STEPS } from "../supabase/functions/hosting-automator/steps.ts";
import { JOB_KINDS, STEP_NAMES } from "../supabase/functions/hosting-automator/store.ts";

const SECRET = `Pw${"x".repeat(30)}`;
const redactor = new Redactor([SECRET]);
const redact = (text: string) => redactor.redact(text);
const LEAK = `said ${SECRET}`;
const SAID = "said [REDACTED]";
const END: StepEnd = {
  step: "dns_check",
  state: "failed",
  code: "interrupted",
  message: LEAK,
  level: "warn",
};
const END_JSON = [{
  step: "dns_check",
  state: "failed",
  result: {},
  code: "interrupted",
  message: SAID,
  level: "warn",
}];
const QUEUED = { ok: true, state: "queued", run_at: "2026-12-01T00:00:00.000Z", attempts: 2 } as const;
const FAILED = { ok: true, state: "failed", attempts: 5 } as const;
const SUCCEEDED = { ok: true, state: "succeeded" } as const;

const failure = (code: ErrorCode, options: { attemptLimit?: number } = {}) =>
  new HostingError(code, `internal ${LEAK}`, { publicMessage: `public ${LEAK}`, ...options });

Deno.test("each outcome's JSON is the exit's contract: its type, the step ends it journals, its own fields, texts redacted", () => {
  const cases = [
    [
      Outcome.active({
        docRoot: "/home/a/htdocs/a.example",
        matomoSiteId: 3,
        message: LEAK,
        certificateExpiresAt: "2027-01-01T00:00:00.000Z",
        backfillKind: "analytics",
      }, [END]),
      {
        type: "active",
        done: END_JSON,
        message: SAID,
        doc_root: "/home/a/htdocs/a.example",
        matomo_site_id: 3,
        certificate_expires_at: "2027-01-01T00:00:00.000Z",
        backfill_kind: "analytics",
      },
    ],
    [Outcome.removed(LEAK, []), { type: "removed", done: null, message: SAID }],
    [
      Outcome.failure(failure("cloudpanel_failed", { attemptLimit: 3 }), [END]),
      {
        type: "fail",
        done: END_JSON,
        code: "cloudpanel_failed",
        public_message: `public ${SAID}`,
        internal_message: `internal ${SAID}`,
        permanent: false,
        attempt_limit: 3,
      },
    ],
    [
      Outcome.failure(failure("cloudpanel_rejected"), []),
      {
        type: "fail",
        done: null,
        code: "cloudpanel_rejected",
        public_message: `public ${SAID}`,
        internal_message: `internal ${SAID}`,
        permanent: true,
        attempt_limit: null,
      },
    ],
    [
      Outcome.failure(failure("dns_not_ready"), [END]),
      {
        type: "snooze",
        done: END_JSON,
        code: "dns_not_ready",
        public_message: `public ${SAID}`,
        internal_message: `internal ${SAID}`,
        schedule: "dns",
      },
    ],
    [Outcome.release(LEAK, [END]), { type: "release", done: END_JSON, reason: SAID }],
    [
      Outcome.serverTrouble(failure("ssh_unreachable"), [END]),
      { type: "server_trouble", done: END_JSON, code: "ssh_unreachable", message: `public ${SAID}` },
    ],
  ] as const;
  for (const [outcome, json] of cases) assert.deepEqual(outcomeJson(outcome, redact), json, outcome.type);
  assert.deepEqual(
    new Set(cases.map(([o]) => o.type)),
    new Set(Object.keys(OUTCOMES)),
    "every row of the table is covered",
  );
});

Deno.test("what the workflow reports once the database took an outcome", () => {
  const site = Outcome.active({
    docRoot: "/home/a/htdocs/a.example",
    matomoSiteId: null,
    message: "Site is active without analytics (matomo_unreachable).",
    certificateExpiresAt: null,
    backfillKind: "analytics",
  }, []);
  assert.deepEqual(settledBy(site, SUCCEEDED), {
    status: "active",
    doc_root: "/home/a/htdocs/a.example",
    matomo_site_id: null,
  });
  assert.deepEqual(settledBy(Outcome.removed("Site removed.", []), SUCCEEDED), { status: "removed" });

  // A failure, and a wait on a schedule, both retry (with when) or fail, as the database answered.
  for (const code of ["cloudpanel_unavailable", "dns_not_ready"] as const) {
    const outcome = Outcome.failure(failure(code), []);
    const error = { code, message: `public ${LEAK}` };
    assert.deepEqual(settledBy(outcome, QUEUED), {
      status: "retrying",
      error,
      next_run_at: QUEUED.run_at,
      detail: `internal ${LEAK}`,
    }, code);
    assert.deepEqual(
      settledBy(outcome, FAILED),
      { status: "failed", error, detail: `internal ${LEAK}` },
      code,
    );
  }
  assert.deepEqual(settledBy(Outcome.release("Time budget spent.", []), { ok: true, state: "queued" }), {
    status: "released",
    detail: "Time budget spent.",
  });
  assert.deepEqual(
    settledBy(Outcome.serverTrouble(failure("ssh_auth_failed"), []), { ok: true, state: "queued" }),
    {
      status: "waiting",
      error: { code: "ssh_auth_failed", message: `public ${LEAK}` },
      detail: `internal ${LEAK}`,
    },
  );
});

Deno.test("a failure's class decides its outcome: a code with a schedule waits on it, any other fails the attempt", () => {
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
    const { schedule, transient } = failureClass(code);
    const outcome = Outcome.failure(new HostingError(code, "x"), []);
    if (schedule) {
      assert.ok(transient, `${code}: waiting makes sense only where a retry can help`);
      assert.deepEqual([outcome.type, "schedule" in outcome && outcome.schedule], ["snooze", schedule], code);
    } else {
      assert.deepEqual(
        [outcome.type, "permanent" in outcome && outcome.permanent],
        ["fail", !transient],
        code,
      );
    }
  }
  assert.equal(Outcome.failure(new HostingError("dns_not_ready", "x"), []).type, "snooze");
});

Deno.test("steps declare what they mean to the database, and their done ends carry it", () => {
  // The step whose result settles the stored password is the one that uses it.
  const result = { site_user: "a-example-1", doc_root: "/home/a-example-1/htdocs/a.example", created: true };
  assert.deepEqual(policiesOf(STEPS.cloudpanel_site, { ...result, credentials: "known" }), {
    settlesPassword: true,
    keeps: { site_user: "a-example-1", doc_root: "/home/a-example-1/htdocs/a.example" },
  });
  assert.deepEqual(policiesOf(STEPS.matomo_site, { matomo_site_id: 9, reused: false }), {
    keeps: { matomo_site_id: 9 },
  });
  for (const name of STEP_NAMES) {
    if (name !== "cloudpanel_site" && name !== "matomo_site") {
      assert.deepEqual(policiesOf(STEPS[name], {}), {});
    }
  }

  // What a removal reads of a site (the claim's target) is exactly what the steps keep.
  const kept = STEP_NAMES.flatMap((name) => STEPS[name].keeps ?? []);
  assert.deepEqual(kept.toSorted(), ["doc_root", "matomo_site_id", "site_user"]);

  // One step takes the domain, and it is the first step of the kind that builds a site.
  const claiming = STEP_NAMES.filter((name) => STEPS[name].claimsDomain);
  assert.deepEqual(claiming, ["cloudpanel_site"]);
  assert.equal(KINDS.provision.steps[0], "cloudpanel_site");
  for (const kind of JOB_KINDS) {
    if (kind !== "provision") assert.ok(!KINDS[kind].steps.some((s) => STEPS[s].claimsDomain), kind);
  }
});

Deno.test("a kind that goes on without its optional steps names the kind of job that does them later", () => {
  for (const kind of JOB_KINDS) {
    const backfill = KINDS[kind].backfill;
    if (!backfill) continue;
    const optional = KINDS[kind].steps.filter((s) => STEPS[s].optional);
    assert.ok(optional.length > 0, `${kind} has optional steps to go on without`);
    assert.deepEqual(KINDS[backfill].steps, optional, `${backfill} runs exactly ${kind}'s optional steps`);
    assert.equal(KINDS[backfill].backfill, undefined, `${backfill} does not go on without them itself`);
  }
  assert.equal(KINDS.provision.backfill, "analytics");
});
