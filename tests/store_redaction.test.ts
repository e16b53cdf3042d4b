/**
 * The database's one redaction point: the store redacts every text it writes, whatever its caller passes, and
 * leaves structured values (journal results, kept values, doc roots) exactly as given.
 */
import assert from "node:assert/strict";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { Redactor } from "../supabase/functions/hosting-automator/log.ts";
import { Outcome } from "../supabase/functions/hosting-automator/outcome.ts";
import { type SqlCaller, Store } from "../supabase/functions/hosting-automator/store.ts";
import { registerSecret } from "./support/env.ts";

/** Every value under `key`, at any depth of the written arguments. */
function valuesAt(value: unknown, key: string): unknown[] {
  if (Array.isArray(value)) return value.flatMap((v) => valuesAt(v, key));
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([k, v]) => [...(k === key ? [v] : []), ...valuesAt(v, key)]);
}

/** Every string at any depth. */
function stringsIn(value: unknown): string[] {
  if (typeof value === "string") return [value];
  if (value === null || typeof value !== "object") return [];
  return Object.values(value).flatMap(stringsIn);
}

Deno.test("every text the store writes passes the redactor; results and doc roots are written as given", async () => {
  const secret = registerSecret(`Pw${crypto.randomUUID().replaceAll("-", "")}`);
  const written: Array<{ fn: string; args: Record<string, unknown> }> = [];
  const call: SqlCaller = (fn, args) => {
    written.push({ fn, args });
    if (fn === "hosting_advance") return Promise.resolve({ ok: true });
    // hosting_exit's answer: the job's state now, as the outcome's type leaves it.
    const type = (args.p_outcome as { type: string }).type;
    const state = { active: "succeeded", removed: "succeeded", fail: "failed", snooze: "failed" }[type] ??
      "queued";
    return Promise.resolve({ ok: true, state, attempts: 1 });
  };
  const store = new Store(call).withRedactor(new Redactor([secret]));
  const lease = { jobId: 1, leaseToken: crypto.randomUUID() };
  const leak = `clpctl said: --siteUserPassword=${secret}`;
  const result = {
    site_user: "shop-example-abc123",
    doc_root: "/home/shop-example-abc123/htdocs/shop.example",
  };
  const siteEnd = {
    step: "cloudpanel_site" as const,
    state: "done" as const,
    result,
    message: leak,
    keeps: result,
  };
  const cut = {
    step: "ssl_certificate" as const,
    state: "failed" as const,
    code: "interrupted",
    message: leak,
  };
  const failure = (code: "cloudpanel_failed" | "dns_not_ready" | "ssh_unreachable") =>
    new HostingError(code, leak, { publicMessage: leak });

  await store.advance(lease, 30, { done: [siteEnd], start: "ssl_certificate" });
  const outcomes = [
    Outcome.active({
      docRoot: result.doc_root,
      matomoSiteId: 4,
      message: leak,
      certificateExpiresAt: null,
      backfillKind: null,
    }, [siteEnd]),
    Outcome.removed(leak, [cut]),
    Outcome.failure(failure("cloudpanel_failed"), [cut]),
    Outcome.failure(failure("dns_not_ready"), [cut]),
    Outcome.release(leak, [cut]),
    Outcome.serverTrouble(failure("ssh_unreachable"), [cut]),
  ];
  assert.deepEqual(
    outcomes.map((o) => o.type),
    ["active", "removed", "fail", "snooze", "release", "server_trouble"],
    "one of each way out",
  );
  for (const outcome of outcomes) await store.exit(lease, outcome);

  const text = JSON.stringify(written);
  assert.equal(written.length, 1 + outcomes.length, "one statement each");
  assert.ok(!text.includes(secret), "no write carries the secret");
  for (const { fn, args } of written) {
    const texts = stringsIn(args).filter((t) => t.startsWith("clpctl said"));
    assert.ok(texts.length >= 1, `${fn} wrote its texts`);
    for (const t of texts) {
      assert.equal(t, "clpctl said: --siteUserPassword=[REDACTED]", `${fn}: redacted, not dropped`);
    }
  }
  assert.deepEqual(valuesAt(written[0].args, "result"), [result], "the journal result is written exactly");
  assert.deepEqual(valuesAt(written[0].args, "keeps"), [result], "kept values are written exactly");
  assert.deepEqual(valuesAt(written[1].args, "result"), [result]);
  // The completion's doc root, and the site step's in its result and in what it keeps.
  const docRoots = valuesAt(written[1].args, "doc_root");
  assert.deepEqual(docRoots, Array(3).fill(result.doc_root), "the doc root is written exactly");
});
