/**
 * One certificate-names rule, from the Public Suffix List: the table below is what it gives, and the function's
 * DNS check, the clpctl simulator's certificate (in-process and as the `clpctl` command) and the registered
 * domain agree with it on every row.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  certificateNames,
  registeredDomain,
} from "../supabase/functions/hosting-automator/certificate_names.ts";
import { parseDomain } from "../supabase/functions/hosting-automator/domain.ts";
import { type Checks, type StepContext, STEPS } from "../supabase/functions/hosting-automator/steps.ts";
import { readSimState, runClpctl } from "../dev/clpctl_sim.ts";

interface Case {
  /** As the Hub writes it; the function canonicalises it (an IDN becomes punycode). */
  input: string;
  names: string[];
  registered: string;
  why: string;
}

const CASES: Case[] = [
  {
    input: "example.com",
    names: ["example.com", "www.example.com"],
    registered: "example.com",
    why: "an apex: its www. twin too",
  },
  {
    input: "www.example.com",
    names: ["example.com", "www.example.com"],
    registered: "example.com",
    why: "www. + an apex: both, apex first",
  },
  {
    input: "shop.co.uk",
    names: ["shop.co.uk", "www.shop.co.uk"],
    registered: "shop.co.uk",
    why: "co.uk is a public suffix, so shop.co.uk is an apex",
  },
  {
    input: "www.shop.co.uk",
    names: ["shop.co.uk", "www.shop.co.uk"],
    registered: "shop.co.uk",
    why: "www. + an apex under a two-label suffix",
  },
  {
    input: "blog.example.com",
    names: ["blog.example.com"],
    registered: "example.com",
    why: "a sub-domain is certified alone",
  },
  {
    input: "www.blog.example.com",
    names: ["www.blog.example.com"],
    registered: "example.com",
    why: "www. + a sub-domain is still a sub-domain",
  },
  {
    input: "a.b.example.co.uk",
    names: ["a.b.example.co.uk"],
    registered: "example.co.uk",
    why: "a deep sub-domain; its registered domain is below co.uk",
  },
  {
    input: "bücher.example",
    names: ["xn--bcher-kva.example", "www.xn--bcher-kva.example"],
    registered: "xn--bcher-kva.example",
    why: "an IDN, as punycode, under a TLD the list does not know",
  },
  {
    input: "shop.xn--fiqs8s",
    names: ["shop.xn--fiqs8s", "www.shop.xn--fiqs8s"],
    registered: "shop.xn--fiqs8s",
    why: "an apex under an IDN top-level domain (.中国)",
  },
  {
    input: "firma.xn--55qx5d.cn",
    names: ["firma.xn--55qx5d.cn", "www.firma.xn--55qx5d.cn"],
    registered: "firma.xn--55qx5d.cn",
    why: "an IDN public suffix of two labels (公司.cn): firma.公司.cn is an apex",
  },
  {
    input: "bakery.test",
    names: ["bakery.test", "www.bakery.test"],
    registered: "bakery.test",
    why: ".test is not in the list: the default rule makes the last label the suffix",
  },
  {
    input: "www.bakery.test",
    names: ["bakery.test", "www.bakery.test"],
    registered: "bakery.test",
    why: "www. + an apex under .test",
  },
  {
    input: "blog.bakery.test",
    names: ["blog.bakery.test"],
    registered: "bakery.test",
    why: "a sub-domain under .test",
  },
  {
    input: "flower-shop.example",
    names: ["flower-shop.example", "www.flower-shop.example"],
    registered: "flower-shop.example",
    why: ".example, as the demo uses it",
  },
  {
    input: "someone.github.io",
    names: ["someone.github.io", "www.someone.github.io"],
    registered: "someone.github.io",
    why: "the list's private section counts: github.io is a suffix, as for Let's Encrypt's limits",
  },
  {
    input: "blog.someone.github.io",
    names: ["blog.someone.github.io"],
    registered: "someone.github.io",
    why: "a sub-domain under a private suffix",
  },
  {
    input: "co.uk",
    names: ["co.uk"],
    registered: "co.uk",
    why: "a public suffix itself: no apex below it, counted as its own",
  },
];

Deno.test("the certificate's names and the registered domain, case by case", () => {
  for (const c of CASES) {
    const domain = parseDomain(c.input);
    assert.deepEqual(certificateNames(domain), c.names, `${c.input}: ${c.why}`);
    assert.equal(registeredDomain(domain), c.registered, `${c.input}: ${c.why}`);
  }
});

/** The names the function's DNS check asks about for a domain: the step itself, with checks that record. */
async function dnsCheckNames(domain: string): Promise<string[]> {
  let asked: string[] = [];
  const checks: Checks = {
    publicIps: ["203.0.113.10"],
    dnsPointsTo: (names) => {
      asked = names;
      return Promise.resolve({ answered: Object.fromEntries(names.map((n) => [n, ["203.0.113.10"]])) });
    },
    servedCertificate: () => Promise.reject(new Error("not asked by the DNS check")),
  };
  const context = { domain: parseDomain(domain), checks, signal: new AbortController().signal };
  const done = await STEPS.dns_check.run(context as unknown as StepContext, 1_000);
  assert.deepEqual(done.result.names, asked);
  return asked;
}

Deno.test("the function's DNS check and the clpctl simulator's certificate cover the same names", async () => {
  const dir = await Deno.makeTempDir({ prefix: "certificate-names-test-" });
  try {
    for (const [i, c] of CASES.entries()) {
      const domain = parseDomain(c.input);
      assert.deepEqual(await dnsCheckNames(c.input), c.names, `function, ${c.input}: ${c.why}`);
      const added = await runClpctl(
        [
          "site:add:static",
          `--domainName=${domain}`,
          `--siteUser=site-${i}`,
          "--siteUserPassword=Passw0rdPassw0rd",
        ],
        dir,
      );
      assert.equal(added.exitCode, 0, added.stdout);
      const issued = await runClpctl(["lets-encrypt:install:certificate", `--domainName=${domain}`], dir);
      assert.equal(issued.stdout, `Certificate for ${c.names.join(", ")} has been installed.\n`);
      assert.deepEqual(
        (await readSimState(dir)).certificates[domain].names,
        c.names,
        `simulator, ${c.input}: ${c.why}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The command runs without the project's configuration (no import map, no lock file), as under sshd.
Deno.test("the clpctl command applies the same rule", async () => {
  const dir = await Deno.makeTempDir({ prefix: "certificate-names-test-" });
  try {
    const clpctl = (...args: string[]) =>
      new Deno.Command(fileURLToPath(new URL("../dev/bin/clpctl", import.meta.url)), {
        args,
        env: { CLPCTL_SIM_STATE: dir },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    const added = await clpctl(
      "site:add:static",
      "--domainName=www.shop.co.uk",
      "--siteUser=shop",
      "--siteUserPassword=Passw0rdPassw0rd",
    );
    assert.equal(added.code, 0, new TextDecoder().decode(added.stderr));
    const issued = await clpctl("lets-encrypt:install:certificate", "--domainName=www.shop.co.uk");
    assert.equal(
      new TextDecoder().decode(issued.stdout),
      "Certificate for shop.co.uk, www.shop.co.uk has been installed.\n",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
