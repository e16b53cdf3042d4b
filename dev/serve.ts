// deno-lint-ignore-file no-console
/**
 * `deno task serve`: the deployed handler, served locally with Deno.serve. Settings come from `.env` (see
 * .env.example; the environment wins) or `--env-file <path>`. PORT (default 8000) and HOST (default
 * 127.0.0.1) choose where it listens. Work after the 202 answer runs in the background, as waitUntil does on
 * Supabase; Ctrl-C waits for it to finish.
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

Deno.addSignalListener("SIGINT", async () => {
  console.error(`stopping: waiting for ${pending.size} background job run(s)`);
  await server.shutdown();
  await Promise.allSettled([...pending]);
  await app.close();
  Deno.exit(0);
});
