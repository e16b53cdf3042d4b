/**
 * The served-certificate probe (tls_probe.ts) against real TLS servers on loopback: the TLS simulator
 * (dev/tls_sim.ts, rustls behind Deno.listenTls, serving what the clpctl simulator's state holds) and, for an
 * independent check of the TLS 1.2 reader, `openssl s_server` with certificates made by the `openssl` command.
 * Simulated: only the CloudPanel server's state (which certificate a site has) and its CA.
 */
import assert from "node:assert/strict";
import { runClpctl } from "../dev/clpctl_sim.ts";
import { DEFAULT_NAME, LETS_ENCRYPT_DAYS, startTlsSim, type TlsSim } from "../dev/tls_sim.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import {
  namesCover,
  probeCertificate,
  type ProbeOptions,
  type ProbeResult,
} from "../supabase/functions/hosting-automator/tls_probe.ts";
import { registerSecret } from "./support/env.ts";
import { failsWith } from "./support/errors.ts";

const DAY_MS = 86_400_000;
const PASSWORD = "Tls0probe0site0password0x";

async function withSim(fn: (sim: TlsSim, stateDir: string) => Promise<void>): Promise<void> {
  registerSecret(PASSWORD);
  const stateDir = await Deno.makeTempDir({ prefix: "ha-tls-" });
  const sim = await startTlsSim({ stateDir });
  try {
    await fn(sim, stateDir);
  } finally {
    await sim.close();
    await Deno.remove(stateDir, { recursive: true });
  }
}

async function addSite(stateDir: string, domain: string, user: string): Promise<void> {
  const result = await runClpctl(
    ["site:add:static", `--domainName=${domain}`, `--siteUser=${user}`, `--siteUserPassword=${PASSWORD}`],
    stateDir,
  );
  assert.equal(result.exitCode, 0, result.stderr + result.stdout);
}

async function installCertificate(stateDir: string, domain: string): Promise<void> {
  const result = await runClpctl(["lets-encrypt:install:certificate", `--domainName=${domain}`], stateDir);
  assert.equal(result.exitCode, 0, result.stderr + result.stdout);
}

function probe(sim: TlsSim, servername: string, options: Partial<ProbeOptions> = {}): Promise<ProbeResult> {
  return probeCertificate({
    address: sim.address,
    port: sim.port,
    servername,
    caCerts: [sim.caPem],
    timeoutMs: 5_000,
    minValidDays: 14,
    ...options,
  });
}

/** A port nothing listens on (taken, then released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A server that accepts TCP connections and never says a word; closes them when done. */
async function withSilentServer(fn: (port: number) => Promise<void>): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) held.push(conn);
    } catch {
      // closed
    }
  })();
  try {
    await fn((listener.addr as Deno.NetAddr).port);
  } finally {
    listener.close();
    await accepting;
    for (const conn of held) conn.close();
  }
}

Deno.test("a site without its certificate serves CloudPanel's self-signed one: not valid, and why", async () => {
  await withSim(async (sim, stateDir) => {
    await addSite(stateDir, "bakery.example", "bakery");
    const result = await probe(sim, "bakery.example");
    assert.equal(result.valid, false);
    assert.match(result.valid ? "" : result.reason, /UnknownIssuer/);
    assert.deepEqual(result.names, ["bakery.example"]);
    assert.ok(result.notAfter instanceof Date);
  });
});

Deno.test("a domain the server has no site for gets the default certificate, for another name", async () => {
  await withSim(async (sim) => {
    const result = await probe(sim, "unknown.example");
    assert.equal(result.valid, false);
    assert.deepEqual(result.names, [DEFAULT_NAME]);
  });
});

