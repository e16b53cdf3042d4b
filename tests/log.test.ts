/**
 * The single redaction point: every log line, and text stored elsewhere, loses every known secret.
 */
import assert from "node:assert/strict";
import { Logger, REDACTED, Redactor } from "../supabase/functions/hosting-automator/log.ts";

const PEM = [
  "-----BEGIN EC PRIVATE KEY-----",
  "MHcCAQEEIPnqf0Q6Hn1y0Xx1fakefakefakefakefakefakefakefakeoAoGCCqGSM49",
  "AwEHoUQDQgAEfakefakefakefakefakefakefakefakefakefakefakefakefakefake",
  "-----END EC PRIVATE KEY-----",
].join("\n");

Deno.test("a log line never carries a registered secret, in any encoding", () => {
  const lines: string[] = [];
  const redactor = new Redactor(["sb_secret_abcdef123456", PEM]);
  const logger = new Logger(redactor, { sink: (l) => void lines.push(l) });
  const password = "Qw8rTy2uIo9pAs7dFg6hJk5lZx4cVb3n";
  redactor.add(password);
  logger.info("values", {
    key: "sb_secret_abcdef123456",
    pem: PEM,
    url: `https://x/?p=${encodeURIComponent(password)}`,
    nested: { command: `clpctl site:add:static --siteUserPassword='${password}'` },
    line: PEM.split("\n")[1],
  });
  assert.equal(lines.length, 1);
  for (const secret of ["sb_secret_abcdef123456", password, ...PEM.split("\n").slice(1, 3)]) {
    assert.ok(!lines[0].includes(secret), `leaked ${secret.slice(0, 6)}`);
  }
  assert.ok(lines[0].includes(REDACTED));
  const record = JSON.parse(lines[0]);
  assert.equal(record.level, "info");
  assert.equal(record.msg, "values");
});

Deno.test("patterns catch secrets the redactor was never told: a PEM block, the clpctl password flag, token_auth", () => {
  const redactor = new Redactor();
  const text =
    `${PEM} --siteUserPassword='unknownPassw0rd' token_auth=deadbeefdeadbeef&x=1 postgres://u:pw1234@db:5432/x`;
  const out = redactor.redact(text);
  for (const secret of ["unknownPassw0rd", "deadbeefdeadbeef", "pw1234", PEM.split("\n")[1]]) {
    assert.ok(!out.includes(secret), secret);
  }
});

Deno.test("log levels below the configured one are dropped, and child loggers keep their fields", () => {
  const lines: string[] = [];
  const logger = new Logger(new Redactor(), { sink: (l) => void lines.push(l), level: "warn" });
  logger.info("hidden");
  logger.child({ site: "s1", job: 7 }).warn("shown", { step: "ssl_certificate", duration_ms: 5 });
  assert.equal(lines.length, 1);
  const record = JSON.parse(lines[0]);
  assert.deepEqual([record.site, record.job, record.step, record.duration_ms], [
    "s1",
    7,
    "ssl_certificate",
    5,
  ]);
});

Deno.test("errors are logged as name, code and message, without stacks", () => {
  const lines: string[] = [];
  const logger = new Logger(new Redactor(), { sink: (l) => void lines.push(l) });
  logger.error("failed", { error: Object.assign(new Error("boom"), { code: "x" }) });
  const record = JSON.parse(lines[0]);
  assert.deepEqual(record.error, { name: "Error", code: "x", message: "boom" });
});
