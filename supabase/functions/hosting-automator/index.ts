/**
 * hosting-automator, the Supabase Edge Function: docs/http.md lists the requests it answers.
 * Configuration is validated once, when the worker starts.
 */
import { createApp } from "./app.ts";

const app = createApp(Deno.env.toObject());

// Sent before the runtime stops the worker (wall clock, CPU, memory, termination): give running jobs back now
// rather than after their leases expire.
addEventListener("beforeunload", (event) => {
  const reason = (event as Event & { detail?: { reason?: string } }).detail?.reason ?? "unload";
  void app.shutdown(reason);
});

Deno.serve(app.fetch);