Deno.test("an installed certificate is valid, with its names and an expiry 90 days after it was issued", async () => {
  await withSim(async (sim, stateDir) => {
    await addSite(stateDir, "florist.example", "florist");
    await installCertificate(stateDir, "florist.example");
    const state = JSON.parse(await Deno.readTextFile(`${stateDir}/state.json`));
    const installedAt = Date.parse(state.certificates["florist.example"].installedAt);
    for (const name of ["florist.example", "www.florist.example"]) {
      const result = await probe(sim, name);
      assert.equal(result.valid, true, JSON.stringify(result));
      assert.deepEqual(result.names, ["florist.example", "www.florist.example"]);
      const expected = installedAt + LETS_ENCRYPT_DAYS * DAY_MS;
      assert.ok(Math.abs(result.notAfter!.getTime() - expected) < 1_000, `${result.notAfter} vs ${expected}`);
    }
    assert.deepEqual(sim.served.slice(-4).sort(), [
      "florist.example",
      "florist.example",
      "www.florist.example",
      "www.florist.example",
    ]);
  });
});

Deno.test("the certificate is read again once clpctl installs one: invalid before, valid after", async () => {
  await withSim(async (sim, stateDir) => {
    await addSite(stateDir, "gym.example", "gym");
    assert.equal((await probe(sim, "gym.example")).valid, false);
    await installCertificate(stateDir, "gym.example");
    assert.equal((await probe(sim, "gym.example")).valid, true);
  });
});

Deno.test("a trusted certificate for another name is not valid for the domain", async () => {
  await withSim(async (sim, stateDir) => {
    await addSite(stateDir, "tailor.example", "tailor");
    await installCertificate(stateDir, "tailor.example");
    sim.override("tailor.example", "wrong-name");
    const result = await probe(sim, "tailor.example");
    assert.equal(result.valid, false);
    assert.match(result.valid ? "" : result.reason, /NotValidForName/);
    assert.deepEqual(result.names, ["other.tailor.example"]);
  });
});

Deno.test("an expired certificate is not valid, and its expiry is still reported", async () => {
  await withSim(async (sim) => {
    sim.override("old.example", "expired");
    const result = await probe(sim, "old.example");
    assert.equal(result.valid, false);
    assert.match(result.valid ? "" : result.reason, /Expired/);
    assert.ok(result.notAfter!.getTime() < Date.now());
  });
});

Deno.test("a certificate that expires within minValidDays is not valid; with a shorter margin it is", async () => {
  await withSim(async (sim) => {
    const notAfter = new Date(Date.now() + 5 * DAY_MS);
    sim.override("renew.example", { notBefore: new Date(Date.now() - 85 * DAY_MS), notAfter });
    const soon = await probe(sim, "renew.example", { minValidDays: 14 });
    assert.equal(soon.valid, false);
    assert.match(soon.valid ? "" : soon.reason, /within 14 days/);
    assert.equal(soon.notAfter!.getTime(), Math.floor(notAfter.getTime() / 1000) * 1000);
    const enough = await probe(sim, "renew.example", { minValidDays: 3 });
    assert.equal(enough.valid, true, JSON.stringify(enough));
  });
});

Deno.test("a server that refuses the connection is https_unreachable, transient", async () => {
  const error = await failsWith(
    probeCertificate({
      address: "127.0.0.1",
      port: closedPort(),
      servername: "down.example",
      timeoutMs: 5_000,
      minValidDays: 14,
    }),
    "https_unreachable",
  );
  assert.equal(error.transient, true);
});

Deno.test("a server that accepts but never answers is https_unreachable once the timeout has passed", async () => {
  await withSilentServer(async (port) => {
    const started = performance.now();
    const error = await failsWith(
      probeCertificate({
        address: "127.0.0.1",
        port,
        servername: "slow.example",
        timeoutMs: 300,
        minValidDays: 14,
      }),
      "https_unreachable",
    );
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 290 && elapsed < 2_000, `took ${elapsed} ms`);
    assert.match(error.message, /300 ms/);
  });
});

