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
const pending = new Set<Promise<unknown>>();
const app = createApp(env, {
  waitUntil: (work) => {
    const tracked = work.finally(() => pending.delete(tracked));
    pending.add(tracked);
  },
});
if (!app.config) {
  console.error("The configuration is invalid (see the log line above); every request answers 500.");
}

const port = Number(env.PORT ?? 8000);
const hostname = env.HOST ?? "127.0.0.1";
const server = Deno.serve({
  port,
  hostname,
  onListen: ({ hostname, port }) => {
    console.error(
      `hosting-automator listening on http://${hostname}:${port}/ (POST /, GET /status, POST /retry)`,
    );
  },
}, app.fetch);

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
