// deno-lint-ignore-file no-console
/**
 * `deno task serve`: the deployed handler, served locally with Deno.serve. Settings come from `.env` (see
 * .env.example; the environment wins) or `--env-file <path>`. PORT (default 8000) and HOST (default
 * 127.0.0.1) choose where it listens. Work after the 202 answer runs in the background, as waitUntil does on
 * Supabase; Ctrl-C waits for it to finish, SIGTERM gives running jobs back at once.
 */
import { parseArgs } from "node:util";
import { createApp } from "../supabase/functions/hosting-automator/app.ts";
import { loadEnv } from "../cli/dotenv.ts";

const { values } = parseArgs({ args: Deno.args, options: { "env-file": { type: "string" } }, strict: true });
const env = await loadEnv(values["env-file"]);
// Where to listen, checked before anything starts (a bad PORT would otherwise end in a stack trace).
const port = Number(env.PORT ?? 8000);
const hostname = env.HOST ?? "127.0.0.1";
if (!/^[0-9]{1,5}$/.test(env.PORT ?? "8000") || port < 1 || port > 65535) {
  console.error("serve: PORT: must be a port number from 1 to 65535");
  Deno.exit(2);
}
const pending = new Set<Promise<unknown>>();
const app = createApp(env, {
  waitUntil: (work) => {
    const tracked = work.finally(() => pending.delete(tracked));
    pending.add(tracked);
  },
});
if (!app.config) {
  for (const problem of app.configProblems) console.error(`serve: configuration: ${problem}`);
  console.error("The configuration is invalid; every request answers 500 with the problems above.");
}

let server: Deno.HttpServer;
try {
  server = Deno.serve({
    port,
    hostname,
    onListen: ({ hostname, port }) => {
      console.error(
        `hosting-automator listening on http://${hostname}:${port}/ (POST /, GET /status, POST /retry)`,
      );
    },
  }, app.fetch);
} catch (error) {
  console.error(`serve: cannot listen on ${hostname}:${port} (HOST, PORT): ${(error as Error).message}`);
  await app.close();
  Deno.exit(2);
}

// Ctrl-C waits for the background work to finish; SIGTERM (a process manager stopping the server) gives running
// jobs back at once, as Supabase's beforeunload does, so another worker continues them without waiting for a lease.
async function stop(signal: "SIGINT" | "SIGTERM") {
  console.error(`stopping (${signal}): ${pending.size} background job run(s)`);
  if (signal === "SIGTERM") await app.shutdown("termination");
  await server.shutdown();
  await Promise.allSettled([...pending]);
  await app.close();
  Deno.exit(0);
}
Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