Deno.test("aborting the signal stops the probe at once, with the abort's reason", async () => {
  await withSilentServer(async (port) => {
    const controller = new AbortController();
    const started = performance.now();
    const work = probeCertificate({
      address: "127.0.0.1",
      port,
      servername: "slow.example",
      timeoutMs: 10_000,
      minValidDays: 14,
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new HostingError("lease_lost", "another worker took the job")), 100);
    await failsWith(work, "lease_lost");
    assert.ok(performance.now() - started < 2_000);

    const before = new AbortController();
    before.abort(new Error("shutting down"));
    const error = await failsWith(
      probeCertificate({
        address: "127.0.0.1",
        port,
        servername: "slow.example",
        timeoutMs: 10_000,
        minValidDays: 14,
        signal: before.signal,
      }),
      "interrupted",
    );
    assert.match(error.message, /shutting down/);
  });
});

Deno.test("names cover a domain exactly or through a wildcard for one label only", () => {
  assert.ok(namesCover(["Shop.Example"], "shop.example"));
  assert.ok(namesCover(["*.shop.example"], "www.shop.example"));
  assert.ok(!namesCover(["*.shop.example"], "shop.example"));
  assert.ok(!namesCover(["*.shop.example"], "a.b.shop.example"));
  assert.ok(!namesCover(["*.example"], "shop.example"), "a wildcard needs two labels after it");
  assert.ok(!namesCover(["shop.example"], "www.shop.example"));
});

// ---------------------------------------------------------------------------------------------------------
// Servers that are not the simulator: openssl's own, and one that does not speak TLS

async function openssl(args: string[], cwd: string): Promise<string> {
  const command = new Deno.Command("openssl", { args, cwd, stdout: "piped", stderr: "piped" });
  const { code, stdout, stderr } = await command.output();
  const text = new TextDecoder();
  assert.equal(code, 0, `openssl ${args.join(" ")}: ${text.decode(stderr)}`);
  return text.decode(stdout);
}

interface OpensslServer {
  port: number;
  caPem: string;
  /** The leaf's notAfter as `openssl x509 -enddate` prints it. */
  notAfter: Date;
}

/**
 * `openssl s_server` (`extraArgs`: e.g. `-tls1_3`) serving an RSA leaf for openssl.example and
 * *.openssl.example, valid 20 days, signed by a CA made for the test: certificates and server both from
 * OpenSSL, so nothing here comes from the simulator's own certificate writer.
 */
