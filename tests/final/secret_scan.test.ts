/**
 * Runs after the whole suite (tests/run.ts): no password, private key, Matomo token or secret key may appear
 * in any captured log line, test output, event message, stored error, journal result or error_message that
 * the suite produced, in any test database.
 */
import postgres from "postgres";
import { artifactPath, harness } from "../support/env.ts";
import { databaseText, leaks, needlesOf, simPasswords } from "../support/secret_scan.ts";

async function readLines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path).catch(() => "")).split("\n").filter((l) => l.length > 0);
}

/** Every secret the tests created, plus every site-user password the clpctl simulators received. */
async function secrets(): Promise<string[]> {
  const registered = (await readLines(artifactPath("secrets.jsonl"))).map((line) =>
    JSON.parse(line) as string
  );
  const dirs = await Array.fromAsync(Deno.readDir(artifactPath("clpctl"))).catch(() => []);
  const passwords = (await Promise.all(dirs.map((dir) => simPasswords(artifactPath("clpctl", dir.name)))))
    .flat();
  return needlesOf([...registered, ...passwords]);
}

Deno.test("no secret appears in the logs, the event log, stored errors or error_message after the whole suite", async () => {
  const needles = await secrets();
  const passwords = needles.filter((n) => /^[A-Za-z0-9]{24,}$/.test(n));
  // The scan is only meaningful if the suite produced secrets and output to scan.
  if (needles.length < 5 || passwords.length < 3) {
    throw new Error(`too little to scan: ${needles.length} secrets, ${passwords.length} site passwords`);
  }

  const logs = await Deno.readTextFile(artifactPath("logs.jsonl")).catch(() => "");
  const output = await Deno.readTextFile(artifactPath("test-output.txt")).catch(() => "") +
    await Deno.readTextFile(artifactPath("cli-output.txt")).catch(() => "");
  if (logs.length < 10_000) throw new Error(`too little log output to scan: ${logs.length} bytes`);
  const found: string[] = [];
  for (const leak of leaks(logs, needles)) found.push(`log line: ${leak}`);
  for (const leak of leaks(output, needles)) found.push(`test output: ${leak}`);

  const admin = postgres(`${harness.pgBase}/postgres`, { max: 1, onnotice: () => {} });
  let scanned = 0;
  let withModule = 0;
  try {
    const databases = await admin<{ datname: string }[]>`
      select datname from pg_database where datname like 't\\_%' or datname in ('postgres', ${harness.template})`;
    for (const { datname } of databases) {
      const sql = postgres(`${harness.pgBase}/${datname}`, { max: 1, onnotice: () => {} });
      try {
        // Databases where a migration test stopped on purpose have nothing of this module.
        const text = await databaseText(sql);
        if (text === null) continue;
        withModule++;
        scanned += text.length;
        for (const leak of leaks(text, needles)) found.push(`database ${datname}: ${leak}`);
      } finally {
        await sql.end({ timeout: 5 });
      }
    }
  } finally {
    await admin.end({ timeout: 5 });
  }
  if (scanned < 1000 || withModule < 10) {
    throw new Error(`too little to scan: ${scanned} characters in ${withModule} databases`);
  }
  if (found.length > 0) throw new Error(`secrets leaked:\n${found.join("\n")}`);
});
