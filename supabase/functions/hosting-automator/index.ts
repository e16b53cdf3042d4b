/**
 * hosting-automator, the Supabase Edge Function: see README.md and design §5 for the requests it answers.
 * Configuration is validated once, when the isolate starts.
 */
import { createApp } from "./app.ts";

const app = createApp(Deno.env.toObject());

Deno.serve(app.fetch);