async function withOpensslServer(
  extraArgs: string[],
  fn: (server: OpensslServer) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ha-openssl-" });
  let server: Deno.ChildProcess | undefined;
  try {
    const rsa = ["-newkey", "rsa:2048", "-nodes"];
    await openssl([
      "req",
      "-x509",
      ...rsa,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "30",
      "-subj",
      "/CN=test CA",
    ], dir);
    await openssl([
      "req",
      "-new",
      ...rsa,
      "-keyout",
      "leaf.key",
      "-out",
      "leaf.csr",
      "-subj",
      "/CN=openssl.example",
    ], dir);
    await Deno.writeTextFile(
      `${dir}/leaf.ext`,
      "subjectAltName=DNS:openssl.example,DNS:*.openssl.example\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    await openssl([
      ...["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"],
      ...["-days", "20", "-extfile", "leaf.ext", "-out", "leaf.pem"],
    ], dir);
    const endDate = (await openssl(["x509", "-in", "leaf.pem", "-noout", "-enddate"], dir)).trim();
    const notAfter = new Date(endDate.replace(/^notAfter=/, "").replace(/ +/g, " "));
    assert.ok(!Number.isNaN(notAfter.getTime()), endDate);

    const port = closedPort();
    server = new Deno.Command("openssl", {
      args: [
        "s_server",
        "-quiet",
        "-accept",
        `127.0.0.1:${port}`,
        "-cert",
        "leaf.pem",
        "-key",
        "leaf.key",
        ...extraArgs,
      ],
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    for (let tries = 0;; tries++) {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        break;
      } catch (error) {
        if (tries > 100) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    await fn({ port, caPem: await Deno.readTextFile(`${dir}/ca.pem`), notAfter });
  } finally {
    if (server) {
      server.kill("SIGTERM");
      await server.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
}

function probeOpenssl(server: OpensslServer, servername: string, options: Partial<ProbeOptions> = {}) {
  return probeCertificate({
    address: "127.0.0.1",
    port: server.port,
    servername,
    caCerts: [server.caPem],
    timeoutMs: 5_000,
    minValidDays: 5,
    ...options,
  });
}

Deno.test("the TLS 1.2 reader and Deno's verification agree on an openssl certificate served by openssl s_server", async () => {
  await withOpensslServer([], async (server) => {
    for (const name of ["openssl.example", "www.openssl.example"]) {
      const result = await probeOpenssl(server, name);
      assert.equal(result.valid, true, JSON.stringify(result));
      assert.deepEqual(result.names, ["openssl.example", "*.openssl.example"]);
      assert.equal(result.notAfter!.getTime(), server.notAfter.getTime());
    }
    // A name the certificate does not cover: Deno refuses it, and the names read do not cover it either.
    const other = await probeOpenssl(server, "a.b.openssl.example");
    assert.equal(other.valid, false);
    assert.match(other.valid ? "" : other.reason, /NotValidForName/);
    assert.ok(!namesCover(other.names!, "a.b.openssl.example"));
    // Valid for 20 days: fine with a margin of 5, due for renewal with a margin of 25.
    const renewal = await probeOpenssl(server, "openssl.example", { minValidDays: 25 });
    assert.equal(renewal.valid, false);
    assert.match(renewal.valid ? "" : renewal.reason, /within 25 days/);
    // Without its CA: not trusted, and the certificate is still read.
    const untrusted = await probeOpenssl(server, "openssl.example", { caCerts: [] });
    assert.equal(untrusted.valid, false);
    assert.match(untrusted.valid ? "" : untrusted.reason, /UnknownIssuer/);
    assert.equal(untrusted.notAfter!.getTime(), server.notAfter.getTime());
  });
});

Deno.test("a server that speaks only TLS 1.3 is trusted by the handshake's own check: valid, expiry unknown, and why", async () => {
  await withOpensslServer(["-tls1_3"], async (server) => {
    const result = await probeOpenssl(server, "openssl.example");
    assert.equal(result.valid, true);
    assert.match(
      result.valid ? result.note ?? "" : "",
      /^trusted; its expiry could not be read \(.*protocol_version/,
    );
    assert.equal(result.notAfter, undefined);
    // Untrusted stays untrusted, whatever the TLS version.
    const other = await probeOpenssl(server, "someone-else.example");
    assert.equal(other.valid, false);
  });
});

Deno.test("a server that answers in plain text is reachable but serves no certificate: not valid", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conversations: Promise<void>[] = [];
  // Answers, then waits for the client to leave (closing first, with its data unread, could reset it).
  const converse = async (conn: Deno.Conn) => {
    const buffer = new Uint8Array(4096);
    await conn.read(buffer);
    await conn.write(new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
    while (await conn.read(buffer) !== null) { /* until the client closes */ }
    conn.close();
  };
  const answering = (async () => {
    for await (const conn of listener) conversations.push(converse(conn).catch(() => conn.close()));
  })().catch(() => {});
  try {
    const result = await probeCertificate({
      address: "127.0.0.1",
      port: (listener.addr as Deno.NetAddr).port,
      servername: "plain.example",
      timeoutMs: 5_000,
      minValidDays: 14,
    });
    assert.equal(result.valid, false);
    assert.match(result.valid ? "" : result.reason, /corrupt message|InvalidContentType/i);
    assert.equal(result.notAfter, undefined);
  } finally {
    listener.close();
    await answering;
    await Promise.all(conversations);
  }
});
