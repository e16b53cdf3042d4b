/**
 * Domain rules: what may reach a shell, the derived site user, passwords, quoting.
 */
import assert from "node:assert/strict";
import {
  canonicalDomain,
  docRootFor,
  type Domain,
  endsInNumber,
  generatePassword,
  parseDomain,
  PASSWORD_RE,
  shellQuote,
  SITE_USER_RE,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import { HostingError, isHostingError } from "../supabase/functions/hosting-automator/errors.ts";

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

Deno.test("IPv4 addresses in every form a browser accepts are refused, not taken for domains", () => {
  // The WHATWG URL parser reads a host whose last label is a number (decimal, 0x hex, 0-prefixed octal) as
  // IPv4: each of these is 127.0.0.1 or 1.2.3.4 to a browser or a URL library.
  for (
    const input of [
      "1.2.3.0x4",
      "0x7f.0x0.0x0.0x1",
      "127.1",
      "0177.0.0.1",
      "2130706433",
      "0x7F000001",
      "example.0x",
      "example.0X",
      "example.09",
      "127.0.0.1.",
    ]
  ) {
    assert.match(refused(input), /IP address/, JSON.stringify(input));
  }
});

Deno.test("ends in a number follows the WHATWG URL standard: decimal, octal or 0x hex, one trailing dot dropped", () => {
  const cases: Array<[string, boolean]> = [
    ["127.0.0.1", true],
    ["example.123", true],
    ["example.09", true], // all digits: a number to the checker, even though 09 is no valid octal
    ["example.0x", true], // "0x" alone is zero
    ["example.0XfF", true],
    ["example.1.", true], // one trailing empty label is dropped
    ["example.1..", false], // only one
    ["example.0x1g", false],
    ["example.com", false],
    ["1.example", false],
    ["example.x0", false],
    [".", false],
    ["", false],
  ];
  for (const [host, expected] of cases) assert.equal(endsInNumber(host), expected, host);
});

Deno.test("the canonical form: case and Unicode or punycode spelling give one value, other variants are refused", () => {
  assert.equal(canonicalDomain, parseDomain, "one function under the name the storage code uses");
  for (
    const spelling of ["Bücher.Example", "BÜCHER.EXAMPLE", "xn--bcher-kva.example", "XN--BCHER-KVA.example"]
  ) {
    assert.equal(canonicalDomain(spelling), "xn--bcher-kva.example", spelling);
  }
  const variants: Array<[string, RegExp]> = [
    ["bücher.example.", /empty label/],
    ["bü\u200bcher.example", /invisible or formatting character, U\+200B/],
    ["bü\u00adcher.example", /invisible or formatting character, U\+00AD/],
    ["\u2067bücher.example", /invisible or formatting character, U\+2067/],
    ["bücher\u3002example", /full-width or ideographic dot/],
    ["bücher\uff0eexample", /full-width or ideographic dot/],
    ["bücher\uff61example", /full-width or ideographic dot/],
    ["ｂücher.example", /another form of a character .*; write it as bücher\.example/],
    [" bücher.example", /white space, U\+0020/],
    ["bücher.example\u3000", /white space, U\+3000/],
  ];
  for (const [input, rule] of variants) assert.match(refused(input), rule, JSON.stringify(input));
});

Deno.test("labels and top-level domains follow the host-name rules a site factory needs", () => {
  assert.match(refused("ab--cd.example"), /'--' as its third and fourth characters/);
  assert.equal(parseDomain("a--b.example"), "a--b.example", "'--' elsewhere is an ordinary label");
  assert.match(refused("xn----dha.example"), /internationalised label starts or ends with a hyphen/);
  assert.match(refused("xn--ls8h.example"), /xn-- encodes a symbol/);
  assert.match(refused("a.b1"), /top-level domain\) must be letters only/);
  assert.match(refused("example.0x1g"), /top-level domain\) must be letters only/);
  for (const tld of ["localhost", "local", "invalid", "onion", "alt", "arpa", "internal"]) {
    assert.match(refused(`site.${tld}`), /is reserved and can never be a public website/, tld);
  }
  // Test and documentation names stay usable: the demo and the tests are built on them.
  for (const name of ["site.test", "shop.example", "example.com", "example.net", "example.org"]) {
    assert.equal(parseDomain(name), name);
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

Deno.test("the document root refuses a site user or domain that did not pass the rules", () => {
  const user = siteUserFor(parseDomain("example.com"));
  for (const domain of ["../etc", "example.com/../../root", "", "example", ".example.com"]) {
    assert.throws(
      () => docRootFor(user, domain as Domain),
      (e) => e instanceof HostingError && e.code === "internal",
    );
  }
  assert.throws(() => docRootFor("../root" as typeof user, parseDomain("example.com")), HostingError);
});

Deno.test("passwords are 32 random letters and digits", () => {
  const passwords = new Set(Array.from({ length: 200 }, () => generatePassword()));
  assert.equal(passwords.size, 200);
  for (const p of passwords) assert.match(p, PASSWORD_RE);
  assert.equal([...passwords][0].length, 32);
  assert.throws(() => generatePassword(8), RangeError);
  assert.throws(() => generatePassword(24.5), RangeError);
  assert.equal(generatePassword(128).length, 128);
});

Deno.test("single quoting survives a real shell whatever the value", async () => {
  const values = ["plain", "it's", "$(id)", "`id`", "a;b", "new\nline", "back\\slash", "'"];
  for (const value of values) {
    const out = await new Deno.Command("bash", { args: ["-c", `printf %s ${shellQuote(value)}`] }).output();
    assert.equal(new TextDecoder().decode(out.stdout), value);
  }
  // A shell argument cannot hold a NUL: it would be cut there, so it is refused rather than quoted.
  assert.throws(() => shellQuote("a\0b"), HostingError);
});
