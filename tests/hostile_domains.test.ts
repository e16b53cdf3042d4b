/**
 * Hostile domains: a table of inputs, each with its documented answer (the canonical form, or refused with
 * `invalid_domain` and the rule that refuses it), then the same kind of rows on the real stack, where a refused
 * domain must fail its site without any command reaching the server or any request reaching Matomo.
 */
import assert from "node:assert/strict";
import {
  canonicalDomain,
  type Domain,
  MAX_INPUT_LENGTH,
  parseDomain,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import { isHostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { withStack } from "./support/stack.ts";

/** A refusal and the words of the rule that refuses it (matched against the public message). */
interface Refused {
  refused: RegExp;
}
type Answer = string | Refused;

const CHARS = /may only contain letters, digits, dots and hyphens/;
const SPACE = /contains white space/;
const INVISIBLE = /contains an invisible or formatting character/;
const CONTROL = /contains a control character/;
const URL_SYNTAX = /contains URL syntax/;
const FULLWIDTH_DOT = /full-width or ideographic dot/;
const RESPELL = /another form of a character/;
const IDN = /not a valid internationalised domain name|not a valid encoding/;
const IP = /is an IP address/;
const HYPHEN = /starts or ends with a hyphen/;
const DOUBLE_HYPHEN = /'--' as its third and fourth characters/;
const EMPTY_LABEL = /empty label/;
const TWO_LABELS = /at least two labels/;
const TLD = /top-level domain\) must be letters only/;
const RESERVED = /is reserved and can never be a public website/;
const TOO_LONG = /longer than 253 characters/;
const LABEL_TOO_LONG = /label is longer than 63 characters/;
const EMPTY = /it is empty/;
const no = (rule: RegExp): Refused => ({ refused: rule });

const L63 = "a".repeat(63);
/** 253 characters exactly, the longest name DNS carries. */
const MAX_NAME = `${L63}.${L63}.${L63}.${"b".repeat(53)}.example`;

/** Input, documented answer. Grouped by what the rows probe. */
const TABLE: ReadonlyArray<readonly [unknown, Answer]> = [
  // Plain names and letter case: lower-cased, otherwise unchanged.
  ["example.com", "example.com"],
  ["EXAMPLE.COM", "example.com"],
  ["ExAmPlE.CoM", "example.com"],
  ["www.example.com", "www.example.com"],
  ["a.example", "a.example"],
  ["site.test", "site.test"],
  ["example.org", "example.org"],
  ["www.sub.example.co.uk", "www.sub.example.co.uk"],
  ["1password.com", "1password.com"],
  ["123.example", "123.example"],
  ["a-b.example", "a-b.example"],
  ["a--b.example", "a--b.example"],
  ["x1.example", "x1.example"],
  [`${L63}.example`, `${L63}.example`],
  [MAX_NAME, MAX_NAME],
  // IDN: the Unicode and the punycode spelling give the same canonical (punycode) value.
  ["bücher.example", "xn--bcher-kva.example"],
  ["BÜCHER.example", "xn--bcher-kva.example"],
  ["Bücher.Example", "xn--bcher-kva.example"],
  ["xn--bcher-kva.example", "xn--bcher-kva.example"],
  ["XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"],
  ["Xn--Bcher-Kva.example", "xn--bcher-kva.example"],
  ["bu\u0308cher.example", "xn--bcher-kva.example"], // decomposed ü: the same text after canonical composition
  ["faß.de", "xn--fa-hia.de"], // ß is its own letter (IDNA 2008), not "ss"
  ["xn--zca.example", "xn--zca.example"],
  ["ß.example", "xn--zca.example"],
  ["例え.テスト", "xn--r8jz45g.xn--zckzah"],
  ["例え.xn--zckzah", "xn--r8jz45g.xn--zckzah"],
  ["ab.рф", "ab.xn--p1ai"],
  ["ab.XN--P1AI", "ab.xn--p1ai"],
  ["пример.испытание", "xn--e1afmkfd.xn--80akhbyknj4f"],
  ["ΣΑΣ.example", "xn--mxa9ab.example"],
  ["a.لا", "a.xn--mgb1d"],
  ["\u212Aelvin.example", "kelvin.example"], // the Kelvin sign is canonically the letter K
  // IPv4 in every form the WHATWG URL parser accepts ("ends in a number").
  ["1.2.3.0x4", no(IP)],
  ["0x7f.0x0.0x0.0x1", no(IP)],
  ["127.1", no(IP)],
  ["0177.0.0.1", no(IP)],
  ["2130706433", no(IP)],
  ["0x7F000001", no(IP)],
  ["127.0.0.1", no(IP)],
  ["192.168.0.1", no(IP)],
  ["127.0.0.1.", no(IP)],
  ["example.0x", no(IP)],
  ["example.0X", no(IP)],
  ["example.0xff", no(IP)],
  ["example.08", no(IP)],
  ["example.123", no(IP)],
  ["１２７.0.0.1", no(IP)], // full-width digits are mapped to ASCII by the host parser
  ["example.0x1g", no(TLD)], // not a number to WHATWG, but no top-level domain looks like this
  // White space of every kind, leading, trailing or inside.
  [" example.com", no(SPACE)],
  ["example.com ", no(SPACE)],
  ["exa mple.com", no(SPACE)],
  ["\texample.com", no(SPACE)],
  ["example.com\n", no(SPACE)],
  ["new\nline.example", no(SPACE)],
  ["cr\rlf.example", no(SPACE)],
  ["\u00a0example.com", no(SPACE)],
  ["example.com\u3000", no(SPACE)],
  ["\u2028example.com", no(SPACE)],
  ["\u200aexample.com", no(SPACE)],
  ["\u1680example.com", no(SPACE)],
  ["example.com\u0085", no(SPACE)],
  // Invisible characters: UTS #46 deletes some of them silently, so they would make a second spelling.
  ["exa\u200bmple.com", no(INVISIBLE)],
  ["exa\u200cmple.com", no(INVISIBLE)],
  ["exa\u200dmple.com", no(INVISIBLE)],
  ["exa\u2060mple.com", no(INVISIBLE)],
  ["\ufeffexample.com", no(INVISIBLE)],
  ["exa\u00admple.com", no(INVISIBLE)],
  ["example.com\u200b", no(INVISIBLE)],
  ["\u202aexample.com", no(INVISIBLE)],
  ["\u202bexample.com", no(INVISIBLE)],
  ["example\u202c.com", no(INVISIBLE)],
  ["\u202dexample.com", no(INVISIBLE)],
  ["moc.elpmaxe\u202e", no(INVISIBLE)],
  ["\u2066example.com", no(INVISIBLE)],
  ["\u2067example.com", no(INVISIBLE)],
  ["\u2068example.com", no(INVISIBLE)],
  ["example.com\u2069", no(INVISIBLE)],
  ["exa\u034fmple.com", no(INVISIBLE)],
  ["exa\ufe0fmple.com", no(INVISIBLE)],
  ["\u3164example.com", no(INVISIBLE)],
  ["\u061cexample.com", no(INVISIBLE)],
  // Full-width dots and other compatibility forms: refused, naming the canonical spelling.
  ["example\u3002com", no(FULLWIDTH_DOT)],
  ["example\uff0ecom", no(FULLWIDTH_DOT)],
  ["example\uff61com", no(FULLWIDTH_DOT)],
  ["ＥＸＡＭＰＬＥ.com", no(RESPELL)],
  ["ｅｘａｍｐｌｅ.com", no(RESPELL)],
  ["ﬀ.example", no(RESPELL)],
  ["ǅ.example", no(RESPELL)],
  ["ſ.example", no(RESPELL)],
  ["①.example", no(CHARS)],
  ["ⓔxample.com", no(CHARS)],
  ["Ⅻ.example", no(CHARS)],
  ["💩.example", no(CHARS)],
  // Punycode that does not decode, decodes to plain ASCII, to a symbol, or to a label with edge hyphens.
  ["xn--a.example", no(IDN)],
  ["xn--.example", no(IDN)],
  ["xn--zz-.example", no(IDN)],
  ["xn--abc-.example", no(IDN)],
  ["example.xn--", no(IDN)],
  ["xn--0.example", no(IDN)],
  ["xn--ka.example", no(IDN)],
  ["xn--bücher.example", no(IDN)],
  ["xn--ls8h.example", no(/xn-- encodes a symbol/)],
  ["xn----dha.example", no(HYPHEN)],
  ["xn----eha.example", no(HYPHEN)],
  ["a\u05d0.example", no(IDN)], // left-to-right and right-to-left letters in one label
  ["\u0661\u0662.example", no(IDN)],
  // Labels: hyphens, reserved `--`, lengths.
  ["-lead.example", no(HYPHEN)],
  ["trail-.example", no(HYPHEN)],
  ["a.-example", no(HYPHEN)],
  ["example.com-", no(HYPHEN)],
  ["--.example", no(HYPHEN)],
  ["ab--cd.example", no(DOUBLE_HYPHEN)],
  ["xy--z.example", no(DOUBLE_HYPHEN)],
  [`${"a".repeat(64)}.example`, no(LABEL_TOO_LONG)],
  [`${"ü".repeat(60)}.example`, no(LABEL_TOO_LONG)], // 60 letters, but more than 63 octets in punycode
  [`${L63}.${L63}.${L63}.${"b".repeat(54)}.example`, no(TOO_LONG)], // 254
  ["a".repeat(MAX_INPUT_LENGTH + 1), no(TOO_LONG)],
  // Structure: empty, single label, empty labels, trailing dot.
  ["", no(EMPTY)],
  [null, no(EMPTY)],
  [undefined, no(EMPTY)],
  [42, no(EMPTY)],
  [{ toString: () => "example.com" }, no(EMPTY)],
  ["localhost", no(TWO_LABELS)],
  ["LOCALHOST", no(TWO_LABELS)],
  ["com", no(TWO_LABELS)],
  [".", no(EMPTY_LABEL)],
  ["..", no(EMPTY_LABEL)],
  [".example.com", no(EMPTY_LABEL)],
  ["example..com", no(EMPTY_LABEL)],
  ["example.com.", no(EMPTY_LABEL)],
  ["example.com..", no(EMPTY_LABEL)],
  // Top-level domains: letters only, and not one of the special-use names.
  ["a.b", no(TLD)],
  ["a.b1", no(TLD)],
  ["example.x-y", no(TLD)],
  ["a.localhost", no(RESERVED)],
  ["printer.local", no(RESERVED)],
  ["PRINTER.LOCAL", no(RESERVED)],
  ["x.invalid", no(RESERVED)],
  ["hidden.onion", no(RESERVED)],
  ["1.0.0.127.in-addr.arpa", no(RESERVED)],
  ["router.home.arpa", no(RESERVED)],
  ["svc.internal", no(RESERVED)],
  ["a.alt", no(RESERVED)],
  // URLs, user info, ports, IPv6, percent-escapes, wildcards, underscores.
  ["https://example.com", no(URL_SYNTAX)],
  ["http://example.com/", no(URL_SYNTAX)],
  ["example.com/path", no(URL_SYNTAX)],
  ["example.com:443", no(URL_SYNTAX)],
  ["user@example.com", no(URL_SYNTAX)],
  ["example.com?x=1", no(URL_SYNTAX)],
  ["example.com#top", no(URL_SYNTAX)],
  ["example.com\\x", no(URL_SYNTAX)],
  ["ex%61mple.com", no(URL_SYNTAX)],
  ["example%2ecom", no(URL_SYNTAX)],
  ["[::1]", no(URL_SYNTAX)],
  ["::1", no(URL_SYNTAX)],
  ["2001:db8::1", no(URL_SYNTAX)],
  ["[2001:db8::1]:443", no(URL_SYNTAX)],
  ["*.example.com", no(/wildcard or underscore/)],
  ["a_b.example", no(/wildcard or underscore/)],
  ["_dmarc.example.com", no(/wildcard or underscore/)],
  // Shell metacharacters of every kind, quotes, control characters.
  ["a;b.example", no(CHARS)],
  ["a|b.example", no(CHARS)],
  ["a&b.example", no(CHARS)],
  ["$(id).example", no(CHARS)],
  ["`id`.example", no(CHARS)],
  ["${IFS}.example", no(CHARS)],
  ["a>b.example", no(CHARS)],
  ["a<b.example", no(CHARS)],
  ["a(b).example", no(CHARS)],
  ["a{b,c}.example", no(CHARS)],
  ["a!b.example", no(CHARS)],
  ["~a.example", no(CHARS)],
  ["a+b.example", no(CHARS)],
  ["a=b.example", no(CHARS)],
  ["a,b.example", no(CHARS)],
  ["it's.example", no(CHARS)],
  ['dq"d.example', no(CHARS)],
  ["a^b.example", no(CHARS)],
  ["evil.example; rm -rf /", no(CHARS)],
  ["evil.example;reboot", no(CHARS)],
  ["example.com' --siteUser='root", no(CHARS)],
  ["nul\u0000.example", no(CONTROL)],
  ["example.com\u0000", no(CONTROL)],
  ["\u001b[31m.example", no(CONTROL)],
  ["del\u007f.example", no(CONTROL)],
  ["\ud800.example", no(CHARS)], // a lone surrogate
  ["\ue000.example", no(CHARS)], // private use
];

function answerOf(input: unknown): Answer {
  try {
    return parseDomain(input);
  } catch (error) {
    assert.ok(isHostingError(error), `${JSON.stringify(input)} threw ${error}`);
    assert.equal(error.code, "invalid_domain");
    assert.match(error.publicMessage, /^The domain is invalid: .+\.$/);
    return { refused: new RegExp(error.publicMessage.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) };
  }
}

/** The public message for a refused input (it goes to `sites.error_message`). */
function messageOf(input: unknown): string {
  try {
    parseDomain(input);
  } catch (error) {
    if (isHostingError(error)) return error.publicMessage;
    throw error;
  }
  throw new Error(`${JSON.stringify(input)} was accepted`);
}

const show = (input: unknown) =>
  typeof input === "string" ? JSON.stringify(input.slice(0, 80)) : String(input);

Deno.test("the hostile domain table: every input gets its documented answer", () => {
  assert.equal(MAX_NAME.length, 253);
  assert.ok(TABLE.length >= 100, `${TABLE.length} rows`);
  const wrong: string[] = [];
  for (const [input, expected] of TABLE) {
    const got = answerOf(input);
    if (typeof expected === "string") {
      if (got !== expected) wrong.push(`${show(input)}: expected ${expected}, got ${JSON.stringify(got)}`);
    } else if (typeof got === "string") {
      wrong.push(`${show(input)}: expected refused (${expected.refused}), accepted as ${got}`);
    } else if (!expected.refused.test(messageOf(input))) {
      wrong.push(`${show(input)}: refused by another rule: ${messageOf(input)}`);
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("accepted domains are canonical: a fixed point, plain ASCII, within the DNS limits", () => {
  for (const [, expected] of TABLE) {
    if (typeof expected !== "string") continue;
    assert.equal(parseDomain(expected), expected, "parsing the canonical form gives it back");
    assert.equal(canonicalDomain(expected), expected);
    assert.match(expected, /^[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+$/);
    assert.ok(expected.length <= 253);
  }
});

Deno.test("spellings of one domain give one canonical value and one site user, or are refused", () => {
  const groups: Record<string, string[]> = {
    "xn--bcher-kva.example": [
      "bücher.example",
      "BÜCHER.EXAMPLE",
      "xn--bcher-kva.example",
      "XN--BCHER-KVA.example",
      "bu\u0308cher.example",
      "bücher.example.",
      "bü\u200bcher.example",
      "bücher\u3002example",
      " bücher.example",
      "ｂücher.example",
    ],
    "example.com": [
      "example.com",
      "Example.Com",
      "EXAMPLE.COM",
      "example.com.",
      "example\uff0ecom",
      "example\uff61com",
      "example\u3002com",
      "exa\u00admple.com",
      "\ufeffexample.com",
      "ＥＸＡＭＰＬＥ.ＣＯＭ",
      "example.com\u200d",
      "\u202eexample.com",
    ],
  };
  for (const [canonical, spellings] of Object.entries(groups)) {
    const users = new Set<string>();
    let accepted = 0;
    for (const spelling of spellings) {
      const got = answerOf(spelling);
      if (typeof got === "string") {
        assert.equal(got, canonical, JSON.stringify(spelling));
        users.add(siteUserFor(got as Domain));
        accepted++;
      }
    }
    assert.ok(accepted >= 3, `${canonical}: case and IDN spellings are accepted`);
    assert.equal(users.size, 1, `${canonical}: one site user for every accepted spelling`);
  }
});

Deno.test("refusals name the rule without echoing invisible, control or bidi characters", () => {
  for (const [input, expected] of TABLE) {
    if (typeof expected === "string") continue;
    const message = messageOf(input);
    assert.doesNotMatch(message, /[\p{Cc}\p{Cf}\u2028\u2029\u00a0\u3000]/u, show(input));
    assert.ok(message.length <= 400, `${show(input)}: ${message.length} characters`);
  }
  assert.match(messageOf("exa\u200bmple.com"), /U\+200B/);
  assert.match(messageOf("a;b.example"), /';' \(U\+003B\)/);
  assert.match(messageOf("ＥＸＡＭＰＬＥ.com"), /write it as example\.com\.$/);
});

Deno.test("a 1 MB input, and the longest inputs that are looked at, are refused quickly", () => {
  const huge = [
    "a".repeat(1 << 20),
    `${"a.".repeat(1 << 19)}`,
    `${"\u200b".repeat(1 << 20)}`,
    `${"-".repeat(1 << 20)}.example`,
    `${"ü".repeat(1 << 20)}`,
  ];
  for (const input of huge) {
    const started = performance.now();
    assert.match(messageOf(input), TOO_LONG);
    const ms = performance.now() - started;
    assert.ok(ms < 50, `${input.length} characters took ${ms.toFixed(2)} ms`);
  }
  // Just under the bound every character is examined: still no backtracking blow-up.
  const longest = [
    "a".repeat(MAX_INPUT_LENGTH),
    "ü".repeat(MAX_INPUT_LENGTH),
    "a-".repeat(MAX_INPUT_LENGTH / 2),
    `${"a.".repeat(MAX_INPUT_LENGTH / 2 - 1)}a;`,
    `${"xn--".repeat(MAX_INPUT_LENGTH / 4)}`,
    `${"1.".repeat(MAX_INPUT_LENGTH / 2 - 1)}0x`,
  ];
  for (const input of longest) {
    const started = performance.now();
    messageOf(input);
    const ms = performance.now() - started;
    assert.ok(ms < 50, `${input.slice(0, 8)}… (${input.length}) took ${ms.toFixed(2)} ms`);
  }
});

/** Refused rows for the real stack: IPv4 forms, invisible characters, shell metacharacters, and the rest. */
const STACK_REFUSED = [
  "1.2.3.0x4",
  "0x7f.0x0.0x0.0x1",
  "127.1",
  "0177.0.0.1",
  "2130706433",
  "example.0x",
  "exa\u200bmple.com",
  "exa\u00admple.com",
  "\u202eexample.com",
  "\ufeffexample.com",
  "example\u3002com",
  "ＥＸＡＭＰＬＥ.net",
  "xn--a.example",
  "xn--ls8h.example",
  "ab--cd.example",
  "evil.example;reboot",
  "$(reboot).example",
  "`id`.example",
  "a|b.example",
  "example.com' --siteUser='root",
  "new\nline.example",
  " lead.example",
  "https://url.example",
  "printer.local",
  "*.wild.example",
  "trailing.example.",
];
/** Accepted rows alongside, so the run is not vacuous: they reach the server in their canonical form. */
const STACK_ACCEPTED: Record<string, string> = {
  "Bücher.Example": "xn--bcher-kva.example",
  "HOSTILE-OK.example": "hostile-ok.example",
};

Deno.test("on the real stack, refused domains fail their site and reach neither CloudPanel nor Matomo", async () => {
  await withStack({ label: "hostile_domains" }, async (stack) => {
    // Every Matomo request's site parameters, recorded by a rule that never injects anything.
    const matomoSites: string[] = [];
    stack.matomo!.failWhen((request) => {
      for (const name of ["url", "urls[0]", "siteName"]) {
        if (request.params[name] !== undefined) matomoSites.push(request.params[name]);
      }
      return false;
    }, { kind: "garbage" });

    const refusedIds = new Map<string, string>();
    for (const domain of STACK_REFUSED) {
      refusedIds.set(await stack.insertSite(domain, { status_dns: "active" }), domain);
    }
    const acceptedIds = new Map<string, string>();
    for (const domain of Object.keys(STACK_ACCEPTED)) {
      acceptedIds.set(await stack.insertSite(domain, { status_dns: "active" }), STACK_ACCEPTED[domain]);
    }

    const response = await stack.request("", { body: {}, query: "wait=true" });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.outcomes.length, STACK_REFUSED.length + acceptedIds.size);

    for (const [id, domain] of refusedIds) {
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "failed", `${JSON.stringify(domain)} failed`);
      assert.match(row.error_message ?? "", /^The domain is invalid: /, JSON.stringify(domain));
      assert.equal(row.error_message, messageOf(domain), "the stored message is the rule's public message");
      assert.equal(row.hosting_doc_root, null);
    }
    for (const [id, canonical] of acceptedIds) {
      const row = await stack.site(id);
      assert.equal(row.status_hosting, "active", `${canonical}: ${row.error_message}`);
      assert.equal(row.hosting_doc_root, `/home/${siteUserFor(canonical as Domain)}/htdocs/${canonical}`);
    }

    const state = await stack.simState();
    const reached = new Set(state.calls.map((call) => call.domainName));
    assert.deepEqual(
      [...reached].sort(),
      Object.values(STACK_ACCEPTED).sort(),
      "clpctl saw only the accepted domains, in their canonical form",
    );
    assert.ok(matomoSites.length > 0, "the spy saw the accepted domains' requests");
    const matomoHosts = new Set(matomoSites.map((site) => site.replace(/^https:\/\//, "")));
    assert.deepEqual(
      [...matomoHosts].sort(),
      Object.values(STACK_ACCEPTED).sort(),
      "Matomo heard only about the accepted domains",
    );
  });
});
