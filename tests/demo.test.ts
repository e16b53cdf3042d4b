/**
 * The demo (`deno task demo`) as a newcomer runs it, and the pieces written for it: the in-process clpctl shell
 * (its command-line parsing above all), the Matomo simulator's `failWhen` fault rules, and the DNS-over-HTTPS
 * simulator's resolver hook (the demo's DNS follows where each site was placed).
 */
import assert from "node:assert/strict";
import { readSimState, setFaults } from "../dev/clpctl_sim.ts";
import { startDohSim } from "../dev/doh_sim.ts";
import {
  CommandRefused,
  inProcessShell,
  parseClpctlCommand,
  REFUSED_EXIT_CODE,
  splitWords,
} from "../dev/inprocess_shell.ts";
import { startMatomoSim } from "../dev/matomo_sim.ts";
import {
  addStaticSiteCommand,
  installCertificateCommand,
} from "../supabase/functions/hosting-automator/cloudpanel.ts";
import {
  type Domain,
  generatePassword,
  shellQuote,
  siteUserFor,
} from "../supabase/functions/hosting-automator/domain.ts";
import { checkPointsTo } from "../supabase/functions/hosting-automator/dns.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import { ROOT } from "./support/env.ts";

const DEMO_TIME_LIMIT_MS = 90_000;

/** The demo's two CloudPanel servers, and the one that is down for a while. */
const SERVERS = ["cp-1", "cp-2"];
const DOWN = "cp-2";
/** The site whose DNS answers an old address at first (its apex), and what its server's address is. */
const DNS_LATE = { site: "www.flower-shop.example", name: "flower-shop.example", oldIp: "198.51.100.7" };
const PUBLIC_IPS: Record<string, string> = { "cp-1": "203.0.113.10", "cp-2": "203.0.113.20" };

/** The demo's sites and how each must end: status, and whether it has a Matomo id. */
const EXPECTED: [domain: string, status: string, matomo: boolean][] = [
  ["bakery-berlin.example", "active", true],
  ["bücher.example", "active", true],
  ["www.flower-shop.example", "active", true],
  ["yoga-retreat.example", "removed", false],
  ["photo-studio.example", "active", false],
  ["bad domain.example", "failed", false],
  ["shop.example;reboot", "failed", false],
];

