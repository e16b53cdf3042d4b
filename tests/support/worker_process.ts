/**
 * Test support: one invocation of the workflow in a process of its own, configured from the environment, so
 * a test can kill it (SIGKILL) between two steps, as the runtime kills a function at its wall-clock limit.
 */
import { createApp } from "../../supabase/functions/hosting-automator/app.ts";

const app = createApp(Deno.env.toObject());
if (!app.newInvocation) Deno.exit(2);
await app.newInvocation().run({ drain: true });
await app.close();
