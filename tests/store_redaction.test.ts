/**
 * The database's one redaction point: the store redacts every text it writes, whatever its caller passes, and
 * leaves structured values (journal results, doc roots) exactly as given.
 */
import assert from "node:assert/strict";
import { Redactor } from "../supabase/functions/hosting-automator/log.ts";
import { type SqlCaller, Store } from "../supabase/functions/hosting-automator/store.ts";
import { registerSecret } from "./support/env.ts";

Deno.test("every text the store writes passes the redactor; results and doc roots are written as given", async () => {
  const secret = registerSecret(`Pw${crypto.randomUUID().replaceAll("-", "")}`);
  const written: Array<{ fn: string; args: Record<string, unknown> }> = [];
  const call: SqlCaller = (fn, args) => {
    written.push({ fn, args });
    if (fn === "hosting_advance") return Promise.resolve({ ok: true });
    if (fn === "hosting_fail_job") return Promise.resolve({ state: "failed", attempts: 1 });
    return Promise.resolve(fn === "hosting_log_event" ? null : true);
  };
  const store = new Store(call).withRedactor(new Redactor([secret]));
  const lease = { jobId: 1, leaseToken: crypto.randomUUID() };
  const leak = `clpctl said: --siteUserPassword=${secret}`;
  const result = {
    site_user: "shop-example-abc123",
    doc_root: "/home/shop-example-abc123/htdocs/shop.example",
  };

  await store.advance(lease, 30, {
    done: { step: "cloudpanel_site", state: "done", result, message: leak },
    start: "ssl_certificate",
  });
  await store.complete(lease, { docRoot: result.doc_root, matomoSiteId: 4, message: leak });
  await store.fail(lease, {
    code: "cloudpanel_failed",
    publicMessage: leak,
    internalMessage: leak,
    permanent: true,
  });
  await store.release(lease, leak, {
    step: "ssl_certificate",
    state: "failed",
    code: "interrupted",
    message: leak,
  });
  await store.logEvent({
    siteId: crypto.randomUUID(),
    jobId: 1,
    step: "matomo_site",
    level: "warn",
    code: "x",
    message: leak,
  });

  const text = JSON.stringify(written);
  assert.equal(written.length, 5);
  assert.ok(!text.includes(secret), "no write carries the secret");
  assert.ok(text.includes("[REDACTED]"), "the texts were redacted, not dropped");
  const advance = written[0].args.p_done as { result: unknown };
  assert.deepEqual(advance.result, result, "the journal result is written exactly");
  assert.equal(written[1].args.p_doc_root, result.doc_root);
});
