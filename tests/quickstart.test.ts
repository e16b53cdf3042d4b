/**
 * The README's quick start, run as a newcomer runs it: its shell blocks, read from the README, in order, in a
 * copy of the repository (what a fresh clone holds: the tracked and new files, no .cache, no .env), against a
 * throwaway PostgreSQL 15 cluster that has nothing but what initdb made, with the Supabase CLI the project pins
 * as `supabase` on the PATH. A block that starts `deno task simulators` or `deno task serve` is a terminal of
 * its own: it runs in the background until its ready line. The first site must end active with the steps done.
 *
 * Two substitutions, both named here: the `export DB=…` line gives way to the test cluster's URL, and the
 * server's port 8000 to a free one (other tests may be listening there).
 */
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { freePort, PG_BIN, startCluster } from "./support/cluster.ts";
import { harness, ROOT } from "./support/env.ts";
import { codeBlocks, section } from "./support/markdown.ts";

const STEP_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 90_000;

/** The repository as a fresh clone would have it: tracked and new files, without ignored ones. */
async function copyOfRepository(): Promise<string> {
  const listed = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  assert.ok(listed.success, "git ls-files failed");
  const dir = await Deno.makeTempDir({ prefix: "ha-quickstart-" });
  for (const path of new Set(new TextDecoder().decode(listed.stdout).split("\0"))) {
    if (!path) continue;
    const exists = await Deno.stat(`${ROOT}${path}`).then((s) => s.isFile, () => false);
    if (!exists) continue; // deleted in the work tree
    await Deno.mkdir(dirname(`${dir}/${path}`), { recursive: true });
    await Deno.copyFile(`${ROOT}${path}`, `${dir}/${path}`); // keeps the mode: dev/bin/clpctl stays executable
  }
  return dir;
}

interface Background {
  name: string;
  output(): string;
  stop(): Promise<void>;
}

/** Runs `script` in its own process group (a terminal of its own) until `ready` shows in its output. */
async function background(
  name: string,
  script: string,
  env: Record<string, string>,
  cwd: string,
  ready: RegExp,
) {
  const child = new Deno.Command("setsid", {
    args: ["bash", "-c", script],
    cwd,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const proc: Background = {
    name,
    output: () => text,
    async stop() {
      // The whole group: bash, `deno task`, and the program it started (and the simulators' sshd).
      const signal = (sig: Deno.Signal) => {
        try {
          Deno.kill(-child.pid, sig);
        } catch {
          // Already gone.
        }
      };
      signal("SIGTERM");
      let timer: number | undefined;
      const done = await Promise.race([
        status.then(() => true),
        new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), 15_000)),
      ]);
      clearTimeout(timer);
      if (!done) signal("SIGKILL");
      await status;
      await pumped;
    },
  };
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!ready.test(text)) {
    if (exited || Date.now() > deadline) {
      await proc.stop();
      throw new Error(`${name} did not get ready (${exited ? "it exited" : "timed out"}):\n${text}`);
    }
    await sleep(200);
  }
  return proc;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function foreground(script: string, env: Record<string, string>, cwd: string) {
  const out = await new Deno.Command("bash", {
    args: ["-euo", "pipefail", "-c", script],
    cwd,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("the README's quick start takes a fresh clone to a first active site on plain PostgreSQL", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const blocks = codeBlocks(section(readme, "## Quick start")).filter((b) => b.lang === "sh");
  assert.ok(blocks.length >= 4, `the quick start has ${blocks.length} shell blocks`);
  const exportDb = blocks.flatMap((b) => b.text.split("\n")).filter((l) => /^export DB=/.test(l));
  assert.equal(exportDb.length, 1, "the quick start sets DB once, with `export DB=…`");

  const cluster = await startCluster();
  const repo = await copyOfRepository();
  const bin = await Deno.makeTempDir({ prefix: "ha-quickstart-bin-" });
  await Deno.symlink(harness.supabaseCli, `${bin}/supabase`);
  const port = freePort();
  const env: Record<string, string> = {
    ...Deno.env.toObject(),
    // `deno` is the binary running this test (not a launcher script), `supabase` the pinned CLI, psql PG 15's.
    PATH: [bin, dirname(Deno.execPath()), PG_BIN, Deno.env.get("PATH") ?? "/usr/bin:/bin"].join(":"),
    DB: cluster.url(),
    PORT: String(port),
    NO_COLOR: "1",
  };
  const running: Background[] = [];
  const transcript: string[] = [];
  try {
    let last = { code: 0, stdout: "", stderr: "" };
    for (const block of blocks) {
      const script = block.text.split("\n").filter((l) => !/^export DB=/.test(l)).join("\n")
        .replaceAll("127.0.0.1:8000", `127.0.0.1:${port}`);
      if (/^deno task simulators\b/.test(script)) {
        running.push(await background("simulators", script, env, repo, /^ready: /m));
      } else if (/^deno task serve\b/.test(script)) {
        running.push(await background("serve", script, env, repo, /listening on http:/));
      } else {
        last = await foreground(script, env, repo);
        transcript.push(`$ ${script}\n${last.stdout}${last.stderr}`);
        assert.equal(last.code, 0, `README block at line ${block.line} failed:\n${transcript.join("\n")}`);
      }
    }
    assert.deepEqual(running.map((r) => r.name), ["simulators", "serve"]);

    // The last block: the insert, the kick with ?wait=true, and --status.
    const answer = JSON.parse(/^\{"outcomes".*$/m.exec(last.stdout)?.[0] ?? "null");
    assert.ok(answer, `no answer from the server:\n${last.stdout}${last.stderr}`);
    assert.equal(answer.complete, true);
    assert.deepEqual(answer.outcomes.map((o: { domain: string; status: string }) => [o.domain, o.status]), [
      ["first-site.example", "active"],
    ]);
    assert.deepEqual(
      answer.outcomes[0].steps.map((s: { step: string; status: string }) => `${s.step} ${s.status}`),
      [
        "cloudpanel_site done",
        "dns_check done",
        "ssl_certificate done",
        "https_verify done",
        "matomo_site done",
      ],
    );
    assert.match(last.stdout, /^Sites by status_hosting: active 1$/m);
    assert.match(last.stdout, /^default\s+127\.0\.0\.1:\d+\s+active\s+1\/no limit/m);

    const row = await cluster.psql(
      "postgres",
      "select status_hosting || ' ' || hosting_doc_root || ' ' || matomo_site_id from public.sites",
    );
    assert.ok(row.includes("active /home/first-site-example-"), row);
    // The gate stood between the function and the simulated clpctl: its log shows both commands allowed.
    const gateLog = /decisions in (\S+gate\.log)/.exec(running[0].output())?.[1];
    assert.ok(gateLog, running[0].output());
    const decisions = await Deno.readTextFile(gateLog);
    assert.match(decisions, /allowed: site:add:static domain=first-site\.example/);
    assert.match(decisions, /allowed: lets-encrypt:install:certificate domain=first-site\.example/);
  } finally {
    for (const proc of running.reverse()) await proc.stop();
    await cluster.stop();
    await Deno.remove(repo, { recursive: true }).catch(() => {});
    await Deno.remove(bin, { recursive: true }).catch(() => {});
  }
});