Deno.test("the demo provisions its sites on two servers, one down for a while, and ends with the summary table", async () => {
  const started = performance.now();
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "dev/demo.ts"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(DEMO_TIME_LIMIT_MS),
  }).output();
  const elapsed = performance.now() - started;
  const stdout = new TextDecoder().decode(output.stdout);
  const stderr = new TextDecoder().decode(output.stderr);
  const context = `\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`;
  assert.equal(output.signal, null, `killed after ${DEMO_TIME_LIMIT_MS} ms${context}`);
  assert.equal(output.code, 0, `exit status${context}`);
  assert.ok(elapsed < DEMO_TIME_LIMIT_MS, context);

  const lines = stdout.trimEnd().split("\n");
  const tail = lines.slice(-(EXPECTED.length + 4));
  const header = tail.findIndex((line) => line.startsWith("domain "));
  assert.ok(header >= 0, `no table header among the last lines${context}`);
  assert.deepEqual(
    tail[header].split(/\s{2,}/),
    ["domain", "server", "status", "doc root", "Matomo id", "error"],
    context,
  );
  const rows = tail.slice(header + 2, header + 2 + EXPECTED.length);
  const placed = new Set<string>();
  for (const [domain, status, matomo] of EXPECTED) {
    const row = rows.find((line) => line.startsWith(`${domain} `));
    assert.ok(row, `no row for ${domain}${context}`);
    // Cells are separated by two spaces or more; cells themselves hold single spaces at most.
    const [server, ...cells] = row.slice(domain.length).trim().split(/\s{2,}/);
    assert.equal(cells[0], status, `${domain}: status${context}`);
    assert.match(cells[2], matomo ? /^\d+$/ : /^–$/, `${domain}: Matomo id${context}`);
    if (status === "failed") assert.match(cells[3], /^The domain is invalid/, `${domain}: error${context}`);
    if (status === "active") {
      assert.match(cells[1], /^\/home\/[a-z0-9-]+\/htdocs\//, `${domain}: doc root`);
      assert.ok(SERVERS.includes(server), `${domain}: server ${server}${context}`);
      placed.add(server);
    }
    // A removal clears the row's server along with its doc root.
    if (status === "removed") assert.equal(server, "–", `${domain}: server${context}`);
  }
  assert.deepEqual([...placed].sort(), SERVERS, `both servers hold active sites${context}`);
  assert.match(
    lines.at(-1)!,
    new RegExp(
      `^✓ all 7 sites ended as expected.*; ${DOWN} was down: its jobs waited \\d+ time\\(s\\), attempt kept \\(\\d+\\.\\d s\\)$`,
    ),
    context,
  );
  // Live progress came before the table: every site's job finished on screen.
  for (const [domain] of EXPECTED) {
    assert.ok(lines.some((line) => line.startsWith(`■ ${domain} `)), `no progress line for ${domain}`);
  }
  // The down server's jobs waited, naming it and why; each ran again later as the same attempt.
  const attemptAt = (domain: string, from: number, step: 1 | -1) => {
    for (let i = from; i >= 0 && i < lines.length; i += step) {
      const started = new RegExp(`^▶ ${domain} +attempt (\\d+) of \\d+, server (\\S+)$`).exec(lines[i]);
      if (started) return { attempt: started[1], server: started[2] };
    }
    return null;
  };
  let waits = 0;
  lines.forEach((line, i) => {
    const waited = /^■ (\S+) +waiting /.exec(line);
    if (!waited) return;
    waits++;
    assert.match(
      line,
      new RegExp(`waiting +for server ${DOWN} \\(ssh_unreachable\\), attempt kept: `),
      context,
    );
    const before = attemptAt(waited[1], i - 1, -1);
    const after = attemptAt(waited[1], i + 1, 1);
    assert.ok(before && after, `${waited[1]} ran again after waiting${context}`);
    assert.deepEqual(after, before, `${waited[1]}: the same attempt, on the same server${context}`);
  });
  assert.ok(waits > 0, `no waiting job${context}`);
  // What /status shows while it is down: its circuit open with its last error, the other closed.
  const open = lines.find((line) => line.startsWith(`${DOWN} `) && / open until /.test(line));
  assert.ok(open, `no server table with ${DOWN}'s circuit open${context}`);
  assert.match(open, /ssh_unreachable/);
  assert.doesNotMatch(stdout + stderr, /siteUserPassword='?[A-Za-z0-9]{24}/, "a site password was printed");

  // DNS: one site waited for its DNS, saying what DNS answered and what was expected, and asked for no
  // certificate until its DNS check passed; then it went active.
  assert.match(
    lines.at(-1)!,
    new RegExp(`; ${DNS_LATE.site} waited for DNS (\\d+) time\\(s\\), no certificate asked meanwhile; `),
    context,
  );
  const late = lines.map((line, i) => ({ line, i })).filter(({ line }) =>
    line.includes(` ${DNS_LATE.site} `)
  );
  const lateServer = attemptAt(DNS_LATE.site, lines.length - 1, -1)?.server;
  assert.ok(lateServer && PUBLIC_IPS[lateServer], `${DNS_LATE.site}: its server${context}`);
  const dnsFailures = late.filter(({ line }) => /^ {2}✗ \S+ +DNS check +dns_not_ready: /.test(line));
  assert.ok(dnsFailures.length > 0, `no dns_not_ready for ${DNS_LATE.site}${context}`);
  for (const { line } of dnsFailures) {
    assert.ok(
      line.endsWith(
        `DNS does not point at the server yet: ${DNS_LATE.name} → ${DNS_LATE.oldIp} ` +
          `(expected ${PUBLIC_IPS[lateServer]}).`,
      ),
      `${line}${context}`,
    );
  }
  const retried = late.filter(({ line }) =>
    new RegExp(`^■ \\S+ +retrying +retry at \\S+: DNS does not point`).test(line)
  );
  assert.equal(retried.length, dnsFailures.length, `each DNS wait is a retry${context}`);
  assert.match(lines.at(-1)!, new RegExp(`waited for DNS ${dnsFailures.length} time\\(s\\)`), context);
  const lastWait = dnsFailures.at(-1)!.i;
  const certificateAsked = late.filter(({ line }) => /^ {2}… \S+ +Let's Encrypt certificate$/.test(line));
  assert.ok(certificateAsked.length > 0, `${DNS_LATE.site}: no certificate step${context}`);
  assert.ok(
    certificateAsked.every(({ i }) => i > lastWait),
    `a certificate step ran before DNS was ready${context}`,
  );
  const after = late.filter(({ i }) => i > lastWait).map(({ line }) => line.replace(/\s+\d+ ms$/, ""));
  const passed = (step: string) => after.findIndex((line) => new RegExp(`^ {2}✓ \\S+ +${step}$`).test(line));
  const order = ["DNS check", "Let's Encrypt certificate", "HTTPS check"].map(passed);
  assert.ok(
    order.every((at, k) => at >= 0 && (k === 0 || at > order[k - 1])),
    `${after.join("\n")}${context}`,
  );
  assert.ok(after.some((line) => /^■ \S+ +active /.test(line)), `${DNS_LATE.site} went active${context}`);
  // No other site waited for DNS, and every active site's DNS and served certificate were checked.
  const otherWaits = lines.filter((line) =>
    /^( {2}✗|■) /.test(line) && /dns_not_ready|DNS does not point/.test(line) &&
    !line.includes(` ${DNS_LATE.site} `)
  );
  assert.deepEqual(otherWaits, [], context);
  for (const [domain, status] of EXPECTED) {
    if (status !== "active") continue;
    for (const step of ["DNS check", "HTTPS check"]) {
      assert.ok(
        lines.some((line) => new RegExp(`^ {2}✓ ${domain} +${step} +\\d+ ms$`).test(line)),
        `${domain}: no passed ${step}${context}`,
      );
    }
  }
  // /status lists the expiry the HTTPS check read, one per active site.
  const activeCount = EXPECTED.filter(([, status]) => status === "active").length;
  assert.ok(
    lines.some((line) => line.startsWith(`▸ /status's certificates: ${activeCount} served and checked, `)),
    context,
  );
});

Deno.test("DNS-over-HTTPS simulator: the resolver hook answers first, falls back to the records, SERVFAILs when it throws", async () => {
  const sim = await startDohSim();
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const fetchThrough: typeof fetch = (input, init) => fetch(input, { ...init, client });
  try {
    const ask = async (name: string, type: string) => {
      const response = await fetchThrough(`${sim.url}?name=${name}&type=${type}`, {
        headers: { accept: "application/dns-json" },
      });
      assert.equal(response.status, 200);
      return await response.json() as {
        Status: number;
        Answer?: { name: string; type: number; data: string }[];
      };
    };
    sim.setRecords("fixed.example", { A: ["192.0.2.1"] });
    sim.setRecords("alias.example", { CNAME: "hooked.example" });
    const asked: string[] = [];
    let ip = "203.0.113.10";
    sim.setResolver(async (name, type) => {
      asked.push(`${name} ${type}`);
      await Promise.resolve(); // an async hook, as the demo's (it reads a database)
      if (name === "broken.example") throw new Error("the hook failed");
      if (name !== "hooked.example") return null;
      return type === "A" ? [ip] : [];
    });

    assert.deepEqual((await ask("Hooked.Example.", "A")).Answer, [
      { name: "hooked.example.", type: 1, TTL: 300, data: "203.0.113.10" },
    ]);
    // An empty list: the name exists without such a record (NOERROR, no answer).
    const aaaa = await ask("hooked.example", "AAAA");
    assert.equal(aaaa.Status, 0);
    assert.equal(aaaa.Answer, undefined);
    // Null: the records set with setRecords, else NXDOMAIN.
    assert.deepEqual((await ask("fixed.example", "A")).Answer?.map((r) => r.data), ["192.0.2.1"]);
    assert.equal((await ask("nowhere.example", "A")).Status, 3);
    // A CNAME from the records leads into the hook's name.
    assert.deepEqual((await ask("alias.example", "A")).Answer?.map((r) => [r.type, r.data]), [
      [5, "hooked.example."],
      [1, "203.0.113.10"],
    ]);
    assert.equal((await ask("broken.example", "A")).Status, 2);
    // Only A and AAAA questions reach the hook; names in lower case without the trailing dot.
    await ask("hooked.example", "CNAME");
    assert.ok(asked.every((entry) => /^[a-z.]+[a-z] (A|AAAA)$/.test(entry)), asked.join(", "));
    assert.ok(asked.includes("hooked.example A") && asked.includes("hooked.example AAAA"));

    // The function's DNS check reads the hook's answers: what it answers now is what the check sees.
    const options = { resolverUrl: sim.url, fetch: fetchThrough, timeoutMs: 2_000 };
    assert.deepEqual(await checkPointsTo(["hooked.example"], ["203.0.113.10"], options), {
      answered: { "hooked.example": ["203.0.113.10"] },
    });
    ip = "198.51.100.7";
    await assert.rejects(
      checkPointsTo(["hooked.example"], ["203.0.113.10"], options),
      (error: unknown) => error instanceof HostingError && error.code === "dns_not_ready",
    );

    sim.setResolver(null);
    assert.equal((await ask("hooked.example", "A")).Status, 3);
  } finally {
    await sim.close();
    client.close();
  }
});

Deno.test("in-process shell: the CloudPanel client's command lines parse into clpctl's arguments", () => {
  const domain = "xn--bcher-kva.example" as Domain;
  const user = siteUserFor(domain);
  const password = generatePassword();
  assert.deepEqual(parseClpctlCommand(addStaticSiteCommand(domain, user, password)), [
    "site:add:static",
    `--domainName=${domain}`,
    `--siteUser=${user}`,
    `--siteUserPassword=${password}`,
  ]);
  assert.deepEqual(parseClpctlCommand(installCertificateCommand(domain)), [
    "lets-encrypt:install:certificate",
    `--domainName=${domain}`,
  ]);
  // Whatever shellQuote quotes comes back unchanged, metacharacters included: inside quotes they are data.
  for (const value of ["it's", "a;b", "$(reboot)", "`id`", 'say "hi"', "back\\slash", "", "''"]) {
    assert.deepEqual(parseClpctlCommand(`clpctl list --x=${shellQuote(value)}`), ["list", `--x=${value}`]);
  }
  assert.deepEqual(splitWords("clpctl   list\t--raw"), ["clpctl", "list", "--raw"]);
});

Deno.test("in-process shell: refuses other programs, unbalanced quotes and shell syntax", () => {
  const refused: [string, RegExp][] = [
    ["ls -la", /only clpctl/],
    ["/usr/bin/clpctl list", /only clpctl/],
    ["bash -c 'clpctl list'", /only clpctl/],
    ["", /only clpctl/],
    ["clpctl", /without a command/],
    ["clpctl site:add:static --domainName='example.com", /unbalanced/],
    ["clpctl list --x='a'b'", /unbalanced/],
    ["clpctl list; reboot", /';'/],
    ["clpctl list;reboot", /';'/],
    ["clpctl list | sh", /'\|'/],
    ["clpctl list && reboot", /'&'/],
    ["clpctl list --x=$(reboot)", /'\$'/],
    ["clpctl list --x=`id`", /'`'/],
    ['clpctl list --x="a"', /'"'/],
    ["clpctl list > /etc/passwd", /'>'/],
    ["clpctl list\nreboot", /U\+000a/],
    ["clpctl list --x=a\\ b", /'\\'/],
  ];
  for (const [line, reason] of refused) {
    assert.throws(() => parseClpctlCommand(line), (error: unknown) => {
      assert.ok(error instanceof CommandRefused, `${JSON.stringify(line)}: ${error}`);
      assert.match(error.message, reason, JSON.stringify(line));
      return true;
    });
  }
});

Deno.test("in-process shell: runs clpctl in-process, answers refusals like the gate, honours its timeout", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "ha-inprocess-shell-" });
  const shell = inProcessShell(stateDir);
  try {
    const domain = "example.com" as Domain;
    const added = await shell.exec(addStaticSiteCommand(domain, siteUserFor(domain), generatePassword()), {
      timeoutMs: 5_000,
    });
    assert.deepEqual(added, { stdout: "Site example.com has been added.\n", stderr: "", exitCode: 0 });

    const refused = await shell.exec("clpctl site:delete --domainName='example.com' --force; reboot", {
      timeoutMs: 5_000,
    });
    assert.equal(refused.exitCode, REFUSED_EXIT_CODE);
    assert.match(refused.stderr, /^in-process shell: refused: character ';' outside single quotes\n$/);
    const state = await readSimState(stateDir);
    assert.ok(state.sites["example.com"], "the refused command did not run");
    assert.deepEqual(state.calls.map((c) => c.verb), ["site:add:static"]);

    await setFaults(stateDir, { hang: 1, hangMs: 60_000 });
    const t = performance.now();
    await assert.rejects(
      shell.exec(installCertificateCommand(domain), { timeoutMs: 200 }),
      (error: unknown) => error instanceof HostingError && error.code === "ssh_timeout",
    );
    assert.ok(performance.now() - t < 5_000, "the timeout settled the call at once");

    await shell.close();
    await assert.rejects(
      shell.exec("clpctl list", { timeoutMs: 1_000 }),
      (error: unknown) => error instanceof HostingError && error.code === "ssh_unreachable",
    );
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});

