/**
 * Test support: one invocation of the workflow in a process of its own, configured from the environment, so
 * a test can kill it (SIGKILL) between two steps, as the runtime kills a function at its wall-clock limit.
 * Its first line on stdout is its worker id (the jobs' `lease_owner`), so a test knows which leases died.
 */
import { createApp } from "../../supabase/functions/hosting-automator/app.ts";

const app = createApp(Deno.env.toObject());
if (!app.newInvocation) Deno.exit(2);
const invocation = app.newInvocation();
await Deno.stdout.write(new TextEncoder().encode(`${invocation.worker}\n`)).catch(() => 0);
await invocation.run({ drain: true });
await app.close();
