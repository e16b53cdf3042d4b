/**
 * Domain rules: what may reach a shell, the derived site user, passwords, quoting.
 */
import assert from "node:assert/strict";
import {
  docRootFor,
  generatePassword,
  parseDomain,
  PASSWORD_RE,
  shellQuote,
  SITE_USER_RE,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";

function refused(input: unknown): string {
  try {
    parseDomain(input);
  } catch (error) {
    assert.ok(isHostingError(error) && error.code === "invalid_domain");
    return error.publicMessage;
  }
  throw new Error(`${JSON.stringify(input)} was accepted`);
}

Deno.test("valid domains come back lower-case ASCII, IDN as punycode", () => {
  assert.equal(parseDomain("Example.COM"), "example.com");
  assert.equal(parseDomain("bücher.de"), "xn--bcher-kva.de");
  assert.equal(parseDomain("www.sub.example.co.uk"), "www.sub.example.co.uk");
  assert.equal(parseDomain(`${"a".repeat(63)}.example`), `${"a".repeat(63)}.example`);
});

Deno.test("shell metacharacters, spaces, quotes, overlong labels and IP addresses are refused with the rule", () => {
  const cases: Array<[unknown, RegExp]> = [
    ["", /empty/],
    [null, /empty/],
    ["a.example; rm -rf /", /only contain letters, digits, dots and hyphens/],
    ["$(id).example", /only contain/],
    ["`id`.example", /only contain/],
    ["a b.example", /only contain/],
    ["it's.example", /only contain/],
    ['"q".example', /only contain/],
    ["new\nline.example", /only contain/],
    ["tab\t.example", /only contain/],
    ["zero\u200bwidth.example", /only contain/],
    [`${"a".repeat(64)}.example`, /label is longer than 63/],
    [`${"a.".repeat(127)}example`, /longer than 253/],
    ["192.168.0.1", /IP address/],
    ["[::1]", /only contain/],
    ["localhost", /at least two labels/],
    ["-lead.example", /hyphen/],
    ["trail-.example", /hyphen/],
    ["a..example", /empty label/],
    ["example.com.", /empty label/],
    ["xn--ls8h.xn--", /hyphen|not a valid/],
  ];
  for (const [input, rule] of cases) {
    const message = refused(input);
    assert.match(message, /^The domain is invalid: /);
    assert.match(message, rule, `${JSON.stringify(input)}: ${message}`);
  }
});

Deno.test("the site user is derived, stable, unique per domain and matches CloudPanel's rule", () => {
  const seen = new Set<string>();
  for (
    const raw of [
      "example.com",
      "www.example.com",
      "1password.com",
      "xn--bcher-kva.de",
      `${"a".repeat(63)}.example`,
    ]
  ) {
    const domain = parseDomain(raw);
    const user = siteUserFor(domain);
    assert.match(user, SITE_USER_RE);
    assert.equal(siteUserFor(domain), user, "stable across calls");
    assert.ok(!seen.has(user), "unique per domain");
    seen.add(user);
  }
  assert.equal(
    docRootFor(siteUserFor(parseDomain("example.com")), parseDomain("example.com")),
    `/home/${siteUserFor(parseDomain("example.com"))}/htdocs/example.com`,
  );
});

Deno.test("passwords are 32 random letters and digits", () => {
  const passwords = new Set(Array.from({ length: 200 }, () => generatePassword()));
  assert.equal(passwords.size, 200);
  for (const p of passwords) assert.match(p, PASSWORD_RE);
  assert.equal([...passwords][0].length, 32);
  assert.throws(() => generatePassword(8), RangeError);
});

Deno.test("single quoting survives a real shell whatever the value", async () => {
  const values = ["plain", "it's", "$(id)", "`id`", "a;b", "new\nline", "back\\slash", "'"];
  for (const value of values) {
    const out = await new Deno.Command("bash", { args: ["-c", `printf %s ${shellQuote(value)}`] }).output();
    assert.equal(new TextDecoder().decode(out.stdout), value);
  }
});