Deno.test("matomo simulator: failWhen faults only the matching requests, never shows the token, and clears", async () => {
  const sim = await startMatomoSim();
  // No idle pooled connection for the simulator's graceful close to wait on (see dev/demo.ts).
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  try {
    const seen: Record<string, string>[] = [];
    sim.failWhen((request) => {
      seen.push(request.params);
      return Object.values(request.params).some((value) => value.includes("down.example"));
    }, { kind: "error", message: "Mysql server has gone away" });
    const call = async (method: string, params: Record<string, string>) => {
      const response = await fetch(`${sim.url}/index.php?module=API&method=${method}&format=json`, {
        method: "POST",
        body: new URLSearchParams({ token_auth: sim.token, ...params }),
        client,
      });
      return await response.json();
    };
    assert.deepEqual(await call("SitesManager.getSitesIdFromSiteUrl", { url: "https://up.example" }), []);
    assert.deepEqual(
      await call("SitesManager.addSite", { siteName: "down.example", "urls[0]": "https://down.example" }),
      { result: "error", message: "Mysql server has gone away" },
    );
    assert.deepEqual(
      await call("SitesManager.addSite", { siteName: "up.example", "urls[0]": "https://up.example" }),
      { value: 1 },
    );
    assert.deepEqual(seen[1], {
      module: "API",
      method: "SitesManager.addSite",
      format: "json",
      siteName: "down.example",
      "urls[0]": "https://down.example",
    });
    assert.ok(seen.every((params) => !("token_auth" in params)), "the token is not shown to rules");

    sim.clearFaults();
    assert.deepEqual(
      await call("SitesManager.addSite", { siteName: "down.example", "urls[0]": "https://down.example" }),
      { value: 2 },
    );
    assert.deepEqual(sim.requests.map((r) => r.fault ?? null), [null, "error", null, null]);
  } finally {
    await sim.close();
    client.close();
  }
});
